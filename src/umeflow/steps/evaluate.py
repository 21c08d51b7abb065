"""``umeflow evaluate``: score MMEB-style tasks with a checkpoint and write the report.

Outputs in ``--out`` (written atomically as one folder): ``report.md`` (per-task table, category/modality/overall
means, oracle and selector), ``summary.json`` (everything in the table plus full metric dicts), ``categories.png``
(per-category bars), ``scores/{task}_{qmode}_{tmode}_score.json`` (UME-R1's VLM2Vec naming, one per mode pair),
``leaderboard/`` (MMEB-V2 tasks in VLM2Vec's layout and leaderboard JSON, ``evaluate.leaderboard``),
``metrics.json`` (flat keys for MLflow/DVC) and ``run_info.json``. Embeddings persist in ``cache_dir`` keyed by
model fingerprint and content, so a killed run resumes and a rerun embeds nothing twice. When an MLflow tracking URI
is set (``tracking_uri`` or ``MLFLOW_TRACKING_URI``) metrics, report, summary and plot are logged to MLflow.

On a cluster the task set fans out: ``plan_shards`` splits it into balanced task lists, each shard runs ``run`` (one
GPU pod each, sharing the embedding cache on a volume) and ``merge_shards`` (``umeflow evaluate --merge DIR ...``)
publishes the same outputs as a single run would, from the shards' summaries.

``compare`` (``--compare FILE``) puts a published leaderboard score file beside the run in report.md and
summary.json: per task and per category / modality / overall, with the deltas.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from umeflow.config import EvaluateConfig
from umeflow.errors import UserError
from umeflow.evaluate import faithfulness, leaderboard
from umeflow.evaluate.cache import EmbeddingCache, TraceCache, model_fingerprint
from umeflow.evaluate.report import aggregate, bar_plot, column_label, columns_of, markdown, selector_gap
from umeflow.evaluate.runner import EmbeddingStore, evaluate_task, fallback_warnings
from umeflow.evaluate.tasks import TaskMeta, select_tasks
from umeflow.io import atomic_path, write_json, write_run_info
from umeflow.tracking import use_tracking

log = logging.getLogger(__name__)

MODES = {"disc": ("disc",), "gen": ("gen",), "both": ("disc", "gen")}


SUITES = ("offline", "mmeb-v2", "image", "video", "visdoc")


def expected_tasks(data_root: str, spec: str) -> list[TaskMeta]:
    """The task set aggregates must cover: the suite asked for, or — for a list of names — every suite those names
    belong to, so a partial list is reported as incomplete instead of being averaged as if it were the benchmark."""
    if spec.strip() in SUITES:
        return select_tasks(data_root, spec.strip())
    chosen = {t.name for t in select_tasks(data_root, spec)}
    expected: dict[str, TaskMeta] = {}
    for suite in ("offline", "mmeb-v2"):
        try:
            members = select_tasks(data_root, suite)
        except UserError:  # e.g. no offline tasks.json under an MMEB-V2 data root
            continue
        if chosen & {t.name for t in members}:
            expected.update({t.name: t for t in members})
    return list(expected.values())


def _key(s: str) -> str:
    """MLflow metric names allow letters, digits, ``_-./`` and spaces."""
    return s.replace("@", "_at_").replace("→", "to").replace("†", "")


def run(cfg: EvaluateConfig, log_to_mlflow: bool = True) -> dict:
    """Score ``cfg.tasks`` and publish the report into ``cfg.out``; ``log_to_mlflow=False`` for a shard whose
    partial aggregates must not reach the run (``merge_shards`` logs the whole)."""
    from umeflow.io import ensure_writable_dir

    ensure_writable_dir(cfg.out)  # fail before scoring, not at publish
    from umeflow.model.embedder import Embedder
    from umeflow.model.items import TextBudget
    from umeflow.model.vision import VisionSizing

    if cfg.mode not in MODES:
        raise UserError(f"--mode must be one of {sorted(MODES)}, got {cfg.mode!r}")
    if cfg.pass_k and "gen" not in MODES[cfg.mode]:
        raise UserError("pass@k samples gen embeddings: use --mode gen or both")
    if cfg.faithfulness and "gen" not in MODES[cfg.mode]:
        raise UserError("--faithfulness re-extracts gen embeddings: use --mode gen or both")
    modes = MODES[cfg.mode]
    if cfg.compare:  # a bad compare file fails now, not after the embedding
        leaderboard.load_published(cfg.compare)
    tasks = select_tasks(cfg.data_root, cfg.tasks)
    expected = expected_tasks(cfg.data_root, cfg.tasks)
    fingerprint = model_fingerprint(cfg.model)
    sizing = VisionSizing.from_settings(cfg)
    # vectors of other pixel settings or another disc read-out are other vectors: a cache folder of their own
    inputs = sizing.tag() + ("" if cfg.disc_readout == "disc_emb" else f"-disc-{cfg.disc_readout}")
    cache = EmbeddingCache(cfg.cache_dir or None, fingerprint, inputs=inputs)
    cache.write_info(cfg.model)
    traces = TraceCache(cfg.cache_dir or None, fingerprint, inputs=sizing.tag())  # the disc read-out changes no trace
    embedder = Embedder(cfg.model, sizing=sizing, disc_readout=cfg.disc_readout)
    store = EmbeddingStore(embedder, cache=cache, traces=traces, engine=make_engine(cfg, embedder),
                           batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, chunk_size=cfg.cache_chunk_size)
    budget = TextBudget(cfg.max_input_tokens, cfg.model)  # loads the tokenizer only for a text long enough to count
    results, t0 = {}, time.perf_counter()
    for task in tqdm(tasks, desc=f"evaluate ({cfg.mode})", unit="task"):
        r = evaluate_task(task, cfg.data_root, store, modes, cfg.max_queries_per_task, cfg.seed, cfg.pass_k, budget,
                          faithfulness=cfg.faithfulness)
        results[task.name] = r
        log.info("%s: %s", task.name, ", ".join(f"{column_label(c)} {v[task.metric]:.3f}"
                                                 for c, v in r["scores"].items()))
    seconds = time.perf_counter() - t0
    stats = {"seconds": seconds, "embedding_calls": store.calls, "embedding_requests": store.requests,
             "generated": store.generated, "extracted": store.extracted, "engine": store.engine_name,
             "cache": cache.describe(), "trace_cache": traces.describe(), "model_fingerprint": fingerprint}
    return publish(cfg, tasks, expected, results, stats, log_to_mlflow)


def make_engine(cfg: EvaluateConfig, embedder):
    """The generation engine ``cfg.engine`` names; None for in-process ``hf`` (the Embedder's own generate)."""
    from umeflow.model.generation import OpenAIEngine, VLLMEngine

    if cfg.engine == "openai":
        return OpenAIEngine(embedder, cfg.engine_base_url, cfg.engine_model, cfg.engine_api_key_env,
                            cfg.engine_concurrency, cfg.engine_max_retries)
    if cfg.engine == "vllm":
        return VLLMEngine(embedder, cfg.model, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
    return None


def publish(cfg: EvaluateConfig, tasks: list[TaskMeta], expected: list[TaskMeta], results: dict[str, dict],
            stats: dict, log_to_mlflow: bool = True) -> dict:
    """Write report, summary, plot, score files, metrics and run_info for ``results`` (one run or merged shards)."""
    seconds, modes = stats["seconds"], MODES[cfg.mode]
    cols = columns_of(results)
    aggregates = {c: aggregate(expected, results, c) for c in cols}
    gap = selector_gap(aggregates)
    gap_cross = selector_gap(aggregates, "selector_cross")
    gap_fused = selector_gap(aggregates, "fused")
    faithful = faithfulness.summarise(results)
    notes = [f"model: `{cfg.model}`", f"data: `{cfg.data_root}` (tasks: {cfg.tasks})",
             f"modes: {', '.join(modes)}; scores ×100; smoke tasks are not averaged"]
    if cfg.max_queries_per_task:
        notes.append(f"subsampled to at most {cfg.max_queries_per_task} queries per task (seed {cfg.seed})")
    if "gen" in modes:
        n = sum(r["num_queries"] for r in results.values())
        rate = sum(r["gen_fallback_rate"] * r["num_queries"] for r in results.values()) / n
        notes.append(f"gen mode: {100 * rate:.1f}% of queries generated no <gen_emb> (fallback state used); "
                     f"max_new_tokens={cfg.max_new_tokens}, greedy")
        for warning in fallback_warnings(results, cfg.gen_fallback_warn_rate, cfg.max_new_tokens):
            log.warning("gen fallback: %s", warning)
            notes.append(f"**WARNING** (gen fallback) {warning}")
    notes.append(f"embedding calls: {stats['embedding_calls']} for {stats['embedding_requests']} requests "
                 f"({stats['cache']['loaded_from_disk']} vectors reused from the cache at {stats['cache']['dir']})")
    generation = {k: stats.get(k, 0) for k in ("generated", "extracted")}
    generation["engine"] = stats.get("engine", "hf")
    if "gen" in modes:
        notes.append(f"gen mode engine `{generation['engine']}`: {generation['generated']} items generated, "
                     f"{generation['extracted']} embeddings read by a teacher-forced prefill from a trace "
                     "(cached or generated by the engine)")
    report = markdown(tasks, expected, results, "Evaluation", notes)
    report += "\n".join(faithfulness.markdown(results)) + ("\n" if faithful else "")
    comparison = None
    if cfg.compare:
        comparison = leaderboard.compare(leaderboard.load_published(cfg.compare), expected, results)
        report += leaderboard.compare_markdown(comparison)

    per_query = {name: r.pop("per_query") for name, r in results.items()}
    summary = {"tasks": {t.name: {"meta": t.__dict__, **results[t.name]} for t in tasks},
               "aggregates": aggregates, "modes": list(modes), "columns": cols, "selector_gap_closed": gap,
               "selector_cross_gap_closed": gap_cross, "fused_gap_closed": gap_fused, "faithfulness": faithful,
               "seconds": seconds, "embedding_requests": stats["embedding_requests"],
               "embedding_calls": stats["embedding_calls"], "cache": stats["cache"], "generation": generation}
    if "shards" in stats:
        summary["shards"] = stats["shards"]
    if comparison:
        summary["compare"] = comparison
    metrics = {"seconds": seconds, "embedding_calls": stats["embedding_calls"],
               "embedding_requests": stats["embedding_requests"]}
    if gap is not None:
        metrics["selector_gap_closed"] = gap
    if gap_cross is not None:
        metrics["selector_cross_gap_closed"] = gap_cross
    if gap_fused is not None:
        metrics["fused_gap_closed"] = gap_fused
    if faithful:
        metrics.update({f"faithfulness.{k}": v for k, v in faithful.items() if k.startswith(("cos_", "delta_"))})
        for name, r in results.items():
            for k, v in (r.get("faithfulness") or {}).items():
                if k.startswith(("cos_", "delta_")):
                    metrics[f"faithfulness.{name}.{k}"] = v
    for c in cols:
        label = _key(c)
        if aggregates[c]["overall"] is not None:
            metrics[f"{label}.overall"] = aggregates[c]["overall"]
        for cat, v in aggregates[c]["categories"].items():
            if v is not None:
                metrics[f"{label}.{cat}"] = v
        for t in tasks:
            if c in results[t.name]["scores"]:
                metrics[f"{label}.{t.name}.{_key(t.metric)}"] = results[t.name]["scores"][c][t.metric]

    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "report.md").write_text(report)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "per_query.json", per_query)
        bar_plot(expected, results, tmp / "categories.png", cfg.model, cfg.tasks)
        leaderboard.write_score_files(tmp, tasks, results, cfg.model, cfg.max_queries_per_task)
        write_json(tmp / "metrics.json", metrics)
        write_run_info(tmp, cfg, inputs={"model_fingerprint": stats["model_fingerprint"]})
    if log_to_mlflow:
        _log_mlflow(cfg, metrics, out)
    print(report)
    return summary


def _log_mlflow(cfg: EvaluateConfig, metrics: dict, out: Path) -> None:
    uri = use_tracking(cfg.tracking_uri)
    if not uri:
        return
    import mlflow

    from umeflow.registry.runs import step_run

    with step_run("evaluate", cfg, tracking_uri=uri):  # child of the pipeline run; an injected MLFLOW_RUN_ID wins
        mlflow.log_params({"eval.tasks": cfg.tasks, "eval.mode": cfg.mode, "eval.max_new_tokens": cfg.max_new_tokens,
                           "eval.engine": cfg.engine, "eval.faithfulness": cfg.faithfulness,
                           "eval.max_queries_per_task": cfg.max_queries_per_task, "eval.pass_k": cfg.pass_k})
        mlflow.log_metrics({f"eval.{k}": float(v) for k, v in metrics.items()})
        for name in ("report.md", "summary.json", "categories.png"):
            mlflow.log_artifact(str(out / name), artifact_path="evaluation")
    log.info("logged evaluation to MLflow at %s", uri)


# ------------------------------------------------------------------------------------ sharding (KFP fan-out)

def plan_shards(data_root: str, spec: str, num_shards: int) -> list[str]:
    """Split ``spec``'s tasks into at most ``num_shards`` comma-separated task lists of similar cost (queries per
    task, largest first onto the lightest shard). Each list is a valid ``--tasks`` value; no shard is empty."""
    if num_shards < 1:
        raise UserError(f"num_shards must be >= 1, got {num_shards}")
    tasks = select_tasks(data_root, spec)
    order = {t.name: i for i, t in enumerate(tasks)}
    loads = [[0, []] for _ in range(min(num_shards, len(tasks)))]
    for t in sorted(tasks, key=lambda t: (-max(t.num_queries, 1), order[t.name])):
        lightest = min(loads, key=lambda s: s[0])
        lightest[0] += max(t.num_queries, 1)
        lightest[1].append(t.name)
    return [",".join(sorted(names, key=order.__getitem__)) for _, names in loads]


def merge_shards(cfg: EvaluateConfig, shard_dirs: list[str | os.PathLike]) -> dict:
    """Merge the outputs of ``run`` over shards of ``cfg.tasks`` into one report in ``cfg.out``, exactly as if one
    run had scored every task (same tables, aggregates, plot, score files, metrics; logged to MLflow once)."""
    from umeflow.io import ensure_writable_dir

    ensure_writable_dir(cfg.out)
    tasks = select_tasks(cfg.data_root, cfg.tasks)
    known = {t.name for t in tasks}
    results: dict[str, dict] = {}
    stats = {"seconds": 0.0, "embedding_calls": 0, "embedding_requests": 0, "model_fingerprint": None,
             "cache": {"dir": None, "loaded_from_disk": 0, "settings": {}}, "shards": []}
    for d in map(Path, shard_dirs):
        try:
            summary = json.loads((d / "summary.json").read_text())
            per_query = json.loads((d / "per_query.json").read_text())
            fingerprint = json.loads((d / "run_info.json").read_text())["inputs"]["model_fingerprint"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{d} is not an evaluate output (summary.json, per_query.json, run_info.json): "
                            f"{e}") from None
        if stats["model_fingerprint"] not in (None, fingerprint):
            raise UserError(f"{d} scored a different model ({fingerprint}) than the other shards "
                            f"({stats['model_fingerprint']})")
        stats["model_fingerprint"] = fingerprint
        for name, entry in summary["tasks"].items():
            if name not in known:
                raise UserError(f"{d}: task {name} is not part of --tasks {cfg.tasks}")
            if name in results:
                raise UserError(f"{d}: task {name} was scored by more than one shard")
            results[name] = {**{k: v for k, v in entry.items() if k != "meta"}, "per_query": per_query[name]}
        for key in ("seconds", "embedding_calls", "embedding_requests"):
            stats[key] += summary[key]
        for key in ("generated", "extracted"):
            stats[key] = stats.get(key, 0) + summary.get("generation", {}).get(key, 0)
        stats["engine"] = summary.get("generation", {}).get("engine", "hf")
        stats["cache"]["dir"] = stats["cache"]["dir"] or summary["cache"]["dir"]
        stats["cache"]["loaded_from_disk"] += summary["cache"]["loaded_from_disk"]
        for setting, n in summary["cache"]["settings"].items():
            stats["cache"]["settings"][setting] = stats["cache"]["settings"].get(setting, 0) + n
        stats["shards"].append({"dir": str(d), "tasks": sorted(summary["tasks"]), "seconds": summary["seconds"]})
    missing = sorted(known - set(results))
    if missing:
        log.warning("merge_shards: no shard scored %s; the report marks the task set incomplete", ", ".join(missing))
    ran = [t for t in tasks if t.name in results]
    return publish(cfg, ran, expected_tasks(cfg.data_root, cfg.tasks), results, stats)
