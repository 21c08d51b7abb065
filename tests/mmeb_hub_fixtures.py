"""A tiny MMEB-V2 download in the layout the Hugging Face hub gives it, one task per loader parser (21).

``write_hub_fixture(hub)`` writes ``hub/<owner>/<repo>/`` as ``hf download <repo> --repo-type dataset --local-dir
hub/<owner>/<repo>`` would: annotation splits as ``<config>/<split>-NNNNN-of-MMMMM.parquet`` shards (``data/`` for a
default config; several shards where the real split has them), BEIR visdoc repos with configs queries / corpus /
qrels whose corpus pages are HF image structs ``{"bytes", "path"}``, MVBench as one config per subset **without** a
``subset`` column, and ``TIGER-Lab/MMEB-V2`` with ``image-tasks/mmeb_v1.tar.gz`` (members under ``MMEB/``), the frame
archives ``video_cls`` / ``video_ret`` (no top folder), ``video_mret`` (under ``video_mret/``) and ``video_qa`` split
into ``video_qa.tar.gz-00`` … ``-04`` (under ``video_qa/``). Field names are the upstream ones the loaders read (see
tests/mmeb_fixtures.py for the VLM2Vec-layout twin). Images are 8x8.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from umeflow.data.mmeb_hub import MVBENCH_CONFIGS
from umeflow.evaluate.mmeb_v2 import mmeb_v2_task

MEDIA = "TIGER-Lab/MMEB-V2"
IMAGES = "ziyjiang/MMEB_Test_Instruct"
FRAMES = 10  # per video folder (clip folders: 3)

# one task per parser
HUB_TASKS = {
    "image_cls": "ImageNet-1K", "image_qa": "OK-VQA", "image_i2t": "MSCOCO_i2t", "image_t2i": "VisDial",
    "image_i2i_vg": "RefCOCO-Matching", "video_classification": "K700", "ssv2": "SmthSmthV2", "msrvtt": "MSR-VTT",
    "msvd": "MSVD", "didemo": "DiDeMo", "vatex": "VATEX", "youcook2": "YouCook2", "moment_retrieval": "QVHighlight",
    "momentseeker": "MomentSeeker", "videomme": "Video-MME", "nextqa": "NExTQA", "egoschema": "EgoSchema",
    "mvbench": "MVBench", "activitynetqa": "ActivityNetQA", "vidore": "ViDoRe_esg_reports_human_labeled_v2",
    "visrag": "VisRAG_ChartQA",
}


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(color=(30, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


FRAME = jpeg()


def shards(repo_dir: Path, folder: str, split: str, rows: list[dict], count: int = 1) -> list[Path]:
    """``rows`` as ``count`` parquet shards ``<folder>/<split>-0000i-of-0000N.parquet`` (contiguous slices)."""
    paths, size = [], -(-len(rows) // count)
    for i in range(count):
        path = repo_dir / folder / f"{split}-{i:05d}-of-{count:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows[i * size:(i + 1) * size]), path)
        paths.append(path)
    return paths


def targz(path: Path, members: dict[str, bytes], parts: int = 1) -> None:
    """A tar.gz of ``members`` (name -> bytes; a folder entry for each top folder, as tar writes them), split
    into ``parts`` pieces named ``<path>-00`` … when ``parts`` > 1."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for top in sorted({name.split("/")[0] for name in members if "/" in name}):
            info = tarfile.TarInfo(top)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    if parts == 1:
        path.write_bytes(blob)
        return
    step = -(-len(blob) // parts)
    for i in range(parts):
        Path(f"{path}-{i:02d}").write_bytes(blob[i * step:(i + 1) * step])


def frames(prefix: str, count: int = FRAMES) -> dict[str, bytes]:
    return {f"{prefix}/{i:04d}.jpg": FRAME for i in range(count)}


# ------------------------------------------------------------------------------------------------ image tasks

IMAGENET_LABELS = ["tabby cat", "beagle", "tiger", "beagle", "goldfish"]


def _image(hub: Path) -> None:
    repo = hub / IMAGES
    inst = "<|image_1|>\nRepresent the given image for classification"
    shards(repo, "ImageNet-1K", "test", [
        {"qry_inst": inst, "qry_text": "", "qry_img_path": f"ImageNet-1K/q{i}.png", "tgt_inst": "",
         "tgt_text": [label, "tiger", "beagle" if label != "beagle" else "tabby cat"], "tgt_img_path": ["", "", ""]}
        for i, label in enumerate(IMAGENET_LABELS)], count=3)  # 2 + 2 + 1 rows
    shards(repo, "OK-VQA", "test", [
        {"qry_inst": "<|image_1|>\nRepresent the given image with the following question:",
         "qry_text": "What animal is this?", "qry_img_path": "OK-VQA/q.png", "tgt_inst": "",
         "tgt_text": ["cat", "dog"], "tgt_img_path": ["", ""]}])
    shards(repo, "MSCOCO_i2t", "test", [
        {"qry_inst": "<|image_1|>\nFind an image caption describing the given everyday image.", "qry_text": "",
         "qry_img_path": "MSCOCO/q.png", "tgt_inst": "", "tgt_text": ["a cat on a mat", "a dog in a park"],
         "tgt_img_path": ["", ""]}])
    shards(repo, "VisDial", "test", [
        {"qry_inst": "Represent the given dialogue about an image, which is used for image retrieval:",
         "qry_text": "Q: is it a pet? A: yes", "qry_img_path": "",
         "tgt_inst": "<|image_1|>\nRepresent the given image.",
         "tgt_text": ["", ""], "tgt_img_path": ["VisDial/cat.png", "VisDial/dog.png"]}])
    shards(repo, "RefCOCO-Matching", "test", [
        {"qry_inst": "<|image_1|>\nSelect the portion of the image that follows the language expressions:",
         "qry_text": "left cat", "qry_img_path": "RefCOCO-Matching/q.png", "tgt_inst": "",
         "tgt_text": ["left cat", "right dog"], "tgt_img_path": ["RefCOCO-Matching/ref.png"] * 2}])
    # a dataset card declaring the configs, as push_to_hub writes it; the converter follows data_files
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: test\n    path: {c}/test-*\n"
        for c in ("ImageNet-1K", "OK-VQA", "MSCOCO_i2t", "VisDial", "RefCOCO-Matching")) + "---\n# MMEB\n")
    pictures = [f"ImageNet-1K/q{i}.png" for i in range(len(IMAGENET_LABELS))] + [
        "OK-VQA/q.png", "MSCOCO/q.png", "VisDial/cat.png", "VisDial/dog.png", "RefCOCO-Matching/q.png",
        "RefCOCO-Matching/ref.png", "Unused/x.png"]
    targz(hub / MEDIA / "image-tasks/mmeb_v1.tar.gz", {f"MMEB/{p}": png() for p in pictures})


# ------------------------------------------------------------------------------------------------ video tasks

K700_ROWS = [("k1", "juggling_balls"), ("k2", "surfing_water"), ("k3", "juggling_balls")]
MVBENCH_ROW = {"video": "clip_1.mp4", "question": "What happens first?", "candidates": ["sit", "stand", "run"],
               "answer": "stand"}


def _video_annotations(hub: Path) -> None:
    shards(hub / "VLM2Vec/Kinetics-700", "data", "test",
           [{"video_id": v, "pos_text": label} for v, label in K700_ROWS], count=2)
    shards(hub / "VLM2Vec/SmthSmthV2", "data", "test", [
        {"video_id": 74225, "pos_text": "Pushing something from left to right",
         "neg_text": ["Pulling something from left to right", "Pushing something from left to right"]}])
    shards(hub / "VLM2Vec/MSR-VTT", "test_1k", "test", [
        {"video_id": "video7020", "video": "video7020.mp4", "caption": "a woman cooks pasta"},
        {"video_id": "video7021", "video": "video7021.mp4", "caption": "a man plays guitar"}])
    shards(hub / "VLM2Vec/MSVD", "data", "test", [{"video_id": "-4wsuPCjDBc_5_15", "caption": ["a cat plays"]}])
    shards(hub / "VLM2Vec/DiDeMo", "data", "test", [{"video": "videos/1234.mp4", "caption": "a dog runs"}])
    shards(hub / "VLM2Vec/VATEX", "data", "test", [{"videoID": "vx1", "enCap": ["someone dances", "a dance"]}])
    shards(hub / "lmms-lab/YouCook2", "data", "val", [{"id": "yc1", "video_path": "yc1.mp4", "sentence": "chop"}])
    shards(hub / "VLM2Vec/QVHighlight", "data", "test", [
        {"query": "A man talks to the camera.", "video_path": "videos/RoripwjYFp8_60.0_210.0.mp4"}])
    # two shards; the second's clip lists are all empty, so parquet types them list<null> (reconciled on merge)
    shards(hub / "VLM2Vec/MomentSeeker", "data", "test", [
        {"query": "the dog jumps", "input_frames": "", "positive_frames": [{"output_path": "clips/pos_1.mp4"}],
         "negative_frames": [{"output_path": "clips/neg_1.mp4"}]},
        {"query": "find this person", "input_frames": "img_7.jpg",
         "positive_frames": [{"output_path": "clips/pos_1.mp4"}], "negative_frames": []}], count=2)
    # Video-MME's card points at a folder of its own, not the push_to_hub default
    shards(hub / "VLM2Vec/Video-MME", "videomme", "test", [
        {"videoID": "fFjv93ACGo8", "question": "How many people appear?", "question_id": "001-1",
         "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "B", "domain": "Knowledge"}])
    (hub / "VLM2Vec/Video-MME/README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: videomme/test-*\n---\n")
    shards(hub / "VLM2Vec/NExTQA", "MC", "test", [
        {"video": 4740931975, "qid": 3, "question": "why does the boy fall", "a0": "slips", "a1": "jumps",
         "a2": "sits", "a3": "runs", "a4": "waves", "answer": 0, "type": "CW"}])
    shards(hub / "VLM2Vec/EgoSchema", "Subset", "test", [
        {"video_idx": "ego1", "question_idx": "q1", "question": "What is C doing?",
         "option": ["A. cooking.", "B. reading.", "C. painting."], "answer": "1"}])
    for config in MVBENCH_CONFIGS:  # one row per config, no `subset` column (VLM2Vec adds it)
        shards(hub / "VLM2Vec/MVBench", config, "train", [MVBENCH_ROW])
    shards(hub / "VLM2Vec/ActivityNetQA", "data", "test", [
        {"video_name": "abc", "question": "is the man outdoors", "answer": "yes", "question_id": "a1"}])


def _video_archives(hub: Path) -> None:
    frames_dir = hub / MEDIA / "video-tasks/frames"
    targz(frames_dir / "video_cls.tar.gz", {
        **{k: v for vid, _ in K700_ROWS for k, v in frames(f"K700/{vid}").items()},
        **frames("SSv2/74225", 5), **frames("HMDB51/h1")})
    targz(frames_dir / "video_ret.tar.gz", {
        **frames("MSR-VTT/video7020"), **frames("MSR-VTT/video7021"), **frames("MSVD/-4wsuPCjDBc_5_15"),
        **frames("DiDeMo/1234"), **frames("VATEX/vx1"), **frames("YouCook2/yc1")})
    qvh, seeker = "video_mret/QVHighlight/RoripwjYFp8_60.0_210.0", "video_mret/MomentSeeker"
    targz(frames_dir / "video_mret.tar.gz", {
        **{k: v for sub in ("query", "positive_0", "negative_0") for k, v in frames(f"{qvh}/{sub}", 3).items()},
        **frames(f"{seeker}/video_frames/clips_pos_1", 3), **frames(f"{seeker}/video_frames/clips_neg_1", 3),
        f"{seeker}/query_img_7.jpg": jpeg()})
    targz(frames_dir / "video_qa.tar.gz", {
        **frames("video_qa/Video-MME/fFjv93ACGo8"), **frames("video_qa/NExTQA/4740931975"),
        **frames("video_qa/EgoSchema/ego1"), **frames("video_qa/ActivityNetQA/v_abc"),
        **{k: v for c in MVBENCH_CONFIGS for k, v in frames(f"video_qa/MVBench/{c}/clip_1.mp4", 4).items()}},
        parts=5)


# ----------------------------------------------------------------------------------------------- visdoc tasks

def _visdoc(hub: Path) -> None:
    esg = hub / "vidore/esg_reports_human_labeled_v2"
    shards(esg, "queries", "test", [{"query-id": 1, "query": "What is the emission target?"},
                                    {"query-id": 2, "query": "Which year?"}])
    shards(esg, "corpus", "test", [  # corpus pages as HF image structs, over two shards; p3 is a JPEG
        {"corpus-id": 10, "image": {"bytes": png((1, 2, 3)), "path": "p1.png"}, "doc-id": "esg"},
        {"corpus-id": 11, "image": {"bytes": png((4, 5, 6)), "path": "p2.png"}, "doc-id": "esg"},
        {"corpus-id": 12, "image": {"bytes": jpeg((7, 8, 9)), "path": "p3.jpg"}, "doc-id": "esg"}], count=2)
    shards(esg, "qrels", "test", [{"query-id": 1, "corpus-id": 11, "score": 2},
                                  {"query-id": 1, "corpus-id": 10, "score": 1},
                                  {"query-id": 2, "corpus-id": 12, "score": 1}])
    chart = hub / "openbmb/VisRAG-Ret-Test-ChartQA"
    shards(chart, "queries", "train", [{"query-id": "q-a", "query": "peak sales year?"}])
    shards(chart, "corpus", "train", [
        {"corpus-id": "chart_1.png", "image": {"bytes": png((1, 1, 1)), "path": None}},
        {"corpus-id": "chart_2.png", "image": {"bytes": png((2, 2, 2)), "path": None}}])
    shards(chart, "qrels", "train", [{"query-id": "q-a", "corpus-id": "chart_2.png", "score": 1}])


def write_hub_fixture(hub: str | Path) -> dict:
    """Write the hub tree under ``hub``; returns ``{parser: TaskMeta}`` for the 21 tasks it covers."""
    hub = Path(hub)
    _image(hub)
    _video_annotations(hub)
    _video_archives(hub)
    _visdoc(hub)
    return {parser: mmeb_v2_task(name) for parser, name in HUB_TASKS.items()}
