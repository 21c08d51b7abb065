"""Gen-mode embedding throughput per generation engine (issue #15 items 1–3), same tiny model, same items.

- ``hf``:     in-process generation (``Embedder.encode(mode="gen")``: umeflow's decode loop, batches bucketed by
              prompt length, finished rows leave the batch; the states come with the generation);
- ``openai``: an OpenAI-compatible server on 127.0.0.1 serving the same checkpoint (tests/generation_server.py:
              plain transformers ``generate``, one request at a time, like a server without batching) through the
              ``openai`` engine, then one teacher-forced prefill per batch (``Embedder.extract``);
- trace-cache rerun: an ``EmbeddingStore`` with a ``TraceCache`` on a temporary folder, run once (generates, caches
              the traces), then again with the embedding cache emptied: every item is read from its cached trace by a
              prefill, nothing is generated.

The model ends its answers as a trained one does (``embed_throughput.TrainedLikeHead``; the server's copy too).
All three must give the same embeddings (cosine ≥ 0.999, checked). The last lines print the ratios:
``openai/hf=<items/s ratio>`` and ``trace_cache_rerun/hf=<items/s ratio>``.

    python benchmarks/gen_engines.py [--model state/models/tiny] [--data-root state/data/eval] [--items 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # embed_throughput (items, the trained-like head)
sys.path.insert(0, str(HERE.parent / "tests"))  # generation_server (the local OpenAI-compatible server)


def trained_like(backbone, ramp: float) -> None:
    from embed_throughput import TrainedLikeHead

    eos = backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
    backbone.model.lm_head = TrainedLikeHead(backbone.model, backbone.gen_emb_id, eos, ramp)


def timed(fn, repeats: int):
    """(the last result, the best of ``repeats`` wall times)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="state/models/tiny")
    ap.add_argument("--data-root", default="state/data/eval")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight for the openai engine")
    ap.add_argument("--gen-emb-ramp", type=float, default=0.08, help="see embed_throughput.py")
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions (best is reported)")
    args = ap.parse_args(argv)

    from embed_throughput import load_items
    from generation_server import GenerationServer
    from umeflow.evaluate.cache import EmbeddingCache, TraceCache
    from umeflow.evaluate.runner import EmbeddingStore
    from umeflow.model.backbone import load_backbone
    from umeflow.model.embedder import Embedder
    from umeflow.model.generation import OpenAIEngine

    torch.manual_seed(0)
    embedder = Embedder(args.model)
    trained_like(embedder.backbone, args.gen_emb_ramp)
    served = load_backbone(args.model)  # the server's own copy of the weights, as a server process has
    trained_like(served, args.gen_emb_ramp)
    items = load_items(args.data_root, args.items)
    n = len(items)
    kw = dict(mode="gen", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=False)

    server = GenerationServer(served.model, served.processor)
    try:
        engine = OpenAIEngine(embedder, server.url, "tiny", concurrency=args.concurrency)
        embedder.encode(items[:2], **{**kw, "max_new_tokens": 4})  # warm-up (first calls allocate)
        embedder.encode(items[:2], engine=engine, **{**kw, "max_new_tokens": 4})
        hf, hf_s = timed(lambda: embedder.encode(items, **kw), args.repeats)
        remote, remote_s = timed(lambda: embedder.encode(items, engine=engine, **kw), args.repeats)
    finally:
        server.close()

    def store_runs():
        """(first run's vectors, its seconds, rerun's vectors, its seconds) on a fresh trace cache folder."""
        with tempfile.TemporaryDirectory() as tmp:
            def store(emb_dir: str) -> EmbeddingStore:
                return EmbeddingStore(embedder, cache=EmbeddingCache(Path(tmp) / emb_dir, "tiny", "px"),
                                      traces=TraceCache(tmp, "tiny", "px"), batch_size=args.batch_size,
                                      max_new_tokens=args.max_new_tokens, progress=False)

            first = store("emb-first")
            (vectors, _), first_s = timed(lambda: first.embed(items, "gen"), 1)
            rerun = store("emb-rerun")  # an empty embedding cache; the traces on disk
            (again, _), again_s = timed(lambda: rerun.embed(items, "gen"), 1)
            if rerun.generated or rerun.extracted != n:
                raise SystemExit(f"FAILED: the rerun generated {rerun.generated} items (expected 0) and extracted "
                                 f"{rerun.extracted} (expected {n})")
            return vectors, first_s, again, again_s

    runs = [store_runs() for _ in range(args.repeats)]
    cold, cold_s, again, again_s = runs[-1][0], min(r[1] for r in runs), runs[-1][2], min(r[3] for r in runs)

    same_ids = sum(a.token_ids == b.token_ids for a, b in zip(hf.traces, remote.traces))
    cos = {"openai": (hf.embeddings * remote.embeddings).sum(-1), "store": (hf.embeddings * cold).sum(-1),
           "trace-cache rerun": (hf.embeddings * again).sum(-1)}
    lengths = [len(ids) for ids in hf.generated_ids]
    print(f"model={args.model} items={n} batch_size={args.batch_size} max_new_tokens={args.max_new_tokens} "
          f"threads={torch.get_num_threads()} nproc={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
    print(f"generated lengths min/mean/max = {min(lengths)}/{np.mean(lengths):.1f}/{max(lengths)}; "
          f"with <gen_emb>: {int((~hf.fallback).sum())}/{n}; openai traces with the hf engine's ids: {same_ids}/{n}")
    print(f"hf engine (Embedder.encode):              {hf_s:6.2f}s {n / hf_s:7.1f} items/s")
    print(f"openai engine (local server) + extract:   {remote_s:6.2f}s {n / remote_s:7.1f} items/s "
          f"(concurrency {args.concurrency}; the test server generates one request at a time)")
    print(f"EmbeddingStore + TraceCache, first run:    {cold_s:6.2f}s {n / cold_s:7.1f} items/s (generates)")
    print(f"trace-cache rerun (prefills only):        {again_s:6.2f}s {n / again_s:7.1f} items/s")
    print("agreement with the hf engine (min cosine): "
          + ", ".join(f"{name} {c.min():.6f}" for name, c in cos.items()))
    if min(c.min() for c in cos.values()) < 0.999 or same_ids != n:
        print("FAILED: the engines disagree (cosine < 0.999 or other token ids)", file=sys.stderr)
        return 1
    print(f"openai/hf={hf_s / remote_s:.2f}")
    print(f"trace_cache_rerun/hf={hf_s / again_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
