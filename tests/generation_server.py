"""A small OpenAI-compatible chat-completions server on 127.0.0.1 that serves a local checkpoint greedily, for the
``openai`` generation engine's tests: the part of vLLM's API the engine uses, built on plain transformers.

It does not use umeflow's batch building: it renders the request's messages with the checkpoint's own chat template
(``processor.apply_chat_template``), decodes the ``image_url`` data URLs and runs the checkpoint's processor on
``(text, images)`` with the request's ``mm_processor_kwargs`` pixel limits, then ``generate`` one request at a time.
Like vLLM with ``return_token_ids`` it answers ``prompt_token_ids`` and ``choices[0].token_ids`` (the generated ids,
EOS included), and ``finish_reason`` ``stop`` or ``length``. ``script``: statuses to answer first (e.g. a 5xx storm);
``drop_ids``: behave like a server without the token-ids extension (text only).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from PIL import Image

from umeflow.model.items import Item


class GenerationServer:
    def __init__(self, model, processor, script=(), drop_ids: bool = False):
        self.model, self.processor = model, processor
        self.script, self.drop_ids = list(script), drop_ids
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    status = outer.script.pop(0) if outer.script else 200
                    if status != 200:
                        self._send(status, {"error": {"message": "overloaded"}})
                        return
                    answer = outer.complete(body)
                self._send(200, answer)

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def complete(self, body: dict) -> dict:
        messages, images = [], []
        for m in body["messages"]:
            parts = []
            for part in m["content"]:
                if part["type"] == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            messages.append({"role": m["role"], "content": parts})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        limits = body.get("mm_processor_kwargs", {})
        size = {"shortest_edge": limits["min_pixels"], "longest_edge": limits["max_pixels"]} if limits else None
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt",
                                **({"images_kwargs": {"size": size}} if size and images else {}))
        prompt_ids = inputs["input_ids"][0].tolist()
        eos = body.get("stop_token_ids") or [self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=body["max_tokens"], do_sample=False, top_p=None,
                                      top_k=None, temperature=None, eos_token_id=eos,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        ids = out[0, len(prompt_ids):].tolist()
        finished = bool(ids) and ids[-1] in eos
        content = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
        choice = {"index": 0, "message": {"role": "assistant", "content": content},
                  "finish_reason": "stop" if finished else "length"}
        answer = {"id": "cmpl-test", "object": "chat.completion", "choices": [choice]}
        if body.get("return_token_ids") and not self.drop_ids:
            choice["token_ids"] = ids
            answer["prompt_token_ids"] = prompt_ids
        return answer


# ---------------------------------------------------------------------------------------------- test model

class _GateHead(torch.nn.Module):
    """Deterministic stand-in for a trained head: where a hidden feature is high, ``<gen_emb>`` (or EOS) wins the
    argmax. Hidden states vary with the input and the step, so greedy rows emit ``<gen_emb>`` or not, stop at their
    own EOS at different lengths, or run to the budget (``_gate`` makes a fed ``<gen_emb>`` lead to EOS)."""

    def __init__(self, head, gen_id: int, eos_id: int, gen_gate: float = 0.42, eos_gate: float = -0.97):
        super().__init__()
        self.head, self.gen_id, self.eos_id = head, gen_id, eos_id
        self.gen_gate, self.eos_gate = gen_gate, eos_gate

    def forward(self, x):
        out = self.head(x)
        out[..., self.gen_id] += 1e3 * (x[..., 0] > self.gen_gate)
        out[..., self.eos_id] += 2e3 * (x[..., 1] > self.eos_gate)
        return out


def gate(backbone, **kw):
    eos = backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
    backbone.model.lm_head = _GateHead(backbone.model.lm_head, backbone.gen_emb_id, eos, **kw)
    with torch.no_grad():  # a fed <gen_emb> pushes the EOS feature up, so it is followed by EOS, not by itself
        backbone.model.get_input_embeddings().weight[backbone.gen_emb_id, 1] += 50.0


def sample_items(n_text: int = 4):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56 + 14 * i, 70, 3), dtype=np.uint8)) for i in range(4)]
    texts = [f"query number {i}: {'a longer description ' * i}" for i in range(n_text)]
    return ([Item(t) for t in texts] + [Item("what is this?", images=(im,)) for im in images[:3]]
            + [Item("", images=(images[3],)), Item("two", images=(images[0], images[1]))])
