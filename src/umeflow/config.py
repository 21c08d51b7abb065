"""Typed step configs: one dataclass per step, loaded from a recipe YAML section plus ``--set key=value``.

A recipe is a YAML file with one top-level section per step (``assets``, ``data``, ``model``, ``evaluate`` ...).
``load_config(EvaluateConfig, "configs/tiny.yaml", ["batch_size=4"])`` reads the section named by the class's
``SECTION``, applies the overrides (coerced to the field's type) and refuses unknown keys, so a typo is an error that
names the key and the file instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that cannot be applied; the message names the file and key."""


def state_dir() -> Path:
    """Where embedded-default outputs live (assets, data, models, MLflow store). ``UMEFLOW_STATE`` overrides."""
    return Path(os.environ.get("UMEFLOW_STATE", "state"))


@dataclass
class AssetsConfig:
    SECTION = "assets"
    cache_dir: str = "state/assets"  # extracted packages, one folder per manifest entry
    download_cache: str = "~/.cache/umeflow/downloads"  # raw .deb/.tgz files, shared between checkouts
    only: str = ""  # comma-separated subset of manifest names; empty = all


@dataclass
class DataConfig:
    SECTION = "data"
    assets_dir: str = "state/assets"
    out: str = "state/data"
    seed: int = 0
    on_bad_record: Literal["error", "skip"] = "error"  # skip counts and reports
    # offline eval suite sizes (queries per task); defaults keep the whole build under a minute on 2 CPU cores
    eval_fashion_per_class: int = 50
    eval_fashion_vqa_per_class: int = 30
    eval_digits_per_class: int = 50
    eval_tuxpaint_fraction: float = 0.4  # share of Tux Paint stamps held out for evaluation (hash split by stem)
    eval_retrieval_candidates: int = 100  # candidates per query for TuxPaint I2T/T2I (local lists, GT first)
    eval_video_segments_per_clip: int = 8
    # training pairs
    train_fashion_per_class: int = 200
    train_fashion_vqa_per_class: int = 40
    train_mnist_per_class: int = 100
    tuxpaint_limit: int = 0  # use only the first N stamps in hash order (0 = all); for quick tests
    # media
    image_max_side: int = 112  # Tux Paint stamps are fitted into this box on white (digits keep native size)
    video_frames_per_segment: int = 8  # the MMEB-V2 frame count
    video_frame_max_side: int = 112


@dataclass
class ModelInitConfig:
    SECTION = "model"
    out: str = "state/models/tiny"
    assets_dir: str = "state/assets"
    family: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = "qwen2_vl"
    # "qwen2": the real Qwen2 tokenizer (npm asset); "compact": a BPE trained here
    tokenizer: Literal["qwen2", "compact"] = "qwen2"
    compact_vocab_size: int = 4096  # only for tokenizer "compact"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 1
    vision_embed_dim: int = 32
    vision_num_heads: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    seed: int = 0


@dataclass
class EmbeddingInputs:
    """How items reach the model when it embeds them (evaluate, embed; the served model takes the evaluation's).

    Pixels (method.md §1.3): 0 = the checkpoint's preprocessor_config.json. UME-R1's eval (configs/qwen2-vl-*.yaml):
    ``qwen_vl_utils_resize`` true (fetch_image's resize first: 3,136-pixel floor, sides rounded to 28), then the
    processor at 784 … 2,359,296, frames sized like images (``video_*_frame_pixels`` 0). ``disc_readout``: where the
    disc embedding is read, "disc_emb" (the <disc_emb> token: what SFT trains, UME-R1's README) or "next_token" (the
    token after it: what UME-R1's eval_twomode.py reads, behind its published disc/oracle numbers).
    """

    min_pixels: int = 0
    max_pixels: int = 0
    qwen_vl_utils_resize: bool = False
    video_min_frame_pixels: int = 0  # 0 = frames sized like images
    video_max_frame_pixels: int = 0
    disc_readout: Literal["disc_emb", "next_token"] = "disc_emb"


@dataclass
class EmbedConfig(EmbeddingInputs):
    SECTION = "embed"
    model: str = "state/models/tiny"
    input: str = ""
    out: str = ""
    mode: Literal["disc", "gen"] = "disc"
    batch_size: int = 8
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    num_samples: int = 1
    seed: int = 0
    # media paths in the items file resolve against media_root ("" = the items file's folder) and must stay inside
    # it; allow_any_path (--allow-any-path) accepts any path, absolute or outside it (the user's own files)
    media_root: str = ""
    allow_any_path: bool = False
    max_input_tokens: int = 8192  # an item whose text has more tokens is refused by name (0 = no limit)


@dataclass
class EvaluateConfig(EmbeddingInputs):
    SECTION = "evaluate"
    model: str = "state/models/tiny"
    data_root: str = "state/data/eval"  # local folder or s3://bucket/prefix (MMEB-V2 layout or the offline suite)
    tasks: str = "offline"  # offline | mmeb-v2 | image | video | visdoc | comma-separated task names
    mode: Literal["disc", "gen", "both"] = "both"  # both = one generation pass; disc comes from its prefill
    out: str = "state/eval"
    batch_size: int = 8
    max_new_tokens: int = 64  # UME-R1 evaluates with 8,192 (configs/qwen2-vl-*.yaml); small budgets cut reasoning
    max_input_tokens: int = 8192  # a query or candidate whose text has more tokens is refused by task and row
    # a task where more than this fraction of queries or candidates generated no usable <gen_emb> (fallback state)
    # gets a WARNING in the log and in report.md: usually max_new_tokens is too small for the model's reasoning
    gen_fallback_warn_rate: float = 0.05
    max_queries_per_task: int = 0  # 0 = all; >0 subsamples deterministically (marked in the report)
    pass_k: int = 0  # >0: also sample k gen embeddings per query and report pass@k (an upper bound)
    temperature: float = 1.0  # sampling temperature for pass@k
    # what generates gen-mode reasoning (the embedding is then read by one teacher-forced prefill): hf = in-process
    # generate (the CPU default); openai = an OpenAI-compatible server serving this same checkpoint (vLLM, SGLang);
    # vllm = in-process vLLM (the GPU image). Traces are cached per engine next to the embeddings.
    engine: Literal["hf", "openai", "vllm"] = "hf"
    engine_base_url: str = ""  # openai engine: e.g. http://vllm:8000/v1
    engine_model: str = ""  # openai engine: the served model name
    engine_api_key_env: str = "OPENAI_API_KEY"  # the variable holding the server's key (read from the environment)
    engine_concurrency: int = 8
    engine_max_retries: int = 5
    vllm_gpu_memory_utilization: float = 0.5  # vllm engine
    # re-extract each gen-mode query with its <think> reasoning removed and with another query's swapped in (from the
    # trace cache: prefills only) and report the cosine to the original embedding and the metric change per task
    faithfulness: bool = False
    cache_dir: str = "state/cache/embeddings"  # persistent embedding cache ("" = memory only)
    cache_chunk_size: int = 64  # items embedded between cache writes: a killed run loses at most this much work
    tracking_uri: str = ""  # MLflow tracking URI; empty = MLFLOW_TRACKING_URI from the environment, if set
    seed: int = 0
    # a published leaderboard score file ({metadata, metrics: {image, video, visdoc}}, e.g. VLM2Vec's
    # experiments/public/all_scores/*.json) shown beside the scores in report.md and summary.json; "" = none
    compare: str = ""


@dataclass
class AnnotateConfig:
    """``umeflow annotate``: a reasoning + summary for each side of each training pair (UME-R1 SFT records)."""

    SECTION = "annotate"
    data: str = "state/data"  # `umeflow data build` output (train/pairs.jsonl in MMEB-train layout)
    out: str = "state/annotate"
    # grounded (offline, from real metadata) | openai (any OpenAI-compatible endpoint)
    backend: Literal["grounded", "openai"] = "grounded"
    seed: int = 0
    limit: int = 0  # annotate only the first N pairs (0 = all)
    on_bad_record: Literal["error", "skip"] = "error"
    # grounded backend: short, because a tiny model must learn to emit it
    max_reasoning_words: int = 16
    max_summary_words: int = 12
    # UME-R1 filters (a pair is dropped when either side fails; counted per reason)
    filter_ngram: int = 4  # an n-gram of this length ...
    filter_max_repeats: int = 3  # ... occurring this many times or more is a repetition
    max_reasoning_tokens: int = 1024  # whitespace tokens inside <think>…</think>
    # openai backend (the API key is read from the environment variable named here, nowhere else)
    base_url: str = ""  # e.g. http://vllm:8000/v1
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    prompt: str = ""  # empty = the built-in UME-R1-style prompt
    max_tokens: int = 1024
    temperature: float = 0.0
    concurrency: int = 4
    max_retries: int = 5
    backoff_base: float = 1.0  # seconds; attempt k waits backoff_base * 2**k with jitter (or Retry-After)
    max_backoff: float = 120.0
    timeout: float = 120.0
    cache_dir: str = "state/cache/annotate"


@dataclass
class SFTConfig:
    """Cold-start SFT (UME-R1 stage 1). Defaults are the tiny CPU demo; configs/qwen2-vl-*.yaml hold UME-R1's."""

    SECTION = "sft"
    model: str = "state/models/tiny"  # initial checkpoint (umeflow tiny, Qwen2-VL, or a previous SFT output)
    data: str = "state/annotate"  # annotate output: sft.jsonl + manifest.json (media_root)
    out: str = "state/sft"  # checkpoints/ (resumable) and model/ (the final safetensors checkpoint)
    seed: int = 0
    on_bad_record: Literal["error", "skip"] = "error"
    max_input_tokens: int = 8192  # a record side whose turns have more text tokens is a bad record (0 = no limit)
    # optimisation
    per_device_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    max_steps: int = 200  # what bounds a run (recipes never bound by minutes: a busy machine would train less)
    # safety net, 0 = off: >0 stops at this much training time with a checkpoint and FAILS the step (exit 2, no
    # model published); rerunning resumes from that checkpoint
    max_minutes: float = 0.0
    # loss (UME-R1: all weights 1, logit scale 50)
    weight_gen_contrastive: float = 1.0
    weight_disc_contrastive: float = 1.0
    weight_ce_query: float = 1.0
    weight_ce_target: float = 1.0
    logit_scale: float = 50.0
    mask_duplicate_negatives: bool = True  # umeflow addition: identical targets in a batch are not negatives
    grad_cache_chunk_size: int = 0  # >0: GradCache with sub-batches of this size (negatives not bounded by memory)
    single_dataset_batches: bool = False  # each (gathered) batch from one dataset: harder in-batch negatives
    # {dataset_name: k}: each of that dataset's pairs appears k times an epoch (upweights a small dataset)
    dataset_repeats: dict[str, int] = dataclasses.field(default_factory=dict)
    # what is trained
    freeze_vision: bool = False  # UME-R1: ViT frozen (tune_mm_vision=False)
    freeze_merger: bool = False  # UME-R1: merger trained
    freeze_llm: bool = False  # UME-R1: LLM fully trained
    lora_r: int = 0  # >0: LoRA on the LLM's attention/MLP projections (merged into the saved checkpoint)
    lora_alpha: int = 32
    # scale
    deepspeed: str = ""  # path to a DeepSpeed JSON (configs/deepspeed/zero2.json, zero3.json)
    bf16: bool = False
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    # pixels: 0 = the checkpoint's preprocessor_config.json (UME-R1 SFT: 768 … 2,359,296 per image); video frames
    # at UME-R1's SFT data-argument defaults 4·28·28 … 32·28·28
    min_pixels: int = 0
    max_pixels: int = 0
    video_min_frame_pixels: int = 4 * 28 * 28
    video_max_frame_pixels: int = 32 * 28 * 28
    # bookkeeping
    logging_steps: int = 10
    save_steps: int = 50
    save_total_limit: int = 2
    # true: continue from the newest complete checkpoint under out/checkpoints, only if it is of the same run (model
    # fingerprint, data hash and result-changing settings match; max_steps may differ), else refuse;
    # false: delete out/checkpoints and train from step 0
    resume: bool = True
    tracking_uri: str = ""  # MLflow; empty = MLFLOW_TRACKING_URI from the environment, if set


@dataclass
class GRPOConfig:
    """RL stage on TRL's GRPOTrainer: UME-R1 (``recipe: ume_r1``) or Embed-RL's embedder-guided RL (``embed_rl``).

    Defaults are UME-R1's settings written out (TRL's defaults differ): G = 8, β = 0.04, ε_low 0.2, ε_high 0.28,
    lr 1e-6, temperature 1.0, Dr.GRPO loss normalisation (Σ token losses / max completion length), group-std
    advantages with +1e-4. The tiny CPU recipe overrides sizes and lr in configs/tiny.yaml.
    """

    SECTION = "grpo"
    recipe: Literal["ume_r1", "embed_rl"] = "ume_r1"
    model: str = "state/sft/model"  # the policy's initial checkpoint (an SFT output)
    data: str = "state/data/train"  # pairs.jsonl (umeflow data build) or rl.jsonl (UME-R1 RL records), or a file
    out: str = "state/grpo"
    seed: int = 0
    on_bad_record: Literal["error", "skip"] = "error"
    max_input_tokens: int = 8192  # a pair whose side has more text tokens is a bad record (0 = no limit)
    max_pairs: int = 0  # 0 = every pair; else a seeded subset
    datasets: str = ""  # comma-separated dataset_name filter (empty = all)
    # umeflow/Embed-RL: each step's pairs come from one dataset with distinct targets (hard, true negatives);
    # false = UME-R1's plain file order
    single_dataset_steps: bool = True
    # rollouts
    num_generations: int = 8  # G
    pairs_per_step: int = 16  # N distinct pairs per generation batch (2·N·G rollouts; UME-R1: 16 × 8 per side)
    per_device_batch_size: int = 2  # rollouts per forward/backward micro-batch
    max_completion_length: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50  # 0 = no top-k filter; UME-R1's GenerationConfig(do_sample=True) keeps HF's default 50
    # generation: states captured during rollout | forward: one teacher-forced forward over prompt + completion.
    # use_vllm forces forward (set at load, logged): vLLM cannot return a generated token's hidden state (vLLM issues
    # #4435, #6165), so the reward reads <gen_emb> from one more forward, as UME-R1's maintainers advise (UME-R1 #11)
    embedding_source: Literal["generation", "forward"] = "generation"
    # policy optimisation
    learning_rate: float = 1e-6
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.04  # KL to the frozen SFT model (k3 estimator)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    loss_type: str = "dr_grpo"  # UME-R1: per-sequence Σ token losses / max_completion_length
    scale_rewards: str = "group"  # (r − mean_G) / (std_G + 1e-4)
    max_steps: int = 100
    max_minutes: float = 0.0  # safety net as sft.max_minutes: >0 stops with a checkpoint and FAILS the step
    # UME-R1 reward weights (format + rank × gap)
    weight_format: float = 1.0
    weight_embedding: float = 1.0
    # Embed-RL (recipe: embed_rl). Paper defaults: α 0.05 format, β 0.8 process, γ 0.2 outcome, τ 0.5, Acc = all-in-top-k
    embedder: str = ""  # frozen umeflow checkpoint that embeds input + T-CoT evidence (disc mode)
    weight_tcot_format: float = 0.05
    weight_process: float = 0.8
    weight_outcome: float = 0.2
    negative_tau: float = 0.5
    acc_mode: Literal["all", "fraction"] = "all"  # all (paper) | fraction (released code)
    weighted_negatives: bool = True
    require_cue: bool = True  # the <thinking> JSON must carry the input kind's cue (bbox_2d / text_keywords)
    judge_base_url: str = ""  # OpenAI-compatible endpoint for the process reward; empty = no process reward
    judge_model: str = ""
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_candidates: int = 4  # other pairs shown to the judge besides the positives
    # safety net: stop when every group has zero reward variance for this many consecutive logged steps (0 = off)
    zero_std_patience: int = 20
    # safety net: from step format_check_steps on, stop with an error when, over the last format_check_steps steps,
    # the mean format reward (rewards/format/mean; embed_rl: rewards/tcot_format/mean) is below min_format_rate, or
    # the mean share of rollouts without a usable <gen_emb> (embedding/fallback_rate, ume_r1) is above
    # max_fallback_rate (1 = off). A healthy tiny run logs format ~0.9 and fallback ~0.1; one after an SFT cut short
    # at step 71 of 560 logged format 0 and fallback 0.72. format_check_steps 0 = off.
    format_check_steps: int = 20
    min_format_rate: float = 0.05
    max_fallback_rate: float = 0.5
    # scale
    deepspeed: str = ""
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    # colocate: a vLLM engine inside every trainer process (vllm_gpu_memory_utilization of each GPU);
    # server: one `trl vllm-serve` on GPUs of its own that rank 0 sends prompts and pushes weights to
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3  # colocate only (TRL: the server takes its own, 0.9 by default)
    # server mode. Empty base URL: `umeflow grpo` connects to vllm_server_host:vllm_server_port (TRL's defaults), and a
    # pipeline run starts the server itself beside the trainer (umeflow.pipeline.rollout_server) and points the
    # trainer at it; a URL here means a server someone else runs, and none is started.
    vllm_server_base_url: str = ""
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000
    vllm_server_gpus: int = 1  # GPUs of the server a pipeline run starts (its tensor-parallel size)
    # how long rank 0 waits for the server (TRL's default 240 s; a pipeline's server pod also waits for scheduling,
    # its image and the checkpoint load)
    vllm_server_timeout: float = 900.0
    max_pixels: int = 0  # 0 = the processor's own cap
    # bookkeeping
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = True  # as sft.resume: only a complete checkpoint of the same run; false deletes out/checkpoints
    tracking_uri: str = ""

    def __post_init__(self):
        if self.use_vllm and self.embedding_source != "forward":
            logging.getLogger(__name__).info(
                "grpo.use_vllm: the reward's embeddings come from one teacher-forced forward "
                "(grpo.embedding_source=forward; vLLM cannot return hidden states of generated tokens)")
            self.embedding_source = "forward"
        if self.use_vllm and self.vllm_mode == "server":
            if not 1 <= self.vllm_server_port <= 65535:
                raise ConfigError(f"grpo.vllm_server_port={self.vllm_server_port} is not a TCP port")
            if self.vllm_server_gpus < 1:
                raise ConfigError(f"grpo.vllm_server_gpus={self.vllm_server_gpus}: the rollout server needs at "
                                  f"least one GPU")



@dataclass
class RegisterConfig:
    """``umeflow register``: log a checkpoint as an MLflow pyfunc, register a version, alias it ``challenger``."""

    SECTION = "register"
    model: str = "state/sft/model"  # the Embedder checkpoint folder (safetensors + processor files)
    eval_dir: str = "state/eval/sft"  # its `umeflow evaluate` output (summary.json, report.md, run_info.json)
    out: str = "state/register"  # registration.json, model_card.md, metrics.json, run_info.json
    model_name: str = "umeflow"  # registered model name
    alias: str = "challenger"
    experiment: str = "umeflow"
    tracking_uri: str = ""  # empty = MLFLOW_TRACKING_URI, else the embedded sqlite store under the state dir
    registry_uri: str = ""  # empty = the tracking URI
    check_eval_model: bool = True  # refuse an evaluation of a different checkpoint (by fingerprint or path)
    smoke_test: bool = True  # embed one text with the pyfunc before logging it
    # serving defaults of the pyfunc (each one a predict param too)
    default_mode: Literal["disc", "gen"] = "disc"
    max_new_tokens: int = 64
    batch_size: int = 8


@dataclass
class PromoteConfig:
    """``umeflow promote``: apply the promotion policy to the ``challenger`` and move ``champion`` when it passes.

    The policy scores one evaluation column (``column``): the overall mean over the suite's tasks and each modality's
    mean, as the evaluate step aggregates them. Floors of 0 are off.
    """

    SECTION = "promote"
    model_name: str = "umeflow"
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    out: str = "state/promote"  # decision.json, metrics.json, run_info.json
    experiment: str = "umeflow"
    tracking_uri: str = ""  # empty = MLFLOW_TRACKING_URI, else the embedded sqlite store under the state dir
    registry_uri: str = ""
    fail_on_reject: bool = False  # exit non-zero (3) when the gate rejects the challenger
    challenger_version: str = ""  # if set: refuse to judge when the challenger alias points at another version
    # policy
    column: str = "disc_disc"  # disc_disc | gen_gen | disc_gen | gen_disc | selector | ... (UME-R1's headline: gen_gen)
    min_overall: float = 0.0
    floor_image: float = 0.0
    floor_video: float = 0.0
    floor_visdoc: float = 0.0
    min_gain: float = 0.0  # overall − champion overall must be at least this (absolute, scores in [0, 1])
    max_modality_regression: float = 0.02  # no modality may drop more than this below the champion's
    require_complete: bool = True  # every non-smoke task of the evaluated suite scored
    require_same_tasks: bool = True  # challenger and champion scored on the same task set
    required_tasks: str = ""  # also required: task names / mmeb-v2 | image | video | visdoc | offline
    data_root: str = ""  # where `required_tasks: offline` finds tasks.json
    # > 0: refuse a challenger whose gen embedding hardly moves without its reasoning (evaluate --faithfulness mean
    # cosine, reasoning removed vs kept, above this); UME-R1 issue #12 measured 0.977 for the released model
    max_reasoning_cosine: float = 0.0

def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = args[0]
    origin = typing.get_origin(tp)
    if origin is Literal:  # a choice: refused at load, naming the key and the allowed values, not deep in a step
        allowed = typing.get_args(tp)
        if value not in allowed and str(value) not in allowed:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {', '.join(map(str, allowed))}")
        return value if value in allowed else str(value)
    if origin is dict:  # e.g. sft.dataset_repeats: a string here would be read as its characters later on
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}={value!r} must be a mapping, e.g. {key}={{name: 2}} in --set "
                              f"(YAML flow style) or a nested block in the recipe")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, f"{key} key", source): _coerce(v, value_tp, f"{key}.{k}", source)
                for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}={value!r} must be a list, e.g. {key}=[a, b] in --set (YAML flow "
                              f"style) or a YAML list in the recipe")
        item_tp = (typing.get_args(tp) or (Any,))[0]
        return origin(_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


# Sizes that count items per batch / step / chunk: 0 or less would loop forever, divide by zero or build empty
# batches deep inside a step, so load_config refuses them up front, naming the key and where it was set.
POSITIVE_KEYS = frozenset({"batch_size", "per_device_batch_size", "gradient_accumulation_steps", "num_generations",
                           "pairs_per_step", "cache_chunk_size", "concurrency", "num_samples"})


def _yaml_kind(doc: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(doc),
                                                                                          type(doc).__name__)


def _known_sections() -> set[str]:
    """The recipe sections of every step config defined in this module (``AssetsConfig.SECTION`` ...)."""
    return {c.SECTION for c in globals().values()
            if isinstance(c, type) and isinstance(getattr(c, "SECTION", None), str)}


def load_config(cls: type[T], path: str | os.PathLike | list | None = None, overrides: list[str] | None = None,
                **explicit: Any) -> T:
    """Build ``cls`` from the recipe section ``cls.SECTION`` of ``path``, then ``overrides``, then ``explicit``.

    ``path`` may be a list: a recipe followed by overlays (e.g. a hardware preset), later files winning key by key.
    ``explicit`` holds values from dedicated CLI flags (``--out`` ...); ``None`` values are ignored.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    origins: dict[str, Any] = {}  # key -> value -> "where it was set" text, for error messages
    paths = [q for q in (path if isinstance(path, (list, tuple)) else [path]) if q]
    for p in map(Path, paths):
        if not p.is_file():
            raise ConfigError(f"recipe {p} does not exist")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {p}: invalid YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"recipe {p}: the top level must be a mapping of step sections (data:, sft:, "
                              f"evaluate: ...), got a YAML {_yaml_kind(doc)}")
        section = doc.get(cls.SECTION, {}) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"recipe {p}: section '{cls.SECTION}' must be a mapping")
        for k, v in section.items():
            if k not in names:
                raise ConfigError(f"recipe {p}: unknown key '{cls.SECTION}.{k}' (known: {', '.join(sorted(names))})")
            values[k] = _coerce(v, hints[k], f"{cls.SECTION}.{k}", str(p))
            origins[k] = lambda value, p=p, k=k: f"recipe {p}: {cls.SECTION}.{k}={value!r}"
    known_sections = _known_sections() if overrides else set()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        sec, dot, rest = k.partition(".")
        if dot and sec == cls.SECTION:
            k = rest
        elif dot and sec in known_sections:
            # Another step's key: one override list can then be passed to every step (as run-local does).
            logging.getLogger(__name__).debug("--set %s: for step '%s', ignored by '%s'", item, sec, cls.SECTION)
            continue
        elif dot:
            raise ConfigError(f"--set {item!r}: unknown section '{sec}' "
                              f"(known: {', '.join(sorted(known_sections))})")
        if k not in names:
            raise ConfigError(f"--set {item!r}: unknown key '{k}' for step '{cls.SECTION}' "
                              f"(known: {', '.join(sorted(names))})")
        values[k] = _coerce(yaml.safe_load(v) if v else v, hints[k], f"{cls.SECTION}.{k}", "--set")
        origins[k] = lambda value, k=k: f"--set {cls.SECTION}.{k}={value!r}"
    for k, v in explicit.items():
        if v is not None:
            values[k] = _coerce(v, hints[k], k, "command line")
            origins[k] = lambda value, k=k: f"--{k.replace('_', '-')} {value!r} ({cls.SECTION}.{k})"
    for k in sorted(POSITIVE_KEYS & names):
        if k in values and values[k] is not None and values[k] < 1:
            raise ConfigError(f"{origins[k](values[k])}: must be at least 1")
    return cls(**values)


def config_hash(cfg: Any) -> str:
    """Stable short hash of a resolved config, recorded in run_info.json and lineage tags. Credentials in URIs are
    masked first: a short hash of a known config would let anyone test guesses of the password."""
    from umeflow.tracking import redact_values

    blob = json.dumps(redact_values(dataclasses.asdict(cfg)), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


__all__ = ["AssetsConfig", "DataConfig", "ModelInitConfig", "EmbedConfig", "EvaluateConfig", "AnnotateConfig", "SFTConfig", "GRPOConfig",
           "RegisterConfig", "PromoteConfig",
           "ConfigError",
           "load_config", "config_hash", "state_dir", "field"]
