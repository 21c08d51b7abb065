"""GradCache (Gao et al., 2021) for the SFT objective: contrastive negatives not bounded by activation memory.

The SFT loss depends on the model only through a few small tensors per sub-batch — the embeddings (n×D) and the
summed token CE of each side — so it can be split into two passes whose peak activation memory is that of one chunk:

1. **Cache.** Run the model on every chunk without autograd, concatenate the outputs into leaf tensors, evaluate the
   loss on the whole batch (cross-process gathers included) and backpropagate to those leaves only. This yields
   ∂L/∂reps and ∂L/∂(CE sum) — the latter is simply ``w_side / total_count_side`` for a token-mean CE.
2. **Replay.** Re-run each chunk with autograd and backpropagate the surrogate
   ``Σ_k ⟨reps_chunk[k], ∂L/∂reps_chunk[k]⟩ + Σ_side ce_sum_chunk[side] · ∂L/∂ce_sum[side]``,
   whose parameter gradient is, by the chain rule, exactly that chunk's share of ∂L/∂θ. Gradients accumulate in
   ``.grad`` across chunks, so after the last chunk they equal the full-batch gradient.

Treating the CE sums as leaves (instead of hard-coding the weights and counts) keeps ``loss_fn`` opaque: whatever it
does with them, the cached derivative is the right multiplier, and the CE remains a token mean over the *whole local
batch* (Σ chunk sums / Σ chunk counts), not a mean of per-chunk means.

The replay must see the same randomness as the cache pass (dropout masks, stochastic layers), so each chunk's CPU and
current-CUDA-device RNG states are captured before its first forward and restored before its second; afterwards the
RNG is left where the cache pass left it, i.e. the step consumes randomness exactly like one ordinary forward per chunk.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["grad_cache_backward", "RngState"]

ModelOut = tuple[Mapping[str, Tensor], Mapping[str, tuple[Tensor, "int | Tensor"]]]


class RngState:
    """Snapshot of the CPU generator and (when CUDA is in use) the current device's generator.

    Only the current CUDA device is captured: touching every device's generator would create a context on each GPU in
    every process of a one-GPU-per-process job.
    """

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda: tuple[int, Tensor] | None = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.cuda.current_device()
            self.cuda = (device, torch.cuda.get_rng_state(device))

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda[1], self.cuda[0])


def _count(value: int | Tensor) -> int:
    return int(value.item()) if isinstance(value, Tensor) else int(value)


def grad_cache_backward(
    model_fn: Callable[[Any], ModelOut],
    chunks: Sequence[Any],
    loss_fn: Callable[[dict[str, Tensor], dict[str, tuple[Tensor, int]]], tuple[Tensor, Mapping[str, Tensor]]],
    *,
    no_sync: Callable[[], ContextManager] | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Accumulate into ``.grad`` the gradient of ``loss_fn`` over the concatenation of ``chunks``; → ``(loss, parts)``.

    ``model_fn(chunk) -> (reps, ce)``: ``reps`` maps names to ``(n_chunk, D)`` tensors, ``ce`` maps sides to
    ``(summed token CE, labelled-token count)``; it must be deterministic given the RNG state (it is run twice per
    chunk). Every chunk must produce the same keys. ``loss_fn(reps_full, ce_full) -> (total, parts)`` (e.g. a closure
    over :func:`umeflow.train.losses.sft_loss`) receives the chunks' reps concatenated in order and, per CE side, the
    total sum and total count; any cross-process gathering happens inside it, once, on the full local batch.

    The returned loss is the true value from the cache pass (detached), ``parts`` the detached parts ``loss_fn``
    returned. Gradients are *added* to existing ``.grad`` (like ``loss.backward()``), with full weight.

    ``no_sync`` (e.g. ``ddp_model.no_sync``) wraps the replay of all but the last chunk so a DDP model all-reduces
    once per step instead of once per chunk (correct either way, since gradient averaging is linear). ``backward``
    replaces ``surrogate.backward()`` when an engine owns the backward pass.
    """
    if not chunks:
        raise ValueError("grad_cache_backward needs at least one chunk")
    do_backward = backward or (lambda t: t.backward())

    # ---- pass 1: forward every chunk without autograd, remembering the RNG state each one started from
    states: list[RngState] = []
    chunk_reps: list[Mapping[str, Tensor]] = []
    ce_sums: dict[str, list[Tensor]] = {}
    ce_counts: dict[str, int] = {}
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState())
            reps, ce = model_fn(chunk)
            if chunk_reps and set(reps) != set(chunk_reps[0]):
                raise ValueError(f"chunks produced different rep keys: {sorted(reps)} vs {sorted(chunk_reps[0])}")
            chunk_reps.append({k: v.detach() for k, v in reps.items()})
            for side, (total, count) in ce.items():
                ce_sums.setdefault(side, []).append(total.detach())
                ce_counts[side] = ce_counts.get(side, 0) + _count(count)
    after_pass1 = RngState()

    rep_leaves = {k: torch.cat([r[k] for r in chunk_reps]).requires_grad_(True) for k in chunk_reps[0]}
    ce_leaves = {side: torch.stack(sums).sum().requires_grad_(True) for side, sums in ce_sums.items()}
    with torch.enable_grad():
        total, parts = loss_fn(dict(rep_leaves), {s: (ce_leaves[s], ce_counts[s]) for s in ce_leaves})
        leaves = [*rep_leaves.values(), *ce_leaves.values()]
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    rep_grads = dict(zip(rep_leaves, grads[:len(rep_leaves)]))
    ce_grads = dict(zip(ce_leaves, grads[len(rep_leaves):]))
    sizes = [next(iter(r.values())).shape[0] for r in chunk_reps]
    split_grads = {k: (g.split(sizes) if g is not None else None) for k, g in rep_grads.items()}
    del chunk_reps, rep_leaves, ce_leaves

    # ---- pass 2: replay each chunk with autograd and push the cached gradients through it
    for i, chunk in enumerate(chunks):
        states[i].restore()
        last = i == len(chunks) - 1
        with (no_sync() if (no_sync is not None and not last) else nullcontext()):
            reps, ce = model_fn(chunk)
            terms: list[Tensor] = []
            for k, rep in reps.items():
                g = split_grads.get(k)
                if g is not None and rep.requires_grad:
                    terms.append((rep * g[i].to(rep.dtype)).sum())
            for side, (ce_sum, _) in ce.items():
                g = ce_grads.get(side)
                if g is not None and ce_sum.requires_grad:
                    terms.append(ce_sum * g.to(ce_sum.dtype))
            if terms:
                do_backward(torch.stack([t.float() for t in terms]).sum())
    after_pass1.restore()
    return total.detach(), {k: v.detach() for k, v in parts.items()}
