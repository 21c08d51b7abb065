"""``umeflow annotate``: grounded backend, UME-R1 filters, and the OpenAI backend against a real local HTTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from umeflow.annotate.filters import check
from umeflow.config import AnnotateConfig
from umeflow.data.schemas import load_records
from umeflow.errors import UserError
from umeflow.steps.annotate import run

LABELS = ["Bag", "Sneaker", "Coat", "Dress"]


def write_pairs(root: Path, n: int = 8) -> Path:
    """A small ``data build`` output: Fashion-style classification pairs plus one VQA pair, with real-looking meta."""
    images = root / "train" / "images" / "FashionMNIST"
    images.mkdir(parents=True)
    lines = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        Image.new("RGB", (28, 28), (i * 20, 90, 200 - i * 10)).save(images / f"{i}.png")
        lines.append({"dataset_name": "FashionMNIST", "qry": "<|image_1|>\nRepresent the given image for classification",
                      "qry_image_path": f"images/FashionMNIST/{i}.png", "pos_text": f"a photo of a {label.lower()}",
                      "pos_image_path": "", "meta": {"label": label, "caption": f"a photo of a {label.lower()}",
                                                     "gloss": "a thing people wear or carry"}})
    lines.append({"dataset_name": "FashionMNIST_vqa", "qry": "<|image_1|>\nIs this item footwear?",
                  "qry_image_path": "images/FashionMNIST/1.png", "pos_text": "yes", "pos_image_path": "",
                  "meta": {"label": "Sneaker", "question": "Is this item footwear?"}})
    (root / "train" / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_grounded_annotations_are_valid_sft_records(tmp_path):
    data = write_pairs(tmp_path / "data")
    metrics = run(AnnotateConfig(data=str(data), out=str(tmp_path / "ann")))
    assert metrics["pairs_kept"] == 9 and metrics["calls"] == 0
    records, _ = load_records(tmp_path / "ann" / "sft.jsonl", "ume_sft", media_root=data / "train")
    assert len(records) == 9
    for rec in records:
        for side in ("qry", "pos"):
            gpt = rec[side]["conversations"][1]["value"]
            assert check(gpt) is None, gpt
        q_answer = rec["qry"]["conversations"][1]["value"].split("<answer>")[1]
        assert q_answer == rec["pos"]["conversations"][1]["value"].split("<answer>")[1]  # one shared summary
    first = records[0]
    assert first["qry"]["image"] == "images/FashionMNIST/0.png"
    assert first["qry"]["conversations"][0]["value"].startswith("<image>\nRepresent the given image")
    assert "<answer>bag<gen_emb>" in first["qry"]["conversations"][1]["value"]
    vqa = records[-1]["qry"]["conversations"][1]["value"]
    assert "footwear" in vqa and vqa.endswith("<answer>yes<gen_emb>")
    again = tmp_path / "ann2"
    run(AnnotateConfig(data=str(data), out=str(again)))
    assert (again / "sft.jsonl").read_bytes() == (tmp_path / "ann" / "sft.jsonl").read_bytes()  # deterministic


@pytest.mark.parametrize("response,reason", [
    ("<think>fine reasoning</think><answer>bag<gen_emb>", None),
    ("<answer>bag<gen_emb>", "malformed"),
    ("<think>x</think><answer>bag", "malformed"),
    ("<think>x</think><answer>bag<gen_emb><gen_emb>", "malformed"),
    ("<think>" + "the same four words " * 3 + "</think><answer>bag<gen_emb>", "repeated_ngrams"),
    ("<think>" + " ".join(f"w{i}" for i in range(2000)) + "</think><answer>bag<gen_emb>", "too_long"),
])
def test_filters(response, reason):
    assert check(response) == reason


# ------------------------------------------------------------------------------------------ a real local endpoint

class Endpoint:
    """A chat-completions server on 127.0.0.1 with scripted failures; counts requests per content."""

    def __init__(self, script=None, delay_after: int | None = None):
        self.script = list(script or [])  # statuses to return before succeeding, e.g. [429, 200]
        self.delay_after = delay_after
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                           "body": body})
                    status = outer.script.pop(0) if outer.script else 200
                    n = len(outer.requests)
                if outer.delay_after is not None and n > outer.delay_after:
                    time.sleep(0.5)
                if status != 200:
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "busy"}')
                    return
                text = body["messages"][0]["content"][-1]["text"].split("\n")[0][:40]
                answer = {"choices": [{"message": {"content": f"<think>Looking at: {text}</think>"
                                                              f"<answer>summary</answer>"}}]}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

    def contents(self) -> list[str]:
        return [json.dumps(r["body"]["messages"], sort_keys=True) for r in self.requests]


def _openai_cfg(data, out, url, cache, **kw):
    base = dict(data=str(data), out=str(out), backend="openai", base_url=url, model="test-mllm",
                cache_dir=str(cache), backoff_base=0.01, max_retries=3, concurrency=2)
    base.update(kw)
    return AnnotateConfig(**base)


def test_openai_retries_a_429_and_sends_images_and_key(tmp_path, monkeypatch):
    data = write_pairs(tmp_path / "data", n=2)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    server = Endpoint(script=[429])
    try:
        metrics = run(_openai_cfg(data, tmp_path / "ann", server.url, tmp_path / "cache"))
    finally:
        server.close()
    assert metrics["pairs_kept"] == 3 and metrics["calls"] == 7  # 6 distinct sides + the one 429
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert all(r["auth"] == "Bearer sk-test-secret" for r in server.requests)
    image_parts = [p for r in server.requests for p in r["body"]["messages"][0]["content"] if p["type"] == "image_url"]
    assert image_parts and image_parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = (tmp_path / "ann" / "sft.jsonl").read_text()
    assert "<answer>summary<gen_emb>" in text and "</answer>" not in text
    for f in (tmp_path / "ann").iterdir():
        assert "sk-test-secret" not in f.read_text()


def test_openai_5xx_storm_fails_clearly_and_publishes_nothing(tmp_path):
    data = write_pairs(tmp_path / "data", n=2)
    server = Endpoint(script=[503] * 100)
    try:
        with pytest.raises(UserError, match=r"pairs\.jsonl:\d+ (qry|pos).*HTTP 503"):
            run(_openai_cfg(data, tmp_path / "ann", server.url, tmp_path / "cache", concurrency=1))
    finally:
        server.close()
    assert not (tmp_path / "ann").exists()
    assert len(server.requests) == 4  # 1 try + 3 retries, then the run stopped


def test_openai_resume_after_kill_repeats_no_call(tmp_path):
    data = write_pairs(tmp_path / "data", n=8)
    server = Endpoint(delay_after=6)  # fast for 6 responses, then slow enough to be killed mid-way
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "umeflow.cli", "annotate", "--data", str(data), "--out", str(tmp_path / "ann"),
           "--backend", "openai", "--set", f"base_url={server.url}", "--set", "model=test-mllm",
           "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "concurrency=1"]
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and len(server.requests) < 7 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = len(server.requests)
        assert 6 <= first < 14 and not (tmp_path / "ann").exists()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        contents = server.contents()
    finally:
        server.close()
    assert len(contents) - len(set(contents)) <= 1  # at most the one request in flight at the kill is repeated
    assert len(set(contents)) == 14  # 9 pairs × 2 sides, of which 14 differ (4 labels + "yes" as targets)
    straight = Endpoint()
    try:
        run(_openai_cfg(data, tmp_path / "ann-straight", straight.url, tmp_path / "cache-straight"))
    finally:
        straight.close()
    assert (tmp_path / "ann" / "sft.jsonl").read_text() == (tmp_path / "ann-straight" / "sft.jsonl").read_text()
