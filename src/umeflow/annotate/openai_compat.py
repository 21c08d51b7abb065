"""Annotation by a multimodal LLM behind any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, …).

Images travel as base64 data URLs. Requests run ``concurrency`` at a time; 429, 5xx, timeouts and connection errors are
retried with exponential backoff and jitter (``Retry-After`` wins when the server sends it). Every answer goes into a
content-addressed cache as it arrives, so a killed run resumes without repeating a completed call. The API key is read
from the environment variable named by the config and is never logged or written anywhere.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import requests

from umeflow.annotate.cache import ResponseCache, content_key
from umeflow.annotate.sides import Side
from umeflow.errors import UserError
from umeflow.model.chat import GEN_EMB

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Think about the input above step by step: what it shows or says and what matters for finding it again. "
    "Then summarize the entire input in a word or a short sentence. Reply exactly in the form "
    "<think>your reasoning</think><answer>your summary</answer>"
)
RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".webp": "image/webp", ".bmp": "image/bmp"}


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date, counted from ``now``, default the clock),
    or None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError):
        return None


def normalise_response(message: dict) -> str:
    """The assistant message as ``<think>…</think><answer>SUMMARY`` (``</answer>``/``<gen_emb>`` removed: the step
    appends UME-R1's ``<gen_emb>``). Servers that split reasoning into ``reasoning_content`` get it put back."""
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning and "<think>" not in content:
        content = f"<think>{reasoning.strip()}</think>{content.strip()}"
    text = content.strip()
    for tail in (GEN_EMB, "</answer>"):
        if text.endswith(tail):
            text = text[: -len(tail)].rstrip()
    return text


class OpenAIAnnotator:
    name = "openai"

    def __init__(self, base_url: str, model: str, cache_dir: str | os.PathLike, api_key_env: str = "OPENAI_API_KEY",
                 prompt: str = "", concurrency: int = 4, max_retries: int = 5, backoff_base: float = 1.0,
                 max_backoff: float = 120.0, timeout: float = 120.0, max_tokens: int = 1024,
                 temperature: float = 0.0):
        if not base_url or not model:
            raise UserError("the openai annotator needs annotate.base_url (e.g. http://host:8000/v1) and "
                            "annotate.model; set them with --set base_url=... --set model=...")
        if concurrency < 1 or max_retries < 0:
            raise UserError("annotate.concurrency must be >= 1 and annotate.max_retries >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.prompt = model, prompt or DEFAULT_PROMPT
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env, "")
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_base, self.max_backoff, self.timeout = backoff_base, max_backoff, timeout
        self.max_tokens, self.temperature = max_tokens, temperature
        self.cache = ResponseCache(cache_dir)
        self.stats = {"calls": 0, "retries": 0, "requests": 0, "cache_hits": 0, "distinct_sides": 0}
        self._lock = threading.Lock()
        self._local = threading.local()

    # ------------------------------------------------------------------------------------------------ one request

    def payload(self, side: Side) -> dict:
        content = []
        if side.image_path is not None:
            mime = MIME.get(side.image_path.suffix.lower(), "application/octet-stream")
            data = base64.b64encode(side.image_path.read_bytes()).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        content.append({"type": "text", "text": f"{side.text}\n\n{self.prompt}" if side.text else self.prompt})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):  # requests.Session is not thread-safe: one per worker thread
            self._local.session = requests.Session()
        return self._local.session

    def request(self, side: Side) -> str:
        """One side's answer; retries transient failures, raises UserError naming the record otherwise."""
        return self.post(self.payload(side), side.where)

    def post(self, body: dict, where: str) -> str:
        """POST one chat-completions ``body``; retries 429/5xx/timeouts with backoff; ``where`` names the caller's
        record in errors."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                self._count("calls")
                r = self._session().post(self.url, json=body, headers=headers, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        return normalise_response(r.json()["choices"][0]["message"])
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                        raise UserError(f"{where}: {self.url} answered 200 without a chat completion "
                                        f"({type(e).__name__}: {e}; body starts {r.text[:200]!r})") from None
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in RETRY_STATUS and r.status_code < 500:
                    hint = (f" (is the API key in ${self.api_key_env} right?)" if r.status_code in (401, 403)
                            else "")
                    raise UserError(f"{where}: {self.url} refused the request, {last}{hint}")
                wait = retry_after_seconds(r.headers.get("Retry-After"))
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = self.backoff_base * 2 ** attempt * random.uniform(0.5, 1.0)
            self._count("retries")
            log.debug("%s: %s; retrying in %.2fs", where, last, wait)
            time.sleep(min(wait, self.max_backoff))
        raise UserError(f"{where}: {self.url} failed {self.max_retries + 1} times; last error: {last}. "
                        f"Completed answers are cached in {self.cache.folder}; rerun to resume.")

    # ------------------------------------------------------------------------------------------------ all sides

    def annotate_all(self, sides: list[Side], progress=None) -> list[str]:
        """Answers for ``sides`` in order: one request per distinct content, cache first, ``concurrency`` in
        flight. The first unrecoverable failure stops new requests; answers already received stay cached."""
        keys = [content_key(self.model, self.prompt, s.text, s.image_path) for s in sides]
        answers: dict[str, str] = {}
        todo: dict[str, Side] = {}
        for side, key in zip(sides, keys):
            if key in answers or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is not None:
                answers[key] = cached
            else:
                todo[key] = side
        self.stats.update(distinct_sides=len(answers) + len(todo), cache_hits=len(answers), requests=len(todo))
        if progress is not None:
            progress.reset(total=len(answers) + len(todo))
            progress.update(len(answers))

        stop = threading.Event()

        def work(key: str, side: Side) -> str | None:
            if stop.is_set():
                return None
            try:
                response = self.request(side)
            except BaseException:
                stop.set()  # here, in the worker, so that no queued request starts after a failure
                raise
            self.cache.put(key, response)
            return response

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="annotate") as pool:
                futures = {pool.submit(work, key, side): key for key, side in todo.items()}
                try:
                    for future in as_completed(futures):
                        answers[futures[future]] = future.result()
                        if progress is not None:
                            progress.update(1)
                except BaseException:  # (also Ctrl-C) requests in flight finish and are cached; queued ones never start
                    stop.set()
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            self.cache.close()
        return [answers[key] for key in keys]
