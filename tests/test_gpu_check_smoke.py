"""benchmarks/gpu_check.py (issue #15's one-call GPU check): its --smoke mode runs the same code end to end on the CPU,
and on a CUDA machine the full run (randomly initialised Qwen2-VL-2B) passes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(tmp_path: Path, *args: str, timeout: int) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "summary.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--json-out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("{"), f"no JSON summary as the last line\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads(last)
    assert json.loads(out.read_text()) == summary  # --json-out holds the same summary
    return proc, summary


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow  # ~70 s on 2 cores: a tiny checkpoint with the real 152k tokenizer, 2 SFT steps, 1 GRPO step
def test_smoke_mode_runs_every_section_on_the_cpu(assets_dir, tmp_path):
    proc, summary = _run(tmp_path, "--smoke", "--peak-flops", "1e12", "--assets-dir", str(assets_dir), timeout=900)
    sections = summary["sections"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["passed"] is True and summary["mode"] == "smoke" and summary["device"] == "cpu"
    assert set(sections) == {"build", "gen", "sft", "grpo"}
    assert all(sec["status"] == "passed" and _number(sec["seconds"]) for sec in sections.values()), sections

    assert sections["build"]["parameters"] > 0 and sections["build"]["dtype"] == "float32"
    gen = sections["gen"]
    assert gen["items"] == 4 and gen["tokens_per_item"] == 8 and gen["reference"]["items"] == 4
    assert _number(gen["reference"]["items_per_s"]) and gen["reference"]["items_per_s"] > 0
    for batch in ("batch_2", "batch_4"):
        row = gen[batch]
        for key in ("items_per_s", "ratio", "cosine_min", "cosine_mean"):
            assert _number(row[key]), (batch, key, row)
        # the forced reasoning: every row exactly 8 tokens, its <gen_emb> read (no fallback), in both paths alike
        assert row["lengths_min"] == row["lengths_max"] == 8 and row["fallback"] == 0
        assert row["cosine_min"] >= 0.999
    sft = sections["sft"]
    assert sft["steps"] == 2 and sft["samples_per_step"] == 4 and sft["gradient_checkpointing"] is True
    for key in ("samples_per_s", "tokens_per_s", "mfu", "train_loss"):
        assert _number(sft[key]) and sft[key] > 0, (key, sft)
    # MFU is 6 · parameters · tokens/s over the peak given on the command line
    assert sft["mfu"] == pytest.approx(6 * sections["build"]["parameters"] * sft["tokens_per_s"] / 1e12, rel=1e-9)
    grpo = sections["grpo"]
    assert grpo["steps"] == 1 and _number(grpo["steps_per_s"]) and grpo["steps_per_s"] > 0
    assert "passed=True" in proc.stdout and "ratio=" in proc.stdout


def test_a_cpu_machine_is_refused_the_full_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start")
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "--smoke" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_run_on_the_gpu(assets_dir, tmp_path):
    proc, summary = _run(tmp_path, "--assets-dir", str(assets_dir), timeout=900)
    assert summary["mode"] == "full"
    assert set(summary["sections"]) == {"build", "gen", "sft", "grpo"}
    assert summary["passed"] is True, {k: v.get("status") for k, v in summary["sections"].items()}
    assert proc.returncode == 0
    assert summary["sections"]["gen"]["batch_32"]["ratio"] >= 10
