"""Minimal scorer: metric conformance, aggregation, MMEB-layout loaders, bad input, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from umeflow.errors import RecordError
from umeflow.evaluate.metrics import hit_at_k, ndcg_linear_at_k, score_rankings
from umeflow.evaluate.report import aggregate
from umeflow.evaluate.runner import EmbeddingStore, evaluate_task
from umeflow.evaluate.tasks import TaskMeta, load_task, offline_tasks, sample_frames
from umeflow.model.generation import Trace
from umeflow.model.items import Encoded

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def test_hit_at_k_with_several_positives():
    assert hit_at_k(["a", "b", "c"], ["b", "c"], 1) == 0.0
    assert hit_at_k(["a", "b", "c"], ["b", "c"], 2) == 1.0
    assert score_rankings([["a", "b"], ["b", "a"]], [["a"], ["a"]])["hit@1"] == 0.5


def test_ndcg_linear_matches_hand_computation():
    # graded relevance: d1=3, d2=1; ranking d3, d1, d2
    got = ndcg_linear_at_k(["d3", "d1", "d2"], ["d1", "d2"], 5, [3, 1])
    dcg = 0 + 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert got == pytest.approx(dcg / idcg)
    assert ndcg_linear_at_k(["x"], ["d1"], 5, [0]) == 0.0  # IDCG 0 → 0, not a division error


def _task(**kw) -> TaskMeta:
    base = dict(name="T", modality="image", category="I-CLS")
    base.update(kw)
    return TaskMeta(**base)


def test_aggregate_is_mean_over_tasks_and_skips_smoke():
    tasks = [_task(name="a"), _task(name="b"), _task(name="c", modality="video", category="V-CLS"),
             _task(name="s", modality="video", category="V-CLS", smoke=True)]
    res = {n: {"scores": {"disc": {"hit@1": s}}} for n, s in (("a", 1.0), ("b", 0.5), ("c", 0.0), ("s", 1.0))}
    agg = aggregate(tasks, res, "disc")
    assert agg["overall"] == pytest.approx(0.5)  # (1 + .5 + 0) / 3, not mean of modality means (0.375)
    assert agg["modalities"] == {"image": 0.75, "video": 0.0}
    assert agg["num_tasks"] == 3


def _write_fixture(root):
    """A two-task suite in the offline layout: colour classification (local) and a video smoke task (global)."""
    images = root / "image-tasks" / "images"
    images.mkdir(parents=True)
    rows = []
    for name, rgb in COLORS.items():
        Image.new("RGB", (56, 56), rgb).save(images / f"{name}.png")
        cands = [name] + [c for c in COLORS if c != name]
        rows.append({"qry_inst": "Represent the given image for classification", "qry_text": "",
                     "qry_img_path": f"{name}.png", "tgt_inst": "", "tgt_text": cands,
                     "tgt_img_path": [""] * 3})
    (root / "image-tasks" / "Colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frames = root / "video-tasks" / "frames" / "Clips"
    vrows = []
    for name, rgb in list(COLORS.items())[:2]:
        d = frames / f"{name}_clip"
        d.mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (56, 56), rgb).save(d / f"{i:03d}.jpg")
        vrows.append({"video_id": f"{name}_clip", "pos_text": name, "qry_inst": "Recognize the video."})
    (root / "video-tasks" / "Clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vrows))
    tasks = [dict(name="Colors", modality="image", category="I-CLS", eval_type="local",
                  file="image-tasks/Colors.jsonl", media_root="image-tasks/images", num_queries=3),
             dict(name="Clips", modality="video", category="V-CLS", eval_type="global",
                  file="video-tasks/Clips.jsonl", media_root="video-tasks/frames/Clips", smoke=True, num_queries=2)]
    (root / "tasks.json").write_text(json.dumps(tasks))
    return root


class ColourOracleEmbedder:
    """Test double for the model (not a mock of anything we ship): embeds an item as the one-hot of the colour
    its image shows or its text names, so the runner's naming, ranking and scoring can be checked exactly.
    ``blind`` maps a mode to the colours whose *images* it cannot see (it then leans slightly to a wrong colour);
    ``sample_sees`` lets pass@k samples see only in the listed sample indices."""

    def __init__(self, blind=None, sample_sees=()):
        self.blind = blind or {}
        self.sample_sees = set(sample_sees)
        self.seen = 0

    def _vec(self, item, mode, sample=None):
        v = np.zeros(4, dtype=np.float32)
        media = list(item.images) + list(item.video or ())
        if media:
            rgb = np.asarray(Image.open(media[0]).convert("RGB")).reshape(-1, 3).mean(0)
            colour = list(COLORS)[int(np.argmax(rgb))]
            if sample is None:
                blind = colour in self.blind.get(mode, ())
            else:
                blind = sample not in self.sample_sees
            if blind:  # sees a blur that leans a little towards the next colour: wrong and unsure
                v[:3] = 1
                v[(list(COLORS).index(colour) + 1) % 3] = 1.1
            else:
                v[list(COLORS).index(colour)] = 1
        else:
            for i, c in enumerate(COLORS):
                if c in item.text:
                    v[i] = 1
        if not v.any():
            v[3] = 1
        return v / np.linalg.norm(v)

    def encode(self, items, mode="disc", num_samples=1, do_sample=False, seed=None, **kw):
        self.seen += len(items)
        sample = seed if mode == "gen" and do_sample else None  # the store samples pass@k draw s with seed s
        e = np.stack([self._vec(it, mode, sample) for it in items])
        if mode == "gen":
            return Encoded(embeddings=e, texts=[""] * len(items), fallback=np.zeros(len(items), bool),
                           disc_embeddings=np.stack([self._vec(it, "disc") for it in items]),
                           traces=[Trace("") for _ in items])
        return Encoded(embeddings=e)


def test_runner_scores_fixture_exactly_and_dedups(tmp_path):
    root = _write_fixture(tmp_path)
    tasks = {t.name: t for t in offline_tasks(root)}
    emb = ColourOracleEmbedder()
    store = EmbeddingStore(emb)
    res = evaluate_task(tasks["Colors"], root, store, ("disc", "gen"))
    for pair in ("disc_disc", "gen_gen", "disc_gen", "gen_disc"):
        assert res["scores"][pair]["hit@1"] == 1.0
    vid = evaluate_task(tasks["Clips"], root, store, ("disc",))
    assert vid["scores"]["disc_disc"]["hit@1"] == 1.0
    assert vid["num_candidates"] == 2  # global pool = union of the labels
    # "red"/"green" label texts were already embedded for Colors: the video task re-used them
    assert store.calls < store.requests and emb.seen == store.calls
    data = load_task(tasks["Clips"], root)
    assert len(data.queries[0].video) == 8  # MMEB-V2 frame count, linspace over 10 frames


def test_oracle_selector_and_pass_at_k(tmp_path):
    root = _write_fixture(tmp_path)
    task = {t.name: t for t in offline_tasks(root)}["Colors"]
    # disc cannot see blue images, gen cannot see red or green: disc 2/3, gen 1/3, oracle 3/3
    emb = ColourOracleEmbedder(blind={"disc": {"blue"}, "gen": {"red", "green"}}, sample_sees={1})
    res = evaluate_task(task, root, EmbeddingStore(emb), ("disc", "gen"), pass_k=3)
    s = res["scores"]
    assert s["disc_disc"]["hit@1"] == pytest.approx(2 / 3) and s["gen_gen"]["hit@1"] == pytest.approx(1 / 3)
    assert s["oracle"]["hit@1"] == 1.0
    # a blind mode has a small top-1 margin, so the selector picks the seeing mode every time
    assert s["selector"]["hit@1"] == 1.0 and s["selector"]["chose_gen_fraction"] == pytest.approx(1 / 3)
    assert s["pass@3"]["hit@1"] == 1.0  # only sample 1 sees, and one good sample is enough


def test_aggregate_refuses_incomplete_sets():
    tasks = [_task(name="a"), _task(name="b", category="I-QA"), _task(name="c", category="I-QA")]
    res = {n: {"scores": {"disc": {"hit@1": 1.0}}} for n in ("a", "b")}
    agg = aggregate(tasks, res, "disc")
    assert agg["overall"] is None and not agg["complete"] and agg["missing"] == ["c"]
    assert agg["categories"] == {"I-CLS": 1.0, "I-QA": None}
    assert agg["modalities"] == {"image": None}


def test_cache_persists_and_resumes_after_interruption(tmp_path):
    from umeflow.evaluate.cache import EmbeddingCache

    root = _write_fixture(tmp_path / "data")
    task = {t.name: t for t in offline_tasks(root)}["Colors"]

    class Interrupting(ColourOracleEmbedder):
        def encode(self, items, **kw):
            if self.seen >= 2:
                raise KeyboardInterrupt  # the run dies after two items were embedded and persisted
            return super().encode(items, **kw)

    first = EmbeddingStore(Interrupting(), cache=EmbeddingCache(tmp_path / "cache", "m"), chunk_size=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate_task(task, root, first, ("disc",))
    assert first.calls == 3  # two chunks done, the third was started when the run died
    emb = ColourOracleEmbedder()
    second = EmbeddingStore(emb, cache=EmbeddingCache(tmp_path / "cache", "m"), chunk_size=1)
    res = evaluate_task(task, root, second, ("disc",))
    assert res["scores"]["disc_disc"]["hit@1"] == 1.0
    assert emb.seen == 6 - 2  # 3 queries + 3 candidates, minus the two persisted before the interruption
    third = EmbeddingStore(ColourOracleEmbedder(), cache=EmbeddingCache(tmp_path / "cache", "m"))
    evaluate_task(task, root, third, ("disc",))
    assert third.calls == 0 and third.requests == 6  # everything is a cache hit
    other_model = EmbeddingStore(ColourOracleEmbedder(), cache=EmbeddingCache(tmp_path / "cache", "other"))
    evaluate_task(task, root, other_model, ("disc",))
    assert other_model.calls == 6  # the cache is per model fingerprint


def test_sample_frames_keeps_a_short_video_unpadded(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.jpg")
    assert [p.name for p in sample_frames(tmp_path)] == ["0.jpg", "1.jpg", "2.jpg"]  # as VLM2Vec (parity tests)
    for i in range(3, 10):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.jpg")
    assert [p.name for p in sample_frames(tmp_path)] == [f"{i}.jpg" for i in (0, 1, 2, 3, 5, 6, 7, 9)]


@pytest.mark.parametrize("mutate,line,field", [
    (lambda rows: rows.__setitem__(1, "{not json"), 2, None),
    (lambda rows: rows.__setitem__(2, json.dumps({"qry_text": "", "qry_img_path": "red.png",
                                                  "tgt_img_path": [""]})), 3, "tgt_text"),
    (lambda rows: rows.__setitem__(0, rows[0].replace("red.png", "nope.png")), 1, "qry_img_path"),
    (lambda rows: rows.__setitem__(1, rows[1].replace('"tgt_img_path": ["", "", ""]', '"tgt_img_path": [""]')),
     2, "tgt_img_path"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, mutate, line, field):
    root = _write_fixture(tmp_path)
    path = root / "image-tasks" / "Colors.jsonl"
    rows = path.read_text().splitlines()
    mutate(rows)
    path.write_text("\n".join(rows) + "\n")
    task = {t.name: t for t in offline_tasks(root)}["Colors"]
    with pytest.raises(RecordError) as err:
        load_task(task, root)
    assert err.value.line == line and err.value.field == field
    assert str(path) in str(err.value)


def test_evaluate_cli_end_to_end_with_tiny_model(tmp_path, tiny_model_dir):
    from umeflow.cli import main

    root = _write_fixture(tmp_path / "data")
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(root), "--mode", "both",
               "--out", str(out), "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"Colors", "Clips"}
    for pair in ("disc_disc", "disc_gen", "gen_disc", "gen_gen"):
        s = json.loads((out / "scores" / f"Colors_{pair}_score.json").read_text())
        assert 0.0 <= s["hit@1"] <= 1.0 and s["num_pred"] == 3
    # smoke task reported but not averaged: overall == Colors
    agg = summary["aggregates"]
    assert agg["disc_disc"]["overall"] == summary["tasks"]["Colors"]["scores"]["disc_disc"]["hit@1"]
    assert agg["oracle"]["overall"] >= max(agg["disc_disc"]["overall"], agg["gen_gen"]["overall"])
    report = (out / "report.md").read_text()
    assert "Colors" in report and "smoke, not averaged" in report and "oracle" in report
    assert (out / "categories.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert "disc_disc.Colors.hit_at_1" in metrics and "gen_gen.overall" in metrics and "selector.overall" in metrics
    assert json.loads((out / "run_info.json").read_text())["config"]["mode"] == "both"


def test_evaluate_cli_reports_unknown_task(tmp_path, tiny_model_dir, capsys):
    from umeflow.cli import main

    root = _write_fixture(tmp_path / "data")
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(root), "--tasks", "Nope",
               "--out", str(tmp_path / "e"), "--cache-dir", ""])
    assert rc == 2 and "Nope" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_ties_never_favour_the_ground_truth(tmp_path):
    root = _write_fixture(tmp_path)
    task = {t.name: t for t in offline_tasks(root)}["Colors"]

    class Collapsed(ColourOracleEmbedder):
        def encode(self, items, mode="disc", **kw):
            return Encoded(embeddings=np.ones((len(items), 4), np.float32) / 2)

    res = evaluate_task(task, root, EmbeddingStore(Collapsed()), ("disc",))
    assert res["scores"]["disc_disc"]["hit@1"] == 0.0  # GT is listed first; a tie must not hand it rank 1


def test_killed_evaluation_resumes_from_the_cache(tmp_path, tiny_model_dir):
    """SIGKILL a real `umeflow evaluate` mid-task; the rerun embeds only what was not persisted, same scores."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = _write_fixture(tmp_path / "data")
    rows = (root / "image-tasks" / "Colors.jsonl").read_text().splitlines()
    images = root / "image-tasks" / "images"
    more = []
    for i in range(30):  # 30 distinct query images: enough chunks to be killed in the middle of the task
        Image.new("RGB", (56, 56), (i * 8, 255 - i * 8, 90)).save(images / f"q{i}.png")
        more.append(rows[i % 3].replace(f'"{list(COLORS)[i % 3]}.png"', f'"q{i}.png"'))
    (root / "image-tasks" / "Colors.jsonl").write_text("\n".join(more) + "\n")
    cache = tmp_path / "cache"

    def cmd(out):
        return [sys.executable, "-m", "umeflow.cli", "evaluate", "--model", str(tiny_model_dir), "--data-root",
                str(root), "--tasks", "Colors", "--mode", "gen", "--max-new-tokens", "24", "--out", str(out),
                "--cache-dir", str(cache), "--set", "cache_chunk_size=2", "--batch-size", "2"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    parts = []
    while time.time() < deadline and proc.poll() is None:
        parts = list(cache.glob("**/gen-*/part-*.npz"))  # <fingerprint>/[<inputs>/]<setting>/part-<n>.npz
        if len(parts) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(parts) >= 3, "the run finished before it could be killed; enlarge it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()  # no partial report that looks complete

    subprocess.run(cmd(tmp_path / "resumed"), env=env, check=True, capture_output=True)
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    unique = 30 + 3  # query images + label texts
    assert 0 < resumed["embedding_calls"] <= unique - 2 * len(parts)
    cache_fresh = tmp_path / "fresh"
    fresh_cmd = [a if a != str(cache) else str(cache_fresh) for a in cmd(tmp_path / "fresh-out")]
    subprocess.run(fresh_cmd, env=env, check=True, capture_output=True)
    fresh = json.loads((tmp_path / "fresh-out" / "summary.json").read_text())
    assert fresh["embedding_calls"] == unique
    assert resumed["tasks"]["Colors"]["scores"] == fresh["tasks"]["Colors"]["scores"]


def test_evaluate_logs_report_to_mlflow(tmp_path, tiny_model_dir):
    import mlflow

    from umeflow.config import EvaluateConfig
    from umeflow.steps.evaluate import run

    root = _write_fixture(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(EvaluateConfig(model=str(tiny_model_dir), data_root=str(root), tasks="Colors", mode="disc",
                       out=str(tmp_path / "eval"), cache_dir="", tracking_uri=uri))
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert "eval.disc_disc.Colors.hit_at_1" in metrics
    # Colors alone is not the whole offline suite (Clips is a smoke task, so here it is complete)
    assert metrics["eval.disc_disc.overall"] == metrics["eval.disc_disc.Colors.hit_at_1"]
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")}
    assert artifacts == {"evaluation/report.md", "evaluation/summary.json", "evaluation/categories.png"}


def test_cross_check_selector_follows_the_pick_the_other_mode_finds_plausible():
    from umeflow.evaluate.selector import choose_cross

    disc = [np.array([0.9, 0.1, 0.0]), np.array([0.5, 0.45, 0.0]), np.array([0.2, 0.9, 0.1])]
    gen = [np.array([0.8, 0.2, 0.1]), np.array([0.1, 0.9, 0.0]), np.array([0.0, 0.1, 0.9])]
    # query 0: both pick 0 → disc. query 1: gen picks 1, which disc also rates highly (0.45); disc's pick 0 is
    # implausible to gen (0.1) → gen. query 2: gen picks 2, which disc rates low; disc's pick 1 gen rates mid → disc
    assert choose_cross(disc, gen).tolist() == [False, True, False]
