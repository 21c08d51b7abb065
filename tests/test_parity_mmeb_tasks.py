"""Parity with VLM2Vec @6e1e1d4: each MMEB-V2 task is built as VLM2Vec builds it (frames, pools, row counts, texts).

Every case states the reference behaviour as a fact with the VLM2Vec file:line it comes from (paths relative to the
VLM2Vec repository; ``eval_dataset/`` is ``src/data/eval_dataset/``). Texts are compared as the model is fed them:
VLM2Vec's string with the media placeholder removed and the ends trimmed, as UME-R1's eval collator does
(UME-R1 @08891de src/eval/VLM2Vec/src/data/collator/eval_collator.py:225,253,294 ``text.replace(token, '').strip()``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mmeb_fixtures import write_frames, write_jsonl, write_mmeb_fixture

from umeflow.evaluate.class_labels import class_labels
from umeflow.evaluate.mmeb_v2 import MMEB_V2_TASKS, mmeb_v2_task
from umeflow.evaluate.tasks import TaskMeta, load_task, sample_frame_names

QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
             "Return only the exact text of your chosen answer. Question:")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("UMEFLOW_CACHE_DIR", str(tmp_path / "cache"))


def _video_task(tmp_path: Path, name: str, rows: list[dict], folders: dict[str, list[str]]):
    """A one-task tree: ``rows`` as the annotation file, frame folders (relative to media_root) with given names."""
    meta = mmeb_v2_task(name)
    write_jsonl(tmp_path / f"{meta.file}.jsonl", rows)
    for folder, names in folders.items():
        write_frames(tmp_path / meta.media_root / folder, names)
    return load_task(meta, tmp_path)


def _image_task(tmp_path: Path, name: str, row: dict):
    for img in [row.get("qry_img_path") or ""] + list(row.get("tgt_img_path") or []):
        if img:
            write_frames(tmp_path / "image-tasks" / Path(img).parent, [Path(img).name])
    write_jsonl(tmp_path / f"image-tasks/{name}.jsonl", [row])
    return load_task(mmeb_v2_task(name), tmp_path)


def _frames(n):
    return [f"{i}.jpg" for i in range(n)]


# ------------------------------------------------------------------------------------------------ frames

def test_frames_are_in_natural_order_then_linspace():
    # vision_utils.py:236-244: load_frames sorts by natural_sort_key (digit runs as ints, the rest lower-cased) and
    # keeps .jpg/.jpeg/.png (case-insensitive, l.246-247); l.254-256 + 282-283: 8 chosen by
    # np.linspace(0, n-1, 8, dtype=int) when n >= 8. 12 frames -> indices 0,1,3,4,6,7,9,11.
    names = [f"{i}.jpg" for i in range(12, 0, -1)] + ["notes.txt"]
    assert sample_frame_names(names) == [f"{i}.jpg" for i in (1, 2, 4, 5, 7, 8, 10, 12)]
    assert sample_frame_names(["frame_10.JPG", "frame_2.jpg", "Frame_1.png"], None) == \
        ["Frame_1.png", "frame_2.jpg", "frame_10.JPG"]


def test_a_folder_of_5_frames_is_used_as_is_and_one_of_12_gives_8(tmp_path):
    # vision_utils.py:280-284: process_video_frames samples only when num_frames <= len(frames); a shorter folder is
    # returned unchanged (no padding by repeating the last frame).
    five = ["frame_1.jpg", "frame_2.jpg", "frame_3.jpg", "frame_10.jpg", "frame_20.jpg"]
    assert sample_frame_names(five) == five
    data = _video_task(tmp_path, "MSR-VTT", [
        {"video_id": "short", "video": "short.mp4", "caption": "five frames"},
        {"video_id": "long", "video": "long.mp4", "caption": "twelve frames"},
    ], {"short": five, "long": [f"{i}.jpg" for i in range(1, 13)]})
    assert [p.name for p in data.candidates["short"].video] == five
    assert [p.name for p in data.candidates["long"].video] == [f"{i}.jpg" for i in (1, 2, 4, 5, 7, 8, 10, 12)]


def test_momentseeker_feeds_every_frame_and_moment_retrieval_eight(tmp_path):
    # momentseeker_dataset.py:40,68,82: query video and clip folders go through load_frames (every frame);
    # moment_retrieval_datasets.py:37,64: process_video_frames with num_video_frames / num_clip_frames = 8
    # (experiments/public/eval/video.yaml:102-103).
    twelve = [f"{i}.jpg" for i in range(1, 13)]
    seeker = _video_task(tmp_path / "a", "MomentSeeker", [
        {"query": "q", "input_frames": "src/m.mp4", "positive_frames": [{"output_path": "c/pos.mp4"}],
         "negative_frames": []}], {"video_frames/src_m": twelve, "video_frames/c_pos": twelve})
    assert [p.name for p in seeker.queries[0].video] == twelve
    assert len(seeker.candidates[f"{mmeb_v2_task('MomentSeeker').media_root}/video_frames/c_pos"].video) == 12
    moment = _video_task(tmp_path / "b", "QVHighlight", [{"query": "q", "video_path": "v/abc.mp4"}],
                         {"abc/query": twelve, "abc/positive": twelve, "abc/negative_0": twelve[:5]})
    assert [p.name for p in moment.queries[0].video] == [f"{i}.jpg" for i in (1, 2, 4, 5, 7, 8, 10, 12)]
    clips = {Path(k).name: len(v.video) for k, v in moment.candidates.items()}
    assert clips == {"positive": 8, "negative_0": 5}


# ------------------------------------------------------------------------------------- pools and row counts

def test_k700_pool_is_the_700_labels_of_the_dataset(tmp_path):
    # video_classification_datasets.py:61-64 adds every label of VIDEOCLS_LABEL_MAPPING['Kinetics-700']
    # (video_classification_utils.py:3, 700 names) as the corpus; generate_cand_dataset
    # (base_eval_dataset.py:121-149) merges it with the rows' labels, deduplicated by name.
    write_mmeb_fixture(tmp_path)
    data = load_task(mmeb_v2_task("K700"), tmp_path)
    assert len(class_labels("K700")) == 700 and len(data.candidates) == 700
    assert set(data.candidates) == set(class_labels("K700"))


@pytest.mark.parametrize("task,count", [("HMDB51", 51), ("UCF101", 101), ("Breakfast", 10)])
def test_other_video_classification_pools_are_their_full_class_lists(tmp_path, caplog, task, count):
    # video_classification_utils.py:2,5,6 (BREAKFAST_LABELS 10, UCF101_LABELS 101, HMDB51_LABELS 51), l.8-14 map
    # the dataset names to them; a label outside the list (a spelling the list lacks) joins the pool as well.
    first = class_labels(task)[0]
    data = _video_task(tmp_path, task, [{"video_id": "v1", "pos_text": first},
                                        {"video_id": "v1", "pos_text": "not_a_listed_label"}], {"v1": _frames(3)})
    assert data.labels == [[first], ["not_a_listed_label"]] and data.query_candidates is None
    assert len(data.candidates) == count + 1
    assert "not_a_listed_label" in caplog.text  # pooled as VLM2Vec does, but said out loud


def test_ssv2_keeps_the_first_1000_rows(tmp_path):
    # experiments/public/eval/video.yaml:6 num_sample_per_subset: 1000 for SmthSmthV2 (the only eval task that sets
    # it); src/utils/dataset_utils.py:7-14 sample_dataset keeps dataset.select(range(1000)), the first rows in order.
    rows = [{"video_id": 7, "pos_text": "pos", "neg_text": [f"opt{i}", "pos"]} for i in range(1005)]
    data = _video_task(tmp_path, "SmthSmthV2", rows, {"7": _frames(8)})
    assert len(data.queries) == 1000 and data.query_candidates[-1] == ["opt999", "pos"]
    assert [t.name for t in MMEB_V2_TASKS if t.num_sample_per_subset] == ["SmthSmthV2"]


# ---------------------------------------------------------------------------------------- video QA texts

def test_videomme_strips_the_letter_and_trailing_dot(tmp_path):
    # videomme_dataset.py:63 cand_text = o[o.find('. '):].strip('. '); l.70-71 names = raw options, label by letter;
    # l.32 + 10-12: query = f'{video_token} {TASK_PROMPT} {question}\n' + '\n'.join(options), and TASK_PROMPT (l.18)
    # ends with a space, so "Question:" is followed by two spaces.
    options = ["A. One.", "B. Two.", "C. 3.5", "D. Mr. Smith."]
    data = _video_task(tmp_path, "Video-MME", [
        {"videoID": "v", "question": "How many?", "options": options, "answer": "B", "question_id": "1",
         "domain": "d", "sub_category": "s"}], {"v": _frames(8)})
    assert [data.candidates[o].text for o in options] == ["One", "Two", "3.5", "Mr. Smith"]
    assert data.labels == [["B. Two."]] and data.query_candidates == [options]
    assert data.queries[0].text == QA_PROMPT + "  How many?\nA. One.\nB. Two.\nC. 3.5\nD. Mr. Smith."


def test_egoschema_joins_options_with_spaces_and_strips_candidates(tmp_path):
    # egoschema_dataset.py:32 query + ' '.join(options): the options follow the question with no separator and are
    # joined by single spaces; l.64 cand_text stripped as Video-MME; l.70-72 names = raw options, label by index.
    options = ["A. c cooks.", "B. c reads."]
    data = _video_task(tmp_path, "EgoSchema", [
        {"video_idx": "v", "question_idx": "0", "question": "What is c doing?", "option": options, "answer": "1"}],
        {"v": _frames(8)})
    assert data.queries[0].text == QA_PROMPT + "  What is c doing?A. c cooks. B. c reads."
    assert [data.candidates[o].text for o in options] == ["c cooks", "c reads"] and data.labels == [["B. c reads."]]


def test_mvbench_keeps_the_letter_prefix(tmp_path):
    # mvbench_dataset.py:116-117 + vision_utils.py:34-46 qa_template: question + "\nOptions:\n(A) c\n..." (rstripped),
    # candidates "(A) c" as both text and name (l.150,156); the answer is the last option equal to it
    # (vision_utils.py:42-43); frames in <subset>/<video> (l.119).
    data = _video_task(tmp_path, "MVBench", [
        {"subset": "action_count", "video": "a.mp4", "question": "What happens?", "candidates": ["run", "walk", "run"],
         "answer": "run"}], {"action_count/a.mp4": _frames(8)})
    assert data.query_candidates == [["(A) run", "(B) walk", "(C) run"]] and data.labels == [["(C) run"]]
    assert data.candidates["(B) walk"].text == "(B) walk"
    assert data.queries[0].text == QA_PROMPT + "  What happens?\nOptions:\n(A) run\n(B) walk\n(C) run"


def test_nextqa_candidates_are_the_raw_options(tmp_path):
    # nextqa_dataset.py:31-34: options a0..a4, query = qa_template(prompt + question) with the "(A) " block; l.65,71
    # cand_text and cand_names are the raw options, so one that starts with "A. " keeps it.
    opts = ["A. big dog", "cat", "bird", "fish", "cow"]
    data = _video_task(tmp_path, "NExTQA", [
        {"video": 4010069381, "qid": 1, "type": "CW", "question": "why?", "answer": 0,
         **{f"a{i}": o for i, o in enumerate(opts)}}], {"4010069381": _frames(8)})
    assert data.candidates["A. big dog"].text == "A. big dog" and data.labels == [["A. big dog"]]
    assert data.queries[0].text == QA_PROMPT + "  why?\nOptions:\n(A) A. big dog\n(B) cat\n(C) bird\n(D) fish\n(E) cow"


def test_activitynetqa_question_and_yes_no(tmp_path):
    # activitynetqa_dataset.py:36 query + '? (A) yes; (B) no.'; l.39 frames in v_<video_name>; l.67-75 yes/no.
    data = _video_task(tmp_path, "ActivityNetQA", [
        {"video_name": "abc", "question": "is it sunny", "answer": "no", "question_id": "q"}], {"v_abc": _frames(8)})
    assert data.queries[0].text == QA_PROMPT + "  is it sunny? (A) yes; (B) no."
    assert data.query_candidates == [["yes", "no"]] and data.labels == [["no"]]


# -------------------------------------------------------------------------------------------- image texts

def test_image_query_joins_instruction_and_text_with_a_space(tmp_path):
    # image_qa_dataset.py:17-20: "\n" + stripped instruction, then processor.py:663-665 process_input_text joins
    # instruction + " " + text; " \n" folded to "\n" (l.20). Candidates are the raw tgt_text (l.26), tgt_inst unread.
    data = _image_task(tmp_path, "OK-VQA", {
        "qry_inst": "<|image_1|>\nRepresent the given image with the following question:", "qry_text": "What is it?",
        "qry_img_path": "images/q.png", "tgt_inst": "Represent the answer", "tgt_text": ["a cat", "a dog"],
        "tgt_img_path": ["", ""]})
    assert data.queries[0].text == "Represent the given image with the following question: What is it?"
    assert data.candidates["a dog"].text == "a dog" and data.candidates["a dog"].images == ()


def test_i2t_candidates_are_the_caption_alone(tmp_path):
    # image_i2t_eval.py:26 cand_texts = tgt_texts (no target instruction), text only (l.27).
    data = _image_task(tmp_path, "MSCOCO_i2t", {
        "qry_inst": "<|image_1|>\nFind an image caption describing the given everyday image.", "qry_text": "",
        "qry_img_path": "images/q.png", "tgt_inst": "Represent the caption", "tgt_text": ["a cat on a mat", "a dog"],
        "tgt_img_path": ["", ""]})
    assert data.candidates["a cat on a mat"].text == "a cat on a mat"
    assert data.queries[0].text == "Find an image caption describing the given everyday image."


def test_t2i_candidate_text_follows_the_first_caption(tmp_path):
    # image_t2i_eval.py:18-23: query = instruction + ' ' + text, no query image; l.26-33: when the row's first
    # caption is non-blank every candidate is tgt_inst + ' ' + caption; l.34-38 otherwise tgt_inst alone; l.44
    # names are the image paths.
    data = _image_task(tmp_path, "WebQA", {
        "qry_inst": "<|image_1|>Find a Wikipedia image that answers this question:", "qry_text": "Where is it?",
        "qry_img_path": "images/ignored.png", "tgt_inst": "<|image_1|>\nRepresent the given image with text:",
        "tgt_text": ["Eiffel tower", ""], "tgt_img_path": ["images/a.png", "images/b.png"]})
    assert data.queries[0].text == "Find a Wikipedia image that answers this question: Where is it?"
    assert data.queries[0].images == ()
    assert data.candidates["images/a.png"].text == "Represent the given image with text: Eiffel tower"
    assert data.candidates["images/b.png"].text == "Represent the given image with text:"


def test_i2i_vg_names_drop_quotes_from_the_caption(tmp_path):
    # image_i2i_vg_dataset.py:45 cand_names = path + ':' + caption.strip('"'); l.27-34 texts keep the caption.
    data = _image_task(tmp_path, "RefCOCO-Matching", {
        "qry_inst": "<|image_1|>\nSelect the portion of the image that follows the language expressions:",
        "qry_text": "left cat", "qry_img_path": "images/q.png", "tgt_inst": "Select the portion:",
        "tgt_text": ['"left cat"', "right dog"], "tgt_img_path": ["images/r.png", "images/r.png"]})
    assert data.query_candidates == [["images/r.png:left cat", "images/r.png:right dog"]]
    assert data.candidates["images/r.png:left cat"].text == 'Select the portion: "left cat"'
    assert data.queries[0].text == ("Select the portion of the image that follows the language expressions: "
                                    "left cat")


# ------------------------------------------------------------------------------------------------- visdoc

def _visdoc(tmp_path: Path, name: str, corpus: list[dict], qrels: list[dict], pages: list[str] = ()):
    meta = mmeb_v2_task(name)
    write_jsonl(tmp_path / meta.file / "queries.jsonl", [{"query-id": "q1", "query": "revenue?"}])
    write_jsonl(tmp_path / meta.file / "corpus.jsonl", corpus)
    write_jsonl(tmp_path / meta.file / "qrels.jsonl", qrels)
    for page in pages:
        write_frames(tmp_path / meta.media_root, [page])
    return meta, load_task(meta, tmp_path)


def test_duplicate_qrels_keep_the_highest_grade(tmp_path):
    # src/utils/dataset_utils.py:36-41 load_qrels_mapping: score > 0 only; a repeated (query, doc) keeps
    # max(existing, score).
    _, data = _visdoc(tmp_path, "ViDoRe_arxivqa", [{"corpus-id": "p1"}, {"corpus-id": "p2"}], [
        {"query-id": "q1", "corpus-id": "p1", "score": 1}, {"query-id": "q1", "corpus-id": "p1", "score": 2},
        {"query-id": "q1", "corpus-id": "p1", "score": 1}, {"query-id": "q1", "corpus-id": "p2", "score": 0}],
        pages=["p1.png", "p2.png"])
    assert data.labels == [["p1"]] and data.rel_scores == [[2.0]]


# experiments/public/eval/visdoc.yaml:4-139 image_root of the 24 scored visdoc tasks
VISDOC_YAML_IMAGE_ROOT = {
    **{t: f"visdoc-tasks/{t}" for t in (
        "ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
        "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe_syntheticDocQA_energy",
        "ViDoRe_syntheticDocQA_government_reports", "ViDoRe_syntheticDocQA_healthcare_industry", "VisRAG_ArxivQA",
        "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA", "ViDoSeek-page",
        "ViDoSeek-doc", "MMLongBench-doc", "MMLongBench-page")},
    "ViDoRe_esg_reports_human_labeled_v2": "visdoc-tasks/esg_reports_human_labeled_v2",  # l.56
    "ViDoRe_biomedical_lectures_v2_multilingual": "visdoc-tasks/biomedical_lectures_v2_multilingual",  # l.66
    "ViDoRe_economics_reports_v2_multilingual": "visdoc-tasks/economics_reports_v2_multilingual",  # l.76
    "ViDoRe_esg_reports_v2_multilingual": "visdoc-tasks/esg_reports_v2_multilingual",  # l.86
}


def test_visdoc_image_folders_are_named_as_in_visdoc_yaml():
    visdoc = {t.name: t.media_root for t in MMEB_V2_TASKS if t.modality == "visdoc"}
    assert visdoc == VISDOC_YAML_IMAGE_ROOT


def test_pages_cached_the_vlm2vec_way_are_found(tmp_path):
    # vidore_dataset.py:60 caches page <corpus-id>.png under image_root; visrag_dataset.py:65-68 under
    # stem[:50] + '_' + md5(corpus-id)[:8] + ext. A corpus row without image bytes reads that file.
    meta, data = _visdoc(tmp_path, "ViDoRe_esg_reports_human_labeled_v2", [{"corpus-id": "17", "image": None}],
                         [{"query-id": "q1", "corpus-id": "17", "score": 3}], pages=["17.png"])
    assert data.candidates["17"].images == (tmp_path / "visdoc-tasks/esg_reports_human_labeled_v2/17.png",)
    long_id = "a" * 60 + ".png"
    cached = "a" * 50 + "_" + hashlib.md5(long_id.encode()).hexdigest()[:8] + ".png"
    meta, data = _visdoc(tmp_path, "VisRAG_ArxivQA", [{"corpus-id": long_id}],
                         [{"query-id": "q1", "corpus-id": long_id, "score": 1}], pages=[cached])
    assert data.candidates[long_id].images == (tmp_path / meta.media_root / cached,)


def test_graded_qrels_task_carries_a_leaderboard_note():
    # src/utils/eval_utils/metrics.py:214 de-duplicates labels with set() before l.183 zips them with rel_scores;
    # umeflow keeps each grade with its page, so this graded-qrels task says why its number can differ.
    noted = {t.name for t in MMEB_V2_TASKS if t.leaderboard_note}
    assert noted == {"ViDoRe_esg_reports_human_labeled_v2"}
    assert "set()" in mmeb_v2_task("ViDoRe_esg_reports_human_labeled_v2").leaderboard_note


def test_frame_counts_per_task_follow_video_yaml():
    # experiments/public/eval/video.yaml: num_frames / num_video_frames / num_clip_frames 8 for every video task but
    # MomentSeeker (l.117-124), whose loader reads whole folders; a task without the knobs (offline) also uses 8.
    assert TaskMeta(name="x", modality="video", category="V-CLS", file="f").num_frames == 8
    assert {t.name for t in MMEB_V2_TASKS if t.modality == "video" and t.num_frames != 8} == {"MomentSeeker"}
    assert mmeb_v2_task("MomentSeeker").num_frames is None
