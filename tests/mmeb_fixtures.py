"""A tiny MMEB-V2 data tree in the exact VLM2Vec on-disk layout, one task per loader family.

``write_mmeb_fixture(root)`` writes it and returns the registry entries it covers. The rows use the upstream field
names (MMEB_Test_Instruct for images, the HF annotation fields for video, BEIR queries/corpus/qrels for visdoc), so a
loader that reads the fixture correctly reads the real files. Images are 8x8 so the tree stays small enough to
upload to a local S3 server in a test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from umeflow.evaluate.mmeb_v2 import mmeb_v2_task

FRAMES_PER_VIDEO = 10

IMAGE_TASKS = ("ImageNet-1K", "OK-VQA", "MSCOCO_i2t", "VisDial", "RefCOCO-Matching")
VIDEO_TASKS = ("K700", "SmthSmthV2", "MSR-VTT", "Video-MME", "QVHighlight", "MomentSeeker")
VISDOC_TASKS = ("ViDoRe_arxivqa", "VisRAG_ChartQA")
FIXTURE_TASKS = IMAGE_TASKS + VIDEO_TASKS + VISDOC_TASKS


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _image(path: Path, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(color))


def write_frames(folder: Path, names: list[str]) -> None:
    """Tiny frame files with the given names (each a different shade, so frames are told apart by content too)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (10 * i % 256, 0, 0)).save(folder / name)


def _frames(folder: Path, count: int = FRAMES_PER_VIDEO) -> None:
    write_frames(folder, [f"{i:04d}.jpg" for i in range(count)])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _image_tasks(root: Path) -> None:
    base = root / "image-tasks"
    for name in ("cat", "dog", "q1", "q2", "ref"):
        _image(base / "images" / f"{name}.png")
    # ImageNet-1K as parquet (the HF export format); the rest as jsonl
    write_parquet(base / "ImageNet-1K.parquet", [
        {"qry_inst": "<|image_1|>\nRepresent the given image for classification", "qry_text": "",
         "qry_img_path": "images/q1.png", "tgt_inst": "", "tgt_text": ["tabby cat", "beagle", "tiger"],
         "tgt_img_path": ["", "", ""]},
        {"qry_inst": "<|image_1|>\nRepresent the given image for classification", "qry_text": "",
         "qry_img_path": "images/q2.png", "tgt_inst": "", "tgt_text": ["beagle", "tabby cat", "tiger"],
         "tgt_img_path": ["", "", ""]},
    ])
    write_jsonl(base / "OK-VQA.jsonl", [
        {"qry_inst": "<|image_1|>\nRepresent the given image with the following question:",
         "qry_text": "What animal is this?", "qry_img_path": "images/q1.png", "tgt_inst": "",
         "tgt_text": ["cat", "dog", "cat"], "tgt_img_path": ["", "", ""]},
    ])
    write_jsonl(base / "MSCOCO_i2t.jsonl", [
        {"qry_inst": "<|image_1|>\nFind an image caption describing the given everyday image.", "qry_text": "",
         "qry_img_path": "images/q1.png", "tgt_inst": "", "tgt_text": ["a cat on a mat", "a dog in a park"],
         "tgt_img_path": ["", ""]},
    ])
    write_jsonl(base / "VisDial.jsonl", [
        {"qry_inst": "Represent the given dialogue about an image, which is used for image retrieval:",
         "qry_text": "Q: is it a pet? A: yes", "qry_img_path": "", "tgt_inst": "Represent the given image.",
         "tgt_text": ["<|image_1|>", "<|image_1|>"], "tgt_img_path": ["images/cat.png", "images/dog.png"]},
    ])
    write_jsonl(base / "RefCOCO-Matching.jsonl", [
        {"qry_inst": "<|image_1|>\nSelect the portion of the image that follows the language expressions:",
         "qry_text": "left cat", "qry_img_path": "images/q2.png", "tgt_inst": "",
         "tgt_text": ["left cat", "right dog"], "tgt_img_path": ["images/ref.png", "images/ref.png"]},
    ])


def _video_tasks(root: Path) -> None:
    base, frames = root / "video-tasks", root / "video-tasks" / "frames"
    for vid in ("k1", "k2", "k3"):
        _frames(frames / "video_cls" / "K700" / vid)
    # labels spelled as in the K700 class list, so the pool is exactly that list (700)
    write_jsonl(base / "K700.jsonl", [{"video_id": "k1", "pos_text": "juggling_balls"},
                                      {"video_id": "k2", "pos_text": "surfing_water"},
                                      {"video_id": "k3", "pos_text": "juggling_balls"}])
    _frames(frames / "video_cls" / "SSv2" / "74225", count=5)  # shorter than 8: all 5 are used, unpadded
    write_jsonl(base / "SmthSmthV2.jsonl", [{"video_id": 74225, "pos_text": "pushing something",
                                             "neg_text": ["pulling something", "pushing something", "lifting"]}])
    for vid in ("video7020", "video7021"):
        _frames(frames / "video_ret" / "MSR-VTT" / vid)
    write_jsonl(base / "MSR-VTT.jsonl", [
        {"video_id": "video7020", "video": "video7020.mp4", "caption": "a woman cooks pasta"},
        {"video_id": "video7021", "video": "video7021.mp4", "caption": "a man plays guitar"},
        {"video_id": "video7020", "video": "video7020.mp4", "caption": "someone stirs a pot"},
    ])
    _frames(frames / "video_qa" / "Video-MME" / "fFjv93ACGo8")
    write_jsonl(base / "Video-MME.jsonl", [
        {"videoID": "fFjv93ACGo8", "question": "How many people appear?", "question_id": "001-1",
         "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "B", "domain": "Knowledge",
         "sub_category": "Humanity & History"},
    ])
    mret = frames / "video_mret" / "QVHighlight" / "RoripwjYFp8_60.0_210.0"
    for sub in ("query", "positive_0", "negative_0", "negative_1"):
        _frames(mret / sub, count=3)
    write_jsonl(base / "QVHighlight.jsonl", [
        {"query": "A man talks to the camera.", "video_path": "videos/RoripwjYFp8_60.0_210.0.mp4"}])
    seeker = frames / "video_mret" / "MomentSeeker"
    for clip in ("clips_pos_1", "clips_neg_1", "clips_neg_2", "src_movie_3"):  # clips_pos_1: all 10 are fed, not 8
        _frames(seeker / "video_frames" / clip, count=FRAMES_PER_VIDEO if clip == "clips_pos_1" else 3)
    _image(seeker / "query_img_7.jpg")
    write_jsonl(base / "MomentSeeker.jsonl", [
        {"query": "the dog jumps", "input_frames": "",
         "positive_frames": [{"output_path": "clips/pos_1.mp4"}], "negative_frames": [
             {"output_path": "clips/neg_1.mp4"}, {"output_path": "clips/neg_2.mp4"}]},
        {"query": "what happens next", "input_frames": "src/movie_3.mp4",
         "positive_frames": [{"output_path": "clips/neg_2.mp4"}], "negative_frames": [
             {"output_path": "clips/pos_1.mp4"}]},
        {"query": "find this person", "input_frames": "img_7.jpg",
         "positive_frames": [{"output_path": "clips/pos_1.mp4"}], "negative_frames": []},
    ])


def _visdoc_tasks(root: Path) -> None:
    vidore = root / "visdoc-tasks" / "ViDoRe_arxivqa"
    for cid in ("p1", "p2", "p3"):
        _image(vidore / "images" / f"{cid}.png")
    write_jsonl(vidore / "queries.jsonl", [{"query-id": 1, "query": "What is the loss?"},
                                           {"query-id": 2, "query": "Which figure shows accuracy?"}])
    write_jsonl(vidore / "corpus.jsonl", [{"corpus-id": cid, "image": f"images/{cid}.png"}
                                          for cid in ("p1", "p2", "p3")])
    write_jsonl(vidore / "qrels.jsonl", [{"query-id": 1, "corpus-id": "p2", "score": 2},
                                         {"query-id": 1, "corpus-id": "p1", "score": 1},
                                         {"query-id": 1, "corpus-id": "p3", "score": 0},
                                         {"query-id": 2, "corpus-id": "p3", "score": 1}])
    visrag = root / "visdoc-tasks" / "VisRAG_ChartQA"
    write_parquet(visrag / "queries.parquet", [{"query-id": "q-a", "query": "peak sales year?"}])
    write_parquet(visrag / "corpus.parquet", [
        {"corpus-id": "chart_1.png", "image": {"bytes": _png((1, 2, 3)), "path": "chart_1.png"}},
        {"corpus-id": "chart_2.png", "image": {"bytes": _png((4, 5, 6)), "path": "chart_2.png"}},
    ])
    write_parquet(visrag / "qrels.parquet", [{"query-id": "q-a", "corpus-id": "chart_2.png", "score": 3}])


def write_mmeb_fixture(root: str | Path) -> dict:
    """Write the fixture tree under ``root``; returns ``{task name: TaskMeta}`` for the tasks it covers."""
    root = Path(root)
    _image_tasks(root)
    _video_tasks(root)
    _visdoc_tasks(root)
    return {name: mmeb_v2_task(name) for name in FIXTURE_TASKS}
