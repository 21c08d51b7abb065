"""Annotation by a multimodal LLM behind any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, …).

Images travel as base64 data URLs. Requests, concurrency, retries and backoff are ``umeflow.openai_client.ChatClient``'s
(shared with the generation engine and the GRPO judge). Every answer goes into a content-addressed cache as it
arrives, so a killed run resumes without repeating a completed call. The API key is read from the environment variable
named by the config and is never logged or written anywhere.
"""

from __future__ import annotations

import base64
import os

from umeflow.annotate.cache import ResponseCache, content_key
from umeflow.annotate.sides import Side
from umeflow.errors import UserError
from umeflow.model.chat import GEN_EMB
from umeflow.openai_client import ChatClient


DEFAULT_PROMPT = (
    "Think about the input above step by step: what it shows or says and what matters for finding it again. "
    "Then summarize the entire input in a word or a short sentence. Reply exactly in the form "
    "<think>your reasoning</think><answer>your summary</answer>"
)
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".webp": "image/webp", ".bmp": "image/bmp"}


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
        self.client = ChatClient(base_url, api_key_env, concurrency, max_retries, backoff_base, max_backoff, timeout,
                                 what="annotate.base_url")
        self.model, self.prompt = model, prompt or DEFAULT_PROMPT
        self.max_tokens, self.temperature = max_tokens, temperature
        self.cache = ResponseCache(cache_dir)
        self.stats = {"calls": 0, "retries": 0, "requests": 0, "cache_hits": 0, "distinct_sides": 0}

    @property
    def url(self) -> str:
        return self.client.url

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

    def request(self, side: Side) -> str:
        """One side's answer; retries transient failures, raises UserError naming the record otherwise."""
        return self.post(self.payload(side), side.where)

    def post(self, body: dict, where: str) -> str:
        """The normalised answer to one chat-completions ``body`` (the GRPO judge calls this too); ``where`` names
        the caller's record in errors."""
        answer = self.client.post(body, where, resume_hint=f"Completed answers are cached in {self.cache.folder}; "
                                                           "rerun to resume.")
        return normalise_response(answer["choices"][0]["message"])

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

        def on_answer(key: str, response: str) -> None:
            self.cache.put(key, response)
            answers[key] = response
            if progress is not None:
                progress.update(1)

        try:
            self.client.run_all(((key, lambda side=side: self.request(side)) for key, side in todo.items()),
                                on_answer, thread_name="annotate")
        finally:
            self.stats.update(calls=self.client.stats["calls"], retries=self.client.stats["retries"])
            self.cache.close()
        return [answers[key] for key in keys]
