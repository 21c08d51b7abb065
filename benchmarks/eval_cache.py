"""Evaluation cost with and without umeflow's content-hash embedding cache, same model, same tasks, same scores.

Suites: the offline suite, plus a repeated-candidate suite (the offline image tasks registered twice under other
names, as happens when a benchmark version or a shard re-lists tasks). Three ways to score them:

- no cache:   every query and every candidate occurrence of every task is embedded (a harness without reuse);
- cache, cold: umeflow's EmbeddingStore on an empty cache dir — each unique content embedded once per mode;
- cache, warm: the same run again (a resumed or repeated evaluation of the same checkpoint).

It checks that all three give identical scores, prints the fraction of embedding calls saved and, last,
``speedup=<no-cache seconds / cold-cache seconds>``.

    python benchmarks/eval_cache.py [--model state/models/tiny] [--data-root state/data/eval] [--mode disc]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def with_repeats(data_root: Path, tmp: Path) -> Path:
    """A copy of the suite's tasks.json that lists every non-smoke image task a second time ("<name>-again")."""
    tasks = json.loads((data_root / "tasks.json").read_text())
    again = [{**t, "name": t["name"] + "-again"} for t in tasks if t["modality"] == "image" and not t["smoke"]]
    root = tmp / "suite"
    root.mkdir()
    for entry in data_root.iterdir():
        if entry.name != "tasks.json":
            (root / entry.name).symlink_to(entry.resolve())
    (root / "tasks.json").write_text(json.dumps(tasks + again))
    return root


def no_cache_scores(embedder, tasks, root, mode, max_queries, seed, batch_size, max_new_tokens):
    """Embed everything each task lists, candidate occurrences included; returns (hit@1 per task, calls)."""
    from umeflow.evaluate.metrics import score_rankings
    from umeflow.evaluate.runner import subsample
    from umeflow.evaluate.tasks import load_task

    def enc(items):
        out = embedder.encode(items, mode=mode, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              progress=False)
        return out.embeddings

    scores, calls = {}, 0
    for meta in tasks:
        data = subsample(load_task(meta, root), max_queries, seed)
        q = enc(data.queries)
        calls += len(data.queries)
        rankings = []
        if data.query_candidates is None:
            names = list(data.candidates)
            c = enc([data.candidates[n] for n in names])
            calls += len(names)
            lists = [(names, c)] * len(data.queries)
        else:
            lists = []
            for own in data.query_candidates:
                lists.append((own, enc([data.candidates[n] for n in own])))
                calls += len(own)
        for qi, (own, c) in enumerate(lists):
            s = c @ q[qi]
            top = (len(own) - 1 - np.argsort(-s[::-1], kind="stable"))[:10]
            rankings.append([own[i] for i in top])
        scores[meta.name] = score_rankings(rankings, data.labels)["hit@1"]
    return scores, calls


def cached_scores(embedder, tasks, root, mode, max_queries, seed, batch_size, max_new_tokens, cache_dir):
    from umeflow.evaluate.cache import EmbeddingCache
    from umeflow.evaluate.runner import EmbeddingStore, evaluate_task

    store = EmbeddingStore(embedder, cache=EmbeddingCache(cache_dir, "bench"), batch_size=batch_size,
                           max_new_tokens=max_new_tokens, progress=False)
    scores = {m.name: evaluate_task(m, root, store, (mode,), max_queries, seed)["scores"][f"{mode}_{mode}"]["hit@1"]
              for m in tasks}
    return scores, store.calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="state/models/tiny")
    ap.add_argument("--data-root", default="state/data/eval")
    ap.add_argument("--mode", choices=["disc", "gen"], default="disc")
    ap.add_argument("--max-queries-per-task", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args(argv)

    from umeflow.evaluate.tasks import select_tasks
    from umeflow.model.embedder import Embedder

    embedder = Embedder(args.model)
    embedder.encode([__import__("umeflow.model.items", fromlist=["Item"]).Item("warm up")], progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = with_repeats(Path(args.data_root), Path(tmp))
        tasks = select_tasks(root, "offline")
        common = (embedder, tasks, root, args.mode, args.max_queries_per_task, 0, args.batch_size,
                  args.max_new_tokens)
        t0 = time.perf_counter()
        ref, ref_calls = no_cache_scores(*common)
        t_ref = time.perf_counter() - t0
        cache_dir = Path(tmp) / "cache"
        t0 = time.perf_counter()
        cold, cold_calls = cached_scores(*common, cache_dir)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm, warm_calls = cached_scores(*common, cache_dir)
        t_warm = time.perf_counter() - t0
        shutil.rmtree(cache_dir, ignore_errors=True)

    print(f"model={args.model} mode={args.mode} tasks={len(tasks)} (offline suite + {len(tasks) // 2} repeated) "
          f"max_queries_per_task={args.max_queries_per_task}")
    print(f"no cache:    {ref_calls:6d} embedding calls  {t_ref:7.1f}s")
    print(f"cache, cold: {cold_calls:6d} embedding calls  {t_cold:7.1f}s   "
          f"calls saved {100 * (1 - cold_calls / ref_calls):.1f}%")
    print(f"cache, warm: {warm_calls:6d} embedding calls  {t_warm:7.1f}s   "
          f"calls saved {100 * (1 - warm_calls / ref_calls):.1f}%  warm_speedup={t_ref / t_warm:.1f}")
    mismatched = [n for n in ref if not (abs(ref[n] - cold[n]) < 1e-9 and abs(ref[n] - warm[n]) < 1e-9)]
    if mismatched:
        print(f"FAILED: scores differ with the cache for {mismatched}", file=sys.stderr)
        return 1
    print("scores identical in all three runs")
    print(f"speedup={t_ref / t_cold:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
