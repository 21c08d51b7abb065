"""Load Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints, add UME-R1's embedding tokens, build the processor.

Three rules from the spec (method.md §1.2, §4.3) live here and nowhere else:
- ``<gen_emb>`` and ``<disc_emb>`` are *ordinary* added tokens (``add_tokens``, not special), added in that order, so
  ``decode(skip_special_tokens=True)`` keeps them and the format reward can see them;
- their input-embedding rows are initialised from ``<|object_ref_end|>`` / ``<|object_ref_start|>`` (Qwen2-VL) or
  ``</tool_call>`` / ``<tool_call>`` (Qwen2.5-VL, Qwen3-VL), as UME-R1's training code does;
- the processor is built without a video processor, because transformers' video processors need torchvision,
  which we never install (feasibility step 2). Videos are patchified by ``umeflow.model.inputs``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from umeflow.errors import UserError
from umeflow.model.chat import EMBEDDING_TOKENS, GEN_EMB, DISC_EMB, QWEN2_VL_CHAT_TEMPLATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """What differs between the supported backbones."""

    name: str
    model_type: str  # config.model_type
    patch_size: int
    # (source of <gen_emb>, source of <disc_emb>) for row initialisation
    init_sources: tuple[str, str]

    def processor_class(self):
        import transformers

        return getattr(transformers, {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                                      "qwen3_vl": "Qwen3VLProcessor"}[self.name])


FAMILIES = {
    "qwen2_vl": Family("qwen2_vl", "qwen2_vl", 14, ("<|object_ref_end|>", "<|object_ref_start|>")),
    "qwen2_5_vl": Family("qwen2_5_vl", "qwen2_5_vl", 14, ("</tool_call>", "<tool_call>")),
    "qwen3_vl": Family("qwen3_vl", "qwen3_vl", 16, ("</tool_call>", "<tool_call>")),
}


def family_of(config) -> Family:
    for fam in FAMILIES.values():
        if config.model_type == fam.model_type:
            return fam
    raise UserError(f"unsupported backbone model_type '{config.model_type}'; umeflow supports "
                    f"{', '.join(f.model_type for f in FAMILIES.values())}")


def _no_video(base):
    """``base`` with ``video_processor`` removed from its signature.

    ProcessorMixin treats every ``*_processor`` argument of ``__init__`` as mandatory, and video processors are not
    importable without torchvision; this subclass keeps image processor + tokenizer only. Its class name stays the
    base's, so ``processor_config.json`` is loadable by stock transformers on a machine that has torchvision.
    """

    class NoVideoProcessor(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    NoVideoProcessor.__name__ = NoVideoProcessor.__qualname__ = base.__name__
    return NoVideoProcessor


def image_processor_for(family: Family, min_pixels: int, max_pixels: int):
    """The PIL (torchvision-free) Qwen-VL image processor with the given pixel limits."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=family.patch_size, merge_size=2, temporal_patch_size=2,
                                    min_pixels=min_pixels, max_pixels=max_pixels)


def load_processor(path: str | os.PathLike, family: Family):
    """``AutoProcessor`` where it works (torchvision present); otherwise the no-video processor class. Either way the
    image part is the PIL (torchvision-free) Qwen-VL image processor, built from the checkpoint's own image
    processor config: with torchvision installed (the GPU image) ``AutoProcessor`` picks transformers' torchvision
    backend, whose resizing is not the PIL one, and CPU and GPU runs would feed the model different pixels."""
    from transformers import Qwen2VLImageProcessorPil

    try:
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, AttributeError, ImportError, ValueError) as e:
        log.debug("AutoProcessor failed (%s); using the torchvision-free processor", e)
        proc = _no_video(family.processor_class()).from_pretrained(str(path))
    if type(proc.image_processor) is not Qwen2VLImageProcessorPil:
        log.debug("image processor %s replaced by Qwen2VLImageProcessorPil (same config)",
                  type(proc.image_processor).__name__)
        proc.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path))
    tok = proc.tokenizer
    tok.padding_side = "left"  # generation and disc extraction are left-padded (method.md §4.4)
    if not getattr(proc, "chat_template", None):
        proc.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return proc


def add_embedding_tokens(model, tokenizer, family: Family) -> dict[str, int]:
    """Add ``<gen_emb>``, ``<disc_emb>`` (in that order) as ordinary tokens and initialise their rows.

    Idempotent: a checkpoint that already has them (a UME-R1 or umeflow checkpoint) is left untouched. The embedding
    table is resized only when it has no spare rows (Qwen2-VL's 151,936 rows already do). Returns the token ids.
    """
    missing = [t for t in EMBEDDING_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        if len(missing) != len(EMBEDDING_TOKENS):
            raise UserError(f"tokenizer has only some of the embedding tokens (missing {missing}); refusing to guess "
                            "their ids")
        tokenizer.add_tokens(list(EMBEDDING_TOKENS))  # ordinary, not special: see module docstring
        emb = model.get_input_embeddings()
        if len(tokenizer) > emb.weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
            emb = model.get_input_embeddings()
        with torch.no_grad():
            for new, src in zip(EMBEDDING_TOKENS, family.init_sources):
                src_id = tokenizer.convert_tokens_to_ids(src)
                if src_id is None or src_id == tokenizer.unk_token_id:
                    raise UserError(f"tokenizer lacks '{src}', needed to initialise '{new}'")
                emb.weight[tokenizer.convert_tokens_to_ids(new)] = emb.weight[src_id].clone()
        log.info("added %s to the tokenizer (ids %s)", EMBEDDING_TOKENS,
                 [tokenizer.convert_tokens_to_ids(t) for t in EMBEDDING_TOKENS])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in EMBEDDING_TOKENS}
    special = set(getattr(tokenizer, "all_special_tokens", []))
    if special & set(EMBEDDING_TOKENS):
        raise UserError(f"{sorted(special & set(EMBEDDING_TOKENS))} are registered as special tokens; they must be "
                        "ordinary tokens or skip_special_tokens=True strips them (method.md §4.3)")
    return ids


# Weight files that are Python pickles: loading one runs arbitrary code, so no step loads them (register refuses
# them too). Checkpoints are safetensors only; convert with ``save_pretrained(..., safe_serialization=True)``.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# A tokenizer is its fast-tokenizer file or the vocabulary + merges a BPE tokenizer is rebuilt from. Without either,
# transformers quietly builds an empty tokenizer and the first error is about a missing token, far from the cause.
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def check_model_files(path: str | os.PathLike) -> None:
    """Refuse a local checkpoint folder that cannot load cleanly, naming the folder and the file at fault:
    pickled weights, no safetensors weights, a truncated/corrupt safetensors file, a missing shard, no tokenizer.

    Cheap: only the safetensors headers are read (their declared sizes must match the files' sizes).
    """
    from safetensors import safe_open

    root = Path(path)
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in root.glob(pattern))
    if pickled:
        raise UserError(f"model folder {root}: pickled weight files {pickled} are refused (loading a pickle runs "
                        "code); convert the checkpoint to safetensors (save_pretrained(..., safe_serialization=True))")
    weights = sorted(root.glob("*.safetensors"))
    index = root / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise UserError(f"{index}: not a readable safetensors index ({e})") from None
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise UserError(f"model folder {root}: shards {missing} listed in {index.name} are missing")
    if not weights:
        raise UserError(f"model folder {root} has no weights (*.safetensors); point --model at a complete "
                        "checkpoint folder")
    for w in weights:
        try:
            with safe_open(str(w), framework="pt"):
                pass
        except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for a bad header
            raise UserError(f"{w}: not a complete safetensors file ({e}); the copy is truncated or damaged, "
                            "copy or save the checkpoint again") from None
    if not any(all((root / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS):
        wanted = " or ".join(" + ".join(files) for files in TOKENIZER_FILE_SETS)
        present = sorted(p.name for p in root.glob("*token*")) or "none"
        raise UserError(f"model folder {root}: tokenizer files missing: needs {wanted} (tokenizer files present: "
                        f"{present})")


@dataclass
class Backbone:
    model: torch.nn.Module
    processor: object
    family: Family
    gen_emb_id: int
    disc_emb_id: int

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def load_backbone(path: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32, device: str = "cpu",
                  trust_remote_code: bool = False, attn_implementation: str | None = None) -> Backbone:
    """Load a checkpoint from a local directory (or a hub name when online) with tokens and processor ready."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    src = str(path)
    if not Path(src).exists() and (os.environ.get("HF_HUB_OFFLINE") == "1" or src.startswith((".", "/"))):
        raise UserError(f"model directory {src} does not exist (and hub downloads are off)")
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a model config from {src}: {e}") from None
    family = family_of(config)
    if Path(src).is_dir():
        check_model_files(src)
    processor = load_processor(src, family)
    # use_safetensors: never fall back to a pickled .bin, also for a hub name (files not checked above)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(src, **kwargs)
    except OSError as e:  # e.g. a hub name with no safetensors weights, or a file that vanished meanwhile
        raise UserError(f"cannot load model weights from {src}: {e}") from None
    model = model.to(device)
    ids = add_embedding_tokens(model, processor.tokenizer, family)
    model.eval()
    return Backbone(model=model, processor=processor, family=family, gen_emb_id=ids[GEN_EMB],
                    disc_emb_id=ids[DISC_EMB])


def language_model(model) -> torch.nn.Module:
    """The decoder stack whose ``last_hidden_state`` is the embedding state: the output of the final norm.

    Every umeflow read-out (disc, gen, GRPO, SFT) takes ``last_hidden_state`` of this module, never
    ``output_hidden_states=True``'s ``hidden_states[-1]``, which some transformers versions record before the final
    norm for Qwen3-VL (VLM2Vec PR #213). tests/test_parity_generation.py checks each family against the norm's output.
    """
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None:
        raise UserError(f"{type(model).__name__} has no language_model; not a Qwen-VL backbone")
    return lm
