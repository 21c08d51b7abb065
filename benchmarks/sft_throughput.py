"""SFT step throughput: a plain step vs a GradCache step at the same effective batch, on the same model and data.

Both compute the full UME-R1 loss (gen + disc InfoNCE over the whole batch, CE on both responses) and its
gradients; GradCache recomputes the forward in chunks so activation memory is bounded by the chunk, not the batch.
The script checks that the two give the same gradients (max relative error printed) and prints samples/s of each
and, last, ``ratio=<gradcache samples/s / plain samples/s>`` (below 1: the price of the extra forward pass).

    python benchmarks/sft_throughput.py --model state/models/tiny --data state/annotate [--batch 32 --chunk 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="state/models/tiny")
    ap.add_argument("--data", default="state/annotate")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)

    from umeflow.model.backbone import load_backbone
    from umeflow.train.gradcache import grad_cache_backward
    from umeflow.train.losses import SFTLossWeights, sft_loss
    from umeflow.train.sft import media_root_of, pair_forward, split_pairs
    from umeflow.train.sft_data import SFTCollator, load_sft_pairs

    torch.manual_seed(0)
    bb = load_backbone(args.model)
    model = bb.model.train()
    data = Path(args.data)
    pairs, _ = load_sft_pairs(data / "sft.jsonl", media_root_of(data))
    collate = SFTCollator(bb.processor, bb.family.name)
    batches = [collate(pairs[i * args.batch:(i + 1) * args.batch]) for i in range(args.steps + 1)]
    weights = SFTLossWeights()

    def model_fn(inputs):
        return pair_forward(model, inputs, bb.gen_emb_id, bb.disc_emb_id)

    def loss_fn(keys):
        return lambda reps, ce: sft_loss(reps, ce, weights, dedup_keys=keys)

    def plain(inputs):
        reps, ce = model_fn(inputs)
        total, _ = loss_fn(inputs["target_keys"])(reps, ce)
        total.backward()

    def cached(inputs):
        grad_cache_backward(model_fn, split_pairs(inputs, args.chunk), loss_fn(inputs["target_keys"]))

    def grads():
        out = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return out

    # agreement on the first batch (also the warm-up of both paths)
    plain(batches[0])
    g_plain = grads()
    cached(batches[0])
    g_cache = grads()
    rel = max(float((a - b).abs().max() / (a.abs().max() + 1e-12)) for a, b in zip(g_plain, g_cache))

    # alternate the two per batch so background load affects both alike
    spent = {"plain": 0.0, "gradcache": 0.0}
    for b in batches[1:]:
        for name, step in (("plain", plain), ("gradcache", cached)):
            t0 = time.perf_counter()
            step(b)
            spent[name] += time.perf_counter() - t0
            model.zero_grad(set_to_none=True)
    timings = {name: args.steps * args.batch / sec for name, sec in spent.items()}
    print(f"model={args.model} batch={args.batch} chunk={args.chunk} steps={args.steps} "
          f"threads={torch.get_num_threads()}")
    print(f"gradient agreement: max relative error {rel:.2e}")
    print(f"plain step:     {timings['plain']:.1f} samples/s")
    print(f"GradCache step: {timings['gradcache']:.1f} samples/s (activations bounded by {args.chunk} pairs)")
    if rel > 1e-3:
        print("FAILED: GradCache gradients differ from the plain step", file=sys.stderr)
        return 1
    print(f"ratio={timings['gradcache'] / timings['plain']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
