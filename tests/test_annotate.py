"""``umeflow annotate``: the grounded backend on a real (small) data build, UME-R1's filters, and the OpenAI backend
against a real HTTP server on 127.0.0.1 (retries, errors, resume after SIGKILL)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from chat_endpoint import Endpoint
from PIL import Image

from umeflow.annotate import grounded
from umeflow.annotate.filters import REWARD_FORMAT_RE, check
from umeflow.openai_client import retry_after_seconds
from umeflow.config import AnnotateConfig, DataConfig
from umeflow.data.build import build
from umeflow.data.schemas import load_records
from umeflow.errors import RecordError, UserError
from umeflow.io import iter_jsonl
from umeflow.model.chat import user_text
from umeflow.model.items import strip_placeholders
from umeflow.steps.annotate import run

SMALL_BUILD = dict(eval_fashion_per_class=1, eval_fashion_vqa_per_class=1, eval_digits_per_class=1,
                   eval_retrieval_candidates=5, eval_video_segments_per_clip=1, train_fashion_per_class=2,
                   train_fashion_vqa_per_class=1, train_mnist_per_class=1, tuxpaint_limit=40)


@pytest.fixture(scope="module")
def built(assets_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    build(DataConfig(assets_dir=str(assets_dir), out=str(out), **SMALL_BUILD))
    return out


def _gpt(side: dict) -> str:
    return side["conversations"][1]["value"]


def _parts(response: str) -> tuple[str, str]:
    m = re.fullmatch(r"<think>(.*)</think><answer>(.*)<gen_emb>", response, re.DOTALL)
    assert m, response
    return m[1], m[2]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w'/-]+", text.lower()))


# ------------------------------------------------------------------------------------------------------ grounded

def test_grounded_on_a_real_build(built, tmp_path):
    out = tmp_path / "ann"
    metrics = run(AnnotateConfig(data=str(built), out=str(out), max_reasoning_words=12))
    pairs = [rec for _, rec in iter_jsonl(built / "train" / "pairs.jsonl")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert metrics["pairs_in"] == len(pairs) == metrics["pairs_kept"] == manifest["records"] > 50
    assert metrics["pairs_dropped"] == 0 and metrics["calls"] == 0
    assert set(json.loads((out / "run_info.json").read_text())["inputs"]) == {"train/pairs.jsonl"}

    records, _ = load_records(out / "sft.jsonl", "ume_sft", media_root=manifest["media_root"])  # media resolve
    assert len(records) == len(pairs)
    template_words = _words(" ".join(grounded.IMAGE_OPENERS + grounded.TEXT_OPENERS + grounded.ANSWER_OPENERS)
                            + " the digit so answer is asked which belongs to category in image picture a an")
    datasets = set()
    for pair, rec in zip(pairs, records):
        meta, datasets = pair["meta"], datasets | {pair["dataset_name"]}
        assert rec["dataset_name"] == pair["dataset_name"]
        for key, text_key, image_key in (("qry", "qry", "qry_image_path"), ("pos", "pos_text", "pos_image_path")):
            side = rec[key]
            human = side["conversations"][0]["value"]
            image = pair[image_key]
            assert human == ("<image>\n" if image else "") + user_text(strip_placeholders(pair[text_key]))
            assert side.get("image") == (image or None)
            response = _gpt(side)
            assert check(response) is None and REWARD_FORMAT_RE.fullmatch(response), response
            reasoning, summary = _parts(response)
            assert len(reasoning.split()) <= 12
            # grounded: every word is template wording or comes from this record's metadata and texts
            known = _words(" ".join([*map(str, meta.values()), pair["qry"], pair["pos_text"]])) | template_words
            assert _words(reasoning) <= known, (reasoning, meta)
            assert _words(summary) <= _words(" ".join(map(str, meta.values())) + " " + pair["pos_text"])
        q_summary, t_summary = _parts(_gpt(rec["qry"]))[1], _parts(_gpt(rec["pos"]))[1]
        assert q_summary == t_summary
        if meta.get("question"):
            assert q_summary == pair["pos_text"] in ("yes", "no")
        elif meta.get("label"):
            assert q_summary == meta["label"].lower()
        elif pair["pos_text"] == meta.get("category"):
            assert q_summary == meta["category"]
        else:
            assert meta["caption"].startswith(q_summary)
    assert datasets == {"FashionMNIST", "FashionMNIST_vqa", "MNIST", "TuxPaint_i2t", "TuxPaint_t2i",
                        "TuxPaint_category_vqa"}
    assert sum(v for k, v in metrics.items() if k.startswith("kept.")) == metrics["pairs_kept"]

    # the SFT step reads back exactly the inputs that were annotated
    from umeflow.train.sft_data import load_sft_pairs

    sft_pairs, _ = load_sft_pairs(out / "sft.jsonl", manifest["media_root"])
    for pair, sft in zip(pairs, sft_pairs):
        assert sft.query.text == strip_placeholders(pair["qry"])
        assert sft.target.text == strip_placeholders(pair["pos_text"])
        assert sft.query.images == ((built / "train" / pair["qry_image_path"]).resolve(),) * bool(
            pair["qry_image_path"])

    # deterministic for a seed; another seed varies the wording, never the summaries
    run(AnnotateConfig(data=str(built), out=str(tmp_path / "again"), max_reasoning_words=12))
    assert (tmp_path / "again" / "sft.jsonl").read_bytes() == (out / "sft.jsonl").read_bytes()
    run(AnnotateConfig(data=str(built), out=str(tmp_path / "seed1"), max_reasoning_words=12, seed=1))
    other, _ = load_records(tmp_path / "seed1" / "sft.jsonl", "ume_sft")
    assert [_gpt(r["qry"]) for r in other] != [_gpt(r["qry"]) for r in records]
    assert [_parts(_gpt(r["qry"]))[1] for r in other] == [_parts(_gpt(r["qry"]))[1] for r in records]


def _write_pairs(root: Path, rows: list[dict]) -> Path:
    """A hand-written ``data build`` output (MMEB-train layout) with coloured-square images."""
    images = root / "train" / "images" / "Colors"
    images.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (28, 28), (60 * i, 90, 200 - 40 * i)).save(images / f"{i}.png")
    (root / "train" / "pairs.jsonl").write_text("".join(
        (row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return root


def _pair(i: int, label: str, **kw) -> dict:
    return {"dataset_name": "Colors", "qry": "<|image_1|>\nRepresent the given image for classification",
            "qry_image_path": f"images/Colors/{i % 4}.png", "pos_text": f"a photo of {label}", "pos_image_path": "",
            "meta": {"label": label, "caption": f"a photo of {label}"}, **kw}


def test_bad_input_records_are_an_error_or_counted(tmp_path):
    data = _write_pairs(tmp_path / "data", [_pair(0, "red"), {"dataset_name": "Colors", "pos_text": "x"},
                                            _pair(1, "blue")])
    with pytest.raises(RecordError, match=r"pairs\.jsonl:2: field 'qry'"):
        run(AnnotateConfig(data=str(data), out=str(tmp_path / "ann")))
    assert not (tmp_path / "ann").exists()
    metrics = run(AnnotateConfig(data=str(data), out=str(tmp_path / "ann"), on_bad_record="skip"))
    assert metrics["bad_records_skipped"] == 1 and metrics["pairs_kept"] == 2
    with pytest.raises(UserError, match="does not exist"):
        run(AnnotateConfig(data=str(tmp_path / "nowhere"), out=str(tmp_path / "x")))


# ------------------------------------------------------------------------------------------------------- filters

@pytest.mark.parametrize("response,reason", [
    ("<think>fine reasoning</think><answer>bag<gen_emb>", None),
    ("<think>fine</think>\n<answer>a bag</answer>\n<gen_emb>", None),  # a closed answer is still the summary
    ("<answer>bag<gen_emb>", "malformed"),
    ("<think>x</think><answer>bag", "malformed"),
    ("<think>x</think><answer>bag<gen_emb> trailing", "malformed"),
    ("<think>x</think><answer>bag<gen_emb><gen_emb>", "malformed"),
    ("<think>x</think><think>y</think><answer>bag<gen_emb>", "malformed"),
    ("<think> </think><answer>bag<gen_emb>", "malformed"),
    ("<think>x</think><answer> <gen_emb>", "malformed"),
    ("<think>" + "the same four words " * 3 + "</think><answer>bag<gen_emb>", "repeated_ngrams"),
    ("<think>" + "the same four words " * 2 + "</think><answer>bag<gen_emb>", None),
    ("<think>" + " ".join(f"w{i}" for i in range(1025)) + "</think><answer>bag<gen_emb>", "too_long"),
    ("<think>" + " ".join(f"w{i}" for i in range(1024)) + "</think><answer>bag<gen_emb>", None),
])
def test_filters(response, reason):
    assert check(response) == reason
    if reason is None:
        assert REWARD_FORMAT_RE.fullmatch(response)  # every kept SFT target earns the RL format reward


def test_retry_after_header():
    assert retry_after_seconds("0") == 0 and retry_after_seconds("2.5") == 2.5
    now = 1_800_000_000.0  # a fixed clock: the answer must not depend on how fast the test runs
    assert retry_after_seconds(formatdate(now - 60, usegmt=True), now=now) == 0
    assert 25 < retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) <= 30
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# ------------------------------------------------------------------------------------------ a real local endpoint

def _openai_cfg(data, out, url, cache, **kw) -> AnnotateConfig:
    return AnnotateConfig(**{"data": str(data), "out": str(out), "backend": "openai", "base_url": url,
                             "model": "test-mllm", "cache_dir": str(cache), "backoff_base": 0.01, "max_retries": 3,
                             "concurrency": 2, **kw})


def test_openai_retries_a_429_sends_images_and_the_key(tmp_path, monkeypatch):
    data = _write_pairs(tmp_path / "data", [_pair(0, "red"), _pair(1, "blue"), _pair(0, "red")])
    monkeypatch.setenv("UMEFLOW_TEST_KEY", "sk-test-secret")
    out = tmp_path / "ann"
    with Endpoint(script=[429]) as server:
        metrics = run(_openai_cfg(data, out, server.url, tmp_path / "cache", api_key_env="UMEFLOW_TEST_KEY"))
        distinct = 4  # 2 images + 2 target texts; the repeated third pair costs no request
        assert len(server.requests) == distinct + 1 and len({r["content"] for r in server.requests}) == distinct
        assert metrics["calls"] == distinct + 1 and metrics["retries"] == 1 and metrics["requests"] == distinct
        assert metrics["pairs_kept"] == 3 and metrics["cache_hits"] == 0
        assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
        assert all(r["auth"] == "Bearer sk-test-secret" for r in server.requests)
        assert all(r["body"]["model"] == "test-mllm" for r in server.requests)
        urls = {p["image_url"]["url"] for r in server.requests for p in r["body"]["messages"][0]["content"]
                if p["type"] == "image_url"}
        assert {base64.b64decode(u.split(",", 1)[1]) for u in urls} == \
            {(data / "train" / "images" / "Colors" / f"{i}.png").read_bytes() for i in (0, 1)}
        assert all(u.startswith("data:image/png;base64,") for u in urls)

        records, _ = load_records(out / "sft.jsonl", "ume_sft", media_root=data / "train")
        assert _gpt(records[0]["qry"]) == ("<think>I see an image and the words: Represent the given image for "
                                           "classification</think><answer>classification<gen_emb>")
        assert _gpt(records[1]["pos"]) == "<think>I see the words: a photo of blue</think><answer>blue<gen_emb>"
        assert records[0]["qry"]["image"] == "images/Colors/0.png" and "image" not in records[0]["pos"]
        for f in out.iterdir():
            assert "sk-test-secret" not in f.read_text()

        again = run(_openai_cfg(data, tmp_path / "again", server.url, tmp_path / "cache"))  # all from the cache
        assert again["cache_hits"] == distinct and again["calls"] == 0 and len(server.requests) == distinct + 1
    assert (tmp_path / "again" / "sft.jsonl").read_bytes() == (out / "sft.jsonl").read_bytes()


def test_filtered_pairs_are_counted_per_reason(tmp_path):
    replies = {"a photo of red": "<think>red</think><answer>red</answer>",
               "a photo of blue": "no tags at all",
               "a photo of green": "<think>" + "round and round we go " * 3 + "</think><answer>green</answer>",
               "a photo of grey": "<think>" + "word " * 30 + "</think><answer>grey</answer>",
               "a photo of pink": "<think>pink</think><answer>pink</answer>"}

    def reply(text, parts):
        if len(parts) > 1:  # image queries: fine, except the one for pink
            return "<think>an image</think>" if "pink" in text else "<think>an image</think><answer>it</answer>"
        return replies[text.split("\n")[0]]

    rows = [_pair(0, "red"), _pair(1, "blue"), _pair(2, "green"), _pair(3, "grey"),
            _pair(0, "pink", qry="<|image_1|>\nRepresent the pink image")]
    data = _write_pairs(tmp_path / "data", rows)
    with Endpoint(replies=reply) as server:
        metrics = run(_openai_cfg(data, tmp_path / "ann", server.url, tmp_path / "cache", max_reasoning_tokens=20))
    assert metrics["pairs_in"] == 5 and metrics["pairs_kept"] == 1 and metrics["pairs_dropped"] == 4
    assert (metrics["dropped_malformed"], metrics["dropped_repeated_ngrams"], metrics["dropped_too_long"]) == (2, 1, 1)
    assert (metrics["rejected_sides_malformed"], metrics["rejected_sides_repeated_ngrams"],
            metrics["rejected_sides_too_long"]) == (2, 1, 1)
    kept = [json.loads(line) for line in (tmp_path / "ann" / "sft.jsonl").read_text().splitlines()]
    assert [_gpt(r["pos"]) for r in kept] == ["<think>red</think><answer>red<gen_emb>"]


def test_openai_5xx_storm_fails_clearly_and_publishes_nothing(tmp_path):
    data = _write_pairs(tmp_path / "data", [_pair(0, "red"), _pair(1, "blue")])
    with Endpoint(script=[503] * 100) as server:
        with pytest.raises(UserError, match=r"pairs\.jsonl:1 qry: .* failed 4 times; last error: HTTP 503"):
            run(_openai_cfg(data, tmp_path / "ann", server.url, tmp_path / "cache", concurrency=1))
        assert len(server.requests) == 4  # 1 try + 3 retries of the first side, then the run stopped
    assert not (tmp_path / "ann").exists()
    assert not list((tmp_path / "cache").glob("shard-*"))  # nothing answered, nothing cached


def test_openai_refusal_is_not_retried(tmp_path):
    data = _write_pairs(tmp_path / "data", [_pair(0, "red")])
    with Endpoint(script=[401]) as server:
        with pytest.raises(UserError, match=r"pairs\.jsonl:1 qry: .*HTTP 401.*OPENAI_API_KEY"):
            run(_openai_cfg(data, tmp_path / "ann", server.url, tmp_path / "cache", concurrency=1))
        assert len(server.requests) == 1


def test_openai_resume_after_kill_repeats_no_answered_call(tmp_path):
    rows = [_pair(i, f"colour {i}") for i in range(8)]  # 4 distinct images + 8 distinct target texts
    data = _write_pairs(tmp_path / "data", rows)
    cmd = [sys.executable, "-m", "umeflow.cli", "annotate", "--data", str(data), "--out", str(tmp_path / "ann"),
           "--backend", "openai", "--set", "model=test-mllm", "--set", f"cache_dir={tmp_path / 'cache'}",
           "--set", "concurrency=1", "--set", "backoff_base=0.01"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with Endpoint(slow_after=5) as server:
        proc = subprocess.Popen(cmd + ["--set", f"base_url={server.url}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(server.requests) < 6 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # the 6th request is in flight (the server holds it for 2 s)
        proc.wait()
        answered_before_kill = list(server.answered)
        in_flight = server.requests[-1]["content"]
        assert len(answered_before_kill) == 5 and len(server.requests) == 6
        assert not (tmp_path / "ann").exists()
        server.slow_after = None
        subprocess.run(cmd + ["--set", f"base_url={server.url}"], env=env, check=True, capture_output=True,
                       timeout=120)
        rerun = [r["content"] for r in server.requests[6:]]
    assert not set(rerun) & set(answered_before_kill)  # no completed call repeated
    assert in_flight in rerun and len(rerun) == len(set(rerun)) == 12 - 5
    assert json.loads((tmp_path / "ann" / "metrics.json").read_text())["cache_hits"] == 5

    with Endpoint() as straight:
        run(_openai_cfg(data, tmp_path / "straight", straight.url, tmp_path / "cache-straight"))
    assert (tmp_path / "ann" / "sft.jsonl").read_bytes() == (tmp_path / "straight" / "sft.jsonl").read_bytes()
