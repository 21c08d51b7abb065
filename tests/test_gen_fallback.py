"""A gen budget too small for the model's reasoning is loud: WARNING in the log and in report.md (evaluate), WARNING
in the log (embed); the gen cache never reuses vectors of the old read-out rule."""

from __future__ import annotations

import json
import logging

import numpy as np
from PIL import Image

from umeflow.cli import main
from umeflow.evaluate.cache import EmbeddingCache, content_key, setting_name
from umeflow.evaluate.runner import EmbeddingStore, fallback_warnings
from umeflow.model.generation import Trace
from umeflow.model.items import Encoded, Item


def _suite(root):
    """One local image task: 2 colour images, each ranked against 2 colour names."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for name, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        Image.new("RGB", (56, 56), rgb).save(images / f"{name}.png")
        rows.append({"qry_inst": "Represent the given image for classification", "qry_text": "",
                     "qry_img_path": f"{name}.png", "tgt_inst": "",
                     "tgt_text": [name, "blue" if name == "red" else "red"], "tgt_img_path": ["", ""]})
    (root / "Colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps([dict(name="Colors", modality="image", category="I-CLS",
                                                      eval_type="local", file="Colors.jsonl", media_root="images",
                                                      num_queries=2)]))
    return root


def _evaluate(tmp_path, tiny_model_dir, out, *extra):
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(tmp_path / "data"), "--tasks",
               "Colors", "--mode", "gen", "--max-new-tokens", "2", "--out", str(out), "--cache-dir",
               str(tmp_path / "cache"), *extra])
    assert rc == 0
    return (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())


def test_evaluate_warns_per_task_in_log_and_report(tmp_path, tiny_model_dir, caplog):
    _suite(tmp_path / "data")
    # a random tiny model never writes <gen_emb> in 2 greedy tokens: every query and candidate falls back
    with caplog.at_level(logging.WARNING, logger="umeflow.steps.evaluate"):
        report, summary = _evaluate(tmp_path, tiny_model_dir, tmp_path / "eval")
    task = summary["tasks"]["Colors"]
    assert task["gen_fallback_rate"] == 1.0 and task["gen_fallback_rate_candidates"] == 1.0
    warnings = [line for line in report.splitlines() if "**WARNING** (gen fallback)" in line]
    assert len(warnings) == 1 and warnings[0].startswith("- **WARNING** (gen fallback) Colors: 100.0% of queries")
    assert "max_new_tokens=2" in warnings[0] and "threshold 5%" in warnings[0]
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and "gen fallback" in r.getMessage()]
    assert len(logged) == 1 and "Colors" in logged[0].getMessage()
    # the threshold is a recipe key: at 100% nothing is above it (the cached vectors are reused, nothing re-embeds)
    report, summary = _evaluate(tmp_path, tiny_model_dir, tmp_path / "eval2", "--set", "gen_fallback_warn_rate=1.0")
    assert "WARNING" not in report and summary["embedding_calls"] == 0


def test_fallback_warnings_name_only_tasks_above_the_threshold():
    results = {"A": {"gen_fallback_rate": 0.04, "gen_fallback_rate_candidates": 0.0},
               "B": {"gen_fallback_rate": 0.0, "gen_fallback_rate_candidates": 0.5},
               "C": {"gen_fallback_rate": 0.06}}  # a shard summary written before candidates were counted
    lines = fallback_warnings(results, 0.05, 8192)
    assert [line.split(":")[0] for line in lines] == ["B", "C"]
    assert "50.0% of candidates" in lines[0] and "6.0% of queries" in lines[1]


def test_embed_warns_when_items_fall_back(tmp_path, tiny_model_dir, caplog):
    Image.new("RGB", (56, 56), (10, 200, 10)).save(tmp_path / "g.png")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "a green square", "image": "g.png"}) + "\n"
                     + json.dumps({"text": "only text"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="umeflow.steps.embed"):
        rc = main(["embed", "--model", str(tiny_model_dir), "--input", str(items), "--mode", "gen",
                   "--max-new-tokens", "2", "--out", str(tmp_path / "emb.npy")])
    assert rc == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 of 2 items (100.0%) generated no usable <gen_emb>" in m and "max_new_tokens=2" in m
               for m in messages), messages


class _CountingEmbedder:
    def __init__(self):
        self.seen = 0

    def encode(self, items, mode="disc", **kw):
        self.seen += len(items)
        e = np.ones((len(items), 2), np.float32) / np.sqrt(2)
        return Encoded(embeddings=e, texts=[""] * len(items), fallback=np.zeros(len(items), bool),
                       disc_embeddings=e, traces=[Trace("") for _ in items])


def test_gen_vectors_of_the_old_read_out_are_not_reused(tmp_path):
    # vectors cached under the pre-issue-13 name (stop one step after the first <gen_emb>) must be re-embedded
    items = [Item("a"), Item("b")]
    old = EmbeddingCache(tmp_path, "model")
    old.put("gen-t8-greedy", [content_key(it) for it in items], np.zeros((2, 2), np.float32), ["", ""],
            np.zeros(2, bool))
    assert setting_name("gen", 8) != "gen-t8-greedy" and setting_name("gen", 8).startswith("gen-v2-")
    emb = _CountingEmbedder()
    store = EmbeddingStore(emb, cache=EmbeddingCache(tmp_path, "model"), max_new_tokens=8)
    vectors, _ = store.embed(items, "gen")
    assert emb.seen == 2 and np.allclose(vectors, 1 / np.sqrt(2), rtol=1e-6)
