"""GPU check of issue #15: gen-mode embedding throughput, SFT and GRPO of a randomly initialised Qwen2-VL-2B, one call.

The one device call (the `run` tool; the device machine is offline and gets the working tree plus `carry`):

    run(timeout_s=560, carry=[".whl", "state/assets/qwen2-tokenizer"], command="set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py --json-out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log")

What that needs, and why (/work/.library/device/README.md, KINDS.md):
- Not our .venv: it is CPython 3.11 with the CPU-only torch 2.13.0+cpu and far over the 64 MiB a call may carry, and
  requirements-gpu-lock.txt cannot be installed there (no registry is reachable; vLLM alone is hundreds of MiB).
- The device image's own python3 (CPython 3.12, /opt/torch/.venv) has torch 2.11.0+cu130, transformers 5.17.0 (the
  GPU lock's version, which `make test-gpu-lock-compat` runs umeflow's tests under), accelerate 1.15.0,
  huggingface_hub 1.33.0, tokenizers, safetensors, peft, pandas, pyarrow, xxhash. umeflow runs from src/ on
  PYTHONPATH (pure Python, nothing to build). Missing there: trl and what it imports: datasets, dill, multiprocess.
  Before the call, here in the repo root, put their wheels (1.8 MB) into an ignored folder:
      echo /.whl/ >> .git/info/exclude
      .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
          -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
- The real Qwen2 tokenizer asset (state/ is git-ignored, so it is carried: 11 MB with its .complete marker).
- No flash-attn and no vLLM there: attention is SDPA, rollouts are TRL's in-process HF generate (use_vllm false).
  DeepSpeed is not installed there either, and one GPU needs none: the recipe's ZeRO-3 is switched off.
The whole run is sized for ~8 minutes on one H100 (--budget-s 480): a section that would start past its share of the
budget is skipped with "skipped: budget" (and the run fails), so the call ends inside its limit. Last line of stdout:
the JSON summary (also written to --json-out); exit code 0 only when every check passed.

Sections (each prints its elapsed time; a failure is reported with its error's first line, never hidden):
1. build  A randomly initialised Qwen2-VL-2B from its config, no weights (umeflow.model.tiny.init_tiny with a
          full-size config: the real Qwen2 tokenizer, <gen_emb>/<disc_emb>, our processor), bf16 safetensors,
          loaded by ``Embedder(folder, device="cuda", dtype=torch.bfloat16)``.
2. gen    64 generated images + texts, a forced reasoning of exactly N=256 tokens per item (<gen_emb> at step N-2, EOS
          at N-1, so every row has the same length and a <gen_emb> that is read): the UME-R1 reference path
          (embed_throughput.reference_gen_embeddings: per sample, ``output_hidden_states``) vs
          ``Embedder.encode(mode="gen")`` at batch 8 and 32; items/s, ratio (target >= 10x at batch 32), cosine
          agreement (>= 0.99 in bf16), peak GPU memory. The reference runs on the first --ref-items (8) items: its
          cost is linear in items, so its items/s is the same (8 x 256 decode steps), and all 64 would take most of
          the budget (~30 ms a token for a 2B model in HF generate). Agreement is over those items.
3. sft    20 steps of umeflow's SFT step (configs/qwen2-vl-2b.yaml's sft section: bf16, gradient checkpointing, the
          recipe's loss and batch 4 x 4) on records written by ``umeflow annotate --backend grounded``; samples/s and
          MFU = 6 * parameters * trained tokens/s / peak dense bf16 FLOP/s (steps 2..N, after the warm-up step).
4. grpo   5 steps of umeflow's GRPO step (recipe ume_r1, use_vllm false, tiny pairs) from the SFT output; steps/s.

    python benchmarks/gpu_check.py [--smoke] [--budget-s 480] [--peak-flops 989e12] [--json-out FILE]

``--smoke`` runs the same code on the CPU with configs/tiny.yaml's model (real Qwen2 tokenizer), float32, 4 items,
8 tokens, batch 2 and 4, 2 SFT steps and 1 GRPO step (tests/test_gpu_check_smoke.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed_throughput  # noqa: E402  (benchmarks/embed_throughput.py: the reference path, its items)

RECIPE_2B = REPO / "configs" / "qwen2-vl-2b.yaml"
TINY_RECIPE = REPO / "configs" / "tiny.yaml"
# Dense bf16 tensor-core peak (no sparsity) of the H100 SXM, NVIDIA's datasheet; the H200 has the same compute.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
FORCE = 1e4  # logit bias that makes the scripted token the argmax of any random model's logits

# Qwen2-VL-2B-Instruct's config.json (text: the Qwen2-1.5B LLM; vision: depth 32, embed_dim 1280, 16 heads, mlp_ratio 4,
# patch 14, merge 2, temporal patch 2, which are also the defaults of transformers' Qwen2VLVisionConfig in
# transformers/models/qwen2_vl/configuration_qwen2_vl.py; mrope_section [16, 24, 24] = tiny._mrope_section(128)).
# The build checks the result has Qwen2-VL-2B's 2,208,985,600 parameters.
QWEN2_VL_2B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, vision_depth=32, vision_embed_dim=1280, vision_num_heads=16)
QWEN2_VL_2B_PARAMS = 2_208_985_600


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str
    dtype: torch.dtype
    items: int
    tokens: int  # generated tokens per item, <gen_emb> and EOS included
    batches: tuple[int, ...]
    ref_items: int
    min_cosine: float
    min_ratio: float | None  # at the largest batch; None: not checked (CPU timings of a tiny model)
    image_side: int  # training images
    sft_steps: int
    sft_batch: tuple[int, int]  # per-device batch, gradient accumulation
    grpo_steps: int
    grpo_overrides: tuple[str, ...]
    estimates: dict  # seconds each section needs at least (the budget guard)


FULL = Settings(False, "cuda", torch.bfloat16, items=64, tokens=256, batches=(8, 32), ref_items=8, min_cosine=0.99,
                min_ratio=10.0, image_side=448, sft_steps=20, sft_batch=(4, 4), grpo_steps=5,
                grpo_overrides=("pairs_per_step=2", "num_generations=4", "per_device_batch_size=4",
                                "max_completion_length=64"),
                estimates={"build": 60, "gen": 150, "sft": 100, "grpo": 80})
SMOKE = Settings(True, "cpu", torch.float32, items=4, tokens=8, batches=(2, 4), ref_items=4, min_cosine=0.999,
                 min_ratio=None, image_side=56, sft_steps=2, sft_batch=(2, 2), grpo_steps=1,
                 grpo_overrides=("pairs_per_step=2", "num_generations=2", "per_device_batch_size=4",
                                 "max_completion_length=8", "bf16=false"),
                 estimates={"build": 0, "gen": 0, "sft": 0, "grpo": 0})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------------------------ 1. build

def qwen2_vl_2b_config(cfg, tok, family):
    """tiny_config at Qwen2-VL-2B's sizes (token ids, tied 151,936-row embedding, mrope), plus the three values where
    Qwen2-VL-2B's config.json differs from the tiny builder's: vision mlp_ratio 4, rms_norm_eps 1e-6, 32k positions."""
    from umeflow.model.tiny import tiny_config

    config = tiny_config(cfg, tok, family)
    config.vision_config.mlp_ratio = 4
    config.text_config.rms_norm_eps = 1e-6
    config.text_config.max_position_embeddings = 32768
    return config


def build(s: Settings, work: Path, assets_dir: str) -> dict:
    from umeflow.config import ModelInitConfig, load_config
    from umeflow.model.embedder import Embedder
    from umeflow.model.tiny import init_tiny

    out = str(work / "model")
    if s.smoke:
        cfg = load_config(ModelInitConfig, str(TINY_RECIPE), ["tokenizer=qwen2"], out=out, assets_dir=assets_dir)
        folder = init_tiny(cfg)
    else:
        cfg = ModelInitConfig(out=out, assets_dir=assets_dir, family="qwen2_vl", tokenizer="qwen2", **QWEN2_VL_2B)
        folder = init_tiny(cfg, build_config=qwen2_vl_2b_config, dtype=torch.bfloat16)
    if importlib.util.find_spec("flash_attn") and s.device == "cuda":
        from umeflow.model.backbone import load_backbone

        embedder = Embedder(load_backbone(folder, dtype=s.dtype, device=s.device,
                                          attn_implementation="flash_attention_2"))
    else:  # transformers' default attention: SDPA
        embedder = Embedder(folder, device=s.device, dtype=s.dtype)
    params = sum(p.numel() for p in embedder.model.parameters())
    checks = {"loads_in_embedder": True}
    if not s.smoke:
        checks["qwen2_vl_2b_parameters"] = params == QWEN2_VL_2B_PARAMS
    return {"folder": str(folder), "embedder": embedder, "parameters": params, "checks": checks,
            "dtype": str(s.dtype).replace("torch.", ""),
            "attn_implementation": embedder.model.config._attn_implementation}


# ------------------------------------------------------------------------------------------------ 2. gen

class ForcedReasoningHead(torch.nn.Module):
    """A head wrapper like embed_throughput.TrainedLikeHead (the model's own LM head, a step counter fed by the input
    embedding), forcing the whole generation instead of ramping ``<gen_emb>``: generated token k is ``script[k]``, a
    reasoning text of N-2 tokens, then ``<gen_emb>`` at N-2 and EOS at N-1. Every row is exactly N tokens long, both
    paths generate the same tokens, and the cost per token is the real model's (full forward, full 151,936-wide head).
    Unlike TrainedLikeHead it leaves the model's weights untouched. ``remove()`` takes the counter off again."""

    def __init__(self, model, script: list[int]):
        super().__init__()
        self.head, self.script, self.step = model.lm_head, script, 0
        self._hook = model.get_input_embeddings().register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.step = 0 if args[0].shape[1] > 1 else self.step + 1  # a multi-token call is a new prefill

    def remove(self) -> None:
        self._hook.remove()

    def forward(self, x):
        out = self.head(x)
        out[..., self.script[min(self.step, len(self.script) - 1)]] += FORCE
        return out


def reasoning_script(tokenizer, n: int, gen_emb_id: int, eos_id: int) -> list[int]:
    text = ("<think>The picture shows a small coloured shape on a plain background; its colour and outline decide "
            "the class, and the caption names it.</think><answer>a coloured shape")
    words = tokenizer(text, add_special_tokens=False)["input_ids"]
    body = (words * (n // len(words) + 1))[: n - 2]
    return body + [gen_emb_id, eos_id]


def reference_embeddings(model, embedder, items, max_new_tokens):
    """``embed_throughput.reference_gen_embeddings`` as is, on a bf16 / CUDA model. That function ends with
    ``.numpy()`` on the normalised state, which needs a float32 CPU tensor: for the call, its module's ``torch`` is a
    namespace whose only member it uses, ``nn.functional.normalize``, returns one (one (D,) vector per item)."""

    def normalize(x, dim=-1):
        return torch.nn.functional.normalize(x.float(), dim=dim).cpu()

    shim = types.SimpleNamespace(nn=types.SimpleNamespace(functional=types.SimpleNamespace(normalize=normalize)))
    saved, embed_throughput.torch = embed_throughput.torch, shim
    try:
        return embed_throughput.reference_gen_embeddings(model, embedder, items, max_new_tokens)
    finally:
        embed_throughput.torch = saved


def gen(s: Settings, embedder, work: Path) -> dict:
    model, tok, n = embedder.model, embedder.tokenizer, s.tokens
    gen_id, eos_id = embedder.backbone.gen_emb_id, tok.convert_tokens_to_ids("<|im_end|>")
    empty = work / "no-suite"  # load_items generates images + texts when the folder has no offline suite
    empty.mkdir(exist_ok=True)
    items = embed_throughput.load_items(str(empty), s.items)
    original_head = model.lm_head
    model.lm_head = forced = ForcedReasoningHead(model, reasoning_script(tok, n, gen_id, eos_id))
    try:
        with torch.no_grad():  # warm-up of both paths (kernels, allocator, cuBLAS handles)
            reference_embeddings(model, embedder, items[:2], 4)
            embedder.encode(items[:2], mode="gen", max_new_tokens=4, batch_size=2, progress=False)
        free_memory()
        ref_items = items[: s.ref_items]
        t0 = time.perf_counter()
        with torch.no_grad():
            ref, at_budget = reference_embeddings(model, embedder, ref_items, n)
        sync()
        ref_s = time.perf_counter() - t0
        res = {"items": len(items), "tokens_per_item": n, "reference": {
            "items": len(ref_items), "seconds": ref_s, "items_per_s": len(ref_items) / ref_s,
            "peak_memory_gib": peak_memory_gib(), "gen_emb_at_budget": int(at_budget.sum())}}
        checks = {}
        for bs in s.batches:
            free_memory()
            t0 = time.perf_counter()
            enc = embedder.encode(items, mode="gen", batch_size=bs, max_new_tokens=n, progress=False)
            sync()
            sec = time.perf_counter() - t0
            cos = np.sum(ref * enc.embeddings[: len(ref_items)], axis=1)
            lengths = [len(ids) for ids in enc.generated_ids]
            row = {"seconds": sec, "items_per_s": len(items) / sec, "peak_memory_gib": peak_memory_gib(),
                   "ratio": (len(items) / sec) / res["reference"]["items_per_s"],
                   "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                   "fallback": int(enc.fallback.sum()), "lengths_min": min(lengths), "lengths_max": max(lengths)}
            res[f"batch_{bs}"] = row
            checks[f"batch_{bs}_cosine>={s.min_cosine}"] = row["cosine_min"] >= s.min_cosine
            checks[f"batch_{bs}_every_row_{n}_tokens_with_gen_emb"] = (
                row["fallback"] == 0 and min(lengths) == max(lengths) == n
                and all(ids[n - 2] == gen_id for ids in enc.generated_ids))
        if s.min_ratio is not None:
            largest = s.batches[-1]
            checks[f"batch_{largest}_ratio>={s.min_ratio:g}"] = res[f"batch_{largest}"]["ratio"] >= s.min_ratio
        res["checks"] = checks
        return res
    finally:
        forced.remove()
        model.lm_head = original_head


# ------------------------------------------------------------------------------------------------ 3./4. training data

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
           "purple": (140, 40, 160), "orange": (240, 140, 20)}
SHAPES = ("square", "circle")


def write_training_data(root: Path, side: int, seed: int) -> tuple[Path, Path]:
    """Offline-suite-like MMEB-train pairs (``umeflow data build`` layout: an image of a coloured shape → its name),
    annotated by umeflow's own ``annotate`` step with the grounded backend. Returns (pairs folder, annotate output)."""
    from PIL import Image, ImageDraw

    from umeflow.config import AnnotateConfig
    from umeflow.steps.annotate import run as annotate

    train = root / "data" / "train"
    (train / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(48):
        colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        img = Image.fromarray(rng.integers(200, 255, (side, side, 3), dtype=np.uint8))
        box = [side // 5, side // 5, 4 * side // 5, 4 * side // 5]
        (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLOURS[colour])
        img.save(train / "images" / f"{i}.png")
        label = f"{colour} {shape}"
        lines.append({"dataset_name": "Shapes", "qry": "<|image_1|>\nRepresent the given image for classification",
                      "qry_image_path": f"images/{i}.png", "pos_text": label, "pos_image_path": "",
                      "meta": {"label": label}})
    (train / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    annotate(AnnotateConfig(data=str(root / "data"), out=str(root / "annotate"), backend="grounded", seed=seed,
                            cache_dir=str(root / "annotate-cache")))
    return train, root / "annotate"


def step_clock():
    """A TrainerCallback keeping the wall time when training begins and at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.begin, self.times = 0.0, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(time.perf_counter())

        def steps_per_s(self) -> float:
            """Over steps 2..N (the first carries the warm-up); over the whole call when there is one step."""
            if len(self.times) > 1:
                return (len(self.times) - 1) / (self.times[-1] - self.times[0])
            return 1 / (self.times[0] - self.begin)

    return StepClock()


@contextlib.contextmanager
def counting_collated_tokens():
    """Counts the tokens (attention-mask ones, both sides) of every batch SFT's collator builds, in order."""
    from umeflow.train.sft_data import SFTCollator

    counts, original = [], SFTCollator.__call__

    def counted(self, pairs):
        out = original(self, pairs)
        counts.append(int(out["query"]["attention_mask"].sum() + out["target"]["attention_mask"].sum()))
        return out

    SFTCollator.__call__ = counted
    try:
        yield counts
    finally:
        SFTCollator.__call__ = original


def peak_flops(arg: float | None) -> float | None:
    if arg:
        return arg
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_BF16.items() if k in name), None)
    return None


def sft(s: Settings, model_dir: str, data: Path, work: Path, parameters: int, peak: float | None) -> dict:
    from umeflow.config import SFTConfig, load_config
    from umeflow.steps.sft import run

    batch, accum = s.sft_batch
    overrides = [f"max_steps={s.sft_steps}", "deepspeed=", "dataloader_num_workers=0", "logging_steps=1",
                 f"save_steps={100 * s.sft_steps}", "resume=false", f"per_device_batch_size={batch}",
                 f"gradient_accumulation_steps={accum}"] + (["bf16=false"] if s.smoke else [])
    cfg = load_config(SFTConfig, str(RECIPE_2B), overrides, model=model_dir, data=str(data), out=str(work / "sft"))
    clock = step_clock()
    with counting_collated_tokens() as counts:
        metrics = run(cfg, callbacks=[clock])
    steps = metrics["global_step"]
    timed = clock.times[-1] - clock.times[0]  # steps 2..N: the first step carries the warm-up
    tokens = sum(counts[accum: steps * accum])  # batches trained in steps 2..N (the loader may collate one ahead)
    tokens_per_s = tokens / timed
    res = {"steps": steps, "bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing,
           "samples_per_step": batch * accum, "samples_per_s": (steps - 1) * batch * accum / timed,
           "tokens_trained": sum(counts[: steps * accum]), "tokens_per_s": tokens_per_s,
           "mfu": 6 * parameters * tokens_per_s / peak if peak else None, "peak_flops": peak,
           "train_loss": metrics["train_loss"], "trainable_parameters": metrics["trainable_parameters"],
           "peak_memory_gib": peak_memory_gib(), "model_out": str(work / "sft" / "model")}
    res["checks"] = {f"{s.sft_steps}_steps": steps == s.sft_steps, "finite_loss": bool(np.isfinite(res["train_loss"]))}
    return res


def grpo(s: Settings, model_dir: str, pairs: Path, work: Path) -> dict:
    from umeflow.config import GRPOConfig, load_config
    from umeflow.steps.grpo import run

    overrides = ["use_vllm=false", "deepspeed=", f"max_steps={s.grpo_steps}", f"save_steps={100 * s.grpo_steps}",
                 "zero_std_patience=0", "format_check_steps=0", "resume=false", *s.grpo_overrides]
    cfg = load_config(GRPOConfig, str(RECIPE_2B), overrides, model=model_dir, data=str(pairs), out=str(work / "grpo"))
    clock = step_clock()
    metrics = run(cfg, callbacks=[clock])
    steps = metrics["global_step"]
    res = {"steps": steps, "rollouts_per_step": metrics["rollouts_per_step"], "steps_per_s": clock.steps_per_s(),
           "max_completion_length": cfg.max_completion_length, "embedding_source": cfg.embedding_source,
           "train_seconds": metrics["train_seconds"], "peak_memory_gib": peak_memory_gib()}
    res["checks"] = {f"{s.grpo_steps}_steps": steps == s.grpo_steps}
    return res


# ------------------------------------------------------------------------------------------------ driver

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, float32 on the CPU (the test's mode)")
    ap.add_argument("--budget-s", type=float, default=None, help="skip a section that would end past this many "
                    "seconds (default 480 on the GPU, none in --smoke)")
    ap.add_argument("--peak-flops", type=float, default=None, help="peak dense bf16 FLOP/s for MFU (default: "
                    "989e12 on an H100/H200, else no MFU)")
    ap.add_argument("--ref-items", type=int, default=None, help="items the reference path runs on (default 8)")
    ap.add_argument("--assets-dir", default=str(REPO / "state" / "assets"))
    ap.add_argument("--work-dir", default="", help="where checkpoints go (default: a temp folder, removed after)")
    ap.add_argument("--json-out", default="", help="also write the JSON summary here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    s = SMOKE if args.smoke else FULL
    if args.ref_items:
        s = dataclasses.replace(s, ref_items=min(args.ref_items, s.items))
    budget = args.budget_s if args.budget_s is not None else (None if s.smoke else 480.0)
    if s.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2
    import transformers

    seed_everything(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if s.device == "cuda" else "cpu"
    summary = {"mode": "smoke" if s.smoke else "full", "device": device_name, "torch": torch.__version__,
               "transformers": transformers.__version__, "budget_s": budget, "sections": {}}
    print(f"gpu_check {summary['mode']}: device={device_name} torch={torch.__version__} "
          f"transformers={transformers.__version__} budget={budget}s work={work}", flush=True)
    start = time.perf_counter()
    state: dict = {}

    def section(name: str, fn) -> None:
        elapsed = time.perf_counter() - start
        if budget is not None and elapsed + s.estimates[name] > budget:
            summary["sections"][name] = {"status": "skipped: budget", "seconds": 0.0}
            print(f"[{name}] skipped: budget ({elapsed:.0f}s elapsed + ~{s.estimates[name]}s > {budget:.0f}s)")
            return
        t0 = time.perf_counter()
        try:
            res = fn()
            failed = [k for k, ok in res.get("checks", {}).items() if not ok]
            res["status"] = "passed" if not failed else "failed: " + ", ".join(failed)
        except Exception as e:  # noqa: BLE001 - a failure is a finding: reported by section, with its first line
            traceback.print_exc()
            first = (str(e).strip().splitlines() or [""])[0]
            res = {"status": "failed", "error": f"{type(e).__name__}: {first}"}
        res["seconds"] = time.perf_counter() - t0
        summary["sections"][name] = {k: v for k, v in res.items() if k != "embedder"}
        print(f"[{name}] {res['status']} in {res['seconds']:.1f}s (elapsed {time.perf_counter() - start:.1f}s): "
              + json.dumps({k: v for k, v in summary["sections"][name].items() if k not in ("status", "seconds")},
                           default=str), flush=True)
        state[name] = res

    try:
        section("build", lambda: build(s, work, args.assets_dir))
        embedder = state.get("build", {}).get("embedder")
        if embedder is None:
            for name in ("gen", "sft", "grpo"):
                summary["sections"][name] = {"status": "skipped: build failed", "seconds": 0.0}
        else:
            section("gen", lambda: gen(s, embedder, work))
            folder, parameters = state["build"]["folder"], state["build"]["parameters"]
            del embedder
            state["build"].pop("embedder")
            free_memory()
            data: list = []  # (pairs folder, annotate output), written once by whichever section runs first

            def training_data():
                if not data:
                    data.extend(write_training_data(work / "train", s.image_side, args.seed))
                return data

            section("sft", lambda: sft(s, folder, training_data()[1], work, parameters, peak_flops(args.peak_flops)))
            free_memory()
            policy = state.get("sft", {}).get("model_out")
            policy = policy if policy and Path(policy).is_dir() else folder  # the SFT output, else the initial model
            section("grpo", lambda: grpo(s, policy, training_data()[0], work))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary["elapsed_s"] = time.perf_counter() - start
    summary["passed"] = all(sec.get("status") == "passed" for sec in summary["sections"].values()) and \
        set(summary["sections"]) == {"build", "gen", "sft", "grpo"}
    gen_res = summary["sections"].get("gen", {})
    for bs in s.batches:
        if f"batch_{bs}" in gen_res:
            row = gen_res[f"batch_{bs}"]
            print(f"gen batch {bs}: {row['items_per_s']:.2f} items/s vs reference "
                  f"{gen_res['reference']['items_per_s']:.2f} items/s, ratio={row['ratio']:.2f}, "
                  f"cosine min {row['cosine_min']:.4f} mean {row['cosine_mean']:.4f}")
    print(f"passed={summary['passed']} elapsed={summary['elapsed_s']:.0f}s")
    text = json.dumps(summary, default=str)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
