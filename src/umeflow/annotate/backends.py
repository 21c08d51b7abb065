"""Annotator backends: each side of a pair (query, target) gets ``<think>REASONING</think><answer>SUMMARY`` from
either a strong multimodal LLM behind an OpenAI-compatible endpoint, or — offline — from the record's own metadata.

``Side`` is what a backend sees: the instance text, the image path (if any), the role, and the pair's real metadata.
Backends return the response *without* ``<gen_emb>``; the step appends it (UME-R1's target format).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from umeflow.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Side:
    record: str  # "pairs.jsonl:17 qry" — named in errors
    role: str  # "query" | "target"
    text: str
    image: Path | None
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    summary_hint: str = ""  # the pair's shared answer (label, yes/no, caption, category)

    def content_key(self, salt: str) -> str:
        h = hashlib.sha256(salt.encode())
        h.update(self.text.encode())
        if self.image is not None:
            h.update(Path(self.image).read_bytes())
        return h.hexdigest()


# ------------------------------------------------------------------------------------------------- grounded

_IMAGE_OPENERS = ("The image shows", "This picture contains", "I can see", "The picture depicts")
_TEXT_OPENERS = ("The text names", "This text describes", "The text refers to", "The words mention")


def _words(text: str, limit: int) -> str:
    parts = text.split()
    return " ".join(parts[:limit]) + ("…" if len(parts) > limit else "")


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


class GroundedAnnotator:
    """Reasoning and summary written only from real metadata (label, caption, category, question, WordNet gloss).

    The offline stand-in for an MLLM annotator: it cannot look at pixels, so it never claims more than the metadata
    says; templates vary deterministically with the seed and the content so the model does not learn one string.
    """

    name = "grounded"

    def __init__(self, seed: int = 0, max_reasoning_words: int = 16):
        self.seed, self.max_words = seed, max_reasoning_words

    def _pick(self, options, side: Side):
        h = int(hashlib.sha256(f"{self.seed}|{side.role}|{side.text}|{side.summary_hint}".encode()).hexdigest(), 16)
        return options[h % len(options)]

    def annotate(self, side: Side) -> str:
        m = side.meta
        summary = side.summary_hint
        opener = self._pick(_IMAGE_OPENERS if side.image is not None else _TEXT_OPENERS, side)
        label = (m.get("label") or "").lower()
        if m.get("question") and side.role == "query":
            thing = _article(label) if label else "the item"
            reason = f"{opener} {thing}; {m['question']} {summary}."
            if len(reason.split()) > self.max_words:
                reason = f"{opener} {thing}; so {summary}."
        elif m.get("question"):
            reason = f"The answer given is {summary}."
        elif side.role == "target" and side.image is None and m.get("category") == summary:
            reason = f"{opener} the {summary} category."  # the target text is only the category name
        elif label and m.get("gloss") and len(f"{opener} {_article(label)}, {m['gloss']}.".split()) <= self.max_words:
            reason = f"{opener} {_article(label)}, {m['gloss']}."
        elif label:  # (a gloss that does not fit the length budget is left out rather than cut mid-phrase)
            reason = f"{opener} the digit {label}." if label in _DIGITS else f"{opener} {_article(label)}."
        elif "category" in m and summary == m["category"]:
            reason = f"{opener} {m.get('caption', '').rstrip('.').lower()}, in the {summary} category."
        else:
            reason = f"{opener} {m.get('caption', side.text).rstrip('.').lower()}."
        reason = _words(reason, self.max_words)
        return f"<think>{reason}</think><answer>{summary}"


_DIGITS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


# ------------------------------------------------------------------------------------------------- openai

DEFAULT_PROMPT = ("Describe and reason about the input above, then summarize it. Answer exactly in the form "
                  "<think>your reasoning</think><answer>a word or a short sentence</answer>")


class ResponseCache:
    """Append-only JSONL of ``{"key", "response"}``; a line is flushed and fsynced as soon as it arrives, so a killed
    run keeps every completed call and a rerun repeats none of them. A torn last line is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put(self, key: str, response: str) -> None:
        with self.lock:
            self.data[key] = response
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())


class OpenAIAnnotator:
    """Any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, …): images as base64 data URLs, bounded
    concurrency, exponential backoff with jitter on 429/5xx/timeouts (``Retry-After`` honoured), a per-side cache."""

    name = "openai"
    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, cache_dir: str | Path, api_key_env: str = "OPENAI_API_KEY",
                 prompt: str = DEFAULT_PROMPT, concurrency: int = 4, max_retries: int = 5,
                 backoff_base: float = 1.0, timeout: float = 120.0, max_tokens: int = 1024,
                 temperature: float = 0.0):
        if not base_url or not model:
            raise UserError("the openai annotator needs annotate.base_url and annotate.model")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.prompt = model, prompt
        self.api_key = os.environ.get(api_key_env, "")  # never logged, never written anywhere
        self.concurrency, self.max_retries, self.backoff_base = concurrency, max_retries, backoff_base
        self.timeout, self.max_tokens, self.temperature = timeout, max_tokens, temperature
        salt = hashlib.sha256(f"{model}|{prompt}".encode()).hexdigest()[:16]
        self.salt = salt
        self.cache = ResponseCache(Path(cache_dir).expanduser() / f"openai-{salt}.jsonl")
        self.calls = 0
        self.cache_hits = 0

    def _payload(self, side: Side) -> dict:
        content = []
        if side.image is not None:
            data = base64.b64encode(Path(side.image).read_bytes()).decode()
            mime = "image/png" if str(side.image).lower().endswith(".png") else "image/jpeg"
            content.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        content.append({"type": "text", "text": (side.text + "\n\n" + self.prompt).strip()})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _call(self, side: Side) -> str:
        import requests

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                r = requests.post(self.url, json=self._payload(side), headers=headers, timeout=self.timeout)
                self.calls += 1
                if r.status_code == 200:
                    return _strip_answer_close(r.json()["choices"][0]["message"]["content"])
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in self.RETRY_STATUS:
                    raise UserError(f"{side.record}: the annotator endpoint refused the request ({last})")
                retry_after = r.headers.get("Retry-After")
            except (requests.Timeout, requests.ConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            except (KeyError, IndexError, ValueError) as e:
                raise UserError(f"{side.record}: malformed chat-completions response ({e})") from None
            if attempt == self.max_retries:
                break
            delay = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else \
                self.backoff_base * 2 ** attempt * (0.5 + random.random() / 2)
            time.sleep(delay)
        raise UserError(f"{side.record}: annotator endpoint {self.url} failed after {self.max_retries + 1} attempts; "
                        f"last error: {last}")

    def annotate_all(self, sides: list[Side], progress=None) -> dict[Side, str]:
        """Annotate every side (cache first), ``concurrency`` requests in flight; the first hard failure stops all."""
        keys = {s: s.content_key(self.salt) for s in sides}
        by_key: dict[str, str] = {}
        todo: dict[str, Side] = {}  # one request per distinct content, even when pairs repeat a target
        for s in sides:
            cached = self.cache.get(keys[s])
            if cached is not None:
                by_key[keys[s]] = cached
                self.cache_hits += 1
            else:
                todo.setdefault(keys[s], s)
        if progress:
            progress.update(len(sides) - len(todo))

        stop = threading.Event()  # after the first hard failure no new request starts

        def work(s: Side) -> None:
            if stop.is_set():
                return
            try:
                response = self._call(s)
            except BaseException:
                stop.set()
                raise
            self.cache.put(keys[s], response)
            by_key[keys[s]] = response
            if progress:
                progress.update(1)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(work, s) for s in todo.values()]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
        return {s: by_key[keys[s]] for s in sides}


def _strip_answer_close(text: str) -> str:
    """The model may close ``</answer>`` or add ``<gen_emb>``; UME-R1's target ends the summary with ``<gen_emb>``."""
    text = text.strip()
    text = re.sub(r"\s*<gen_emb>\s*$", "", text)
    return re.sub(r"\s*</answer>\s*$", "", text)
