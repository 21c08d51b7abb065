"""Disc and gen embeddings, batched (method.md §1.4, §4.1, §4.2).

disc: one left-padded forward; the last-layer state at the last ``<disc_emb>`` of each prompt (``disc_readout
      "disc_emb"``: the position SFT trains and UME-R1's README reads), or at the token right after it
      (``"next_token"``: what UME-R1's evaluation reads, because its eval_twomode.py:142-146 reuses the gen-mode
      ``get_embedding_idx``, which returns j+1, on the prompt ids; its published disc and oracle numbers come from
      there).

gen:  one batched, left-padded ``generate`` that runs, as UME-R1's evaluation does, until every row has emitted EOS
      (``<|im_end|>`` or the checkpoint's EOS ids) or ``max_new_tokens`` tokens. A forward hook on the language
      model keeps, for every decoding step, only the last-layer state (after the final norm) of the token fed at
      that step (B × D per step) — not every layer's states at every step, which is what
      ``output_hidden_states=True`` would store. Step k ≥ 1 feeds generated token k−1, so the state of
      ``<gen_emb>`` generated at position j is step j+1 (the spec's ``hidden_states[j+1][-1]``). Only the generated ids are searched, and the *last*
      ``<gen_emb>`` there is taken (the one inside GENERATION_PROMPT is never used; a second ``<gen_emb>`` generated
      after the first wins). Each row is read within its own generated span — up to and including its first EOS —
      never from the padding steps a finished row goes through while longer rows still generate. A row with no
      ``<gen_emb>``, or whose ``<gen_emb>`` is its very last token (the budget ran out before that token was fed),
      falls back to the state of its own last fed step and is flagged in ``Encoded.fallback``. That is UME-R1's
      ``get_embedding_idx`` fallback (``hidden_states[-1]``) for a row generated alone; in a batch UME-R1's ``-1`` is
      the batch's last step, a padding step for a row that finished earlier, which umeflow does not copy. The
      prefill step also yields the disc embedding for free (``Encoded.disc_embeddings``).
      Returned per row: ``generated_ids`` = every token the row generated, through its EOS (inclusive) or to the
      budget; ``texts`` = those tokens decoded without special tokens (reasoning, answer, ``<gen_emb>`` and whatever
      the model wrote after it, without the EOS); ``traces`` = each row's ``Trace`` (the trace cache keeps them).

extract: gen-mode embeddings of given traces (``model.generation``: any engine, the trace cache, a reasoning swapped
      or removed): one batched, left-padded, teacher-forced prefill over prompt + the tokens the generation fed, read
      at the same position as the hook path (the state of the last fed ``<gen_emb>``, or the same fallback). On the
      hf engine's own traces it equals the hook path (tests/test_generation_engines.py); disc embeddings come from
      the prompt part of the same prefill.

Threads: ``encode`` may be called from several threads at once (the served pyfunc is), but one model is used by
one call at a time. The forward hook is not the only shared state: Qwen2-VL's model keeps the ``rope_deltas`` of
the generation in progress on itself, a fast tokenizer refuses concurrent use ("Already borrowed"), and a seed sets
the global RNG. So every call holds a lock of its model for its whole run; CPU inference gains nothing from
running one model concurrently anyway (torch already spreads one forward over the cores).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from umeflow.errors import UserError
from umeflow.model.backbone import Backbone, language_model, load_backbone
from umeflow.model.generation import Sampling, Trace
from umeflow.model.inputs import build_batch
from umeflow.model.items import Encoded, Item
from umeflow.model.vision import VisionSizing

log = logging.getLogger(__name__)

# Where the disc embedding is read: positions after the last <disc_emb> (module docstring).
DISC_READOUTS = {"disc_emb": 0, "next_token": 1}

# One lock per model object, not per Embedder: two Embedders may share one Backbone. Weak keys so that a dropped
# model is not kept alive; not an attribute on the model, which would break deepcopy / pickling of the module.
_MODEL_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """The lock that serialises inference on ``model`` (module docstring, "Threads")."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


class LastStateRecorder:
    """Forward hook that records ``last_hidden_state`` of the language model, per call.

    ``last_hidden_state`` of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL text models is the output of their final norm
    (tests/test_parity_generation.py checks it per family against a hook on that norm)."""

    def __init__(self):
        self.prefill: torch.Tensor | None = None  # (B, L, D) of the prompt
        self.steps: list[torch.Tensor] = []  # step k: (B, D), the state of the token fed at step k

    def __call__(self, module, args, output):
        hs = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        if self.prefill is None:
            self.prefill = hs.detach()
        self.steps.append(hs[:, -1].detach())


def gen_emb_position(ids: Sequence[int], gen_emb_id: int) -> tuple[int, bool]:
    """(position in the fed-token sequence, fallback) for one row's generated ids.

    Fed tokens: position 0 is the last prompt token (prefill), position k ≥ 1 is generated token k−1. The last
    ``<gen_emb>`` at j → position j+1 (which a teacher-forced forward always has); without one → position
    ``len(ids) − 1``, the last token the row fed itself, flagged as a fallback.
    """
    for j in range(len(ids) - 1, -1, -1):
        if ids[j] == gen_emb_id:
            return j + 1, False
    return max(len(ids) - 1, 0), True


def gen_emb_step(own_ids: Sequence[int], gen_emb_id: int) -> tuple[int, bool]:
    """(recorded generation step to read, fallback) for one row's own generated ids (through its EOS, no padding):
    ``gen_emb_position``, except that a ``<gen_emb>`` that is the very last generated token was never fed, so its
    state was never computed and the row falls back to its last fed step, ``len(own_ids) − 1``."""
    pos, fallback = gen_emb_position(own_ids, gen_emb_id)
    return (max(len(own_ids) - 1, 0), True) if pos >= len(own_ids) else (pos, fallback)


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


class Embedder:
    """``Embedder(model_dir).encode(items, mode="disc"|"gen", ...)`` → ``Encoded`` (L2-normalised float32)."""

    def __init__(self, model: str | os.PathLike | Backbone, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 sizing: VisionSizing | None = None, disc_readout: str = "disc_emb"):
        if disc_readout not in DISC_READOUTS:
            raise UserError(f"disc_readout must be one of {sorted(DISC_READOUTS)}, got {disc_readout!r}")
        self.backbone = model if isinstance(model, Backbone) else load_backbone(model, dtype=dtype, device=device)
        self.sizing = sizing or VisionSizing()  # pixel limits (default: the checkpoint's; frames like images)
        self.disc_offset = DISC_READOUTS[disc_readout]  # positions after the last <disc_emb> (module docstring)
        self.model = self.backbone.model
        self.processor = self.backbone.processor
        self.tokenizer = self.backbone.tokenizer
        self.device = next(self.model.parameters()).device
        self.eos_ids = self._eos_ids()
        self._lock = model_lock(self.model)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        ids.add(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        return {i for i in ids if i is not None}

    def batch(self, items: Sequence[Item], completions: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        batch = build_batch(self.processor, items, completions, self.backbone.family.name, self.sizing)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---------------------------------------------------------------- public API
    def encode(self, items: Sequence[Item | dict], mode: str = "disc", batch_size: int = 8,
               max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0,
               num_samples: int = 1, seed: int | None = None, progress: bool = True, engine=None) -> Encoded:
        """Thread-safe: concurrent calls take turns on the model (module docstring, "Threads"). ``engine``: a
        generation engine of ``model.generation`` for gen mode (None: in-process ``generate`` with the hook)."""
        if engine is not None and mode == "gen":
            return self._encode_with_engine(items, engine, batch_size, max_new_tokens, do_sample, temperature,
                                            num_samples, seed, progress)
        with self._lock, torch.no_grad():
            return self._encode(items, mode, batch_size, max_new_tokens, do_sample, temperature, num_samples, seed,
                                progress)

    def _encode_with_engine(self, items, engine, batch_size, max_new_tokens, do_sample, temperature, num_samples,
                            seed, progress) -> Encoded:
        if num_samples > 1 and not do_sample:
            raise UserError("num_samples > 1 needs do_sample=True (greedy decoding gives identical samples)")
        items = [it if isinstance(it, Item) else Item.from_dict(it) for it in items]
        if not items:
            raise UserError("no items to encode")
        runs = []
        for s in range(num_samples):  # one pass per sample, each with its own seed: a seeded server repeats itself
            sampling = Sampling(max_new_tokens, do_sample, temperature, None if seed is None else seed + s)
            runs.append(self.extract(items, engine.generate(items, sampling), batch_size, progress))
        if num_samples == 1:
            return runs[0]
        enc = runs[0]
        enc.embeddings = np.stack([r.embeddings for r in runs], axis=1)
        enc.fallback = np.stack([r.fallback for r in runs], axis=1)
        for name in ("texts", "generated_ids", "traces"):
            setattr(enc, name, [[getattr(r, name)[i] for r in runs] for i in range(len(items))])
        return enc

    def extract(self, items: Sequence[Item], traces: Sequence[Trace], batch_size: int = 8,
                progress: bool = False) -> Encoded:
        """Gen (and disc) embeddings of ``items`` given what each generated (module docstring, "extract")."""
        if len(items) != len(traces):
            raise ValueError(f"{len(items)} items but {len(traces)} traces")
        with self._lock, torch.no_grad():
            embs, discs, fallback, gen_ids = [], [], [], []
            for start in tqdm(range(0, len(items), batch_size), desc="extract gen", disable=not progress,
                              total=math.ceil(len(items) / batch_size), leave=False):
                e, d, f, ids = self._extract_batch(list(items[start:start + batch_size]),
                                                   list(traces[start:start + batch_size]))
                embs.append(e)
                discs.append(d)
                fallback.extend(f)
                gen_ids.extend(ids)
        fb = np.asarray(fallback, dtype=bool)
        return Encoded(embeddings=np.concatenate(embs), texts=[t.text for t in traces], fallback=fb,
                       generated_ids=gen_ids, disc_embeddings=np.concatenate(discs), traces=list(traces),
                       stats={"mode": "gen", "num_items": len(items), "fallback_count": int(fb.sum()),
                              "generated_tokens": sum(len(i) for i in gen_ids), "extracted": True})

    def _extract_batch(self, items: list[Item], traces: list[Trace]):
        prompt = self.batch(items)
        marker = min(self.eos_ids)  # stands for "the row ended with an EOS" in the hook path's own ids
        own = [t.ids(self.tokenizer) + ([marker] if t.finished else []) for t in traces]
        fed = [o[:-1] for o in own]  # what the generation fed after the prompt (never its final token)
        keep = prompt["attention_mask"].bool()
        prompts = [prompt["input_ids"][b][keep[b]] for b in range(len(items))]
        lengths = [len(p) + len(f) for p, f in zip(prompts, fed)]
        width = max(lengths)
        ids = torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=prompt["input_ids"].dtype)
        attention = torch.zeros_like(ids)
        media = torch.zeros_like(ids)
        for b, (p, f, n) in enumerate(zip(prompts, fed, lengths)):
            ids[b, width - n:] = torch.cat([p, torch.tensor(f, dtype=ids.dtype)])
            attention[b, width - n:] = 1
            media[b, width - n:width - n + len(p)] = prompt["mm_token_type_ids"][b][keep[b]]
        batch = {**prompt, "input_ids": ids.to(self.device), "attention_mask": attention.to(self.device),
                 "mm_token_type_ids": media.to(self.device)}
        states = language_states(self.model, batch)
        gen_rows, disc_rows, fallback = [], [], []
        for b, (p, f) in enumerate(zip(prompts, fed)):
            step, fb = gen_emb_step(own[b], self.backbone.gen_emb_id)  # step 0 = the last prompt token
            gen_rows.append(states[b, width - 1 - len(f) + step])
            fallback.append(fb)
            prompt_start = width - len(p) - len(f)
            disc_rows.append(gather_last(states[b:b + 1, prompt_start:prompt_start + len(p)], p[None],
                                         self.backbone.disc_emb_id, self.disc_offset)[0])
        return (_normalise(torch.stack(gen_rows)), _normalise(torch.stack(disc_rows)), fallback,
                [o[:-1] if t.finished else o for o, t in zip(own, traces)])

    def _encode(self, items, mode, batch_size, max_new_tokens, do_sample, temperature, num_samples, seed,
                progress) -> Encoded:
        if mode not in ("disc", "gen"):
            raise UserError(f"mode must be 'disc' or 'gen', got {mode!r}")
        if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
            raise UserError("batch_size, max_new_tokens and num_samples must be ≥ 1")
        if num_samples > 1 and not do_sample and mode == "gen":
            raise UserError("num_samples > 1 needs do_sample=True (greedy decoding gives identical samples)")
        items = [it if isinstance(it, Item) else Item.from_dict(it) for it in items]
        if not items:
            raise UserError("no items to encode")
        if seed is not None:
            torch.manual_seed(seed)
        if mode == "disc":
            return self._encode_disc(items, batch_size, progress)
        expanded = [it for it in items for _ in range(num_samples)]
        enc = self._encode_gen(expanded, batch_size, max_new_tokens, do_sample, temperature, progress)
        if num_samples > 1:
            n, d = len(items), enc.embeddings.shape[-1]
            enc.embeddings = enc.embeddings.reshape(n, num_samples, d)
            enc.fallback = enc.fallback.reshape(n, num_samples)
            enc.texts = [enc.texts[i * num_samples:(i + 1) * num_samples] for i in range(n)]
            enc.generated_ids = [enc.generated_ids[i * num_samples:(i + 1) * num_samples] for i in range(n)]
            enc.traces = [enc.traces[i * num_samples:(i + 1) * num_samples] for i in range(n)]
            enc.disc_embeddings = enc.disc_embeddings[::num_samples]
        return enc

    # ---------------------------------------------------------------- disc
    def _encode_disc(self, items: list[Item], batch_size: int, progress: bool) -> Encoded:
        out = []
        for start in tqdm(range(0, len(items), batch_size), desc="embed disc", disable=not progress,
                          total=math.ceil(len(items) / batch_size), leave=False):
            batch = self.batch(items[start:start + batch_size])
            hs = language_states(self.model, batch)
            out.append(_normalise(gather_last(hs, batch["input_ids"], self.backbone.disc_emb_id, self.disc_offset)))
        return Encoded(embeddings=np.concatenate(out), stats={"mode": "disc", "num_items": len(items)})

    # ---------------------------------------------------------------- gen
    def _encode_gen(self, items: list[Item], batch_size: int, max_new_tokens: int, do_sample: bool,
                    temperature: float, progress: bool) -> Encoded:
        embs, discs, texts, fallback, gen_ids, traces = [], [], [], [], [], []
        gen_tokens = 0
        for start in tqdm(range(0, len(items), batch_size), desc="embed gen", disable=not progress,
                          total=math.ceil(len(items) / batch_size), leave=False):
            e, d, t, f, ids, n = self._generate_batch(items[start:start + batch_size], max_new_tokens, do_sample,
                                                 temperature)
            embs.append(e)
            discs.append(d)
            texts.extend(t)
            fallback.extend(f)
            gen_ids.extend(ids)
            traces.extend(self._trace(text, own) for text, own in zip(t, ids))
            gen_tokens += n
        fb = np.asarray(fallback, dtype=bool)
        if fb.any():  # callers report it (embed step: a warning; evaluate: the rate in the report)
            log.debug("%d of %d items produced no <gen_emb>; used the last generated state (flagged in "
                        "Encoded.fallback)", int(fb.sum()), len(fb))
        return Encoded(embeddings=np.concatenate(embs), texts=texts, fallback=fb, generated_ids=gen_ids,
                       disc_embeddings=np.concatenate(discs), traces=traces,
                       stats={"mode": "gen", "num_items": len(items), "fallback_count": int(fb.sum()),
                              "generated_tokens": gen_tokens})

    def _generate_batch(self, items: list[Item], max_new_tokens: int, do_sample: bool, temperature: float):
        batch = self.batch(items)
        prompt_len = batch["input_ids"].shape[1]
        gen_id = self.backbone.gen_emb_id
        recorder = LastStateRecorder()
        handle = language_model(self.model).register_forward_hook(recorder)
        try:
            # No stopping rule of our own: every row runs to its EOS or the budget, as in UME-R1's evaluation
            # (eval_twomode.py), so a second <gen_emb> after the first can still win. The EOS ids are passed
            # explicitly so that where generation stops is where ``_row_length`` ends the row.
            sequences = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature if do_sample else None, top_p=None, top_k=None,
                eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=False)
        finally:
            handle.remove()
        steps = torch.stack(recorder.steps, dim=1)  # (B, S, D); S = number of forward calls
        disc = _normalise(gather_last(recorder.prefill, batch["input_ids"], self.backbone.disc_emb_id,
                                      self.disc_offset))
        generated = sequences[:, prompt_len:].cpu()
        rows, texts, fallback, own_ids = [], [], [], []
        for b in range(generated.shape[0]):
            ids = generated[b].tolist()
            own = ids[:self._row_length(ids)]  # never the padding steps of a row that finished early
            step, fb = gen_emb_step(own, gen_id)
            rows.append(steps[b, step])
            fallback.append(fb)
            own_ids.append(own)
            texts.append(self.tokenizer.decode([t for t in own if t not in self.eos_ids], skip_special_tokens=True))
        n_tokens = sum(len(o) for o in own_ids)
        return _normalise(torch.stack(rows)), disc, texts, fallback, own_ids, n_tokens

    def _trace(self, text: str, own: list[int]) -> Trace:
        finished = bool(own) and own[-1] in self.eos_ids
        return Trace(text, tuple(own[:-1] if finished else own), finished)

    def _row_length(self, ids: list[int]) -> int:
        """Number of tokens this row generated itself: through its first EOS, or all of them (budget reached)."""
        for j, t in enumerate(ids):
            if t in self.eos_ids:
                return j + 1
        return len(ids)


def language_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last-layer states (after the final norm) of a plain forward, without the LM head (no 152k-wide logits)."""
    inner = getattr(model, "model", model)
    out = inner(**batch, use_cache=False)
    return out.last_hidden_state


def gather_last(states: torch.Tensor, input_ids: torch.Tensor, token_id: int, offset: int = 0) -> torch.Tensor:
    """``states[b, last position of token_id in input_ids[b] + offset]``; every row must contain the token (and,
    with an offset, that many tokens after it)."""
    hit = input_ids == token_id
    if not bool(hit.any(dim=1).all()):
        missing = (~hit.any(dim=1)).nonzero().flatten().tolist()
        raise UserError(f"rows {missing} contain no token id {token_id}; the prompt format is broken")
    pos = hit.shape[1] - 1 - hit.flip(1).float().argmax(dim=1) + offset
    if bool((pos >= hit.shape[1]).any()):
        raise UserError(f"token id {token_id} is the last token of a row; nothing follows it to read at +{offset}")
    return states[torch.arange(states.shape[0], device=states.device), pos]
