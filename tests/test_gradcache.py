"""GradCache gives the full-batch loss and gradients for the SFT objective, dropout included (RNG replay)."""

from __future__ import annotations

import contextlib

import pytest
import torch

import dist_loss_worker as W
from umeflow.train.gradcache import grad_cache_backward
from umeflow.train.losses import SFTLossWeights, sft_loss

N = 7  # chunks of 3 leave a remainder
KEYS = W.KEYS[:N]
WEIGHTS = SFTLossWeights(gen_contrastive=1.0, disc_contrastive=0.5, ce_query=1.0, ce_target=2.0)


def loss_fn(reps, ce):
    return sft_loss(reps, ce, WEIGHTS, scale=50.0, dedup_keys=KEYS)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def split(batch: dict, size: int) -> list[dict]:
    return [W.rows(batch, s, min(s + size, N)) for s in range(0, N, size)]


def concat_outputs(outputs):
    """What one forward over the whole batch would return, from per-chunk outputs (CE: summed sums and counts)."""
    reps = {k: torch.cat([o[0][k] for o in outputs]) for k in outputs[0][0]}
    ce = {s: (sum(o[1][s][0] for o in outputs), sum(o[1][s][1] for o in outputs)) for s in outputs[0][1]}
    return reps, ce


@pytest.mark.parametrize("size", [1, 3, N])
def test_grad_cache_equals_full_batch_backward(size):
    batch = W.sft_batch(N)
    ref_model = W.TinySFTModel()
    ref_loss, ref_parts = loss_fn(*ref_model(batch))
    ref_loss.backward()

    model = W.TinySFTModel()
    loss, parts = grad_cache_backward(model, split(batch, size), loss_fn)
    # float32 sums in a different order: relative tolerance of ~10 ulps (the loss is ~15, one ulp ≈ 9.5e-7)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert parts.keys() == ref_parts.keys()
    err = rel_err(W.flat_grads(model), W.flat_grads(ref_model))
    print(f"chunk {size}: grad rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("size", [1, 3])
def test_grad_cache_replays_dropout(size):
    """Reference: the same chunked forwards from the same seed, with autograd, backpropagated at once. Pass 2 only
    matches it if every chunk sees the dropout masks it had in pass 1."""
    batch = W.sft_batch(N)
    chunks = split(batch, size)
    ref_model = W.TinySFTModel(dropout=0.3).train()
    torch.manual_seed(123)
    ref_loss, _ = loss_fn(*concat_outputs([ref_model(c) for c in chunks]))
    ref_loss.backward()
    ref_rng_after = torch.get_rng_state()

    model = W.TinySFTModel(dropout=0.3).train()
    torch.manual_seed(123)
    loss, _ = grad_cache_backward(model, chunks, loss_fn)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    err = rel_err(W.flat_grads(model), W.flat_grads(ref_model))
    print(f"chunk {size} dropout: grad rel err {err:.2e}")
    assert err <= 1e-4
    assert torch.equal(torch.get_rng_state(), ref_rng_after)  # randomness consumed as by one forward per chunk

    # control: a model_fn that draws extra random numbers on every call breaks the replay — and the check notices
    model = W.TinySFTModel(dropout=0.3).train()
    torch.manual_seed(123)
    calls = []

    def drifting(chunk):
        calls.append(1)
        torch.rand(len(calls))  # pass 2 starts from the restored state, then drifts away from pass 1
        return model(chunk)

    grad_cache_backward(drifting, chunks, loss_fn)
    assert rel_err(W.flat_grads(model), W.flat_grads(ref_model)) > 1e-2


def test_grad_cache_accumulates_and_uses_no_sync():
    batch = W.sft_batch(N)
    ref_model = W.TinySFTModel()
    loss_fn(*ref_model(batch))[0].backward()

    model = W.TinySFTModel()
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(1)
        yield

    chunks = split(batch, 3)
    grad_cache_backward(model, chunks, loss_fn, no_sync=no_sync)
    assert len(entered) == len(chunks) - 1  # the last chunk's backward is the synchronising one
    grad_cache_backward(model, chunks, loss_fn)  # adds to .grad like loss.backward()
    assert rel_err(W.flat_grads(model), 2 * W.flat_grads(ref_model)) <= 1e-4
    with pytest.raises(ValueError, match="at least one chunk"):
        grad_cache_backward(model, [], loss_fn)
