"""``umeflow evaluate``: score MMEB-style tasks with a checkpoint, write the report.

Outputs in ``--out``: ``report.md`` (per-task table + category/modality/overall means), ``summary.json`` (everything
in the table plus full metric dicts), ``<mode>/<Task>_score.json`` per task and mode (VLM2Vec's score-file content),
``metrics.json`` (flat keys for MLflow/DVC) and ``run_info.json``. The whole folder is written atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from umeflow.config import EvaluateConfig
from umeflow.errors import UserError
from umeflow.evaluate.report import aggregate, markdown
from umeflow.evaluate.runner import EmbeddingStore, evaluate_task
from umeflow.evaluate.tasks import select_tasks
from umeflow.io import atomic_path, sha256_file, write_json, write_run_info

log = logging.getLogger(__name__)

MODES = {"disc": ("disc",), "gen": ("gen",), "both": ("disc", "gen")}


def _metric_key(s: str) -> str:
    return s.replace("@", "_at_")


def run(cfg: EvaluateConfig) -> dict:
    from umeflow.model.embedder import Embedder

    if cfg.mode not in MODES:
        raise UserError(f"--mode must be one of {sorted(MODES)}, got {cfg.mode!r}")
    modes = MODES[cfg.mode]
    tasks = select_tasks(cfg.data_root, cfg.tasks)
    store = EmbeddingStore(Embedder(cfg.model), batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
    results, t0 = {}, time.perf_counter()
    for task in tqdm(tasks, desc=f"evaluate ({cfg.mode})", unit="task"):
        results[task.name] = evaluate_task(task, cfg.data_root, store, modes, cfg.max_queries_per_task, cfg.seed)
        log.info("%s: %s", task.name, ", ".join(f"{m} {task.metric}={results[task.name]['scores'][m][task.metric]:.3f}"
                                                 for m in modes))
    seconds = time.perf_counter() - t0
    notes = [f"model: `{cfg.model}`", f"data: `{cfg.data_root}` (tasks: {cfg.tasks})",
             f"modes: {', '.join(modes)}; scores ×100; smoke tasks are not averaged"]
    if cfg.max_queries_per_task:
        notes.append(f"subsampled to at most {cfg.max_queries_per_task} queries per task (seed {cfg.seed})")
    if "gen" in modes:
        rate = sum(r["gen_fallback_rate"] * r["num_queries"] for r in results.values()) / sum(
            r["num_queries"] for r in results.values())
        notes.append(f"gen mode: {100 * rate:.1f}% of queries generated no <gen_emb> (fallback state used); "
                     f"max_new_tokens={cfg.max_new_tokens}")
    report = markdown(tasks, results, modes, "Offline evaluation", notes)
    aggregates = {m: aggregate(tasks, results, m) for m in modes}
    summary = {"tasks": {t.name: {"meta": t.__dict__, **results[t.name]} for t in tasks},
               "aggregates": aggregates, "modes": list(modes), "seconds": seconds,
               "embedding_requests": store.requests, "embedding_calls": store.calls}
    metrics = {"seconds": seconds, "embedding_calls": store.calls, "embedding_requests": store.requests}
    for m in modes:
        if aggregates[m]["overall"] is not None:
            metrics[f"{m}.overall"] = aggregates[m]["overall"]
        for t in tasks:
            metrics[f"{m}.{t.name}.{_metric_key(t.metric)}"] = results[t.name]["scores"][m][t.metric]
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "report.md").write_text(report)
        write_json(tmp / "summary.json", summary)
        for m in modes:
            for t in tasks:
                write_json(tmp / m / f"{t.name}_score.json", results[t.name]["scores"][m])
        write_json(tmp / "metrics.json", metrics)
        tasks_file = Path(cfg.data_root) / "tasks.json"
        write_run_info(tmp, cfg, inputs={"tasks.json": sha256_file(tasks_file)})
    print(report)
    return summary
