"""Parity with UME-R1's gen-embedding read-out (issue #13 §3 "Generation", "Backbones").

Every case states UME-R1's behaviour as a fact, citing UME-R1 (Kikcer/lume @08891de) file:line. Generation is forced
deterministically: a scripted LM head makes each row emit a fixed token sequence (two ``<gen_emb>`` then EOS, EOS
first, ``<gen_emb>`` at the budget ...), so the tests see exactly the cases they name. References are computed
independently of umeflow's capture: a hook on the decoder's final ``norm`` module in a plain teacher-forced forward.
The tiny models are sharpened (``_sharpen``) so that every wrong choice — another ``<gen_emb>``, a padding step, the
state before the final norm — is a clearly different vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from umeflow.model.backbone import language_model
from umeflow.model.embedder import Embedder, gen_emb_step
from umeflow.model.items import Item

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


# ------------------------------------------------------------------------------------------------ fixtures

def _sharpen(e: Embedder, seed: int) -> Embedder:
    """Make the random tiny model's states depend on context and on the final norm.

    At init the residual stream is dominated by the token embedding (two layers of std-0.02 weights), so two
    ``<gen_emb>`` at different positions give nearly the same vector; scaling the decoder layers' matrices ×10 makes
    them differ (|cos − 1| ~ 0.5). RMSNorm with weight 1 only rescales, which an L2-normalised embedding cannot see;
    a random weight in [0.2, 2] makes the pre-norm state point elsewhere."""
    lm = language_model(e.model)
    with torch.no_grad():
        for p in lm.layers.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
        gen = torch.Generator().manual_seed(seed)
        lm.norm.weight.copy_(torch.rand(lm.norm.weight.shape, generator=gen) * 1.8 + 0.2)
    return e


@pytest.fixture(scope="module", params=FAMILIES)
def family_embedder(request, tiny_model_dir, assets_dir, tmp_path_factory) -> Embedder:
    """A tiny random checkpoint of each family (real Qwen tokenizer), sharpened."""
    from umeflow.config import ModelInitConfig
    from umeflow.model.tiny import init_tiny

    if request.param == "qwen2_vl":
        path = tiny_model_dir
    else:
        out = tmp_path_factory.mktemp("parity") / request.param
        path = Path(init_tiny(ModelInitConfig(out=str(out), assets_dir=str(assets_dir), family=request.param)))
    e = Embedder(path)
    assert e.backbone.family.name == request.param
    return _sharpen(e, seed=0)


@pytest.fixture(scope="module")
def qwen2_embedder(tiny_model_dir) -> Embedder:
    return _sharpen(Embedder(tiny_model_dir), seed=1)


class ScriptedHead(torch.nn.Module):
    """LM head that makes row b emit ``scripts[b][k]`` at decoding step k (EOS once its script is exhausted)."""

    def __init__(self, head, scripts: list[list[int]], eos: int):
        super().__init__()
        self.head, self.scripts, self.eos, self.step = head, scripts, eos, 0

    def forward(self, x):
        logits = torch.full_like(self.head(x), -1e4)
        for b, script in enumerate(self.scripts):
            logits[b, -1, script[self.step] if self.step < len(script) else self.eos] = 0.0
        self.step += 1
        return logits


def _items() -> list[Item]:
    """Image inputs only (Qwen3-VL video needs torchvision); prompts of different lengths → left padding."""
    red = Image.new("RGB", (84, 56), (200, 30, 30))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    return [Item("a red shoe on a table, seen from the left, with a long caption", images=(red,)),
            Item("noise", images=(noise,)),
            Item("a text-only query")]


def _words(e: Embedder, *words: str) -> list[int]:
    return [e.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]


def _eos(e: Embedder) -> int:
    return e.tokenizer.convert_tokens_to_ids("<|im_end|>")


def _generate(e: Embedder, items, scripts, max_new_tokens=16):
    head = e.model.lm_head
    e.model.lm_head = ScriptedHead(head, scripts, _eos(e))
    try:
        return e.encode(items, mode="gen", batch_size=len(items), max_new_tokens=max_new_tokens, progress=False)
    finally:
        e.model.lm_head = head


def _norm_io(e: Embedder, item: Item, completion: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, final-norm input, final-norm output) of one teacher-forced forward over prompt + completion."""
    batch = e.batch([item])
    ids = torch.cat([batch["input_ids"], torch.tensor([completion], dtype=torch.long)], dim=1)
    batch["input_ids"], batch["attention_mask"] = ids, torch.ones_like(ids)
    batch["mm_token_type_ids"] = torch.cat(
        [batch["mm_token_type_ids"], torch.zeros(1, len(completion), dtype=torch.long)], dim=1)
    seen = {}
    norm = language_model(e.model).norm
    hooks = [norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("pre", args[0].detach())),
             norm.register_forward_hook(lambda m, args, out: seen.__setitem__("post", out.detach()))]
    try:
        with torch.no_grad():
            e.model.model(**batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return ids[0], seen["pre"][0], seen["post"][0]


def _unit(v) -> np.ndarray:
    v = torch.as_tensor(v).float()
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def _same_direction(got, ref, tol: float = 1e-5) -> bool:
    """Unit vectors that agree up to float32 noise of KV-cached vs full forwards (|cos − 1| ≤ tol; a different
    state of the sharpened model is ≥ 1e-2 away)."""
    return abs(float(_unit(got) @ _unit(ref)) - 1.0) <= tol


def _gen_ref(e: Embedder, item: Item, own: list[int], position: int):
    """Teacher-forced (post-norm, pre-norm) state of the fed-token step ``position`` (0 = last prompt token)."""
    ids, pre, post = _norm_io(e, item, own[:position])
    return post[-1], pre[-1]


# ------------------------------------------------------------------------------------------------ generation

def test_generation_continues_past_the_first_gen_emb_and_the_last_one_wins(qwen2_embedder):
    e = qwen2_embedder
    g, eos = e.backbone.gen_emb_id, _eos(e)
    a, b, c, d = _words(e, "cat", "dog", "sun", "tree")
    # UME-R1 src/eval/VLM2Vec/eval_twomode.py:122 @08891de: model.generate(**inputs, max_new_tokens=...) with no
    # stopping rule of its own, so generation runs to the checkpoint's EOS (or the budget), past any <gen_emb>.
    # eval_twomode.py:126-129: only the generated ids (out_ids[len(in_ids):]) are searched for <gen_emb>.
    # eval_twomode.py:45-52 (get_embedding_idx): the search runs from the end, so the LAST <gen_emb> is taken, and
    # its index j gives hidden_states[j+1][-1] (eval_twomode.py:50, 133): the state computed when <gen_emb> is fed.
    scripts = [[a, g, b, g, c, eos],  # two <gen_emb>: the second one is the embedding
               [d, g, eos],  # finishes early: must be read from its own steps, not the batch's padding steps
               [a, b, eos]]  # EOS before any <gen_emb>: fallback
    items = _items()
    enc = _generate(e, items, scripts)
    assert [list(ids) for ids in enc.generated_ids] == scripts  # every token through EOS, nothing cut at <gen_emb>
    assert enc.fallback.tolist() == [False, False, True]
    assert enc.texts[0].count("<gen_emb>") == 2 and enc.texts[0].rstrip().endswith(e.tokenizer.decode([c]).strip())

    second, _ = _gen_ref(e, items[0], scripts[0], 4)  # fed step 4 = generated token 3, the second <gen_emb>
    first, _ = _gen_ref(e, items[0], scripts[0], 2)
    assert _same_direction(enc.embeddings[0], second)
    assert not _same_direction(enc.embeddings[0], first, tol=1e-2)  # the first <gen_emb> would be a different vector

    early, _ = _gen_ref(e, items[1], scripts[1], 2)
    assert _same_direction(enc.embeddings[1], early)


def test_no_gen_emb_falls_back_to_the_last_fed_step_of_the_row(qwen2_embedder):
    e = qwen2_embedder
    g, eos = e.backbone.gen_emb_id, _eos(e)
    a, b, c = _words(e, "cat", "dog", "sun")
    # UME-R1 eval_twomode.py:53-54 @08891de: no <gen_emb> in the generated ids → index -1, i.e. hidden_states[-1]
    # (eval_twomode.py:133): the state of the last token fed. With batch size 1 that is the row's own last fed token
    # (the one before its final token). umeflow reads it within the row's own span even when other rows of the batch
    # generate longer (UME-R1's batched -1 would land on a padding step of a row that finished early).
    scripts = [[a, eos],  # EOS comes first
               [a, b, c, a, b, c, eos]]  # a longer row keeps the batch generating after row 0 finished
    items = _items()[:2]
    enc = _generate(e, items, scripts)
    assert enc.fallback.tolist() == [True, True]
    assert [list(ids) for ids in enc.generated_ids] == scripts
    for i, script in enumerate(scripts):
        ref, _ = _gen_ref(e, items[i], script, len(script) - 1)  # the token before the final EOS
        assert _same_direction(enc.embeddings[i], ref), f"row {i}"
    # the prompt's own <gen_emb> (inside GENERATION_PROMPT) is never used
    ids, _, post = _norm_io(e, items[0], [])
    prompt_gen = int((ids == g).nonzero().max())
    assert not _same_direction(enc.embeddings[0], post[prompt_gen], tol=1e-2)


def test_gen_emb_as_the_last_token_under_the_budget_falls_back(qwen2_embedder):
    e = qwen2_embedder
    g, eos = e.backbone.gen_emb_id, _eos(e)
    a, b = _words(e, "cat", "dog")
    # UME-R1 eval_twomode.py:47-48 @08891de: a <gen_emb> at j with j + 1 >= len(out_ids) - 1 gives index -1. When
    # <gen_emb> is the very last generated token (budget reached right after it) its state was never computed, and
    # hidden_states[-1] is the state of the token before it: a fallback. When <gen_emb> is the second-to-last token
    # (then EOS), -1 and j+1 are the same step: the <gen_emb> state itself.
    budget = 3
    scripts = [[a, b, g, eos], [a, g, eos]]
    items = _items()[:2]
    enc = _generate(e, items, scripts, max_new_tokens=budget)
    assert [list(ids) for ids in enc.generated_ids] == [[a, b, g], [a, g, eos]]
    assert enc.fallback.tolist() == [True, False]
    before_gen, _ = _gen_ref(e, items[0], [a, b, g], 2)  # fed step 2 = token b
    assert _same_direction(enc.embeddings[0], before_gen)
    at_gen, _ = _gen_ref(e, items[1], [a, g, eos], 2)  # fed step 2 = <gen_emb>
    assert _same_direction(enc.embeddings[1], at_gen)


def test_gen_emb_step_follows_get_embedding_idx():
    # UME-R1 eval_twomode.py:39-58 @08891de, per row with batch size 1 (len(out_ids) = the row's generated length):
    # last <gen_emb> at j → j+1 unless j + 1 >= len − 1 (then −1 = step len − 1); none → step len − 1.
    g, x, eos = 7, 1, 2
    assert gen_emb_step([x, g, x, g, eos], g) == (4, False)
    assert gen_emb_step([x, g, eos], g) == (2, False)  # j + 1 = len − 1: the same step either way
    assert gen_emb_step([x, x, g], g) == (2, True)  # <gen_emb> last: never fed
    assert gen_emb_step([x, x, eos], g) == (2, True)
    assert gen_emb_step([eos], g) == (0, True)  # EOS at once: the last prompt token's state


# ------------------------------------------------------------------------------------------------ backbones

def test_disc_state_is_after_the_final_norm(family_embedder):
    e = family_embedder
    # UME-R1 eval_twomode.py:140-141 @08891de reads output.hidden_states[-1]; under its transformers
    # (src/eval/VLM2Vec/requirements.txt:4, transformers==4.52.3) that is the decoder output after the final norm
    # (method.md §1.4). VLM2Vec PR #213 (issue #13) found Qwen3-VL's hidden_states[-1] taken before the norm under
    # later transformers; umeflow must read the normed state for every family.
    items = _items()
    enc = e.encode(items, mode="disc", batch_size=len(items), progress=False)
    for i, item in enumerate(items):
        ids, pre, post = _norm_io(e, item, [])
        pos = int((ids == e.backbone.disc_emb_id).nonzero().max())
        assert _same_direction(enc.embeddings[i], post[pos]), f"item {i}"
        assert not _same_direction(enc.embeddings[i], pre[pos], tol=1e-2), "pre-norm state must differ"


def test_gen_state_is_after_the_final_norm(family_embedder):
    e = family_embedder
    g, eos = e.backbone.gen_emb_id, _eos(e)
    a, b = _words(e, "cat", "dog")
    # UME-R1 eval_twomode.py:133 @08891de: hidden_states[j+1][-1], the last (post-norm, see above) layer at the
    # step that feeds <gen_emb>.
    scripts = [[a, g, eos], [b, a, g, eos], [g, eos]]
    items = _items()
    enc = _generate(e, items, scripts)
    assert not enc.fallback.any()
    for i, script in enumerate(scripts):
        step = script.index(g) + 1
        post, pre = _gen_ref(e, items[i], script, step)
        assert _same_direction(enc.embeddings[i], post), f"row {i}"
        assert not _same_direction(enc.embeddings[i], pre, tol=1e-2), "pre-norm state must differ"
    # the disc vector read from the generation's prefill is the post-norm one too
    disc = e.encode(items, mode="disc", batch_size=len(items), progress=False)
    for i in range(len(items)):
        assert _same_direction(enc.disc_embeddings[i], disc.embeddings[i])


def test_grpo_forward_states_are_after_the_final_norm(family_embedder):
    from umeflow.train.grpo import teacher_forced_states

    e = family_embedder
    g, eos = e.backbone.gen_emb_id, _eos(e)
    a, b = _words(e, "cat", "dog")
    items = _items()[:2]
    completions = [[a, g, eos], [b, eos]]  # second: no <gen_emb> → the last token it fed (b)
    batch = e.batch(items)
    prompts = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    fields = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
    with torch.no_grad():
        states, fallback = teacher_forced_states(e.model, prompts, completions, fields, g, e.tokenizer.pad_token_id,
                                                 e.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert fallback.tolist() == [False, True]
    for i, (item, comp) in enumerate(zip(items, completions)):
        step = comp.index(g) + 1 if g in comp else len(comp) - 1
        post, pre = _gen_ref(e, item, comp, step)
        assert _same_direction(states[i], post), f"row {i}"
        assert not _same_direction(states[i], pre, tol=1e-2)


def test_sft_reps_are_after_the_final_norm(family_embedder):
    from umeflow.train.sft import side_forward

    e = family_embedder
    items = _items()[:2]
    completions = ["<think> a red shoe </think><answer> shoe <gen_emb><|im_end|>",
                   "<think> noise </think><answer> static <gen_emb><|im_end|>"]
    batch = e.batch(items, completions)
    with torch.no_grad():
        gen, disc, _, _ = side_forward(e.model, batch, e.backbone.gen_emb_id, e.backbone.disc_emb_id)
    for i, item in enumerate(items):
        completion = e.tokenizer.encode(completions[i], add_special_tokens=False)
        ids, pre, post = _norm_io(e, item, completion)
        for got, token in ((gen[i], e.backbone.gen_emb_id), (disc[i], e.backbone.disc_emb_id)):
            pos = int((ids == token).nonzero().max())
            assert _same_direction(got, post[pos]), f"row {i} token {token}"
            assert not _same_direction(got, pre[pos], tol=1e-2)
