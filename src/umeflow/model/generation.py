"""Gen-mode embeddings in two parts: *generate* the reasoning, then *extract* the embedding (issue #15).

vLLM cannot return the hidden state of a generated token (vLLM issues #4435, #6165), and UME-R1's maintainers advise
generating first and reading ``<gen_emb>`` with one more forward (UME-R1 issue #11). So a generation engine only
returns ``Trace``s — what each item generated — and ``Embedder.extract`` reads the embeddings from one batched,
teacher-forced prefill over prompt + trace. Engines:

- ``hf``: in-process ``generate`` (``Embedder``); it also records the states while generating (the hook path), which
  equal the extracted ones, so it needs no second forward;
- ``openai``: any OpenAI-compatible server that serves the same checkpoint (vLLM, SGLang), through chat completions
  with the very messages the in-process path renders; ``umeflow.openai_client.ChatClient`` does the concurrency,
  retries and backoff (the annotator's client);
- ``vllm``: in-process ``vllm.LLM`` (the GPU image), fed the prompt text umeflow renders and the prepared images.

A ``Trace`` holds the generated token ids where the engine reports them (hf, vllm, and a vLLM server asked with its
``return_token_ids`` extension); otherwise its text is tokenized again, which is what a prefill over a text trace
means anyway.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from umeflow.errors import UserError
from umeflow.model.chat import build_messages, render_prompt
from umeflow.model.inputs import prepare_image
from umeflow.model.items import Item

log = logging.getLogger(__name__)

ENGINES = ("hf", "openai", "vllm")


@dataclass(frozen=True)
class Trace:
    """What one item generated.

    text:      the generation decoded without special tokens (no EOS): reasoning, ``<gen_emb>`` and anything after it.
    token_ids: the generated ids without a final EOS, when the engine reports them (None: tokenize ``text``).
    finished:  the row ended with an EOS (False: ``max_new_tokens`` ran out, so its last token was generated but
               never fed to the model, and no state exists for it in the generation).
    """

    text: str
    token_ids: tuple[int, ...] | None = None
    finished: bool = True

    def ids(self, tokenizer) -> list[int]:
        """The generated ids (without a final EOS): the engine's, or ``text`` tokenized again."""
        if self.token_ids is not None:
            return list(self.token_ids)
        return tokenizer(self.text, add_special_tokens=False)["input_ids"]

    def to_json(self) -> dict:
        return {"text": self.text, "ids": None if self.token_ids is None else list(self.token_ids),
                "finished": self.finished}

    @classmethod
    def from_json(cls, d: dict) -> "Trace":
        ids = d.get("ids")
        if not isinstance(d.get("text"), str) or not isinstance(d.get("finished"), bool) or not (
                ids is None or (isinstance(ids, list) and all(isinstance(i, int) for i in ids))):
            raise ValueError(f"not a trace: {str(d)[:120]}")
        return cls(d["text"], None if ids is None else tuple(ids), d["finished"])


@dataclass(frozen=True)
class Sampling:
    """The generation settings that change a trace (part of the trace cache key)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    seed: int | None = None

    def tag(self) -> str:
        base = f"t{self.max_new_tokens}"
        if not self.do_sample:
            return base + "-greedy"
        return base + f"-temp{self.temperature:g}" + ("" if self.seed is None else f"-seed{self.seed}")


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise UserError(f"generation engine must be one of {', '.join(ENGINES)}, got {name!r}")
    return name


# ---------------------------------------------------------------------------------------------- openai engine

def image_data_url(image) -> str:
    """A PIL image as a lossless PNG data URL (what the server decodes is exactly the pixels we prepared)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _prepare(images, embedder) -> list:
    """Images or frames as the in-process path prepares them before the image processor."""
    ip = embedder.processor.image_processor
    return [prepare_image(im, embedder.sizing, ip.patch_size * ip.merge_size) for im in images]


def _pixel_limits(embedder) -> dict:
    min_pixels, max_pixels = embedder.sizing.image_limits(embedder.processor.image_processor)
    return {"min_pixels": min_pixels, "max_pixels": max_pixels}


def _trace(text: str, ids, finish_reason, eos_ids) -> Trace:
    """A Trace from an engine's answer: its ids without a final EOS (when it reports ids), finished unless the
    budget ran out."""
    if isinstance(ids, (list, tuple)):
        ids = tuple(ids[:-1] if ids and ids[-1] in eos_ids else ids)
    else:
        ids = None
    return Trace(text, ids, finished=finish_reason != "length")


def chat_messages(item: Item, embedder) -> list[dict]:
    """The OpenAI chat messages of one item: the in-process path's user turn (media first, the 28×28 white image for
    text-only items, then ``text + \\n<disc_emb>\\n`` + the generation prompt), each image prepared as the in-process
    path prepares it before the image processor."""
    messages, images, videos = build_messages(item)
    if videos:
        raise UserError("video items need the hf or vllm generation engine: the chat-completions API carries video "
                        "files, not the frames umeflow feeds")
    prepared = iter(image_data_url(im) for im in _prepare(images, embedder))
    content = [{"type": "image_url", "image_url": {"url": next(prepared)}} if part["type"] == "image" else part
               for part in messages[0]["content"]]
    return [{"role": "user", "content": content}]


def _message_text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning and "<think>" not in content:  # a server-side reasoning parser split it off: put it back
        content = f"<think>{reasoning}</think>{content}"
    return content


class OpenAIEngine:
    """Generation by an OpenAI-compatible server that serves the checkpoint being evaluated.

    Each item is one chat-completions request with the in-process path's messages, ``max_tokens`` =
    ``max_new_tokens``, the EOS ids as ``stop_token_ids`` and the pixel limits as ``mm_processor_kwargs`` (vLLM's
    extensions; other servers ignore what they do not know), and ``return_token_ids`` so that a vLLM server also
    returns the generated and prompt token ids. The server must serve the same weights as the local checkpoint:
    the trace cache is keyed by the local checkpoint's fingerprint.
    """

    name = "openai"

    def __init__(self, embedder, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 5, backoff_base: float = 1.0, timeout: float = 600.0):
        from umeflow.openai_client import ChatClient

        if not model:
            raise UserError("the openai generation engine needs the served model's name (evaluate.engine_model)")
        self.embedder, self.model = embedder, model
        self.client = ChatClient(base_url, api_key_env, concurrency, max_retries, backoff_base, timeout=timeout,
                                 what="evaluate.engine_base_url")
        self.prompt_token_ids: dict[int, list[int]] = {}  # per request index of the last call, when the server says

    def body(self, item: Item, sampling: Sampling) -> dict:
        body = {"model": self.model, "messages": chat_messages(item, self.embedder),
                "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature if sampling.do_sample else 0.0,
                "top_p": 1.0, "stop_token_ids": sorted(self.embedder.eos_ids), "skip_special_tokens": True,
                "return_token_ids": True, "mm_processor_kwargs": _pixel_limits(self.embedder)}
        if sampling.do_sample and sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def generate(self, items: Sequence[Item], sampling: Sampling, progress=None,
                 on_trace=None) -> list[Trace]:
        """One trace per item, in order; ``on_trace(index, trace)`` is called as each arrives (the caller caches)."""
        bodies = [self.body(it, sampling) for it in items]  # all built first: a bad item fails before any request
        traces: dict[int, Trace] = {}
        self.prompt_token_ids = {}

        def request(i: int):
            return self.client.post(bodies[i], f"gen-mode item {i}")

        def on_result(i: int, answer: dict) -> None:
            choice = answer["choices"][0]
            if isinstance(answer.get("prompt_token_ids"), list):
                self.prompt_token_ids[i] = answer["prompt_token_ids"]
            trace = _trace(_message_text(choice["message"]), choice.get("token_ids"), choice.get("finish_reason"),
                           self.embedder.eos_ids)
            traces[i] = trace
            if on_trace is not None:
                on_trace(i, trace)
            if progress is not None:
                progress.update(1)

        self.client.run_all(((i, lambda i=i: request(i)) for i in range(len(items))), on_result, "generate")
        return [traces[i] for i in range(len(items))]


# ---------------------------------------------------------------------------------------------- vllm engine

class VLLMEngine:
    """Generation by in-process ``vllm.LLM`` over the same checkpoint (the GPU image; vLLM is not in the CPU lock).

    Each prompt is the text umeflow renders (``<|image_pad|>`` once per image; vLLM expands it) with the prepared
    images as multi-modal data, so vLLM sees the in-process path's prompt and pixels."""

    name = "vllm"

    def __init__(self, embedder, model_path: str, gpu_memory_utilization: float = 0.5, dtype: str = "auto",
                 tensor_parallel_size: int = 1, max_model_len: int | None = None):
        try:
            import vllm
        except ImportError:
            raise UserError("the vllm generation engine needs vLLM, which is in the GPU image (images/train.Dockerfile, "
                            "requirements-gpu-lock.txt), not in the CPU lock; use engine hf or openai here") from None
        self.embedder, self._vllm = embedder, vllm
        kwargs = {"model": str(model_path), "gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype,
                  "tensor_parallel_size": tensor_parallel_size, "trust_remote_code": False}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(**kwargs)

    def prompt(self, item: Item) -> dict:
        messages, images, videos = build_messages(item)
        data = {}
        if images:
            data["image"] = _prepare(images, self.embedder)
        if videos:
            data["video"] = [_prepare(frames, self.embedder) for frames in videos]
        return {"prompt": render_prompt(self.embedder.processor, messages), "multi_modal_data": data,
                "mm_processor_kwargs": _pixel_limits(self.embedder)}

    def generate(self, items: Sequence[Item], sampling: Sampling, progress=None, on_trace=None) -> list[Trace]:
        params = self._vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens, temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=1.0, seed=sampling.seed if sampling.do_sample else None,
            stop_token_ids=sorted(self.embedder.eos_ids), skip_special_tokens=True)
        outputs = self.llm.generate([self.prompt(it) for it in items], params, use_tqdm=False)
        traces = []
        for i, out in enumerate(outputs):
            gen = out.outputs[0]
            trace = _trace(gen.text, list(gen.token_ids), gen.finish_reason, self.embedder.eos_ids)
            traces.append(trace)
            if on_trace is not None:
                on_trace(i, trace)
            if progress is not None:
                progress.update(1)
        return traces
