"""One client for every OpenAI-compatible chat-completions endpoint umeflow calls (vLLM, SGLang, a hosted API): the
annotator, the GRPO process-reward judge and the ``openai`` generation engine of gen-mode embeddings.

Requests run ``concurrency`` at a time; 429, 5xx, timeouts and connection errors are retried with exponential backoff
and jitter (``Retry-After`` wins when the server sends it); any other 4xx fails at once. The API key is read from the
environment variable the caller names and is never logged or written anywhere. ``run_all`` stops starting requests at
the first unrecoverable failure; answers already received have been handed to the caller (which caches them), so a
rerun resumes.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed

import requests

from umeflow.errors import UserError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx


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


class ChatClient:
    """POSTs chat-completions bodies to ``base_url``/chat/completions with retries; ``stats`` counts calls and
    retries. ``what`` names the caller's setting in error messages (e.g. ``annotate.base_url``)."""

    def __init__(self, base_url: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                 max_retries: int = 5, backoff_base: float = 1.0, max_backoff: float = 120.0, timeout: float = 120.0,
                 what: str = "base_url"):
        if not base_url:
            raise UserError(f"{what} is empty; set it to the server's OpenAI-compatible URL (e.g. http://host:8000/v1)")
        if concurrency < 1 or max_retries < 0:
            raise UserError("concurrency must be >= 1 and max_retries >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env, "")
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_base, self.max_backoff, self.timeout = backoff_base, max_backoff, timeout
        self.stats = {"calls": 0, "retries": 0}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):  # requests.Session is not thread-safe: one per worker thread
            self._local.session = requests.Session()
        return self._local.session

    def post(self, body: dict, where: str, resume_hint: str = "") -> dict:
        """The JSON answer to one ``body``, checked to hold ``choices[0].message``. Retries transient failures;
        raises UserError naming ``where`` (the caller's record) otherwise."""
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
                        answer = r.json()
                        if not isinstance(answer["choices"][0]["message"], dict):
                            raise TypeError("message is not an object")
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                        raise UserError(f"{where}: {self.url} answered 200 without a chat completion "
                                        f"({type(e).__name__}: {e}; body starts {r.text[:200]!r})") from None
                    return answer
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
        raise UserError(f"{where}: {self.url} failed {self.max_retries + 1} times; last error: {last}."
                        + (f" {resume_hint}" if resume_hint else ""))

    def run_all(self, jobs: Iterable[tuple[str, Callable[[], object]]], on_result: Callable[[str, object], None],
                thread_name: str = "chat") -> None:
        """Run each ``(key, job)`` (a callable that makes its request(s)) ``concurrency`` at a time and hand every
        result to ``on_result(key, result)`` as it arrives, in the worker thread, one at a time (so a caller that
        caches there keeps every answer received, also when the run is interrupted). The first failure stops new
        jobs (jobs in flight finish and are handed over; queued ones never start) and is raised; so is Ctrl-C."""
        stop = threading.Event()
        handing_over = threading.Lock()

        def work(key: str, job: Callable[[], object]) -> None:
            if stop.is_set():
                return
            try:
                result = job()
                with handing_over:
                    on_result(key, result)
            except BaseException:
                stop.set()  # here, in the worker, so that no queued job starts after a failure
                raise

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=thread_name) as pool:
            futures = [pool.submit(work, key, job) for key, job in jobs]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:  # (also Ctrl-C) jobs in flight finish and are handed over; queued ones never start
                stop.set()
                for future in futures:
                    future.cancel()
                raise

