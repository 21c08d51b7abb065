"""``umeflow grpo``: the RL stage (UME-R1 GRPO, or Embed-RL's embedder-guided RL) on TRL; resumable.

Outputs under ``--out``: ``checkpoints/checkpoint-N`` (resume), ``model/`` (final safetensors checkpoint + processor,
written atomically; the Embedder loads it), ``metrics.json`` (reward trend, format rate, steps, time),
``log_history.json`` and ``run_info.json``.

Resume follows the SFT step's rules (newest complete checkpoint of the same run; another run's is refused). A run
stopped by a guard (zero reward variance, a policy that never writes the format) or by ``max_minutes`` fails
without publishing a model.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from umeflow.config import GRPOConfig
from umeflow.errors import UserError
from umeflow.io import write_json, write_run_info
from umeflow.tracking import use_tracking

log = logging.getLogger(__name__)

# The Embed-RL policy's instruction (Traceability-CoT, method.md §2.2), written for umeflow in the paper's structure:
# role, rules, the mandatory evidence cue for the input kind, one example, the task slot.
TCOT_INSTRUCTION = (
    "You are a reasoning assistant that prepares inputs for a retrieval embedder.\n"
    "Rules: 1) think in one or two short, evidence-grounded sentences; 2) inside <thinking> include one JSON "
    "object with the evidence cue: {cue_hint}; 3) re-check your reasoning in <rethink>; 4) restate the content "
    "in <answer> without changing its meaning.\n"
    "Format: <thinking>…{{JSON}}…</thinking><rethink>…</rethink><answer>…</answer>\n"
    "Example: <thinking>A red apple fills the picture. {example}</thinking><rethink>The object is round and red, "
    "an apple.</rethink><answer>a red apple</answer>\n"
    "{slot}: {text}"
)
_CUES = {
    "image": ('{"bbox_2d": [x1, y1, x2, y2]} with coordinates on a 0-1000 grid', '{"bbox_2d": [120, 80, 880, 920]}'),
    "text": ('{"text_keywords": ["…", "…"]} with the key concepts', '{"text_keywords": ["red", "apple"]}'),
}


def tcot_prompt(side, is_query: bool, pair) -> str:
    kind = "image" if side.image is not None else "text"
    hint, example = _CUES[kind]
    slot = "TASK/QUESTION" if is_query else ("POSITIVE IMAGE" if kind == "image" else "POSITIVE TEXT OUTPUT")
    return TCOT_INSTRUCTION.format(cue_hint=hint, example=example, slot=slot, text=side.text or "(see the image)")


def trl_arguments(cfg: GRPOConfig, output_dir: Path, world_size: int, report_to: list[str]):
    from trl import GRPOConfig as TRLGRPOConfig

    rollouts = 2 * cfg.pairs_per_step * cfg.num_generations
    per_step = cfg.per_device_batch_size * world_size
    if cfg.pairs_per_step < 2:
        raise UserError("grpo.pairs_per_step must be ≥ 2: a rollout's negatives are the other pairs' rollouts")
    if rollouts % per_step:
        raise UserError(f"2 × pairs_per_step × num_generations = {rollouts} rollouts per generation batch must be a "
                        f"multiple of per_device_batch_size × processes = {per_step}")
    return TRLGRPOConfig(
        output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size, gradient_accumulation_steps=rollouts // per_step,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        beta=cfg.beta, epsilon=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, num_iterations=1,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, mask_truncated_completions=False,
        shuffle_dataset=False,  # rows are (query, target) interleaved; both sides of a pair share a batch
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        save_strategy="steps", report_to=report_to, remove_unused_columns=False, bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed or None,
        **vllm_arguments(cfg), use_cpu=not torch.cuda.is_available(), disable_tqdm=False, log_completions=False,
    )


def vllm_arguments(cfg: GRPOConfig) -> dict:
    """TRL's vLLM settings (trl/trainer/grpo_config.py:587-680 @1.16.0). Colocate: an engine in every trainer process
    with ``vllm_gpu_memory_utilization`` of its GPU. Server: only rank 0 talks to the server
    (trl/generation/vllm_generation.py:300-309), at ``vllm_server_base_url`` when set, else host:port; the server's
    own GPU share and tensor-parallel size are its command line's (umeflow.pipeline.rollout_server)."""
    if not cfg.use_vllm:
        return {"use_vllm": False}
    if cfg.vllm_mode == "colocate":
        return {"use_vllm": True, "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization}
    server = ({"vllm_server_base_url": cfg.vllm_server_base_url} if cfg.vllm_server_base_url else
              {"vllm_server_host": cfg.vllm_server_host, "vllm_server_port": cfg.vllm_server_port})
    return {"use_vllm": True, "vllm_mode": "server", "vllm_server_timeout": cfg.vllm_server_timeout, **server}


def _rewards(cfg: GRPOConfig, rollouts):
    from umeflow.train.grpo import EmbedRLRewards, UmeEmbeddingReward, UmeFormatReward

    if cfg.recipe == "ume_r1":
        return [UmeFormatReward(), UmeEmbeddingReward(rollouts)], [cfg.weight_format, cfg.weight_embedding]
    if cfg.recipe != "embed_rl":
        raise UserError(f"grpo.recipe must be 'ume_r1' or 'embed_rl', got {cfg.recipe!r}")
    if not cfg.embedder:
        raise UserError("the embed_rl recipe needs grpo.embedder: a frozen umeflow checkpoint (e.g. state/sft/model)")
    from umeflow.model.embedder import Embedder

    judge = None
    if cfg.judge_base_url:
        from umeflow.annotate.openai_compat import OpenAIAnnotator

        judge = OpenAIAnnotator(cfg.judge_base_url, cfg.judge_model, Path(cfg.out) / "judge-cache",
                                api_key_env=cfg.judge_api_key_env, max_tokens=10)
    embedder = Embedder(cfg.embedder)
    embedder.model.eval().requires_grad_(False)
    parts = EmbedRLRewards(embedder, rollouts, tau=cfg.negative_tau, acc_mode=cfg.acc_mode,
                           weighted_negatives=cfg.weighted_negatives, require_cue=cfg.require_cue, judge=judge,
                           judge_model=cfg.judge_model, judge_candidates=cfg.judge_candidates, seed=cfg.seed)
    weights = [cfg.weight_tcot_format, cfg.weight_outcome, cfg.weight_process if judge is not None else 0.0]
    return parts.funcs(), weights


def _trend(history: list[dict], key: str) -> dict:
    values = [h[key] for h in history if key in h]
    if not values:
        return {}
    q = max(1, len(values) // 4)
    first, last = sum(values[:q]) / q, sum(values[-q:]) / q
    return {f"{key}.first_quarter": first, f"{key}.last_quarter": last, f"{key}.change": last - first}


def run(cfg: GRPOConfig, callbacks: list | None = None) -> dict:
    """Train; with MLflow tracking on, the step is one run (a child of the pipeline run, with lineage tags) that
    TRL's MLflowCallback logs each reward part into."""
    from umeflow.io import ensure_writable_dir
    from umeflow.registry.runs import step_run

    ensure_writable_dir(cfg.out)  # fail before loading and training, not at publish

    with step_run("grpo", cfg, tracking_uri=cfg.tracking_uri):
        return _train(cfg, callbacks)


def _train(cfg: GRPOConfig, callbacks: list | None) -> dict:
    from umeflow.model.backbone import load_backbone
    from umeflow.io import sha256_file
    from umeflow.train.grpo import FormatGuard, RolloutStates, UmeGRPOTrainer, ZeroStdGuard
    from umeflow.model.items import TextBudget
    from umeflow.train.grpo_data import load_rl_pairs, prompt_dataset, select_pairs, single_dataset_blocks
    from umeflow.train.sft import (CheckpointIdentity, TimeBudget, publish_final_model, resume_checkpoint,
                                   run_identity)

    if cfg.recipe not in ("ume_r1", "embed_rl"):
        raise UserError(f"grpo.recipe must be 'ume_r1' or 'embed_rl', got {cfg.recipe!r}")
    torch.manual_seed(cfg.seed)
    pairs, data_info = load_rl_pairs(cfg.data, cfg.on_bad_record, TextBudget(cfg.max_input_tokens, cfg.model))
    datasets = [d.strip() for d in cfg.datasets.split(",") if d.strip()]
    pairs = select_pairs(pairs, cfg.max_pairs, cfg.seed, datasets)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    selected = len(pairs)
    if cfg.single_dataset_steps:
        pairs = single_dataset_blocks(pairs, cfg.pairs_per_step, cfg.seed)
    # whole generation batches only, so no batch ever holds one side of a pair
    pairs = pairs[: len(pairs) - len(pairs) % cfg.pairs_per_step]
    if not pairs:
        raise UserError(f"no full step of {cfg.pairs_per_step} pairs could be formed from {selected} pairs "
                        f"(single_dataset_steps needs that many distinct targets in one dataset)")
    log.info("%d of %d selected pairs used (whole steps%s)", len(pairs), selected,
             ", one dataset per step" if cfg.single_dataset_steps else "")
    dataset = prompt_dataset(pairs, None if cfg.recipe == "ume_r1" else tcot_prompt)
    out = Path(cfg.out)
    data_file = Path(data_info["source"])
    identity = run_identity(cfg, {"model": cfg.model, **({"embedder": cfg.embedder} if cfg.embedder else {})},
                            {data_file.name: sha256_file(data_file)})
    resume = resume_checkpoint(out / "checkpoints", identity, "grpo", cfg.resume)  # before loading anything big

    backbone = load_backbone(cfg.model)
    processor = backbone.processor
    if cfg.max_pixels:  # hardware presets cap rollout image sizes (UME-R1: 2,359,296)
        size = processor.image_processor.size
        if isinstance(size, dict):
            size["longest_edge"] = cfg.max_pixels
        else:
            size.longest_edge = cfg.max_pixels
    rollouts = RolloutStates()
    reward_funcs, weights = _rewards(cfg, rollouts)
    report = ["mlflow"] if use_tracking(cfg.tracking_uri) else []
    args = trl_arguments(cfg, out / "checkpoints", world, report)
    args.reward_weights = weights
    guards = [ZeroStdGuard(cfg.zero_std_patience),
              FormatGuard(cfg.format_check_steps, cfg.min_format_rate, cfg.max_fallback_rate,
                          "rewards/format/mean" if cfg.recipe == "ume_r1" else "rewards/tcot_format/mean")]
    budget = TimeBudget(cfg.max_minutes) if cfg.max_minutes else None
    trainer = UmeGRPOTrainer(
        model=backbone.model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
        processing_class=processor, gen_emb_id=backbone.gen_emb_id, rollouts=rollouts,
        embedding_source=cfg.embedding_source,
        callbacks=guards + [CheckpointIdentity(identity)] + ([budget] if budget else []) + list(callbacks or []))
    if resume:
        log.info("resuming from %s", resume)
    log.info("GRPO (%s) on %d pairs: %d rollouts per step (%d pairs × 2 sides × G=%d)", cfg.recipe, len(pairs),
             2 * cfg.pairs_per_step * cfg.num_generations, cfg.pairs_per_step, cfg.num_generations)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    history = trainer.state.log_history
    write_json(out / "log_history.json", history)
    for guard in guards:
        if guard.message:
            raise UserError(f"grpo {guard.message} Checkpoints are under {out / 'checkpoints'}; no final model was "
                            f"published.")
    if budget:
        budget.check("grpo", cfg.max_steps, out / "checkpoints")

    publish_final_model(trainer, processor, out / "model")
    reward_keys = (["rewards/format/mean", "rewards/embedding/mean", "embedding/rank_mean", "embedding/gap_mean"]
                   if cfg.recipe == "ume_r1" else
                   ["rewards/tcot_format/mean", "rewards/outcome/mean", "rewards/process/mean"])
    metrics = {"global_step": int(trainer.state.global_step), "train_seconds": seconds, "pairs": len(pairs), "pairs_selected": selected,
               "recipe": cfg.recipe, "rollouts_per_step": 2 * cfg.pairs_per_step * cfg.num_generations,
               "resumed_from_step": int(resume.rsplit("-", 1)[-1]) if resume else 0,
               "bad_records_skipped": data_info["bad_records_skipped"]}
    for key in reward_keys + ["reward", "frac_reward_zero_std", "embedding/fallback_rate"]:
        metrics |= _trend(history, key)
    write_json(out / "metrics.json", metrics)
    write_run_info(out, cfg, inputs={"data": data_info["source"], "model": cfg.model})
    log.info("GRPO done: %d steps in %.0fs, final model at %s", metrics["global_step"], seconds, out / "model")
    return metrics
