"""UME-R1 SFT losses: hand-computed InfoNCE, duplicate masking, term weighting, and the 2-process equivalence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_loss_worker as W
from umeflow.train.losses import SFTLossWeights, all_gather_with_grad, clip_loss, sft_loss

X = np.array([[1.0, 0.2, -0.5, 0.3], [0.1, 2.0, 0.4, -1.0], [-0.7, 0.3, 1.5, 0.2], [0.5, -0.4, 0.1, 1.2]])
# float32 results computed in another summation order (another CPU, another process split) differ by a few ulps:
# compare relative to the magnitude (a loss of ~25 has an ulp of 1.9e-6), never with an absolute 1e-6.
FLOAT32_REL = 1e-5
FLOAT32_ABS = 1e-7  # only for values that can be ~0
Y = np.array([[0.9, 0.1, -0.2, 0.6], [0.3, 1.1, 0.5, -0.4], [-0.2, 0.8, 0.9, 0.1], [1.0, -0.9, 0.3, 0.7]])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max-norm relative error ‖a−b‖∞ / ‖b‖∞ (robust to individual near-zero entries)."""
    return float((a - b).abs().max() / b.abs().max())


def numpy_clip(x: np.ndarray, y: np.ndarray, scale: float, keys: list[str] | None = None) -> float:
    """Symmetric InfoNCE written out: −log(exp(l_ii) / Σ_j exp(l_ij)), excluded columns dropped from Σ_j."""
    xn = x / np.sqrt((x ** 2).sum(axis=1, keepdims=True))
    yn = y / np.sqrt((y ** 2).sum(axis=1, keepdims=True))
    n = len(x)

    def one_direction(a, b):
        total = 0.0
        for i in range(n):
            logits = [scale * float(a[i] @ b[j]) for j in range(n)]
            denom = sum(np.exp(logits[j]) for j in range(n) if keys is None or j == i or keys[j] != keys[i])
            total += -np.log(np.exp(logits[i]) / denom)
        return total / n

    return (one_direction(xn, yn) + one_direction(yn, xn)) / 2


@pytest.mark.parametrize("scale", [50.0, 3.0])
def test_clip_loss_matches_hand_computation(scale):
    got = clip_loss(torch.tensor(X), torch.tensor(Y), scale=scale)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(numpy_clip(X, Y, scale), abs=1e-10)


def test_clip_loss_duplicate_masking():
    keys = ["a", "b", "a", "c"]
    got = clip_loss(torch.tensor(X), torch.tensor(Y), scale=3.0, dedup_keys=keys).item()
    assert got == pytest.approx(numpy_clip(X, Y, 3.0, keys), abs=1e-10)
    assert got != pytest.approx(numpy_clip(X, Y, 3.0), abs=1e-3)  # the mask really removes something here
    unique = clip_loss(torch.tensor(X), torch.tensor(Y), scale=3.0, dedup_keys=["a", "b", "c", "d"]).item()
    assert unique == pytest.approx(numpy_clip(X, Y, 3.0), abs=1e-10)  # no duplicates ⇒ the plain loss


def test_clip_loss_normalises_and_upcasts():
    x, y = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    ref = clip_loss(x, y)
    assert clip_loss(3 * x, 0.5 * y).item() == pytest.approx(ref.item(), rel=FLOAT32_REL)
    assert clip_loss(x.bfloat16(), y.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="dedup_keys"):
        clip_loss(x, y, dedup_keys=["a"])
    with pytest.raises(ValueError, match="equal shape"):
        clip_loss(x, y[:3])


def test_all_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    out = all_gather_with_grad(x)
    assert out is x
    (out * 2).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_sft_loss_weights_and_parts():
    g = torch.Generator().manual_seed(0)
    reps = {k: torch.randn(4, 5, generator=g, dtype=torch.float64) for k in ("q_gen", "t_gen", "q_disc", "t_disc")}
    ce = {"q": (torch.tensor(6.0, dtype=torch.float64), 4), "t": (torch.tensor(9.0, dtype=torch.float64), 3)}
    w = SFTLossWeights(gen_contrastive=0.5, disc_contrastive=2.0, ce_query=1.0, ce_target=3.0)
    total, parts = sft_loss(reps, ce, w, scale=50.0)
    assert set(parts) == {"gen_ctr", "disc_ctr", "ce_q", "ce_t"}
    assert parts["gen_ctr"].item() == pytest.approx(numpy_clip(reps["q_gen"].numpy(), reps["t_gen"].numpy(), 50.0))
    assert parts["disc_ctr"].item() == pytest.approx(numpy_clip(reps["q_disc"].numpy(), reps["t_disc"].numpy(), 50.0))
    assert parts["ce_q"].item() == pytest.approx(1.5) and parts["ce_t"].item() == pytest.approx(3.0)
    expected = 0.5 * parts["gen_ctr"] + 2.0 * parts["disc_ctr"] + 1.5 + 3.0 * 3.0
    assert total.item() == pytest.approx(expected.item(), abs=1e-12)
    assert not any(p.requires_grad for p in parts.values())

    # zero weights and missing inputs skip their terms; a side without labelled tokens contributes 0, not NaN
    total, parts = sft_loss({k: reps[k] for k in ("q_disc", "t_disc")}, {"q": (torch.tensor(0.0), 0), "t": ce["t"]},
                            SFTLossWeights(ce_target=0.0))
    assert set(parts) == {"disc_ctr", "ce_q"} and parts["ce_q"].item() == 0.0
    assert total.item() == pytest.approx(parts["disc_ctr"].item())
    with pytest.raises(ValueError, match="every term"):
        sft_loss(reps, ce, SFTLossWeights(0.0, 0.0, 0.0, 0.0))


# ------------------------------------------------------------------------------------------ 2 processes (gloo)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dist_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    worker = Path(__file__).with_name("dist_loss_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return torch.load(out / "result.pt")


def test_all_gather_with_grad_two_processes(dist_result):
    world = dist_result["world"]
    n = W.N_FULL // world
    expected = torch.cat([torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) + 100 * r for r in range(world)])
    assert torch.equal(dist_result["gather_value"], expected)
    total_weight = sum(dist_result["gather_weights"])  # ∂(Σ_s loss_s)/∂gathered
    for r, grad in enumerate(dist_result["gather_grads"]):
        assert torch.allclose(grad, total_weight[r * n:(r + 1) * n], atol=1e-6)  # sum over ranks, not own only
        assert not torch.allclose(grad, dist_result["gather_weights"][r][r * n:(r + 1) * n], atol=1e-3)


@pytest.mark.parametrize("name,keys", [("clip", None), ("clip_dedup", W.KEYS)])
def test_clip_loss_two_processes_equals_full_batch(dist_result, name, keys):
    """Σ_r L_r = W·L and Σ_r ∇L_r = W·∇L (module docstring of umeflow.train.losses)."""
    world = dist_result["world"]
    enc = W.pair_encoders()
    xq, xt = W.pair_inputs()
    loss = clip_loss(enc["q"](xq), enc["t"](xt), scale=50.0, dedup_keys=keys)
    loss.backward()
    got = dist_result[name]
    # float32 sums in another order on each machine: compare relative to the loss (~25; one ulp is 1.9e-6)
    assert got["loss_sum"].item() / world == pytest.approx(loss.item(), rel=FLOAT32_REL)
    err = rel_err(got["grad_sum"], world * W.flat_grads(enc))
    print(f"{name}: 2-process grad rel err {err:.2e}")
    assert err <= 1e-5


def _sft_reference(world: int):
    """Single process: contrastive terms on the full batch, CE terms as the mean of the per-process token means."""
    w = SFTLossWeights(gen_contrastive=1.0, disc_contrastive=0.5, ce_query=1.0, ce_target=2.0)
    model = W.TinySFTModel()
    batch = W.sft_batch()
    reps, _ = model(batch)
    total, parts = sft_loss(reps, {}, w, scale=50.0, dedup_keys=W.KEYS)
    n = W.N_FULL // world
    ce_q = ce_t = 0.0
    for r in range(world):
        _, ce = model(W.rows(batch, r * n, (r + 1) * n))
        ce_q = ce_q + ce["q"][0] / ce["q"][1] / world
        ce_t = ce_t + ce["t"][0] / ce["t"][1] / world
    total = total + w.ce_query * ce_q + w.ce_target * ce_t
    total.backward()
    return total.item(), {**parts, "ce_q": ce_q.detach(), "ce_t": ce_t.detach()}, W.flat_grads(model)


@pytest.mark.parametrize("name", ["sft", "sft_gc1", "sft_gc3"])
def test_sft_loss_two_processes(dist_result, name):
    world = dist_result["world"]
    loss, parts, grad = _sft_reference(world)
    got = dist_result[name]
    assert got["loss_sum"].item() / world == pytest.approx(loss, rel=FLOAT32_REL)
    if "parts_sum" in got:
        for k, v in parts.items():
            assert got["parts_sum"][k].item() / world == pytest.approx(v.item(), rel=FLOAT32_REL, abs=FLOAT32_ABS), k
    err = rel_err(got["grad_sum"], world * grad)
    print(f"{name}: 2-process grad rel err {err:.2e}")
    assert err <= 1e-5
