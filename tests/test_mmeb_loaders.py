"""MMEB-V2 task registry, task selection, and the loaders for every annotation family on a layout-exact fixture."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from mmeb_fixtures import FIXTURE_TASKS, write_jsonl, write_mmeb_fixture, write_parquet

from umeflow.errors import RecordError, UserError
from umeflow.evaluate.loaders import LOADERS
from umeflow.evaluate.mmeb_v2 import CATEGORIES, MMEB_V2_TASKS, mmeb_v2_task
from umeflow.evaluate.tasks import load_task, select_tasks

MRET = "video-tasks/frames/video_mret"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Inline parquet images are cached; keep that cache out of the user's home."""
    monkeypatch.setenv("UMEFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path) -> Path:
    write_mmeb_fixture(tmp_path / "mmeb")
    return tmp_path / "mmeb"


def _load(root, name):
    return load_task(mmeb_v2_task(name), root)


# ------------------------------------------------------------------------------------------------ registry

def test_registry_has_the_78_tasks_of_the_spec():
    assert len(MMEB_V2_TASKS) == 78 and len({t.name for t in MMEB_V2_TASKS}) == 78
    assert Counter(t.modality for t in MMEB_V2_TASKS) == {"image": 36, "video": 18, "visdoc": 24}
    per_category = Counter(t.category for t in MMEB_V2_TASKS)
    assert per_category == {"I-CLS": 10, "I-QA": 10, "I-RET": 12, "I-GD": 4, "V-CLS": 5, "V-QA": 5, "V-RET": 5,
                            "V-MRET": 3, "VDRv1": 10, "VDRv2": 4, "VR": 6, "OOD": 4}
    for task in MMEB_V2_TASKS:
        assert task.category in CATEGORIES[task.modality], task.name
        assert task.metric == ("ndcg_linear@5" if task.modality == "visdoc" else "hit@1"), task.name
        assert task.loader in LOADERS, task.name
        assert task.revision and task.dataset_name and task.split and task.num_queries > 0, task.name
        assert (task.in_domain is not None) == (task.modality == "image"), task.name
    image = [t for t in MMEB_V2_TASKS if t.modality == "image"]
    assert sum(t.in_domain for t in image) == 20 and all(t.eval_type == "local" for t in image)
    assert Counter(t.parser for t in image if t.category == "I-RET") == {"image_t2i": 6, "image_i2i_vg": 4,
                                                                        "image_i2t": 2}
    assert all(t.eval_type == "global" for t in MMEB_V2_TASKS if t.modality == "visdoc")


def test_registry_pins_version_sensitive_entries():
    assert mmeb_v2_task("ViDoSeek-page").dataset_name == "VLM2Vec/ViDoSeek-page-fixed"
    assert mmeb_v2_task("MMLongBench-page").dataset_name == "VLM2Vec/MMLongBench-page-fixed"
    assert mmeb_v2_task("K700").dataset_name == "VLM2Vec/Kinetics-700"
    assert mmeb_v2_task("SmthSmthV2").media_root == "video-tasks/frames/video_cls/SSv2"
    assert mmeb_v2_task("Charades-STA").media_root == "video-tasks/frames/video_mret/Charades_STA"
    assert (mmeb_v2_task("Breakfast").num_queries, mmeb_v2_task("NExTQA").num_queries) == (433, 8564)
    names = {t.name for t in MMEB_V2_TASKS}
    assert "ViDoRe_esg_reports_v2_multilingual" in names and "ViDoRe_esg_reports_v2" not in names  # English-only out


def _offline_suite(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tasks.json").write_text(json.dumps([dict(name="Colors", modality="image", category="I-CLS",
                                                      file="image-tasks/Colors.jsonl")]))


def test_select_tasks_resolves_groups_names_and_offline(tmp_path):
    assert len(select_tasks(tmp_path, "mmeb-v2")) == 78  # no tasks.json needed
    for modality, count in (("image", 36), ("video", 18), ("visdoc", 24)):
        picked = select_tasks(tmp_path, modality)
        assert len(picked) == count and {t.modality for t in picked} == {modality}
    assert [t.name for t in select_tasks(tmp_path, "K700, ViDoRe_arxivqa")] == ["K700", "ViDoRe_arxivqa"]
    assert len(select_tasks(tmp_path, "video,K700")) == 18  # a task named twice is selected once
    with pytest.raises(UserError, match="tasks.json"):
        select_tasks(tmp_path, "offline")
    _offline_suite(tmp_path)
    assert [t.name for t in select_tasks(tmp_path, "offline")] == ["Colors"]
    assert [t.name for t in select_tasks(tmp_path, "Colors,MSR-VTT")] == ["Colors", "MSR-VTT"]


def test_select_tasks_unknown_name_lists_what_exists(tmp_path):
    _offline_suite(tmp_path)
    with pytest.raises(UserError) as err:
        select_tasks(tmp_path, "K700,Nope")
    message = str(err.value)
    assert "'Nope'" in message and "ImageNet-1K" in message and "Colors" in message and "mmeb-v2" in message


# ------------------------------------------------------------------------------------------------ image

def test_image_loaders_name_candidates_per_parser(root):
    cls = _load(root, "ImageNet-1K")  # parquet annotations
    assert cls.labels == [["tabby cat"], ["beagle"]]
    assert cls.query_candidates == [["tabby cat", "beagle", "tiger"], ["beagle", "tabby cat", "tiger"]]
    assert list(cls.candidates) == ["tabby cat", "beagle", "tiger"] and cls.rel_scores is None
    assert cls.queries[0].text == "Represent the given image for classification"  # <|image_1|> stripped
    assert cls.queries[0].images == (root / "image-tasks/images/q1.png",)

    qa = _load(root, "OK-VQA")
    assert qa.queries[0].text == "Represent the given image with the following question: What animal is this?"
    assert qa.labels == [["cat"]] and qa.query_candidates == [["cat", "dog"]]  # repeated option ranked once

    i2t = _load(root, "MSCOCO_i2t")
    assert i2t.labels == [["a cat on a mat"]] and i2t.candidates["a dog in a park"].images == ()

    t2i = _load(root, "VisDial")
    assert t2i.labels == [["images/cat.png"]] and list(t2i.candidates) == ["images/cat.png", "images/dog.png"]
    assert t2i.queries[0].images == () and t2i.candidates["images/dog.png"].text == "Represent the given image."
    assert t2i.queries[0].text == ("Represent the given dialogue about an image, which is used for image retrieval: "
                                   "Q: is it a pet? A: yes")

    vg = _load(root, "RefCOCO-Matching")
    assert vg.query_candidates == [["images/ref.png:left cat", "images/ref.png:right dog"]]
    assert vg.candidates["images/ref.png:right dog"].images == (root / "image-tasks/images/ref.png",)


# ------------------------------------------------------------------------------------------------ video

def test_video_classification_is_global_over_the_full_class_list(root):
    data = _load(root, "K700")
    assert data.labels == [["juggling_balls"], ["surfing_water"], ["juggling_balls"]]
    assert list(data.candidates)[:2] == ["juggling_balls", "surfing_water"] and data.query_candidates is None
    assert len(data.candidates) == 700 and data.candidates["waiting_in_line"].text == "waiting_in_line"
    assert data.queries[0].text == "Recognize the category of the video content."
    frames = data.queries[1].video
    assert [p.name for p in frames] == [f"{i:04d}.jpg" for i in (0, 1, 2, 3, 5, 6, 7, 9)]  # linspace over 10
    assert frames[0].parent == root / "video-tasks/frames/video_cls/K700/k2"


def test_ssv2_is_local_multiple_choice_and_keeps_short_videos_unpadded(root):
    data = _load(root, "SmthSmthV2")
    assert data.labels == [["pushing something"]]
    assert data.query_candidates == [["pulling something", "pushing something", "lifting"]]
    assert [p.name for p in data.queries[0].video] == [f"{i:04d}.jpg" for i in range(5)]
    assert data.queries[0].video[0].parent.name == "74225"  # integer id in the row


def test_a_query_count_unlike_the_published_one_is_logged(root, caplog):
    _load(root, "SmthSmthV2")
    assert "SmthSmthV2: 1 queries loaded, the published scores have 1000" in caplog.text


def test_video_retrieval_pools_videos_globally(root):
    data = _load(root, "MSR-VTT")
    assert data.labels == [["video7020"], ["video7021"], ["video7020"]] and data.query_candidates is None
    assert list(data.candidates) == ["video7020", "video7021"]
    assert data.queries[0].text == "Find a video that contains the following visual content: a woman cooks pasta"
    cand = data.candidates["video7021"]
    assert cand.text == "Understand the content of the provided video." and len(cand.video) == 8


def test_video_qa_ranks_the_options(root):
    data = _load(root, "Video-MME")
    options = ["A. One.", "B. Two.", "C. Three.", "D. Four."]
    assert data.labels == [["B. Two."]] and data.query_candidates == [options]
    assert data.candidates["C. Three."].text == "Three"  # trailing ". " stripped as VLM2Vec does
    text = data.queries[0].text
    assert text.startswith("Given a video and a question, select the most accurate answer")
    assert text.endswith("Question:  How many people appear?\nA. One.\nB. Two.\nC. Three.\nD. Four.")
    assert len(data.queries[0].video) == 8


def test_several_positive_clips_are_all_labels_and_said_so(root, caplog):
    video = root / MRET / "QVHighlight/RoripwjYFp8_60.0_210.0"
    shutil.copytree(video / "positive_0", video / "positive_1")
    with caplog.at_level("WARNING"):
        data = _load(root, "QVHighlight")
    rel = f"{MRET}/QVHighlight/RoripwjYFp8_60.0_210.0"
    assert sorted(data.labels[0]) == [f"{rel}/positive_0", f"{rel}/positive_1"]
    assert "2 positive* clip folders" in caplog.text and "VLM2Vec" in caplog.text


def test_moment_retrieval_uses_clip_folders(root):
    data = _load(root, "QVHighlight")
    video = f"{MRET}/QVHighlight/RoripwjYFp8_60.0_210.0"
    assert data.labels == [[f"{video}/positive_0"]]
    assert data.query_candidates == [[f"{video}/negative_0", f"{video}/negative_1", f"{video}/positive_0"]]
    assert data.queries[0].video[0].parent == root / video / "query"
    assert data.queries[0].text.endswith("given video: A man talks to the camera.")

    seeker = _load(root, "MomentSeeker")
    clips = f"{MRET}/MomentSeeker/video_frames"
    assert seeker.labels == [[f"{clips}/clips_pos_1"], [f"{clips}/clips_neg_2"], [f"{clips}/clips_pos_1"]]
    assert seeker.query_candidates[1] == [f"{clips}/clips_neg_2", f"{clips}/clips_pos_1"]
    text_q, video_q, image_q = seeker.queries
    assert text_q.video is None and text_q.images == ()
    assert video_q.video[0].parent == root / clips / "src_movie_3"
    assert image_q.images == (root / MRET / "MomentSeeker/query_img_7.jpg",)
    assert len(seeker.candidates[f"{clips}/clips_pos_1"].video) == 10  # every frame of the clip, not 8
    assert len(video_q.video) == 3


# ------------------------------------------------------------------------------------------------ visdoc

def test_visdoc_has_graded_qrels_and_global_corpus(root):
    data = _load(root, "ViDoRe_arxivqa")
    assert data.labels == [["p2", "p1"], ["p3"]]  # the score-0 judgement is not a label
    assert data.rel_scores == [[2.0, 1.0], [1.0]]
    assert list(data.candidates) == ["p1", "p2", "p3"] and data.query_candidates is None
    assert data.queries[0].text == "Find a document image that matches the given query: What is the loss?"
    page = data.candidates["p3"]
    assert page.text == "Understand the content of the provided document image."
    assert page.images == (root / "visdoc-tasks/ViDoRe_arxivqa/images/p3.png",)


def test_visdoc_parquet_image_bytes_are_cached(root, tmp_path):
    data = _load(root, "VisRAG_ChartQA")
    assert data.labels == [["chart_2.png"]] and data.rel_scores == [[3.0]]
    image = data.candidates["chart_2.png"].images[0]
    assert image.is_relative_to(tmp_path / "cache") and image.suffix == ".png"
    from PIL import Image
    assert Image.open(image).getpixel((0, 0)) == (4, 5, 6)
    assert _load(root, "VisRAG_ChartQA").candidates["chart_2.png"].images[0] == image  # content-addressed


# ------------------------------------------------------------------------------------------------ bad input

def _rewrite_jsonl(path: Path, edit):
    rows = path.read_text().splitlines()
    edit(rows)
    path.write_text("\n".join(rows) + "\n")


def _drop_key(rows, index, key):
    rec = json.loads(rows[index])
    del rec[key]
    rows[index] = json.dumps(rec)


def _set_key(rows, index, key, value):
    rec = json.loads(rows[index])
    rec[key] = value
    rows[index] = json.dumps(rec)


BAD_INPUTS = {
    "malformed line": ("MSR-VTT", "video-tasks/MSR-VTT.jsonl",
                       lambda r: _rewrite_jsonl(r / "video-tasks/MSR-VTT.jsonl",
                                                lambda rows: rows.__setitem__(1, "{not json")), 2, None),
    "missing field": ("Video-MME", "video-tasks/Video-MME.jsonl",
                      lambda r: _rewrite_jsonl(r / "video-tasks/Video-MME.jsonl",
                                               lambda rows: _drop_key(rows, 0, "answer")), 1, "answer"),
    "missing frame folder": ("K700", "video-tasks/K700.jsonl",
                             lambda r: shutil.rmtree(r / "video-tasks/frames/video_cls/K700/k2"), 2, "video_id"),
    "path escaping the root": ("K700", "video-tasks/K700.jsonl",
                               lambda r: write_jsonl(r / "video-tasks/K700.jsonl", [
                                   {"video_id": "../../../../etc", "pos_text": "x"}]), 1, "video_id"),
    "positive not in options": ("SmthSmthV2", "video-tasks/SmthSmthV2.jsonl",
                                lambda r: write_jsonl(r / "video-tasks/SmthSmthV2.jsonl", [
                                    {"video_id": 74225, "pos_text": "x", "neg_text": ["a", "b"]}]), 1, "neg_text"),
    "instruction not a string": ("OK-VQA", "image-tasks/OK-VQA.jsonl",
                                 lambda r: _rewrite_jsonl(r / "image-tasks/OK-VQA.jsonl",
                                                          lambda rows: _set_key(rows, 0, "qry_inst", 5)), 1, "qry_inst"),
    "target instruction not a string": ("VisDial", "image-tasks/VisDial.jsonl",
                                        lambda r: _rewrite_jsonl(r / "image-tasks/VisDial.jsonl",
                                                                 lambda rows: _set_key(rows, 0, "tgt_inst", 7)),
                                        1, "tgt_inst"),
    "missing target image": ("VisDial", "image-tasks/VisDial.jsonl",
                             lambda r: (r / "image-tasks/images/dog.png").unlink(), 1, "tgt_img_path"),
    "parquet null targets": ("ImageNet-1K", "image-tasks/ImageNet-1K.parquet",
                             lambda r: write_parquet(r / "image-tasks/ImageNet-1K.parquet", [
                                 {"qry_text": "", "qry_img_path": "images/q1.png", "tgt_text": ["a"]},
                                 {"qry_text": "", "qry_img_path": "images/q1.png", "tgt_text": None}]),
                             2, "tgt_text"),
    "parquet without a column": ("ImageNet-1K", "image-tasks/ImageNet-1K.parquet",
                                 lambda r: write_parquet(r / "image-tasks/ImageNet-1K.parquet", [
                                     {"qry_img_path": "images/q1.png", "tgt_text": ["a"]}]), 1, "qry_text"),
    "no positive clip": ("QVHighlight", "video-tasks/QVHighlight.jsonl",
                         lambda r: (r / MRET / "QVHighlight/RoripwjYFp8_60.0_210.0/positive_0").rename(
                             r / MRET / "QVHighlight/RoripwjYFp8_60.0_210.0/negative_9"), 1, "video_path"),
    "qrels unknown corpus id": ("ViDoRe_arxivqa", "visdoc-tasks/ViDoRe_arxivqa/qrels.jsonl",
                                lambda r: _rewrite_jsonl(r / "visdoc-tasks/ViDoRe_arxivqa/qrels.jsonl",
                                                         lambda rows: rows.append(json.dumps(
                                                             {"query-id": 2, "corpus-id": "p9", "score": 1}))),
                                5, "corpus-id"),
    "query without qrels": ("ViDoRe_arxivqa", "visdoc-tasks/ViDoRe_arxivqa/queries.jsonl",
                            lambda r: _rewrite_jsonl(r / "visdoc-tasks/ViDoRe_arxivqa/qrels.jsonl",
                                                     lambda rows: rows.pop()), 2, "query-id"),
    "corpus bytes not an image": ("VisRAG_ChartQA", "visdoc-tasks/VisRAG_ChartQA/corpus.parquet",
                                  lambda r: write_parquet(r / "visdoc-tasks/VisRAG_ChartQA/corpus.parquet", [
                                      {"corpus-id": "chart_2.png", "image": {"bytes": b"nope", "path": "x"}}]),
                                  1, "image"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_line_and_field(root, case):
    task, rel, corrupt, line, field = BAD_INPUTS[case]
    corrupt(root)
    with pytest.raises(RecordError) as err:
        _load(root, task)
    assert (err.value.path, err.value.line, err.value.field) == (str(root / rel), line, field)
    assert str(root / rel) in str(err.value)


def test_missing_annotation_file_is_a_user_error_naming_it(root):
    (root / "video-tasks/K700.jsonl").unlink()
    with pytest.raises(UserError) as err:
        _load(root, "K700")
    assert not isinstance(err.value, RecordError)
    assert str(root / "video-tasks/K700.jsonl") in str(err.value) and "K700.parquet" in str(err.value)


def test_fixture_covers_every_loader_family():
    families = {LOADERS[mmeb_v2_task(name).loader].__name__ for name in FIXTURE_TASKS}
    assert families == {f.__name__ for k, f in LOADERS.items() if k not in ("image", "video_cls")}
