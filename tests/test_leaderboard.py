"""Scores in the MMEB-V2 leaderboard's own format, and ``--compare`` with a published score file.

Every reference behaviour is stated as a fact with its source (VLM2Vec @6e1e1d4 unless said otherwise); no reference
code is copied. Metric values are computed by hand in the comments.
"""

from __future__ import annotations

import json
import math

import pytest

from test_evaluate import ColourOracleEmbedder
from umeflow.config import EvaluateConfig
from umeflow.errors import RecordError
from umeflow.evaluate import leaderboard
from umeflow.evaluate.metrics import SCORE_KEYS, query_metrics, score_rankings
from umeflow.evaluate.mmeb_v2 import MMEB_V2_TASKS, mmeb_v2_task
from umeflow.evaluate.report import aggregate
from umeflow.evaluate.tasks import TaskMeta
from umeflow.steps import evaluate

# The keys of a VLM2Vec {task}_score.json, in file order: eval.py:348 reports the default metric list
# ["hit", "ndcg", "precision", "recall", "f1", "map", "mrr"] through RankingMetrics.evaluate
# (src/utils/eval_utils/metrics.py:203-266: "ndcg" expands to ndcg_linear and ndcg_exponential, k in (1, 5, 10)),
# then eval.py:352-353 adds num_pred and num_data. The same 26 keys are in every task of
# experiments/public/all_scores/v2.0.0/VLM2Vec-V2.0-Qwen2VL-2B.json and Embed-RL's detailed_scores/embed-rl-2b.json.
VLM2VEC_SCORE_KEYS = [f"{m}@{k}" for m in ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1",
                                           "map", "mrr") for k in (1, 5, 10)] + ["num_pred", "num_data"]
# experiments/report_score_v2.py:82-87 names every leaderboard task; 36 image, 18 video, 24 visdoc tasks.
# report_score_v2.py:58-65 is the metadata template (report_generated_date is added at l.141).
REPORT_METADATA_KEYS = ["model_name", "model_backbone", "model_size", "embedding_dimension", "max_length_tokens",
                        "model_release_date", "data_source", "url"]


# ------------------------------------------------------------------------------------------------ metrics

def test_every_vlm2vec_metric_on_a_hand_computed_binary_query():
    # ranking x, b, y, e, z (5 names); relevant b, e, w (w is never ranked)
    m = query_metrics(["x", "b", "y", "e", "z"], ["b", "e", "w"])
    assert [m[f"{name}@1"] for name in ("hit", "precision", "recall", "f1", "map", "mrr", "ndcg_linear")] == [0] * 7
    ndcg5 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert m["hit@5"] == 1.0
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["f1@5"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))  # = 0.5
    assert m["map@5"] == pytest.approx((1 / 2 + 2 / 4) / 3)  # metrics.py:102-118: / min(#labels, k)
    assert m["mrr@5"] == pytest.approx(1 / 2)
    assert m["ndcg_linear@5"] == pytest.approx(ndcg5)
    assert m["ndcg_exponential@5"] == pytest.approx(ndcg5)  # binary gains: 2^1 - 1 = 1
    # metrics.py:24-35: precision@k divides by k even when the ranking is shorter than k
    assert m["precision@10"] == pytest.approx(2 / 10)
    assert m["f1@10"] == pytest.approx(2 * 0.2 * (2 / 3) / (0.2 + 2 / 3))
    assert m["map@10"] == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_graded_relevance_ndcg_both_gains_and_grade_pairing():
    # d1 has grade 3, d2 grade 1; ranking d3, d1, d2
    m = query_metrics(["d3", "d1", "d2"], ["d1", "d2"], [3, 1])
    assert m["ndcg_linear@5"] == pytest.approx((3 / math.log2(3) + 1 / math.log2(4)) / (3 + 1 / math.log2(3)))
    # metrics.py:166-167: exponential gain 2^rel - 1
    assert m["ndcg_exponential@5"] == pytest.approx((7 / math.log2(3) + 1 / math.log2(4)) / (7 + 1 / math.log2(3)))
    # VLM2Vec pairs grades after list(set(labels)) (metrics.py:214 then 183), which can swap them; umeflow keeps each
    # grade with its own page, so the listing order of the labels does not change the score
    swapped = query_metrics(["d3", "d1", "d2"], ["d2", "d1"], [1, 3])
    assert swapped["ndcg_linear@5"] == pytest.approx(m["ndcg_linear@5"])
    # a page listed twice keeps its highest grade
    twice = query_metrics(["d1"], ["d1", "d1"], [1, 3])
    assert twice["ndcg_exponential@1"] == pytest.approx(1.0) and twice["ndcg_linear@1"] == pytest.approx(1.0)
    # a grade-0 label still counts for hit/precision/map/mrr (metrics.py:79-87 test membership, not grade)
    zero = query_metrics(["d9"], ["d9"], [0])
    assert zero["hit@1"] == 1.0 and zero["mrr@1"] == 1.0 and zero["ndcg_linear@1"] == 0.0  # IDCG 0 -> 0


def test_empty_label_set_follows_vlm2vec_conventions():
    # metrics.py:43-57: recall of an empty label set is 1.0; precision, hit, map, mrr are 0 (l.29, 79, 106, 248)
    m = query_metrics(["a", "b"], [])
    assert m["recall@1"] == 1.0 and m["recall@10"] == 1.0
    assert m["hit@5"] == m["precision@5"] == m["map@5"] == m["mrr@5"] == m["f1@5"] == m["ndcg_linear@5"] == 0.0


def test_score_file_has_vlm2vec_keys_in_order_and_means_over_queries():
    s = score_rankings([["a", "b"], ["b", "a"]], [["a"], ["a"]])
    assert list(s) == VLM2VEC_SCORE_KEYS == list(SCORE_KEYS)
    assert s["hit@1"] == 0.5 and s["mrr@5"] == pytest.approx((1 + 1 / 2) / 2)
    assert s["num_pred"] == s["num_data"] == 2 and isinstance(s["num_data"], int)  # eval.py:352-353: len(...)
    assert all(isinstance(s[k], float) for k in VLM2VEC_SCORE_KEYS[:-2])  # metrics.py:237: float(np.mean(...))


# ------------------------------------------------------------------------------ files a run writes

def _result(scores_by_pair: dict, n: int = 2) -> dict:
    return {"scores": scores_by_pair, "num_queries": n, "num_queries_total": n, "num_candidates": 3,
            "per_query": {pair: [0.0] * n for pair in scores_by_pair}}


def _publish(tmp_path, tasks: list[TaskMeta], results: dict, compare: str = "", mode: str = "disc") -> dict:
    model = tmp_path / "UME-R1-2B"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "hidden_size": 1536}))
    cfg = EvaluateConfig(model=str(model), data_root=str(tmp_path), tasks=",".join(t.name for t in tasks),
                         mode=mode, out=str(tmp_path / "eval"), cache_dir="", compare=compare)
    stats = {"seconds": 0.0, "embedding_calls": 0, "embedding_requests": 0, "model_fingerprint": "fp",
             "cache": {"dir": None, "loaded_from_disk": 0, "settings": {}}}
    expected = list(MMEB_V2_TASKS)
    return evaluate.publish(cfg, tasks, expected, results, stats, log_to_mlflow=False)


def test_publish_writes_vlm2vec_score_files_and_the_report_score_v2_json(tmp_path):
    tasks = [mmeb_v2_task("ImageNet-1K"), mmeb_v2_task("ViDoSeek-page"),
             TaskMeta(name="Colors", modality="image", category="I-CLS")]  # an offline task: no leaderboard entry
    image = score_rankings([["cat", "dog"], ["dog", "cat"]], [["cat"], ["cat"]])
    page = score_rankings([["p2", "p1"]], [["p1", "p2"]], [[1, 2]])
    results = {"ImageNet-1K": _result({"disc_disc": image}), "ViDoSeek-page": _result({"disc_disc": page}, 1),
               "Colors": _result({"disc_disc": image})}
    _publish(tmp_path, tasks, results)
    out = tmp_path / "eval"
    # eval.py:286,357-358 writes {dataset_name}_score.json (indent 4) into --encode_output_path, which
    # eval_8gpu.sh:34 sets to <experiment>/<modality>/; report_score_v2.py:106-122 reads exactly those files
    board = out / "leaderboard" / "disc_disc"
    written = sorted(p.relative_to(board).as_posix() for p in board.rglob("*.json"))
    assert written == ["image/ImageNet-1K_score.json", "visdoc/ViDoSeek-page_score.json"]
    text = (board / "image" / "ImageNet-1K_score.json").read_text()
    assert list(json.loads(text)) == VLM2VEC_SCORE_KEYS and text.startswith('{\n    "hit@1": 0.5')
    assert json.loads((board / "visdoc" / "ViDoSeek-page_score.json").read_text()) == page
    # UME-R1 eval_twomode.py:458 (Kikcer/lume @08891de) names per-pair files {dataset}_{qmode}_{tmode}_score.json
    assert sorted(p.name for p in (out / "scores").iterdir()) == [
        "Colors_disc_disc_score.json", "ImageNet-1K_disc_disc_score.json", "ViDoSeek-page_disc_disc_score.json"]

    doc = json.loads((out / "leaderboard" / "disc_disc.json").read_text())
    assert list(doc) == ["metadata", "metrics"] and list(doc["metrics"]) == ["image", "video", "visdoc"]
    assert [len(v) for v in doc["metrics"].values()] == [36, 18, 24]
    assert list(doc["metadata"])[:8] == REPORT_METADATA_KEYS and "report_generated_date" in doc["metadata"]
    assert doc["metadata"]["model_name"] == "UME-R1-2B" and doc["metadata"]["embedding_dimension"] == 1536
    assert doc["metadata"]["query_mode"] == doc["metadata"]["target_mode"] == "disc"
    assert doc["metrics"]["image"]["ImageNet-1K"] == image
    assert doc["metrics"]["image"]["N24News"] == "FILE_N/A"  # report_score_v2.py:104: no score file
    assert set(doc["metrics"]["video"].values()) == {"DIR_N/A"}  # l.108-112: no video/ folder at all
    # l.142 ("temp fix"): ViDoSeek-page / MMLongBench-page are renamed ...-fixed in the JSON, in place
    visdoc = list(doc["metrics"]["visdoc"])
    assert visdoc[-4:] == ["ViDoSeek-page-fixed", "ViDoSeek-doc", "MMLongBench-page-fixed", "MMLongBench-doc"]
    assert doc["metrics"]["visdoc"]["ViDoSeek-page-fixed"] == page and "Colors" not in str(doc["metrics"])


def test_leaderboard_task_lists_follow_report_score_v2():
    # VLM2Vec experiments/report_score_v2.py:68-87 @6e1e1d4 (modality2dataset): the tasks of each modality, in the
    # order the leaderboard JSON lists them
    vidore_v1 = ["arxivqa", "docvqa", "infovqa", "tabfquad", "tatdqa", "shiftproject",
                 *(f"syntheticDocQA_{d}" for d in ("artificial_intelligence", "energy", "government_reports",
                                                   "healthcare_industry"))]
    expected = {
        "image": ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
                  "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
                  "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
                  "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO",
                  "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"],
        "video": ["K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast", "MVBench", "Video-MME", "NExTQA", "EgoSchema",
                  "ActivityNetQA", "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2", "QVHighlight", "Charades-STA",
                  "MomentSeeker"],
        "visdoc": [*(f"ViDoRe_{t}" for t in vidore_v1), "ViDoRe_esg_reports_human_labeled_v2",
                   "ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe_economics_reports_v2_multilingual",
                   "ViDoRe_esg_reports_v2_multilingual", "VisRAG_ArxivQA", "VisRAG_ChartQA", "VisRAG_MP-DocVQA",
                   "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA", "ViDoSeek-page", "ViDoSeek-doc",
                   "MMLongBench-page", "MMLongBench-doc"],
    }
    assert {m: list(v) for m, v in leaderboard.LEADERBOARD_TASKS.items()} == expected


# ---------------------------------------------------------------------------------------- --compare

def _published(values: dict[str, float], scale: float = 1.0, rename_pages: bool = True, **extra) -> dict:
    """A leaderboard file in report_score_v2's format with ``values`` as each task's main metric (the rest of a
    real file's keys are not needed to compare)."""
    metrics = {"image": {}, "video": {}, "visdoc": {}}
    for name, v in values.items():
        t = mmeb_v2_task(name)
        key = leaderboard.FIXED_NAMES.get(name, name) if rename_pages else name
        metrics[t.modality][key] = {t.metric: v * scale, "num_pred": t.num_queries, "num_data": t.num_queries}
    for modality, entries in extra.items():
        metrics[modality].update(entries)
    return {"metadata": {"model_name": "Published-2B"}, "metrics": metrics}


def _varied() -> dict[str, float]:
    return {t.name: round(0.05 + 0.9 * ((7 * i) % 13) / 12, 4) for i, t in enumerate(MMEB_V2_TASKS)}


def test_full_published_file_aggregates_as_umeflow_does(tmp_path):
    values = _varied()
    path = tmp_path / "pub.json"
    path.write_text(json.dumps(_published(values)))
    pub = leaderboard.load_published(str(path))
    assert pub.scale == 1 and pub.model_name == "Published-2B" and len(pub.scores) == 78
    got = leaderboard.compare(pub, list(MMEB_V2_TASKS), {})["published_aggregates"]
    direct = aggregate(list(MMEB_V2_TASKS), {n: {"scores": {"c": {mmeb_v2_task(n).metric: v}}}
                                             for n, v in values.items()}, "c")
    assert got["overall"] == direct["overall"] and got["categories"] == direct["categories"]
    assert got["modalities"] == direct["modalities"] and got["complete"]
    # method.md §3.5: overall is the mean over the 78 tasks, not the mean of the modality means
    flat = _published({n: {"image": 0.6, "video": 0.3, "visdoc": 0.8}[mmeb_v2_task(n).modality] for n in values})
    path.write_text(json.dumps(flat))
    agg = leaderboard.compare(leaderboard.load_published(str(path)), list(MMEB_V2_TASKS), {})["published_aggregates"]
    assert agg["overall"] == pytest.approx((36 * 0.6 + 18 * 0.3 + 24 * 0.8) / 78, rel=1e-12)


def test_percent_file_is_scaled_and_reported(tmp_path):
    values = _varied()
    path = tmp_path / "pct.json"
    path.write_text(json.dumps(_published(values, scale=100)))
    pub = leaderboard.load_published(str(path))
    assert pub.scale == 100 and any("×100" in n for n in pub.notes)
    assert pub.scores["ImageNet-1K"]["hit@1"] == pytest.approx(values["ImageNet-1K"], rel=1e-12)
    assert pub.scores["ImageNet-1K"]["num_data"] == 1000  # counts are not scaled


def test_page_tasks_renamed_and_missing_tasks_named(tmp_path):
    values = _varied()
    del values["VATEX"]
    path = tmp_path / "pub.json"
    # v2.0.1 files also list MomentSeeker_1k8 (the pre-dedup MomentSeeker, all_scores/v2.0.1/*.json); a task
    # report_score_v2 found no file for is the string "FILE_N/A" (report_score_v2.py:104)
    path.write_text(json.dumps(_published(values, video={"MomentSeeker_1k8": {"hit@1": 0.4}, "VATEX": "FILE_N/A"})))
    pub = leaderboard.load_published(str(path))
    assert pub.scores["ViDoSeek-page"]["ndcg_linear@5"] == values["ViDoSeek-page"]  # -fixed maps to our task
    assert pub.published_only == ["MomentSeeker_1k8"] and pub.unavailable == {"VATEX": "FILE_N/A"}
    assert not pub.notes
    ours = {"ImageNet-1K": _result({"disc_disc": {"hit@1": 0.9}}), "VATEX": _result({"disc_disc": {"hit@1": 0.2}})}
    cmp = leaderboard.compare(pub, list(MMEB_V2_TASKS), ours)
    assert cmp["tasks"]["ImageNet-1K"]["delta"]["disc_disc"] == pytest.approx(0.9 - values["ImageNet-1K"])
    assert cmp["not_in_published"] == ["VATEX"] and len(cmp["not_scored_here"]) == 76
    assert cmp["published_aggregates"]["overall"] is None  # VATEX missing: no overall over 77 tasks
    assert cmp["published_aggregates"]["categories"]["I-CLS"] is not None
    # v2.0.0 files list ViDoSeek-page (pre-fix data) without the suffix: compared, with a warning
    path.write_text(json.dumps(_published(values, rename_pages=False)))
    pub = leaderboard.load_published(str(path))
    assert "ViDoSeek-page" in pub.scores and pub.unsuffixed_pages == ["ViDoSeek-page", "MMLongBench-page"]
    page = {"ViDoSeek-page": _result({"disc_disc": {"ndcg_linear@5": 0.8}})}
    notes = leaderboard.compare(pub, list(MMEB_V2_TASKS), page)["file_notes"]
    assert len(notes) == 1 and notes[0].startswith("the file lists ViDoSeek-page without '-fixed'")
    assert not leaderboard.compare(pub, list(MMEB_V2_TASKS), ours)["file_notes"]  # not compared: not noted
    # both spellings in one file: the fixed one is compared, the other is named
    both = _published(values)
    both["metrics"]["visdoc"]["ViDoSeek-page"] = {"ndcg_linear@5": 0.2}
    path.write_text(json.dumps(both))
    pub = leaderboard.load_published(str(path))
    assert pub.scores["ViDoSeek-page"]["ndcg_linear@5"] == values["ViDoSeek-page"]
    assert pub.published_only == ["ViDoSeek-page (pre-fix; ViDoSeek-page-fixed compared)"]


def _bad_files():
    good = _published({"ImageNet-1K": 0.5, "K700": 0.25})

    def edit(fn):
        doc = json.loads(json.dumps(good))
        fn(doc)
        return json.dumps(doc)

    return [
        ("{not json", None),
        (json.dumps({"metadata": {}}), "metrics"),
        (edit(lambda d: d["metrics"].update(audio={})), "metrics.audio"),
        (edit(lambda d: d["metrics"]["image"]["ImageNet-1K"].update({"hit@1": "0.5"})),
         "metrics.image.ImageNet-1K.hit@1"),
        (edit(lambda d: d["metrics"]["image"]["ImageNet-1K"].pop("hit@1")), "metrics.image.ImageNet-1K.hit@1"),
        (edit(lambda d: d["metrics"]["image"].update(K700=d["metrics"]["video"].pop("K700"))), "metrics.image.K700"),
        (edit(lambda d: d["metrics"]["video"]["K700"].update({"hit@1": 250})), "metrics.video.K700.hit@1"),
        (edit(lambda d: d["metrics"]["video"].update(K700=[0.3])), "metrics.video.K700"),
    ]


@pytest.mark.parametrize("text,field", _bad_files())
def test_bad_compare_file_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(RecordError) as err:
        leaderboard.load_published(str(path))
    assert err.value.field == field and str(path) in str(err.value)


# ------------------------------------------------------------------- tiny evaluate runs, CLI, --merge

@pytest.fixture
def oracle(monkeypatch):
    import umeflow.model.embedder as embedder

    monkeypatch.setattr(embedder, "Embedder", lambda model, **settings: ColourOracleEmbedder())


def test_compare_in_report_and_summary_with_notes(tmp_path):
    values = _varied()
    path = tmp_path / "pub.json"
    path.write_text(json.dumps(_published(values)))
    esg = mmeb_v2_task("ViDoRe_esg_reports_human_labeled_v2")
    results = {"ImageNet-1K": _result({"disc_disc": {"hit@1": 0.75}}),
               esg.name: _result({"disc_disc": {"ndcg_linear@5": 0.5}})}
    summary = _publish(tmp_path, [mmeb_v2_task("ImageNet-1K"), esg], results, compare=str(path))
    cmp = summary["compare"]
    assert cmp["tasks"][esg.name]["delta"]["disc_disc"] == pytest.approx(0.5 - values[esg.name])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Compared with Published-2B" in report
    row = next(line for line in report.splitlines() if line.startswith("| ImageNet-1K | hit@1 |"))
    assert row == (f"| ImageNet-1K | hit@1 | {100 * values['ImageNet-1K']:.1f} | 75.0 | "
                   f"{100 * (0.75 - values['ImageNet-1K']):+.1f} |")
    # the registry's note on the ESG task (graded qrels, VLM2Vec metrics.py:183/214) is printed next to the table
    main_part, compare_part = report.split("## Compared")
    assert esg.leaderboard_note and f"| {esg.name} ‡ |" in compare_part
    assert f"- {esg.name}: {esg.leaderboard_note}" in compare_part
    assert f"- {esg.name}: {esg.leaderboard_note}" in main_part  # the main report says it too


def test_tiny_run_writes_leaderboard_and_merge_compares(tmp_path, oracle):
    from mmeb_fixtures import write_mmeb_fixture

    from umeflow.cli import main

    root = tmp_path / "data"
    write_mmeb_fixture(root)
    shards = []
    for i, spec in enumerate(("ImageNet-1K", "ViDoRe_arxivqa")):
        cfg = EvaluateConfig(model="oracle", data_root=str(root), tasks=spec, mode="both", out=str(tmp_path / f"s{i}"),
                             max_new_tokens=4, cache_dir="")
        evaluate.run(cfg, log_to_mlflow=False)
        shards.append(str(tmp_path / f"s{i}"))
    values = _varied()
    pub = tmp_path / "pub.json"
    pub.write_text(json.dumps(_published(values)))
    out = tmp_path / "merged"
    assert main(["evaluate", "--data-root", str(root), "--tasks", "ImageNet-1K,ViDoRe_arxivqa", "--mode", "both",
                 "--cache-dir", "", "--out", str(out), "--compare", str(pub), "--merge", *shards]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for pair in ("disc_disc", "gen_gen", "disc_gen", "gen_disc"):
        board = json.loads((out / "leaderboard" / f"{pair}.json").read_text())
        ours = board["metrics"]["image"]["ImageNet-1K"]
        assert ours == summary["tasks"]["ImageNet-1K"]["scores"][pair] and list(ours) == VLM2VEC_SCORE_KEYS
        assert board["metrics"]["visdoc"]["ViDoRe_arxivqa"] == json.loads(
            (out / "leaderboard" / pair / "visdoc" / "ViDoRe_arxivqa_score.json").read_text())
        row = summary["compare"]["tasks"]["ViDoRe_arxivqa"]
        assert row["delta"][pair] == pytest.approx(
            summary["tasks"]["ViDoRe_arxivqa"]["scores"][pair]["ndcg_linear@5"] - values["ViDoRe_arxivqa"])
    assert summary["compare"]["published_aggregates"]["complete"]
    assert summary["compare"]["aggregates"]["disc_disc"]["delta"]["overall"] is None  # we scored 2 of 78
    assert "## Compared with Published-2B" in (out / "report.md").read_text()


def test_cli_bad_compare_file_is_one_line_and_exit_2(tmp_path, capsys):
    from umeflow.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": {"image": {"ImageNet-1K": {"hit@1": "high"}}}}))
    rc = main(["evaluate", "--data-root", str(tmp_path), "--tasks", "ImageNet-1K", "--cache-dir", "",
               "--out", str(tmp_path / "e"), "--compare", str(bad), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(bad) in err and "metrics.image.ImageNet-1K.hit@1" in err
    assert not (tmp_path / "e").exists()
