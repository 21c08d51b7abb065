"""``--faithfulness`` (issue #15 item 6) and the fused mode (item 7) through the evaluate step on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from umeflow.cli import main
from umeflow.evaluate import faithfulness as faith
from umeflow.evaluate.cache import TraceCache, content_key, model_fingerprint
from umeflow.evaluate.runner import fused
from umeflow.evaluate.tasks import load_task, select_tasks
from umeflow.model.generation import Trace
from umeflow.model.vision import VisionSizing

COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}


def _suite(root):
    """One local image task: 3 colour images, each ranked against the 3 colour names."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(images / f"{name}.png")
        rows.append({"qry_inst": "Represent the given image for classification", "qry_text": "",
                     "qry_img_path": f"{name}.png", "tgt_inst": "",
                     "tgt_text": [name] + [c for c in COLOURS if c != name], "tgt_img_path": ["", "", ""]})
    (root / "Colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps([dict(name="Colors", modality="image", category="I-CLS",
                                                      eval_type="local", file="Colors.jsonl", media_root="images",
                                                      num_queries=3)]))
    return root


def test_reasoning_variants_change_only_the_think_block():
    traces = [Trace("<think>red and round</think><answer>apple</answer><gen_emb>", (1, 2), True),
              Trace("no reasoning here<gen_emb>", None, False),
              Trace("pre <think>a\nsky</think><answer>blue</answer><gen_emb> tail", None, True)]
    idx, v = faith.variants(traces)
    assert idx == [0, 2]
    assert [t.text for t in v["removed"]] == ["<think></think><answer>apple</answer><gen_emb>",
                                              "pre <think></think><answer>blue</answer><gen_emb> tail"]
    assert [t.text for t in v["swapped"]] == ["<think>a\nsky</think><answer>apple</answer><gen_emb>",
                                              "pre <think>red and round</think><answer>blue</answer><gen_emb> tail"]
    assert all(t.token_ids is None for t in v["removed"] + v["swapped"])  # changed text: tokenized again
    assert [t.finished for t in v["swapped"]] == [True, True]


def test_fused_is_the_normalised_sum():
    d, g = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(fused(d, g), [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


def test_faithfulness_reextracts_cached_traces_and_reports_per_task(tmp_path, tiny_model_dir):
    root = _suite(tmp_path / "data")
    cache = tmp_path / "cache"
    # the traces a reasoning model would have written, in the trace cache: the check needs no generation at all
    meta = select_tasks(str(root), "Colors")[0]
    data = load_task(meta, str(root))
    store = TraceCache(cache, model_fingerprint(tiny_model_dir), VisionSizing().tag())
    thoughts = {"red": "the picture is a flat red square, warm colour", "blue": "a cold blue field, like the sky",
                "green": "grass green everywhere, nothing else"}
    items = list(data.queries) + list(data.candidates.values())
    traces = {}
    for it in items:
        colour = next((c for c in COLOURS if c in it.text), None)
        thought = thoughts[colour] if colour else "an image of one uniform colour"
        traces[content_key(it)] = Trace(f"<think>{thought}</think><answer>{colour or 'colour'}</answer><gen_emb>")
    store.put("hf-t8-greedy", traces)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(root), "--tasks", "Colors",
                 "--mode", "both", "--max-new-tokens", "8", "--out", str(out), "--cache-dir", str(cache),
                 "--faithfulness"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    f = summary["tasks"]["Colors"]["faithfulness"]
    assert f["queries"] == 3 and f["metric"] == "hit@1"
    # the cosines are those of the changed traces' embeddings to the original ones, recomputed here directly
    from umeflow.model.embedder import Embedder

    e = Embedder(tiny_model_dir)
    queries = list(data.queries)
    original = e.extract(queries, [traces[content_key(q)] for q in queries]).embeddings
    _, changed = faith.variants([traces[content_key(q)] for q in queries])
    for variant in faith.VARIANTS:
        vectors = e.extract(queries, changed[variant]).embeddings
        assert f[f"cos_{variant}"] == pytest.approx(float(np.mean((vectors * original).sum(-1))), rel=1e-4)
    assert f["cos_removed"] < 1 - 1e-5  # removing the reasoning moved the state (a random model: barely)
    assert f["delta_removed"] == pytest.approx(f["removed"] - f["original"], rel=1e-9, abs=1e-12)
    assert summary["generation"]["generated"] == 0  # every trace came from the cache: prefills only
    assert summary["generation"]["extracted"] == len(items) + 2 * 3
    assert summary["faithfulness"]["queries"] == 3
    report = (out / "report.md").read_text()
    assert "## Does the reasoning matter? (faithfulness)" in report and "| Colors | 3 |" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["faithfulness.Colors.cos_removed"] == pytest.approx(f["cos_removed"], rel=1e-9)
    # the fused column sits beside the others, with its share of the oracle gap when there is one
    assert "fused" in summary["columns"] and "hit@1" in summary["tasks"]["Colors"]["scores"]["fused"]
    assert "fused L2(disc+gen)" in report


def test_faithfulness_needs_gen_mode(tmp_path, tiny_model_dir, capsys):
    root = _suite(tmp_path / "data")
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(root), "--tasks", "Colors",
                 "--mode", "disc", "--out", str(tmp_path / "e"), "--faithfulness"]) == 2
    assert "--faithfulness re-extracts gen embeddings" in capsys.readouterr().err


def test_the_promotion_gate_can_require_that_the_reasoning_matters():
    from umeflow.registry.gate import ColumnScores, EvalSnapshot, PromotionPolicy, decide

    col = {"disc_disc": ColumnScores(0.5, {"image": 0.5}, True, (), 1, 1)}
    ignores = EvalSnapshot("offline", ("A",), col, faithfulness={"cos_removed": 0.99, "queries": 10})
    follows = EvalSnapshot("offline", ("A",), col, faithfulness={"cos_removed": 0.80, "queries": 10})
    unmeasured = EvalSnapshot("offline", ("A",), col)
    policy = PromotionPolicy(max_reasoning_cosine=0.95)
    assert decide(follows, None, policy).passed
    refused = decide(ignores, None, policy)
    assert not refused.passed and "mean cosine 0.9900 to the original vs at most 0.9500" in refused.reasons[0]
    assert "evaluate with --faithfulness" in decide(unmeasured, None, policy).reasons[0]
    assert decide(ignores, None, PromotionPolicy()).passed  # off by default
    assert EvalSnapshot.from_json(follows.to_json()) == follows  # recorded on the model version and read back
    assert EvalSnapshot.from_summary({"tasks": {"A": {"meta": {}}}, "aggregates": {"disc_disc": {
        "overall": 0.5, "complete": True}}, "faithfulness": {"cos_removed": 0.8}}, "s.json").faithfulness == {
        "cos_removed": 0.8}
