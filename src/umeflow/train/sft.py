"""Cold-start SFT (UME-R1 stage 1) on the Hugging Face Trainer.

Loss = gen InfoNCE + disc InfoNCE (symmetric, logit scale 50, negatives gathered across processes with gradient)
+ next-token CE on the query's and the target's responses (method.md §1.5), all from one teacher-forced forward per
side. The Trainer brings what a production run needs — DeepSpeed ZeRO-2/3, bf16, gradient checkpointing, DDP,
checkpoint/resume (model, optimizer, scheduler, RNG, data order), MLflow — and this module only adds:

- ``side_forward``: one forward through the (possibly DDP/DeepSpeed-wrapped) model; a hook on the language model
  keeps the last-layer states for the ``<gen_emb>``/``<disc_emb>`` embeddings, and logits are computed only for the
  last positions that hold the response (``logits_to_keep``), never for the whole 152k-wide sequence;
- ``UmeSFTTrainer.compute_loss`` (plain step) and ``training_step`` (GradCache step when configured);
- per-part loss logging and samples/s, a wall-clock cap that fails the step (a safety net), checkpoints that carry
  the run's identity and are resumed only when complete and of the same run, and a final safetensors checkpoint the
  Embedder loads.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from umeflow.config import SFTConfig
from umeflow.errors import UserError
from umeflow.model.backbone import language_model
from umeflow.model.embedder import gather_last
from umeflow.train.losses import SFTLossWeights, sft_loss
from umeflow.tracking import use_tracking

log = logging.getLogger(__name__)


def unwrap(model):
    """The Hugging Face model under DDP/DeepSpeed/PEFT wrappers (for attribute access, never for forward)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class _LastHidden:
    def __init__(self):
        self.state = None

    def __call__(self, module, args, output):
        self.state = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


def side_forward(model, batch: dict, gen_id: int, disc_id: int):
    """Teacher-forced forward of one side → (gen embedding, disc embedding, CE sum, CE token count).

    Embeddings are the last-layer states at the last ``<gen_emb>`` (the response's) and at ``<disc_emb>``; CE covers
    the response tokens (``completion_mask``), predicted from the state one position earlier.
    """
    batch = dict(batch)
    mask = batch.pop("completion_mask")
    ids = batch["input_ids"]
    # left padding right-aligns every response, so the states that predict them are the last (longest + 1) positions
    keep = int(mask.sum(dim=1).max()) + 1
    capture = _LastHidden()
    handle = language_model(unwrap(model)).register_forward_hook(capture)
    try:
        out = model(**batch, use_cache=False, logits_to_keep=keep)
    finally:
        handle.remove()
    hs = capture.state
    gen = gather_last(hs, ids, gen_id)
    disc = gather_last(hs, ids, disc_id)
    target_mask = mask[:, -keep + 1:] if keep > 1 else mask[:, :0]
    logits = out.logits[:, :-1][target_mask]
    targets = ids[:, -keep + 1:][target_mask]
    ce_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return gen, disc, ce_sum, int(target_mask.sum())


def pair_forward(model, inputs: dict, gen_id: int, disc_id: int):
    """Both sides of a batch of pairs → (reps for the contrastive terms, (CE sum, count) per side)."""
    qg, qd, q_ce, q_n = side_forward(model, inputs["query"], gen_id, disc_id)
    tg, td, t_ce, t_n = side_forward(model, inputs["target"], gen_id, disc_id)
    return {"q_gen": qg, "t_gen": tg, "q_disc": qd, "t_disc": td}, {"q": (q_ce, q_n), "t": (t_ce, t_n)}


class UmeSFTTrainer(Trainer):
    """HF Trainer whose loss is UME-R1's; optional GradCache training step."""

    def __init__(self, *args, sft_cfg: SFTConfig, gen_id: int, disc_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.sft_cfg = sft_cfg
        self.gen_id, self.disc_id = gen_id, disc_id
        self.weights = SFTLossWeights(gen_contrastive=sft_cfg.weight_gen_contrastive,
                                      disc_contrastive=sft_cfg.weight_disc_contrastive,
                                      ce_query=sft_cfg.weight_ce_query, ce_target=sft_cfg.weight_ce_target)
        self._parts: dict[str, float] = {}
        self._parts_n = 0
        self._samples = 0
        self._last_log = time.perf_counter()

    def _get_train_sampler(self, train_dataset=None):
        if not self.sft_cfg.single_dataset_batches:
            return super()._get_train_sampler(train_dataset)
        from umeflow.train.sft_data import SingleDatasetSampler

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # one block = one gathered batch: every process's share of a step comes from the same dataset
        block = self.args.per_device_train_batch_size * self.args.world_size
        return SingleDatasetSampler([p.dataset for p in dataset.pairs], block, self.args.data_seed)

    # ---- one micro-batch: model outputs and loss
    def _model_fn(self, model):
        return lambda inputs: pair_forward(model, inputs, self.gen_id, self.disc_id)

    def _loss_fn(self, keys):
        def loss(reps, ce):
            return sft_loss(reps, ce, self.weights, scale=self.sft_cfg.logit_scale,
                            dedup_keys=keys if self.sft_cfg.mask_duplicate_negatives else None)
        return loss

    def _record(self, parts: dict, n: int) -> None:
        for k, v in parts.items():
            self._parts[k] = self._parts.get(k, 0.0) + float(v)
        self._parts_n += 1
        self._samples += n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        reps, ce = self._model_fn(model)(inputs)
        total, parts = self._loss_fn(inputs["target_keys"])(reps, ce)
        self._record(parts, len(inputs["target_keys"]))
        return (total, reps) if return_outputs else total

    def training_step(self, model, inputs, num_items_in_batch=None):
        chunk = self.sft_cfg.grad_cache_chunk_size
        if not chunk:
            return super().training_step(model, inputs, num_items_in_batch)
        from umeflow.train.gradcache import grad_cache_backward

        if self.is_deepspeed_enabled:
            raise UserError("grad_cache_chunk_size needs plain torch/DDP; DeepSpeed runs its own backward. Use "
                            "ZeRO with gradient_accumulation_steps, or GradCache without DeepSpeed.")
        model.train()
        inputs = self._prepare_inputs(inputs)
        chunks = split_pairs(inputs, chunk)
        value, parts = grad_cache_backward(self._model_fn(model), chunks, self._loss_fn(inputs["target_keys"]),
                                           no_sync=getattr(model, "no_sync", None))
        self._record(parts, len(inputs["target_keys"]))
        scale = 1.0 / self.args.gradient_accumulation_steps
        if scale != 1.0:  # grad_cache_backward produced full-weight gradients; match the Trainer's accumulation
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return torch.as_tensor(float(value) * scale)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume weights through ``from_pretrained``: checkpoints are written in the hub key layout (transformers
        reverts its Qwen-VL key conversion on save), which the Trainer's plain ``load_state_dict`` does not map back,
        silently leaving the freshly initialised weights in place."""
        model = model if model is not None else self.model
        core = unwrap(model)
        weights = Path(resume_from_checkpoint) / "model.safetensors"
        if self.is_deepspeed_enabled or not weights.is_file() or core is not model and hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        reloaded = type(core).from_pretrained(resume_from_checkpoint, dtype=next(core.parameters()).dtype)
        missing, unexpected = core.load_state_dict(reloaded.state_dict(), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {resume_from_checkpoint} does not match the model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._parts_n:
            for k, v in self._parts.items():
                logs[f"loss_{k}"] = round(v / self._parts_n, 5)
            now = time.perf_counter()
            logs["samples_per_second"] = round(self._samples / max(now - self._last_log, 1e-9), 3)
            self._parts, self._parts_n, self._samples, self._last_log = {}, 0, 0, now
        super().log(logs, *args, **kwargs)


def split_pairs(inputs: dict, size: int) -> list[dict]:
    """Sub-batches of ``size`` pairs for GradCache (each side's tensors sliced by row; media tensors by item)."""
    n = len(inputs["target_keys"])
    return [{"query": _rows(inputs["query"], s, min(s + size, n)), "target": _rows(inputs["target"], s, min(s + size, n)),
             "target_keys": inputs["target_keys"][s:s + size]} for s in range(0, n, size)]


def _rows(batch: dict, start: int, end: int) -> dict:
    out = {k: v[start:end] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw",
                                                                     "pixel_values_videos", "video_grid_thw")}
    for pv, grid, tok in (("pixel_values", "image_grid_thw", 1), ("pixel_values_videos", "video_grid_thw", 2)):
        if grid not in batch:
            continue
        per_row = (batch["mm_token_type_ids"] == tok).sum(dim=1)  # media tokens per row → which grids belong to it
        merge = 4
        counts = (batch[grid].prod(dim=1) // merge).tolist()
        owner, row, acc = [], 0, 0
        for c in counts:  # grids are in row order; assign each to the row whose token budget it fills
            while row < len(per_row) and acc >= int(per_row[row]):
                row, acc = row + 1, 0
            owner.append(row)
            acc += c
        sel = [i for i, r in enumerate(owner) if start <= r < end]
        if sel:
            patches = batch[grid].prod(dim=1).tolist()
            offsets = [0]
            for p in patches:
                offsets.append(offsets[-1] + p)
            out[pv] = torch.cat([batch[pv][offsets[i]:offsets[i + 1]] for i in sel])
            out[grid] = batch[grid][sel]
    return out


class TimeBudget(TrainerCallback):
    """A safety net, never a way to bound a run: once ``minutes`` of training time have passed, training stops with a
    checkpoint, and ``check`` then fails the step instead of letting it publish a model trained for fewer steps than
    configured (on a busy machine that model is silently worse). Rerunning the step resumes from that checkpoint."""

    def __init__(self, minutes: float):
        self.minutes = minutes
        self.seconds = minutes * 60
        self.start = None
        self.stopped_at: int | None = None  # the step the cap stopped training at, before max_steps

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds and time.perf_counter() - self.start >= self.seconds and state.global_step < state.max_steps:
            log.error("time cap of %g min reached at step %d of %d: stopping with a checkpoint; the step will fail",
                      self.minutes, state.global_step, state.max_steps)
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True
        return control

    def check(self, step: str, max_steps: int, ckpt_dir: Path) -> None:
        """Raise when the cap cut training short (after the Trainer returned, so the checkpoint exists)."""
        if self.stopped_at is None:
            return
        raise UserError(f"{step} stopped by its time cap ({step}.max_minutes={self.minutes:g}) at step "
                        f"{self.stopped_at} of {max_steps}, so no model was published (it would be trained less than "
                        f"configured). Rerun the same command to resume from "
                        f"{ckpt_dir / f'checkpoint-{self.stopped_at}'}, or raise {step}.max_minutes (0 = no cap).")


# ---------------------------------------------------------------------------------------- checkpoints and resume

CHECKPOINT_MARKER = "umeflow_checkpoint.json"

# Settings that do not change what a run computes, so a checkpoint stays resumable when they change: where outputs
# go, how often it logs and saves, the caps and guards that may stop it, and max_steps (a rerun with a larger one
# continues the same run). The model/data/embedder *paths* are left out because their contents are identified by
# hash instead (a moved folder is the same input; a retrained one at the same path is not).
RESUME_INDEPENDENT = frozenset({
    "out", "model", "data", "embedder", "resume", "tracking_uri", "max_steps", "max_minutes", "logging_steps",
    "save_steps", "save_total_limit", "dataloader_num_workers", "zero_std_patience", "format_check_steps",
    "min_format_rate", "max_fallback_rate"})


def run_identity(cfg, models: dict[str, str | Path], data: dict[str, str]) -> dict:
    """What a checkpoint belongs to: fingerprints of the input model(s), sha256 of the training data file(s) and the
    resolved config less ``RESUME_INDEPENDENT`` (JSON-normalised, so it compares equal after a round trip)."""
    import dataclasses

    from umeflow.evaluate.cache import model_fingerprint

    from umeflow.tracking import redact_values

    # redacted as run_info.json and config_hash are: a judge/vLLM URL may carry credentials, and the marker is on disk
    config = redact_values({k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_INDEPENDENT})
    return json.loads(json.dumps({"models": {k: model_fingerprint(v) for k, v in models.items()}, "data": data,
                                  "config": config}, sort_keys=True, default=str))


def identity_differences(saved: dict, current: dict) -> list[str]:
    """What differs between a checkpoint's identity and this run's, in words (empty when they match)."""
    out = []
    for kind, label in (("models", "model"), ("data", "training data")):
        a, b = saved.get(kind) or {}, current.get(kind) or {}
        out += [f"{label} '{k}' differs" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    a, b = saved.get("config") or {}, current.get("config") or {}
    out += [f"{k}: {a.get(k, '(unset)')!r} there, {b.get(k, '(unset)')!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    return out


class CheckpointIdentity(TrainerCallback):
    """Writes the run's identity into each checkpoint as the last file of its save. The marker says both which run
    the checkpoint belongs to and that the save finished: a checkpoint without it was cut short."""

    def __init__(self, identity: dict):
        self.identity = identity

    def on_save(self, args, state, control, **kwargs):
        from umeflow.io import write_json

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_json(folder / CHECKPOINT_MARKER, {"global_step": state.global_step, **self.identity})


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (its header must parse and cover exactly the bytes on disk)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except (SafetensorError, OSError) as e:
        return f"{path.name} is truncated or damaged ({e})"


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it is complete: the marker (written last), a readable
    trainer_state.json, model weights, every safetensors file whole, and every torch file (optimizer, scheduler,
    RNG, DeepSpeed shards: zip archives) with an intact central directory, which sits at the end of the file."""
    import zipfile

    marker = folder / CHECKPOINT_MARKER
    if not marker.is_file():
        return f"no {CHECKPOINT_MARKER} (its save was interrupted, or an older umeflow wrote it)"
    for name in (CHECKPOINT_MARKER, "trainer_state.json"):
        try:
            json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return f"{name} is missing or not valid JSON"
    weights = list(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            return f"{index.name} is not valid"
        if missing := sorted(s for s in shards if not (folder / s).is_file()):
            return f"weight shards missing: {', '.join(missing[:3])}"
    if not weights and not list(folder.glob("global_step*")) and not (folder / "pytorch_model.bin").is_file():
        return "no model weights"
    for path in weights:
        if problem := _safetensors_problem(path):
            return problem
    for path in sorted(p for ext in ("*.pt", "*.pth", "*.bin") for p in folder.rglob(ext)):
        try:
            with zipfile.ZipFile(path):
                pass
        except (OSError, zipfile.BadZipFile):
            return f"{path.relative_to(folder)} is truncated or not a torch checkpoint"
    return None


def _checkpoint_folders(ckpt_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def resume_checkpoint(ckpt_dir: Path, identity: dict, step: str, resume: bool = True) -> str | None:
    """The checkpoint to resume from: the newest complete one under ``ckpt_dir``, if it belongs to this run.

    Incomplete checkpoints (a kill during save, a truncated file) are skipped with a warning, falling back to the
    previous complete one. A complete checkpoint of another run (model, data or a setting that changes the result)
    is refused: resuming would publish that run's weights under this run's name. ``resume=False`` starts afresh and
    deletes ``ckpt_dir`` first, so no checkpoint of an earlier run is left among the new ones.
    """
    if not ckpt_dir.is_dir():
        return None
    if not resume:
        log.warning("%s.resume is false: deleting %s and training from step 0", step, ckpt_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    folders = _checkpoint_folders(ckpt_dir)
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem:
            log.warning("skipping incomplete checkpoint %s: %s", folder, problem)
            continue
        differs = identity_differences(json.loads((folder / CHECKPOINT_MARKER).read_text()), identity)
        if differs:
            more = f" (+{len(differs) - 4} more)" if len(differs) > 4 else ""
            raise UserError(f"{ckpt_dir.parent} holds checkpoints of another {step} run ({folder.name}: "
                            f"{'; '.join(differs[:4])}{more}); refusing to resume from them. Use another --out, or "
                            f"--set resume=false to delete {ckpt_dir} and train afresh.")
        return str(folder)
    if folders:
        log.warning("no complete checkpoint under %s: training starts from step 0", ckpt_dir)
    return None


def apply_freezing(model, cfg: SFTConfig) -> dict[str, int]:
    core = unwrap(model)
    inner = core.model
    groups = {"vision": [p for n, p in inner.visual.named_parameters() if not n.startswith("merger")],
              "merger": list(inner.visual.merger.parameters()),
              "llm": list(inner.language_model.parameters()) + list(core.lm_head.parameters())}
    settings = [("vision", cfg.freeze_vision), ("merger", cfg.freeze_merger), ("llm", cfg.freeze_llm)]
    if cfg.lora_r:  # the LLM is trained through its LoRA adapters only; PEFT already froze its base weights
        settings = settings[:2]
    for name, flag in settings:
        for p in groups[name]:
            p.requires_grad_(not flag)
    return {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters())}


def publish_final_model(trainer, processor, dest: Path, model=None) -> None:
    """The final checkpoint the Embedder and the registry load: safetensors weights, config, processor, written to
    a temp folder and renamed. ``model`` (e.g. merged LoRA weights) is saved instead of the trainer's when given.
    The Trainer's pickled ``training_args.bin`` is left out: the resolved config is in ``run_info.json``, and a
    published checkpoint carries no pickle."""
    from umeflow.io import atomic_path

    with atomic_path(dest) as tmp:
        if model is not None:
            model.save_pretrained(tmp)
        else:
            trainer.save_model(str(tmp))  # gathers ZeRO-3 shards when DeepSpeed is on
        (tmp / "training_args.bin").unlink(missing_ok=True)
        processor.save_pretrained(tmp)
        if not list(tmp.glob("*.safetensors")):
            raise AssertionError("the final checkpoint has no safetensors weights")


def training_arguments(cfg: SFTConfig, output_dir: Path) -> TrainingArguments:
    report = ["mlflow"] if use_tracking(cfg.tracking_uri) else []
    kwargs = dict(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2, max_grad_norm=cfg.max_grad_norm, max_steps=cfg.max_steps, seed=cfg.seed,
        data_seed=cfg.seed, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, save_strategy="steps", report_to=report,
        remove_unused_columns=False, dataloader_num_workers=cfg.dataloader_num_workers, bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed or None,
        use_cpu=not torch.cuda.is_available(), dataloader_drop_last=True, ddp_find_unused_parameters=False,
    )
    return TrainingArguments(**kwargs)


def media_root_of(data_dir: Path) -> Path:
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{manifest} is missing; point --data at an `umeflow annotate` output")
    root = Path(json.loads(manifest.read_text()).get("media_root", ""))
    return root if root.is_absolute() else (data_dir / root).resolve() if not root.exists() else root
