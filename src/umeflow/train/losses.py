"""UME-R1 cold-start SFT losses (method.md §1.5, §4 item 5).

``sft_loss`` = w_g·InfoNCE(q_gen, t_gen) + w_d·InfoNCE(q_disc, t_disc) + w_q·CE(query response) + w_t·CE(target
response), all weights 1 in UME-R1. The contrastive terms are UME-R1's ``ClipLoss``: symmetric (q→t and t→q averaged),
logit scale 50 (τ = 0.02), L2-normalised features, in-batch negatives gathered from every process *with gradient*, and
the "local loss" formulation — each process scores only its own rows against the gathered batch, with labels offset by
``rank × n_local``.

Distributed gradient relation (asserted exactly by ``tests/test_losses.py`` via ``tests/dist_loss_worker.py``)
-----------------------------------------------------------------------------------------------------------
Let W processes each hold n rows of a global batch of N = W·n pairs, and let ℓ_i be the symmetric per-row loss of
global row i (row i of the full N×N logit matrix, in both directions). Process r computes
``L_r = (1/n) Σ_{i∈r} ℓ_i`` and the single-process full-batch loss is ``L = (1/N) Σ_i ℓ_i``, so

    L = (1/W) Σ_r L_r                            (the mean of the per-process losses).

``all_gather_with_grad``'s backward hands each process the *sum over processes* of the gradients arriving at its slice
of the gathered tensor, so after ``L_r.backward()`` process r holds Σ_s ∂L_s/∂θ restricted to the paths through its own
rows. Summing those over processes (all-reduce SUM) therefore gives ∂(Σ_s L_s)/∂θ, i.e.

    Σ_r grad_r = W · ∂L/∂θ        and the DDP average   (1/W) Σ_r grad_r = ∂L/∂θ   exactly.

So data-parallel training with this loss reproduces single-process training on the global batch. (Had the gather's
backward returned only the local process's own gradient, the cross-process terms would be lost and no such identity
would hold.) The CE terms are per-process token means (UME-R1's behaviour), so their DDP average is the mean of
per-process means, which equals the global token mean only when every process has the same number of labelled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["all_gather_with_grad", "clip_loss", "SFTLossWeights", "sft_loss", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenation over processes along dim 0 whose backward is a reduce-scatter (SUM).

    Every process's loss may depend on every process's rows, so the gradient of the local slice is the sum over
    processes of the gradients each of them computed for that slice — an all-gather's adjoint is a reduce-scatter.
    """

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # type: ignore[override]
        world_size = dist.get_world_size(group)
        x = x.contiguous()
        # Unequal row counts would make all_gather fail or hang depending on the backend, and would silently shift the
        # label offsets in clip_loss; check them with one tiny collective so the error is clear and raised everywhere.
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device), group=group)
        sizes_list = [int(s) for s in sizes]
        if len(set(sizes_list)) != 1:
            raise ValueError(f"all_gather_with_grad needs the same number of rows on every process; got {sizes_list} "
                             "(use equal per-device batch sizes and drop the last incomplete global batch)")
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x, group=group)
        ctx.group, ctx.rank, ctx.n = group, dist.get_rank(group), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        n, rank = ctx.n, ctx.rank
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            out = torch.empty((n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM, group=ctx.group)
            return out, None
        # gloo has no reduce-scatter; an all-reduce of the (small, N×D) gradient followed by slicing is equivalent
        grad = grad.clone()  # never modify autograd's buffer in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[rank * n:(rank + 1) * n], None


def all_gather_with_grad(x: Tensor, group=None) -> Tensor:
    """``x`` from every process concatenated along dim 0 (rank order), differentiable w.r.t. the local ``x``.

    The backward sums, over processes, the gradients for this process's slice (see the module docstring for why this
    makes the data-parallel gradient equal the single-process one). Identity when torch.distributed is not initialised
    or the group has one process. Every process must call it (it is a collective) with the same row count.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


def _gather_keys(keys: Sequence[str]) -> list[str]:
    """Content keys of every process's rows, in rank order (strings travel via ``all_gather_object``)."""
    rank, world_size = world()
    if world_size == 1:
        return list(keys)
    gathered: list[list[str] | None] = [None] * world_size
    dist.all_gather_object(gathered, list(keys))
    return [k for part in gathered for k in part]  # type: ignore[union-attr]


def clip_loss(x: Tensor, y: Tensor, scale: float = 50.0, dedup_keys: Sequence[str] | None = None) -> Tensor:
    """UME-R1's symmetric InfoNCE over the global batch; returns the mean over this process's rows.

    ``x`` (queries) and ``y`` (targets) are ``(n_local, D)``; row i of ``x`` is paired with row i of ``y``. Both are
    L2-normalised *here* (idempotent for already-normalised inputs), so callers pass raw hidden states. Computation is
    done in at least float32: with scale 50 a bf16 logit is only accurate to ~0.2, which visibly distorts the softmax.

    ``logits_xy = scale·x_local·Yᵀ``, ``logits_yx = scale·y_local·Xᵀ`` with X, Y gathered from all processes with
    gradient; the positive of local row i is global column ``i + n_local·rank``; loss = (CE_xy + CE_yx) / 2.
    Every process must have the same ``n_local`` (checked, with a clear error).

    ``dedup_keys`` (umeflow addition — UME-R1 does not do this; off by default): one content key per local pair,
    normally the target's. Columns whose pair has the same key as the row's own pair, other than the positive itself,
    are removed from the softmax (logit −inf). With small label sets (e.g. 10 Fashion-MNIST classes in a batch of 64)
    many in-batch "negatives" are in fact the same target, and InfoNCE would otherwise push the query away from a
    correct match. The same pair-level equivalence masks both directions: for t→q, a query whose positive is an
    identical target is an equally valid match.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError("clip_loss expects two (n, D) tensors of equal shape; "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = F.normalize(x.to(dtype), dim=-1)
    y = F.normalize(y.to(dtype), dim=-1)
    rank, world_size = world()
    n = x.shape[0]
    xs, ys = all_gather_with_grad(x), all_gather_with_grad(y)
    assert xs.shape[0] == n * world_size, (
        f"clip_loss: gathered {xs.shape[0]} rows from {world_size} processes with {n} local rows; the label offset "
        "rank*n_local requires equal per-process batch sizes")
    logits_xy = scale * x @ ys.T
    logits_yx = scale * y @ xs.T
    labels = torch.arange(n, device=x.device) + n * rank
    if dedup_keys is not None:
        if len(dedup_keys) != n:
            raise ValueError(f"dedup_keys has {len(dedup_keys)} entries for {n} local rows")
        all_keys = _gather_keys([str(k) for k in dedup_keys])
        ids: dict[str, int] = {}
        key_ids = torch.tensor([ids.setdefault(k, len(ids)) for k in all_keys], device=x.device)
        same = key_ids[labels][:, None] == key_ids[None, :]
        same[torch.arange(n, device=x.device), labels] = False  # never mask the positive itself
        logits_xy = logits_xy.masked_fill(same, float("-inf"))
        logits_yx = logits_yx.masked_fill(same, float("-inf"))
    return (F.cross_entropy(logits_xy, labels) + F.cross_entropy(logits_yx, labels)) / 2


@dataclass(frozen=True)
class SFTLossWeights:
    """Weights of the four SFT terms (UME-R1: all 1). A zero weight skips the term entirely (no compute, no gather)."""

    gen_contrastive: float = 1.0
    disc_contrastive: float = 1.0
    ce_query: float = 1.0
    ce_target: float = 1.0


def sft_loss(reps: Mapping[str, Tensor], ce: Mapping[str, tuple[Tensor, int | Tensor]],
             weights: SFTLossWeights = SFTLossWeights(), scale: float = 50.0,
             dedup_keys: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """UME-R1's SFT objective for this process's micro-batch → ``(total, parts)``.

    ``reps``: ``q_gen``, ``t_gen``, ``q_disc``, ``t_disc`` — ``(n_local, D)`` embeddings (raw; normalised in
    ``clip_loss``). ``ce``: ``{"q": (sum, count), "t": (sum, count)}`` — summed token CE over the labelled response
    tokens of each side and the number of those tokens. A term whose inputs are missing or whose weight is 0 is
    skipped; the skip must be the same on every process, since the contrastive terms are collectives.

    Each CE term is the token mean over *this process's* labelled tokens (sum / count), as in UME-R1, not a mean over
    tokens gathered from all processes; a side with no labelled tokens contributes 0. ``parts`` holds the detached,
    unweighted terms (``gen_ctr``, ``disc_ctr``, ``ce_q``, ``ce_t``) for logging.
    """
    total: Tensor | None = None
    parts: dict[str, Tensor] = {}

    def add(name: str, weight: float, value: Tensor) -> None:
        nonlocal total
        parts[name] = value.detach()
        total = weight * value if total is None else total + weight * value

    for name, weight, q, t in (("gen_ctr", weights.gen_contrastive, "q_gen", "t_gen"),
                               ("disc_ctr", weights.disc_contrastive, "q_disc", "t_disc")):
        if weight and q in reps and t in reps:
            add(name, weight, clip_loss(reps[q], reps[t], scale=scale, dedup_keys=dedup_keys))
    for name, weight, side in (("ce_q", weights.ce_query, "q"), ("ce_t", weights.ce_target, "t")):
        if weight and side in ce:
            ce_sum, count = ce[side]
            # count 0 ⇒ the sum is 0 too; dividing by 1 keeps the term (and its gradient) finite
            denom = count.clamp_min(1).to(ce_sum.dtype) if isinstance(count, Tensor) else max(int(count), 1)
            add(name, weight, ce_sum / denom)
    if total is None:
        raise ValueError("sft_loss: every term is missing or has weight 0")
    return total, parts
