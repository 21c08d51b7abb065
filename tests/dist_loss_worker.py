"""Tiny deterministic models and data for the loss tests, and the per-process body of the 2-process loss test.

Run as ``python -m torch.distributed.run --nproc_per_node 2 --master_port PORT tests/dist_loss_worker.py OUTDIR``
(gloo, CPU). Every process builds the same models and the same *full* batch from fixed seeds, keeps the rows of its
rank, computes the losses with cross-process gathering, backpropagates, all-reduces (SUM) the parameter gradients and
the losses, and rank 0 writes everything to ``OUTDIR/result.pt``. ``tests/test_losses.py`` compares the result with a
single-process computation on the full batch built by the same helpers below (imported, not duplicated).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

N_FULL = 8          # global batch (pairs); 4 per process with 2 processes
D_IN, D_OUT = 6, 5
VOCAB, HIDDEN, SEQ = 11, 8, 7
KEYS = ["a", "b", "a", "c", "b", "d", "a", "c"]  # duplicates inside a rank and across ranks


# ------------------------------------------------------------------------------ a linear encoder for clip_loss

def pair_encoders(seed: int = 0) -> nn.ModuleDict:
    """Two linear towers (query, target); the loss normalises their outputs."""
    torch.manual_seed(seed)
    return nn.ModuleDict({"q": nn.Linear(D_IN, D_OUT), "t": nn.Linear(D_IN, D_OUT)})


def pair_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_FULL, D_IN, generator=g), torch.randn(N_FULL, D_IN, generator=g)


# ------------------------------------------------------------- a tiny "LM" with gen/disc embeddings and token CE

class TinySFTModel(nn.Module):
    """Token ids → contextless states → (gen embedding, disc embedding, next-token CE over labelled tokens).

    Rows are processed independently, so any split of a batch gives the same per-row outputs (dropout aside) — the
    property GradCache and data parallelism rely on.
    """

    def __init__(self, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, HIDDEN)
        self.mix = nn.Linear(HIDDEN, HIDDEN)
        self.drop = nn.Dropout(dropout)
        self.gen = nn.Linear(HIDDEN, D_OUT)
        self.disc = nn.Linear(HIDDEN, D_OUT)
        self.lm_head = nn.Linear(HIDDEN, VOCAB)

    def side(self, ids: torch.Tensor, mask: torch.Tensor):
        h = self.drop(torch.tanh(self.mix(self.emb(ids))))            # (n, T, H)
        gen = self.gen(h.mean(dim=1))
        disc = self.disc(h[:, 0])
        m = mask[:, 1:]
        logits = self.lm_head(h[:, :-1])[m]
        ce_sum = F.cross_entropy(logits, ids[:, 1:][m], reduction="sum")
        return gen, disc, ce_sum, int(m.sum())

    def forward(self, batch: dict):
        qg, qd, qs, qn = self.side(batch["q_ids"], batch["q_mask"])
        tg, td, ts, tn = self.side(batch["t_ids"], batch["t_mask"])
        return {"q_gen": qg, "t_gen": tg, "q_disc": qd, "t_disc": td}, {"q": (qs, qn), "t": (ts, tn)}


def sft_batch(n: int = N_FULL, seed: int = 2) -> dict:
    """Token ids and labelled-token masks whose counts vary per row (including a row with none on the query side)."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for side in ("q", "t"):
        ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        starts = torch.randint(1, SEQ + 1, (n,), generator=g)   # labelled span = positions ≥ start (SEQ ⇒ empty)
        if side == "q":
            starts[1] = SEQ
        mask = torch.arange(SEQ)[None, :] >= starts[:, None]
        batch[f"{side}_ids"], batch[f"{side}_mask"] = ids, mask
    return batch


def rows(batch: dict, start: int, end: int) -> dict:
    return {k: v[start:end] for k, v in batch.items()}


def flat_grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in module.parameters()])


# ------------------------------------------------------------------------------------------- per-process body

def main(outdir: str) -> None:
    import torch.distributed as dist

    from umeflow.train.gradcache import grad_cache_backward
    from umeflow.train.losses import SFTLossWeights, all_gather_with_grad, clip_loss, sft_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = N_FULL // world
    lo, hi = rank * n, (rank + 1) * n
    result: dict = {"world": world}

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    # 1. all_gather_with_grad: value is the rank-ordered concatenation; gradient of the local slice = Σ over ranks
    x = (torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) + 100 * rank).requires_grad_(True)
    weights = torch.randn(N_FULL, 3, generator=torch.Generator().manual_seed(10 + rank))  # differs per rank
    gathered = all_gather_with_grad(x)
    (gathered * weights).sum().backward()
    result["gather_value"] = gathered.detach()
    grads: list = [None] * world
    dist.all_gather_object(grads, x.grad)
    result["gather_grads"] = grads
    result["gather_weights"] = [torch.randn(N_FULL, 3, generator=torch.Generator().manual_seed(10 + r))
                                for r in range(world)]

    # 2. clip_loss with and without duplicate masking
    xq, xt = pair_inputs()
    for name, keys in (("clip", None), ("clip_dedup", KEYS[lo:hi])):
        enc = pair_encoders()
        loss = clip_loss(enc["q"](xq[lo:hi]), enc["t"](xt[lo:hi]), scale=50.0, dedup_keys=keys)
        loss.backward()
        result[name] = {"loss_sum": reduce_sum(loss), "grad_sum": reduce_sum(flat_grads(enc))}

    # 3. sft_loss, plain backward and GradCache (chunks of 1 and of 3+1 rows), each with duplicate masking
    batch = rows(sft_batch(), lo, hi)
    keys = KEYS[lo:hi]
    w = SFTLossWeights(gen_contrastive=1.0, disc_contrastive=0.5, ce_query=1.0, ce_target=2.0)

    def loss_fn(reps, ce):
        return sft_loss(reps, ce, w, scale=50.0, dedup_keys=keys)

    model = TinySFTModel()
    total, parts = loss_fn(*model(batch))
    total.backward()
    result["sft"] = {"loss_sum": reduce_sum(total), "grad_sum": reduce_sum(flat_grads(model)),
                     "parts_sum": {k: reduce_sum(v) for k, v in parts.items()}}
    for size in (1, 3):
        model = TinySFTModel()
        chunks = [rows(batch, s, min(s + size, n)) for s in range(0, n, size)]
        total, parts = grad_cache_backward(model, chunks, loss_fn)
        result[f"sft_gc{size}"] = {"loss_sum": reduce_sum(total), "grad_sum": reduce_sum(flat_grads(model))}

    if rank == 0:
        Path(outdir).mkdir(parents=True, exist_ok=True)
        torch.save(result, Path(outdir) / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
