"""GRPO on TRL (method.md §1.6, §2.5, §4.7): the trainer subclass, the reward callables and the recipes' glue.

TRL's ``GRPOTrainer`` does sampling, group advantages, the clipped policy loss, KL, DeepSpeed and vLLM. umeflow adds
only what the reward needs:

* ``UmeGRPOTrainer._generate_single_turn`` wraps TRL's own generation and, while it runs, a forward hook on the
  language model keeps the last-layer state of each fed token (B × D per step). The state of a ``<gen_emb>``
  generated at completion position j is the one computed at step j+1 (method.md §4.1) — so the reward's embeddings
  come from the rollout itself, with no second forward pass over prompt + completion. With vLLM (no hook into its
  engine) or ``embedding_source: forward`` the states come from one teacher-forced forward instead; the benchmark
  ``benchmarks/grpo_step.py`` times both, and a test shows they agree. A rollout that ends on ``<gen_emb>`` exactly
  at ``max_completion_length`` never fed that token; a step with such rows reads them from the forward pass too
  (``unfed_gen_emb_rows``), as UME-R1 reads every row teacher-forced.
* Reward callables with TRL's reward-function signature. They read the states of the current generation batch,
  gather them (and the pair/side tags) across processes, score every rollout against the other side's rollouts and
  return the local rows. TRL weights, sums, group-normalises and logs each part (``rewards/<name>/mean``).

Which state a rollout without ``<gen_emb>`` gets: the state of the last token it fed (what UME-R1's evaluation reads),
never the prompt's ``<gen_emb>`` (method.md §4.2); such rollouts get format reward 0 and are counted in
``embedding/fallback_rate``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import GRPOTrainer

from umeflow.model.backbone import language_model
from umeflow.model.embedder import LastStateRecorder, gen_emb_position
from umeflow.train.rewards import (SideScores, embed_rl_outcome_scores, judge_candidates, judge_prompt,
                                   parse_judge_choice, rank_gap_scores, tcot_format_reward, ume_format_reward)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ rollout embeddings

@dataclass
class RolloutStates:
    """The current generation batch's per-rollout embeddings (local rows, in TRL's completion order)."""

    states: torch.Tensor | None = None  # (B, D) L2-normalised float32
    fallback: torch.Tensor | None = None  # (B,) True where the rollout emitted no usable <gen_emb>
    source: str = ""
    gather: object = None  # set by the trainer: accelerator.gather (identity on one process)
    process_index: int = 0
    seconds: float = 0.0

    def set(self, states: torch.Tensor, fallback: torch.Tensor, source: str) -> None:
        self.states = F.normalize(states.float(), dim=-1)
        self.fallback = fallback
        self.source = source


def unfed_gen_emb_rows(num_steps: int, completion_ids: list[list[int]], gen_id: int) -> list[int]:
    """Rows whose last ``<gen_emb>`` is the final token of the longest rollout (the budget ran out right after it):
    generation never fed it, so its state was not recorded. UME-R1 reads the reward embedding teacher-forced, over
    prompt + completion, where that state exists (grpo_trainer.py:575-605), so these rows take the forward path."""
    return [b for b, ids in enumerate(completion_ids)
            if gen_emb_position(ids, gen_id)[0] >= num_steps]


def states_from_steps(steps: list[torch.Tensor], completion_ids: list[list[int]], gen_id: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each rollout's embedding state out of the per-step states recorded during generation."""
    stacked = torch.stack(steps, dim=1)  # (B, S, D)
    rows, fallback = [], []
    for b, ids in enumerate(completion_ids):
        pos, fb = gen_emb_position(ids, gen_id)
        if pos >= stacked.shape[1]:  # <gen_emb> was the very last token of the batch: never fed
            pos, fb = stacked.shape[1] - 1, True
        rows.append(stacked[b, pos])
        fallback.append(fb)
    return torch.stack(rows), torch.tensor(fallback)


@torch.no_grad()
def teacher_forced_states(model, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                          multimodal_fields: dict, gen_id: int, pad_id: int, image_pad_id: int | None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference path: one forward over prompt + completion, read at the same positions as the capture."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(s)
        mask[b, width - len(s):] = 1
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        value = multimodal_fields.get(k)
        if value is not None:  # the processor may hand back numpy arrays
            value = torch.as_tensor(value).to(device)
            batch[k] = value.to(dtype) if value.is_floating_point() else value
    if image_pad_id is not None:
        batch["mm_token_type_ids"] = (batch["input_ids"] == image_pad_id).long()
    states = getattr(model, "model", model)(**batch, use_cache=False).last_hidden_state
    rows, fallback = [], []
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        pos, fb = gen_emb_position(c, gen_id)
        # fed position k ↔ sequence index (len(p) − 1 + k), shifted by the row's left padding
        rows.append(states[b, width - len(seqs[b]) + len(p) - 1 + pos])
        fallback.append(fb)
    return torch.stack(rows), torch.tensor(fallback)


class UmeGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer plus in-generation embedding capture for the reward (nothing else is changed)."""

    def __init__(self, *args, gen_emb_id: int, rollouts: RolloutStates, embedding_source: str = "generation",
                 **kwargs):
        if embedding_source not in ("generation", "forward"):
            raise ValueError(f"embedding_source must be 'generation' or 'forward', got {embedding_source!r}")
        self.gen_emb_id, self.rollouts, self.embedding_source = gen_emb_id, rollouts, embedding_source
        super().__init__(*args, **kwargs)
        self.rollouts.gather = self.accelerator.gather
        self.rollouts.process_index = self.accelerator.process_index

    def _capture_in_generation(self) -> bool:
        return (self.embedding_source == "generation" and not self.use_vllm
                and not getattr(self, "use_transformers_continuous_batching", False))

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        module = self.accelerator.unwrap_model(self.model)
        recorder, handle = None, None
        if self._capture_in_generation():
            recorder = LastStateRecorder()
            handle = language_model(module).register_forward_hook(recorder)
        try:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        finally:
            if handle is not None:
                handle.remove()
        t0 = time.perf_counter()
        if recorder is not None:
            states, fallback = states_from_steps(recorder.steps, completion_ids, self.gen_emb_id)
            source = "generation"
            unfed = unfed_gen_emb_rows(len(recorder.steps), completion_ids, self.gen_emb_id)
            if unfed:  # rare: a rollout ended on <gen_emb> at max_completion_length; read it as UME-R1 does
                forward, forward_fallback = teacher_forced_states(
                    module, prompt_ids, completion_ids, multimodal_fields, self.gen_emb_id,
                    self._tokenizer.pad_token_id, self._image_pad_token_id)
                states[unfed] = forward[unfed].to(states.dtype)
                fallback[unfed] = forward_fallback[unfed]
                source = "generation+forward"
        else:
            states, fallback = teacher_forced_states(
                module, prompt_ids, completion_ids, multimodal_fields, self.gen_emb_id,
                self._tokenizer.pad_token_id, self._image_pad_token_id)
            source = "forward"
        self.rollouts.seconds = time.perf_counter() - t0
        self.rollouts.set(states, fallback, source)
        return completion_ids, logprobs


# ------------------------------------------------------------------------------------------------ rewards

def completion_texts(completions: list) -> list[str]:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": text}]``."""
    return [c[0]["content"] if isinstance(c, list) else c for c in completions]


def _global(store: RolloutStates, local: torch.Tensor) -> torch.Tensor:
    return store.gather(local) if store.gather is not None else local


def _split_sides(pair_index: list[int], side: list[str], store: RolloutStates, embeddings: torch.Tensor):
    """Gather embeddings + tags from every process; return (global tensors, query rows, target rows, local slice)."""
    device = embeddings.device
    pairs = _global(store, torch.tensor(pair_index, device=device))
    is_query = _global(store, torch.tensor([s == "query" for s in side], device=device))
    emb = _global(store, embeddings)
    q_rows, t_rows = is_query.nonzero().flatten(), (~is_query).nonzero().flatten()
    start = store.process_index * len(pair_index)
    return emb, pairs, q_rows, t_rows, slice(start, start + len(pair_index))


def _scatter(n: int, q_rows, t_rows, q_vals: torch.Tensor, t_vals: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float32, device=q_vals.device)
    out[q_rows] = q_vals.float()
    out[t_rows] = t_vals.float()
    return out


class UmeFormatReward:
    """UME-R1's format reward (1 if ``<think>…</think>…<answer>…<gen_emb>``)."""

    __name__ = "format"

    def __call__(self, completions, log_metric=None, **kwargs) -> list[float]:
        return ume_format_reward(completion_texts(completions))


class UmeEmbeddingReward:
    """UME-R1's embedding reward: (positives among the top-G / G) × (mean positive − mean negative similarity)."""

    __name__ = "embedding"

    def __init__(self, store: RolloutStates):
        self.store = store

    def __call__(self, completions, pair_index, side, log_metric=None, **kwargs) -> list[float]:
        if self.store.states is None or len(self.store.states) != len(completions):
            raise RuntimeError("no rollout embeddings for this batch: UmeEmbeddingReward must run inside "
                               "UmeGRPOTrainer, which records them during generation")
        emb, pairs, q_rows, t_rows, local = _split_sides(pair_index, side, self.store, self.store.states)
        q = rank_gap_scores(emb[q_rows], emb[t_rows], pairs[q_rows], pairs[t_rows])
        t = rank_gap_scores(emb[t_rows], emb[q_rows], pairs[t_rows], pairs[q_rows])
        reward = _scatter(len(emb), q_rows, t_rows, q.reward, t.reward)
        if log_metric is not None:
            fallback = _global(self.store, self.store.fallback.to(emb.device)).float()
            _log_scores(log_metric, "embedding", q, t)
            log_metric("embedding/fallback_rate", fallback.mean().item())
            log_metric("embedding/capture_seconds", self.store.seconds)
        return reward[local].tolist()


def _log_scores(log_metric, name: str, q: SideScores, t: SideScores) -> None:
    log_metric(f"{name}/rank_mean", torch.cat([q.rank, t.rank]).mean().item())
    log_metric(f"{name}/gap_mean", torch.cat([q.gap, t.gap]).mean().item())
    log_metric(f"{name}/query_reward_mean", q.reward.mean().item())
    log_metric(f"{name}/target_reward_mean", t.reward.mean().item())


# --------------------------------------------------------------------------------------------- Embed-RL

def bbox_crops(image, cue: dict | None, min_side: int = 10, max_aspect: float = 50.0) -> list:
    """Crops of ``image`` for the cue's ``bbox_2d`` (one box or a list; Qwen3-VL's 0–1000 grid, method.md §4.13)."""
    if image is None or not cue or "bbox_2d" not in cue:
        return []
    boxes = cue["bbox_2d"]
    if boxes and not isinstance(boxes[0], (list, tuple)):
        boxes = [boxes]
    w, h = image.size
    crops = []
    for box in boxes:
        try:
            x1, y1, x2, y2 = (float(v) for v in box[:4])
        except (TypeError, ValueError):
            continue
        x1, x2 = sorted((max(0, min(w, x1 * w / 1000)), max(0, min(w, x2 * w / 1000))))
        y1, y2 = sorted((max(0, min(h, y1 * h / 1000)), max(0, min(h, y2 * h / 1000))))
        cw, ch = x2 - x1, y2 - y1
        if cw < min_side or ch < min_side or max(cw / ch, ch / cw) > max_aspect:
            continue
        crops.append(image.crop((int(x1), int(y1), int(x2), int(y2))))
    return crops


def evidence_item(side_text: str, image, tcot: str):
    """What the frozen Embedder reads for one rollout: the side's input + its T-CoT (+ crops of the boxes it cites)."""
    from umeflow.model.items import Item
    from umeflow.train.rewards import TCOT_FORMAT, first_json_object

    m = TCOT_FORMAT.search(tcot)
    cue = first_json_object(m.group(1)) if m else None
    images = ([image] if image is not None else []) + bbox_crops(image, cue)
    return Item(text=f"{side_text}\n{tcot}".strip(), images=tuple(images))


@dataclass
class EmbedRLRewards:
    """Embed-RL's three reward parts, computed once per generation batch and exposed as TRL reward callables."""

    embedder: object  # umeflow Embedder (frozen)
    store: RolloutStates
    tau: float = 0.5
    acc_mode: str = "all"
    weighted_negatives: bool = True
    require_cue: bool = True
    judge: object = None  # an OpenAIAnnotator used through .post(); None = no process reward
    judge_model: str = ""
    judge_candidates: int = 4
    seed: int = 0
    _cache: dict = field(default_factory=dict)

    def funcs(self) -> list:
        parts = [("tcot_format", "format"), ("outcome", "outcome"), ("process", "process")]
        out = []
        for name, key in parts:
            def f(completions, _key=key, **kwargs):
                return self._parts(completions, **kwargs)[_key]
            f.__name__ = name
            out.append(f)
        return out

    def _parts(self, completions, pair_index, side, side_text, images, log_metric=None, **kwargs) -> dict:
        key = (id(completions), len(completions))
        if key in self._cache:
            return self._cache[key]
        texts = completion_texts(completions)
        kinds = ["image" if s_img else "text" for s_img in kwargs.get("side_image", [""] * len(texts))]
        items = [evidence_item(st, (imgs[0] if kinds[i] == "image" else None), tx)
                 for i, (st, imgs, tx) in enumerate(zip(side_text, images, texts, strict=True))]
        enc = self.embedder.encode(items, mode="disc", batch_size=16, progress=False)
        local_emb = torch.from_numpy(enc.embeddings)
        emb, pairs, q_rows, t_rows, local = _split_sides(pair_index, side, self.store, local_emb)
        q = embed_rl_outcome_scores(emb[q_rows], emb[t_rows], pairs[q_rows], pairs[t_rows], self.tau,
                                    self.acc_mode, self.weighted_negatives)
        t = embed_rl_outcome_scores(emb[t_rows], emb[q_rows], pairs[t_rows], pairs[q_rows], self.tau,
                                    self.acc_mode, self.weighted_negatives)
        outcome = _scatter(len(emb), q_rows, t_rows, q.reward, t.reward)[local].tolist()
        fmt = tcot_format_reward(texts, kinds, self.require_cue)
        process = self._process(texts, side_text, side, emb, pairs, q_rows, t_rows, local)
        if log_metric is not None:
            _log_scores(log_metric, "outcome", q, t)
        # one batch at a time: drop older entries so the cache cannot grow
        self._cache = {key: {"format": fmt, "outcome": outcome, "process": process}}
        return self._cache[key]

    def _process(self, texts, side_text, side, emb, pairs, q_rows, t_rows, local) -> list[float]:
        n_local = len(texts)
        if self.judge is None:
            return [0.0] * n_local
        # The judge sees reasoning texts; texts of other processes' rollouts are not gathered, so candidates come
        # from this process's rollouts only (a documented simplification for multi-GPU runs).
        sims = emb[local] @ emb[local].T
        loc_pairs = pairs[local]
        gen = torch.Generator().manual_seed(self.seed)
        out = []
        for i in range(n_local):
            other_side = [j for j in range(n_local) if side[j] != side[i]]
            if len({int(loc_pairs[j]) for j in other_side}) < 2:
                out.append(0.0)
                continue
            cand_pairs = loc_pairs[other_side]
            order, positives = judge_candidates(sims[i, other_side], int(loc_pairs[i]), cand_pairs,
                                                self.judge_candidates, gen)
            prompt = judge_prompt(side_text[i], texts[i], [texts[other_side[j]] for j in order], side[i] == "query")
            body = {"model": self.judge_model,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                    "max_tokens": 10, "temperature": 0.0}
            choice = parse_judge_choice(self.judge.post(body, f"process reward for rollout {i}"), len(order))
            out.append(1.0 if choice is not None and order[choice] in positives else 0.0)
        return out


# ------------------------------------------------------------------------------------------------ callbacks

class ZeroStdGuard(TrainerCallback):
    """Stops training when every group had zero reward variance for ``patience`` consecutive logged steps.

    With zero variance every advantage is 0: the policy gets no learning signal, and the run only burns compute.
    """

    def __init__(self, patience: int):
        self.patience, self.streak, self.message = patience, 0, ""

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("frac_reward_zero_std")
        if value is None or not self.patience:
            return
        self.streak = self.streak + 1 if value >= 1.0 - 1e-9 else 0
        if self.streak >= self.patience:
            self.message = (
                f"stopped at step {state.global_step}: every group of rollouts had identical rewards for "
                f"{self.streak} logged steps in a row (frac_reward_zero_std = 1), so all advantages are 0 and the "
                f"policy cannot learn. Check the format rate (rewards/format/mean), raise grpo.temperature or "
                f"grpo.num_generations, or start from a better SFT checkpoint.")
            log.error(self.message)
            control.should_training_stop = True


class FormatGuard(TrainerCallback):
    """Stops training when the policy does not write what the reward reads (UME-R1: ``…<answer>…<gen_emb>``).

    From step ``steps`` on, at every log, the mean over the last ``steps`` steps of the format reward
    (``format_key``) must reach ``min_format_rate`` and the share of rollouts without a usable ``<gen_emb>``
    (``embedding/fallback_rate``, logged by the ume_r1 reward) must stay at or below ``max_fallback_rate``.
    Otherwise the embedding reward scores fallback states, not the policy's embeddings, and a run trains on noise
    while looking healthy: the case of a GRPO run after an SFT cut short at step 71 of 560 (format 0, 72% fallback).
    """

    FALLBACK = "embedding/fallback_rate"

    def __init__(self, steps: int, min_format_rate: float, max_fallback_rate: float, format_key: str):
        self.steps, self.min_format, self.max_fallback = steps, min_format_rate, max_fallback_rate
        self.format_key = format_key
        self.seen: dict[str, list[tuple[int, float]]] = {format_key: [], self.FALLBACK: []}
        self.first_step: int | None = None  # the first step logged by this process (a resumed run starts later)
        self.message = ""

    def _recent_mean(self, key: str, step: int) -> float | None:
        values = [v for s, v in self.seen[key] if s > step - self.steps]
        return sum(values) / len(values) if values else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.steps or not logs:
            return
        step = state.global_step
        for key in self.seen:
            if key in logs:
                self.seen[key].append((step, float(logs[key])))
        self.first_step = step if self.first_step is None else self.first_step
        if step - self.first_step + 1 < self.steps:  # judge a full window only, also after a resume
            return
        fmt, fallback = self._recent_mean(self.format_key, step), self._recent_mean(self.FALLBACK, step)
        failed = []
        if fmt is not None and fmt < self.min_format:
            failed.append(f"mean {self.format_key} {fmt:.3f} < grpo.min_format_rate {self.min_format:g}")
        if fallback is not None and self.max_fallback < 1 and fallback > self.max_fallback:
            failed.append(f"mean {self.FALLBACK} {fallback:.3f} > grpo.max_fallback_rate {self.max_fallback:g}")
        if failed:
            self.message = (
                f"stopped at step {step}: over the last {self.steps} steps {' and '.join(failed)}: the policy "
                f"(almost) never writes the format the reward reads, so there is nothing to learn from. Start from "
                f"an SFT checkpoint trained for its full max_steps (check its log for a time cap), or raise "
                f"grpo.max_completion_length if completions are cut before <gen_emb>.")
            log.error(self.message)
            control.should_training_stop = True


__all__ = ["RolloutStates", "UmeGRPOTrainer", "states_from_steps", "teacher_forced_states", "UmeFormatReward",
           "UmeEmbeddingReward", "EmbedRLRewards", "evidence_item", "bbox_crops", "ZeroStdGuard", "FormatGuard",
           "completion_texts"]
