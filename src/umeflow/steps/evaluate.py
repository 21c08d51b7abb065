"""``umeflow evaluate``: score MMEB-style tasks with a checkpoint and write the report.

Outputs in ``--out`` (written atomically as one folder): ``report.md`` (per-task table, category/modality/overall
means, oracle and selector), ``summary.json`` (everything in the table plus full metric dicts), ``categories.png``
(per-category bars), ``scores/{task}_{qmode}_{tmode}_score.json`` (UME-R1's VLM2Vec naming, one per mode pair),
``metrics.json`` (flat keys for MLflow/DVC) and ``run_info.json``. Embeddings persist in ``cache_dir`` keyed by
model fingerprint and content, so a killed run resumes and a rerun embeds nothing twice. When an MLflow tracking URI
is set (``tracking_uri`` or ``MLFLOW_TRACKING_URI``) metrics, report, summary and plot are logged to MLflow.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from umeflow.config import EvaluateConfig
from umeflow.errors import UserError
from umeflow.evaluate.cache import EmbeddingCache, model_fingerprint
from umeflow.evaluate.report import aggregate, bar_plot, column_label, columns_of, markdown, selector_gap
from umeflow.evaluate.runner import EmbeddingStore, evaluate_task
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


def run(cfg: EvaluateConfig) -> dict:
    from umeflow.model.embedder import Embedder

    if cfg.mode not in MODES:
        raise UserError(f"--mode must be one of {sorted(MODES)}, got {cfg.mode!r}")
    if cfg.pass_k and "gen" not in MODES[cfg.mode]:
        raise UserError("pass@k samples gen embeddings: use --mode gen or both")
    modes = MODES[cfg.mode]
    tasks = select_tasks(cfg.data_root, cfg.tasks)
    expected = expected_tasks(cfg.data_root, cfg.tasks)
    cache = EmbeddingCache(cfg.cache_dir or None, model_fingerprint(cfg.model))
    cache.write_info(cfg.model)
    store = EmbeddingStore(Embedder(cfg.model), cache=cache, batch_size=cfg.batch_size,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           chunk_size=cfg.cache_chunk_size)
    results, t0 = {}, time.perf_counter()
    for task in tqdm(tasks, desc=f"evaluate ({cfg.mode})", unit="task"):
        r = evaluate_task(task, cfg.data_root, store, modes, cfg.max_queries_per_task, cfg.seed, cfg.pass_k)
        results[task.name] = r
        log.info("%s: %s", task.name, ", ".join(f"{column_label(c)} {v[task.metric]:.3f}"
                                                 for c, v in r["scores"].items()))
    seconds = time.perf_counter() - t0

    cols = columns_of(results)
    aggregates = {c: aggregate(expected, results, c) for c in cols}
    gap = selector_gap(aggregates)
    gap_cross = selector_gap(aggregates, "selector_cross")
    notes = [f"model: `{cfg.model}`", f"data: `{cfg.data_root}` (tasks: {cfg.tasks})",
             f"modes: {', '.join(modes)}; scores ×100; smoke tasks are not averaged"]
    if cfg.max_queries_per_task:
        notes.append(f"subsampled to at most {cfg.max_queries_per_task} queries per task (seed {cfg.seed})")
    if "gen" in modes:
        n = sum(r["num_queries"] for r in results.values())
        rate = sum(r["gen_fallback_rate"] * r["num_queries"] for r in results.values()) / n
        notes.append(f"gen mode: {100 * rate:.1f}% of queries generated no <gen_emb> (fallback state used); "
                     f"max_new_tokens={cfg.max_new_tokens}, greedy")
    notes.append(f"embedding calls: {store.calls} for {store.requests} requests "
                 f"({cache.loaded_from_disk} vectors reused from the cache at {cache.root})")
    report = markdown(tasks, expected, results, "Evaluation", notes)

    per_query = {name: r.pop("per_query") for name, r in results.items()}
    summary = {"tasks": {t.name: {"meta": t.__dict__, **results[t.name]} for t in tasks},
               "aggregates": aggregates, "modes": list(modes), "columns": cols, "selector_gap_closed": gap,
               "selector_cross_gap_closed": gap_cross,
               "seconds": seconds, "embedding_requests": store.requests, "embedding_calls": store.calls,
               "cache": cache.describe()}
    metrics = {"seconds": seconds, "embedding_calls": store.calls, "embedding_requests": store.requests}
    if gap is not None:
        metrics["selector_gap_closed"] = gap
    if gap_cross is not None:
        metrics["selector_cross_gap_closed"] = gap_cross
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
        bar_plot(expected, results, tmp / "categories.png", f"{Path(cfg.model).name}: {cfg.tasks}")
        for name, r in results.items():
            for c, scores in r["scores"].items():
                if "_" in c:  # a query-mode × target-mode pair
                    write_json(tmp / "scores" / f"{name}_{c}_score.json", scores)
        write_json(tmp / "metrics.json", metrics)
        write_run_info(tmp, cfg, inputs={"model_fingerprint": cache.root.name if cache.root else None})
    _log_mlflow(cfg, metrics, out)
    print(report)
    return summary


def _log_mlflow(cfg: EvaluateConfig, metrics: dict, out: Path) -> None:
    uri = use_tracking(cfg.tracking_uri)
    if not uri:
        return
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "evaluate"):
        mlflow.log_params({"eval.tasks": cfg.tasks, "eval.mode": cfg.mode, "eval.max_new_tokens": cfg.max_new_tokens,
                           "eval.max_queries_per_task": cfg.max_queries_per_task, "eval.pass_k": cfg.pass_k})
        mlflow.log_metrics({f"eval.{k}": float(v) for k, v in metrics.items()})
        for name in ("report.md", "summary.json", "categories.png"):
            mlflow.log_artifact(str(out / name), artifact_path="evaluation")
    log.info("logged evaluation to MLflow at %s", uri)
