"""``umeflow sft``: cold-start SFT from an annotate output; resumable; writes a checkpoint the Embedder loads.

Outputs under ``--out``: ``checkpoints/checkpoint-N`` (Trainer state for resume), ``model/`` (final safetensors
checkpoint + processor, written atomically), ``metrics.json`` (final loss parts, steps, samples/s, time) and
``run_info.json``.

Rerunning with the same ``--out`` resumes from the newest complete checkpoint, and only when it belongs to the same
run (model fingerprint, sft.jsonl hash, and every setting that changes the result; ``max_steps`` may grow). A
checkpoint of another run is refused by name; ``--set resume=false`` deletes the checkpoints and starts afresh.
A run stopped by ``max_minutes`` (a safety net; the recipes are bound by ``max_steps``) fails without publishing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from umeflow.config import SFTConfig
from umeflow.errors import UserError
from umeflow.io import sha256_file, write_json, write_run_info

log = logging.getLogger(__name__)


def _lora(model, cfg: SFTConfig):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # only the language model's projections: the vision tower keeps its own (frozen or fully trained) weights
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=r".*language_model.*\.(" + "|".join(targets) + ")")
    return get_peft_model(model, lora)


def run(cfg: SFTConfig, callbacks: list | None = None) -> dict:
    """Train; ``callbacks`` are extra ``transformers.TrainerCallback``s (e.g. a pipeline's own reporting).

    With MLflow tracking on, the whole step is one run (a child of the pipeline run, lineage tags) that the
    Trainer's MLflowCallback logs its losses into."""
    from umeflow.io import ensure_writable_dir
    from umeflow.registry.runs import step_run

    ensure_writable_dir(cfg.out)  # fail before loading and training, not at the first checkpoint

    with step_run("sft", cfg, tracking_uri=cfg.tracking_uri):
        return _train(cfg, callbacks)


def _train(cfg: SFTConfig, callbacks: list | None) -> dict:
    from umeflow.model.backbone import load_backbone
    from umeflow.train.sft import (CheckpointIdentity, TimeBudget, UmeSFTTrainer, apply_freezing, media_root_of,
                                   publish_final_model, resume_checkpoint, run_identity, training_arguments, unwrap)
    from umeflow.model.vision import VisionSizing
    from umeflow.model.items import TextBudget
    from umeflow.train.sft_data import SFTCollator, SFTDataset, load_sft_pairs, repeat_datasets

    sizing = VisionSizing.from_settings(cfg)  # SFT pixel limits (UME-R1: 768 … 2,359,296; frames 3,136 … 25,088)
    torch.manual_seed(cfg.seed)
    data_dir = Path(cfg.data)
    sft_file = data_dir / "sft.jsonl"
    if not sft_file.is_file():
        raise UserError(f"{sft_file} does not exist; run `umeflow annotate` first or point --data at its output")
    # the budget loads the checkpoint's tokenizer only if a text is long enough to need counting
    pairs, counter = load_sft_pairs(sft_file, media_root_of(data_dir), cfg.on_bad_record,
                                    TextBudget(cfg.max_input_tokens, cfg.model))
    if cfg.dataset_repeats:
        before = len(pairs)
        pairs = repeat_datasets(pairs, cfg.dataset_repeats)
        log.info("dataset_repeats %s: %d pairs an epoch (from %d)", cfg.dataset_repeats, len(pairs), before)
    if len(pairs) < cfg.per_device_batch_size:
        raise UserError(f"{sft_file} has {len(pairs)} usable pairs, fewer than one batch "
                        f"({cfg.per_device_batch_size})")
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    data_hash = sha256_file(sft_file)
    identity = run_identity(cfg, {"model": cfg.model}, {"sft.jsonl": data_hash})
    resume = resume_checkpoint(ckpt_dir, identity, "sft", cfg.resume)  # before loading: a refusal costs nothing
    backbone = load_backbone(cfg.model)
    model = backbone.model
    model.train()
    if cfg.lora_r:
        model = _lora(model, cfg)
    sizes = apply_freezing(model, cfg)
    log.info("SFT on %d pairs; %d of %d parameters trainable", len(pairs), sizes["trainable_parameters"],
             sizes["total_parameters"])
    budget = TimeBudget(cfg.max_minutes) if cfg.max_minutes else None
    trainer = UmeSFTTrainer(
        model=model, args=training_arguments(cfg, ckpt_dir), train_dataset=SFTDataset(pairs),
        data_collator=SFTCollator(backbone.processor, backbone.family.name, sizing), sft_cfg=cfg,
        gen_id=backbone.gen_emb_id, disc_id=backbone.disc_emb_id,
        callbacks=[CheckpointIdentity(identity)] + ([budget] if budget else []) + list(callbacks or []))
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    if budget:
        budget.check("sft", cfg.max_steps, ckpt_dir)

    merged = None
    if cfg.lora_r:
        merged = trainer.model
        merged = unwrap(merged) if not hasattr(merged, "merge_and_unload") else merged.merge_and_unload()
    publish_final_model(trainer, backbone.processor, out / "model", model=merged)
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    metrics = {"train_loss": float(result.training_loss), "global_step": int(trainer.state.global_step),
               "train_seconds": seconds, "pairs": len(pairs),
               "samples_per_second": trainer.state.global_step * cfg.per_device_batch_size
               * cfg.gradient_accumulation_steps / max(seconds, 1e-9),
               "resumed_from_step": int(resume.rsplit("-", 1)[-1]) if resume else 0, **counter.summary(),
               **{k: v for k, v in last.items() if k.startswith("loss_")}, **sizes}
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    write_json(out / "metrics.json", metrics)
    write_json(out / "log_history.json", trainer.state.log_history)
    write_run_info(out, cfg, inputs={"sft.jsonl": data_hash})
    log.info("SFT done: %d steps in %.0fs, final model at %s", metrics["global_step"], seconds, out / "model")
    return metrics
