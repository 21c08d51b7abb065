"""``umeflow data mmeb-v2``: MMEB-V2 downloaded in the Hugging Face hub layout becomes an evaluation root that every
MMEB-V2 parser loads, with a manifest, safely and resumably.

Reference facts the converter reproduces (VLM2Vec @6e1e1d4), each checked below:
- experiments/public/data/download_data.sh:58-59 unpacks ``image-tasks/mmeb_v1.tar.gz`` and moves ``MMEB/*`` up into
  ``image-tasks/``; l.67 and l.69 unpack ``video_cls`` / ``video_ret`` into folders of those names (the archives have
  no top folder); l.68 and l.70 unpack ``video_mret`` and ``cat video_qa.tar.gz-0{0..4}`` in ``frames/`` (their
  members already sit under ``video_mret/`` / ``video_qa/``).
- src/utils/dataset_utils.py:84-89: MVBench is loaded config by config, each gets a ``subset`` column holding its
  config name, concatenated in the order of mvbench_dataset.py:24-45 (``subset_meta``); frames are read from
  ``<frame_root>/<subset>/<video>`` (mvbench_dataset.py:119).
- src/constant/dataset_hf_path.py: NExTQA reads config ``MC``, EgoSchema ``Subset``, MSR-VTT ``test_1k``, YouCook2
  ``lmms-lab/YouCook2`` split ``val``; visdoc tasks read the BEIR configs queries / qrels / corpus
  (vidore_dataset.py:84-88).
- vidore_dataset.py:60-63 saves each corpus page as ``<image_root>/<corpus-id>.png``; visrag_dataset.py:66-71 as
  the id's stem cut to 50 characters, ``_``, 8 hex of its MD5 and the id's extension.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mmeb_hub_fixtures import (FRAMES, HUB_TASKS, IMAGENET_LABELS, IMAGES, K700_ROWS, MEDIA, MVBENCH_ROW, frames,
                               jpeg, png, shards, targz, write_hub_fixture)
from PIL import Image

from umeflow.cli import main
from umeflow.data import mmeb_hub, mmeb_v2_download
from umeflow.data.mmeb_hub import MVBENCH_CONFIGS, download_plan
from umeflow.data.mmeb_v2_download import FORMAT, MANIFEST, convert
from umeflow.errors import RecordError, UserError
from umeflow.evaluate.mmeb_v2 import mmeb_v2_task
from umeflow.evaluate.tasks import load_task
from umeflow.io import iter_parquet_rows, sha256_file

ALL = ",".join(HUB_TASKS.values())
QVH = "video-tasks/frames/video_mret/QVHighlight/RoripwjYFp8_60.0_210.0"
SEEKER = "video-tasks/frames/video_mret/MomentSeeker/video_frames"
ESG = "ViDoRe_esg_reports_human_labeled_v2"

# ground-truth candidate names per query, as VLM2Vec names candidates (method.md §3.3)
LABELS = {
    "image_cls": [[label] for label in IMAGENET_LABELS],  # 3 shards merged in shard order
    "image_qa": [["cat"]],
    "image_i2t": [["a cat on a mat"]],
    "image_t2i": [["VisDial/cat.png"]],
    "image_i2i_vg": [["RefCOCO-Matching/ref.png:left cat"]],
    "video_classification": [[label] for _, label in K700_ROWS],  # 2 shards
    "ssv2": [["Pushing something from left to right"]],
    "msrvtt": [["video7020"], ["video7021"]],
    "msvd": [["-4wsuPCjDBc_5_15"]],
    "didemo": [["1234"]],
    "vatex": [["vx1"]],
    "youcook2": [["yc1"]],
    "moment_retrieval": [[f"{QVH}/positive_0"]],
    "momentseeker": [[f"{SEEKER}/clips_pos_1"]] * 2,  # 2 shards, the second with list<null> clip lists
    "videomme": [["B. Two."]],
    "nextqa": [["slips"]],
    "egoschema": [["B. reading."]],
    "mvbench": [["(B) stand"]] * len(MVBENCH_CONFIGS),  # one row per config
    "activitynetqa": [["yes"]],
    "vidore": [["11", "10"], ["12"]],
    "visrag": [["chart_2.png"]],
}
# local tasks: the size of each query's own candidate list
LOCAL_CANDIDATES = {"image_qa": [2], "image_i2t": [2], "image_t2i": [2], "image_i2i_vg": [2], "ssv2": [2],
                    "moment_retrieval": [2], "momentseeker": [2, 1], "videomme": [4], "nextqa": [5],
                    "egoschema": [3], "mvbench": [3] * len(MVBENCH_CONFIGS), "activitynetqa": [2]}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("UMEFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The 21-task hub fixture converted once through the CLI: (hub dir, output root)."""
    base = tmp_path_factory.mktemp("mmeb_hub")
    write_hub_fixture(base / "hub")
    assert main(["data", "mmeb-v2", "--hub-dir", str(base / "hub"), "--out", str(base / "out"), "--tasks", ALL,
                 "--verify"]) == 0
    return base / "hub", base / "out"


@pytest.fixture
def hub(tmp_path) -> Path:
    write_hub_fixture(tmp_path / "hub")
    return tmp_path / "hub"


def _media(item) -> list[Path]:
    return [Path(p) for p in (*item.images, *(item.video or ()))]


def _error_line(capsys) -> str:
    """The CLI's error: exactly one line (progress bars may share stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if "umeflow data: error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------------------------- every parser

@pytest.mark.parametrize("parser", sorted(HUB_TASKS))
def test_every_parser_loads_from_the_converted_download(converted, parser):
    _, out = converted
    data = load_task(mmeb_v2_task(HUB_TASKS[parser]), out)
    assert data.labels == LABELS[parser]
    assert all(label in data.candidates for labels in data.labels for label in labels)
    if parser in LOCAL_CANDIDATES:
        assert [len(c) for c in data.query_candidates] == LOCAL_CANDIDATES[parser]
        assert all(set(labels) <= set(c) for labels, c in zip(data.labels, data.query_candidates))
    media = [p for item in (*data.queries, *data.candidates.values()) for p in _media(item)]
    assert media  # every parser feeds images or frames somewhere
    for path in media:  # every image and frame the task feeds was unpacked under the output root
        assert path.is_file() and path.resolve().is_relative_to(out.resolve()), path


def test_global_pools_are_the_pooled_videos_and_corpus_pages(converted):
    _, out = converted
    assert set(load_task(mmeb_v2_task("MSR-VTT"), out).candidates) == {"video7020", "video7021"}
    assert set(load_task(mmeb_v2_task(ESG), out).candidates) == {"10", "11", "12"}
    assert set(load_task(mmeb_v2_task("VisRAG_ChartQA"), out).candidates) == {"chart_1.png", "chart_2.png"}
    assert load_task(mmeb_v2_task(ESG), out).rel_scores == [[2.0, 1.0], [1.0]]


def test_archives_unpack_as_download_data_sh_does(converted):
    _, out = converted
    # download_data.sh:58-59: MMEB/* moved up into image-tasks/ (the whole archive, used by the tasks or not)
    assert (out / "image-tasks/ImageNet-1K/q0.png").read_bytes() == png()
    assert (out / "image-tasks/Unused/x.png").is_file() and not (out / "image-tasks/MMEB").exists()
    # l.67-70: frame folders land in frames/<group>/<Dataset>; only the selected tasks' folders are unpacked
    k700 = out / "video-tasks/frames/video_cls/K700"
    assert sorted(p.name for p in k700.iterdir()) == ["k1", "k2", "k3"]
    assert len(list((k700 / "k1").iterdir())) == FRAMES
    assert not (out / "video-tasks/frames/video_cls/HMDB51").exists()
    assert not (out / "video-tasks/frames/video_mret/video_mret").exists()
    assert (out / "video-tasks/frames/video_qa/Video-MME/fFjv93ACGo8").is_dir()  # from the 5-part archive
    assert not (out / ".staging").exists()


def test_mvbench_gets_the_subset_column_vlm2vec_adds(converted):
    hub, out = converted
    assert "subset" not in pq.read_table(next((hub / "VLM2Vec/MVBench/action_count").glob("*.parquet"))).column_names
    table = pq.read_table(out / "video-tasks/MVBench.parquet")
    assert table.column("subset").to_pylist() == list(MVBENCH_CONFIGS)  # dataset_utils.py:84-89, in order
    assert table.column("video").to_pylist() == [MVBENCH_ROW["video"]] * len(MVBENCH_CONFIGS)
    data = load_task(mmeb_v2_task("MVBench"), out)
    folders = [Path(q.video[0]).parent for q in data.queries]  # mvbench_dataset.py:119 <subset>/<video>
    assert folders == [out / "video-tasks/frames/video_qa/MVBench" / c / "clip_1.mp4" for c in MVBENCH_CONFIGS]


def test_corpus_pages_are_written_under_vlm2vec_names(converted):
    hub, out = converted
    pages = out / mmeb_v2_task(ESG).media_root  # the registry's image folder, not hard-coded here
    corpus = pq.read_table(out / f"visdoc-tasks/{ESG}/corpus.parquet").to_pylist()
    assert [(r["corpus-id"], r["image"], r["doc-id"]) for r in corpus] == [
        (10, "10.png", "esg"), (11, "11.png", "esg"), (12, "12.png", "esg")]  # vidore_dataset.py:60
    assert (pages / "10.png").read_bytes() == png((1, 2, 3))  # already PNG: the bytes as downloaded
    with Image.open(pages / "12.png") as page, Image.open(io.BytesIO(jpeg((7, 8, 9)))) as source:
        assert page.format == "PNG"  # a JPEG page is saved as PNG, like VLM2Vec's image.save(<id>.png)
        assert np.array_equal(np.asarray(page.convert("RGB")), np.asarray(source.convert("RGB")))
    data = load_task(mmeb_v2_task(ESG), out)
    assert Path(data.candidates["12"].images[0]) == pages / "12.png"
    # visrag_dataset.py:66-67: stem[:50] + "_" + md5(id)[:8] + extension
    name = f"chart_2_{hashlib.md5(b'chart_2.png').hexdigest()[:8]}.png"
    assert (out / "visdoc-tasks/VisRAG_ChartQA" / name).read_bytes() == png((2, 2, 2))


def test_manifest_lists_counts_and_sha256(converted):
    hub, out = converted
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["tasks"]) == set(HUB_TASKS.values())
    imagenet = manifest["tasks"]["ImageNet-1K"]
    assert imagenet["rows"] == len(IMAGENET_LABELS) and imagenet["media"] == ["image-tasks"]
    assert imagenet["files"]["image-tasks/ImageNet-1K.parquet"]["sha256"] == sha256_file(
        out / "image-tasks/ImageNet-1K.parquet")
    shard_names = [f"{IMAGES}/ImageNet-1K/test-{i:05d}-of-00003.parquet" for i in range(3)]
    assert list(imagenet["sources"]) == shard_names
    assert all(imagenet["sources"][s]["sha256"] == sha256_file(hub / s) for s in shard_names)
    esg = manifest["tasks"][ESG]
    assert {rel: f["rows"] for rel, f in esg["files"].items()} == {
        f"visdoc-tasks/{ESG}/queries.parquet": 2, f"visdoc-tasks/{ESG}/corpus.parquet": 3,
        f"visdoc-tasks/{ESG}/qrels.parquet": 3}
    k700 = manifest["media"]["video-tasks/frames/video_cls/K700"]
    assert (k700["files"], k700["folder"]) == (len(K700_ROWS) * FRAMES, "K700")
    qa_parts = manifest["media"]["video-tasks/frames/video_qa/Video-MME"]["sources"]
    assert list(qa_parts) == [f"{MEDIA}/video-tasks/frames/video_qa.tar.gz-{i:02d}" for i in range(5)]
    assert all(p["sha256"] == sha256_file(hub / name) for name, p in qa_parts.items())
    assert "mtime" not in (out / MANIFEST).read_text()  # content only: the same download gives the same manifest


# ---------------------------------------------------------------------------------------- resumable, atomic

SOME = "ImageNet-1K,OK-VQA,K700,MVBench," + ESG


def test_a_rerun_is_a_noop(hub, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = convert(hub, out, SOME)
    inodes = {p: p.stat().st_ino for p in out.rglob("*") if p.name != MANIFEST}  # a rewrite renames a new inode in

    def fail(*args, **kwargs):
        raise AssertionError("a rerun must not convert or unpack anything")

    monkeypatch.setattr(mmeb_v2_download, "_convert_task", fail)
    monkeypatch.setattr(mmeb_v2_download.archives, "extract", fail)
    monkeypatch.setattr(mmeb_hub, "sha256_file", fail)  # nor read the download again: its sha256s are remembered
    assert main(["data", "mmeb-v2", "--hub-dir", str(hub), "--out", str(out), "--tasks", SOME]) == 0
    assert {p: p.stat().st_ino for p in out.rglob("*") if p.name != MANIFEST} == inodes
    assert json.loads((out / MANIFEST).read_text()) == first


def _recording_conversions(monkeypatch) -> list[str]:
    converted, original = [], mmeb_v2_download._convert_task

    def recording(hub_dir, out_dir, stage, manifest, plan):
        converted.append(plan.meta.name)
        original(hub_dir, out_dir, stage, manifest, plan)

    monkeypatch.setattr(mmeb_v2_download, "_convert_task", recording)
    return converted


def test_a_changed_shard_reconverts_only_its_task(hub, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert(hub, out, SOME)
    shards(hub / IMAGES, "OK-VQA", "test", [
        {"qry_inst": "", "qry_text": "Which animal?", "qry_img_path": "OK-VQA/q.png", "tgt_inst": "",
         "tgt_text": ["dog", "cat"], "tgt_img_path": ["", ""]}])
    converted = _recording_conversions(monkeypatch)
    manifest = convert(hub, out, SOME)
    assert converted == ["OK-VQA"]
    assert load_task(mmeb_v2_task("OK-VQA"), out).labels == [["dog"]]
    assert manifest["tasks"]["OK-VQA"]["files"]["image-tasks/OK-VQA.parquet"]["sha256"] == sha256_file(
        out / "image-tasks/OK-VQA.parquet")


def test_a_killed_run_leaves_no_task_looking_complete(hub, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = mmeb_v2_download._write_parquet

    def killed_at_mvbench(out_dir, rel, table):
        if rel.endswith("MVBench.parquet"):
            raise KeyboardInterrupt
        return real(out_dir, rel, table)

    monkeypatch.setattr(mmeb_v2_download, "_write_parquet", killed_at_mvbench)
    with pytest.raises(KeyboardInterrupt):
        convert(hub, out, SOME)
    manifest = json.loads((out / MANIFEST).read_text())
    assert "MVBench" not in manifest["tasks"] and not (out / "video-tasks/MVBench.parquet").exists()
    assert not (out / ".staging").exists()
    monkeypatch.setattr(mmeb_v2_download, "_write_parquet", real)
    converted = _recording_conversions(monkeypatch)
    convert(hub, out, SOME)
    assert converted == [t for t in SOME.split(",") if t not in manifest["tasks"]] == ["MVBench", ESG]
    assert len(load_task(mmeb_v2_task("MVBench"), out).queries) == len(MVBENCH_CONFIGS)


def _media_summary(out: Path, dest: str, annotations: set[Path]) -> dict:
    """The media files under ``out/dest`` (annotation files beside them left out) as the manifest summarises them:
    count, bytes and a sha256 over each file's relative path and sha256, in path order."""
    digest, count, size = hashlib.sha256(), 0, 0
    for path in sorted(p for p in (out / dest).rglob("*") if p.is_file() and p not in annotations):
        digest.update(f"{path.relative_to(out / dest).as_posix()}\0{sha256_file(path)}\n".encode())
        count, size = count + 1, size + path.stat().st_size
    return {"files": count, "bytes": size, "sha256": digest.hexdigest()}


def test_a_reconversion_removes_what_the_new_download_dropped(hub, tmp_path):
    out, chart = tmp_path / "out", "VisRAG_ChartQA"
    convert(hub, out, f"ImageNet-1K,K700,{chart}")
    old_page = out / "visdoc-tasks" / chart / f"chart_1_{hashlib.md5(b'chart_1.png').hexdigest()[:8]}.png"
    assert (out / "image-tasks/Unused/x.png").is_file() and (out / "video-tasks/frames/video_cls/K700/k3").is_dir()
    assert old_page.is_file()
    (out / "image-tasks/notes.txt").write_text("the user's, not the archive's")
    # a new download: each archive and the corpus lose an item
    targz(hub / MEDIA / "image-tasks/mmeb_v1.tar.gz", {f"MMEB/ImageNet-1K/q{i}.png": png() for i in range(5)})
    targz(hub / MEDIA / "video-tasks/frames/video_cls.tar.gz", {**frames("K700/k1"), **frames("K700/k2")})
    shards(hub / "openbmb/VisRAG-Ret-Test-ChartQA", "corpus", "train", [
        {"corpus-id": "chart_2.png", "image": {"bytes": png((2, 2, 2)), "path": None}}])
    manifest = convert(hub, out, f"ImageNet-1K,K700,{chart}")
    assert sorted(p.name for p in (out / "image-tasks").iterdir()) == [
        "ImageNet-1K", "ImageNet-1K.parquet", "notes.txt"]  # the annotation file beside the media stays
    assert sorted(p.name for p in (out / "video-tasks/frames/video_cls/K700").iterdir()) == ["k1", "k2"]
    assert not old_page.exists()
    assert sorted(p.name for p in (out / "visdoc-tasks" / chart).glob("*.parquet")) == [
        "corpus.parquet", "qrels.parquet", "queries.parquet"]
    # the manifest describes the tree that is there (what `dvc add` versions)
    annotations = {out / rel for task in manifest["tasks"].values() for rel in task["files"]}
    annotations.add(out / "image-tasks/notes.txt")
    for dest, entry in manifest["media"].items():
        assert {k: entry[k] for k in ("files", "bytes", "sha256")} == _media_summary(out, dest, annotations), dest
    assert manifest["media"]["image-tasks"]["files"] == 5
    assert json.loads((out / MANIFEST).read_text()) == manifest


def test_a_killed_reinstall_still_knows_what_it_put_in_place(hub, tmp_path, monkeypatch):
    out, dest = tmp_path / "out", "video-tasks/frames/video_cls/K700"
    archive = hub / MEDIA / "video-tasks/frames/video_cls.tar.gz"
    convert(hub, out, "K700")
    targz(archive, {**frames("K700/k1"), **frames("K700/k4")})
    real = mmeb_v2_download.write_json

    def killed_before_recording_the_install(path, manifest):
        if manifest["media"][dest]["sources"]:  # the new folders are in place, the manifest not yet written
            raise KeyboardInterrupt
        real(path, manifest)

    monkeypatch.setattr(mmeb_v2_download, "write_json", killed_before_recording_the_install)
    with pytest.raises(KeyboardInterrupt):
        convert(hub, out, "K700")
    assert (out / dest / "k4").is_dir()
    monkeypatch.setattr(mmeb_v2_download, "write_json", real)
    targz(archive, {**frames("K700/k1"), **frames("K700/k2")})
    manifest = convert(hub, out, "K700")
    assert sorted(p.name for p in (out / dest).iterdir()) == manifest["media"][dest]["entries"] == ["k1", "k2"]


# ---------------------------------------------------------------------------------------------- bad inputs

def _drop(path: Path) -> None:
    path.unlink()


BAD_DOWNLOADS = {
    "missing shard": (lambda hub: _drop(hub / IMAGES / "ImageNet-1K/test-00001-of-00003.parquet"), "ImageNet-1K",
                      ["missing shard 2 of 3 of ziyjiang/MMEB_Test_Instruct config ImageNet-1K split test",
                       "hf download ziyjiang/MMEB_Test_Instruct --repo-type dataset",
                       "--include 'ImageNet-1K/test-00001-of-00003.parquet'"]),
    "missing repo": (lambda hub: shutil.rmtree(hub / "VLM2Vec/NExTQA"), "NExTQA,K700",
                     ["missing hub repo VLM2Vec/NExTQA", "hf download VLM2Vec/NExTQA --repo-type dataset"]),
    "missing repos": (lambda hub: None, "video",  # the fixture has 14 of the 18 video tasks
                      ["missing hub repo VLM2Vec/HMDB51", "(and inputs of 3 more task(s) are missing)"]),
    "missing config": (lambda hub: shutil.rmtree(hub / "VLM2Vec/MVBench/state_change"), "MVBench",
                       ["missing VLM2Vec/MVBench config state_change split train", "--include 'state_change/train-*'"]),
    "missing archive part": (lambda hub: _drop(hub / MEDIA / "video-tasks/frames/video_qa.tar.gz-03"), "NExTQA",
                             ["missing archive TIGER-Lab/MMEB-V2/video-tasks/frames/video_qa.tar.gz-03",
                              "--include 'video-tasks/frames/video_qa.tar.gz-03'"]),
    "corrupt parquet": (lambda hub: (hub / "VLM2Vec/Kinetics-700/data/test-00001-of-00002.parquet").write_bytes(
        b"PAR1 not really"), "K700", ["test-00001-of-00002.parquet", "unreadable parquet file"]),
    "truncated archive": (lambda hub: (hub / MEDIA / "video-tasks/frames/video_qa.tar.gz-04").write_bytes(b""),
                          "EgoSchema", ["video_qa.tar.gz-00: corrupt or truncated archive"]),
    "folder missing from archive": (lambda hub: targz(hub / MEDIA / "video-tasks/frames/video_ret.tar.gz",
                                                      frames("MSVD/x")), "DiDeMo",
                                    ["video_ret.tar.gz has no folder DiDeMo/, where task DiDeMo reads its media"]),
    "unsupported format": (lambda hub: (hub / "VLM2Vec/ActivityNetQA/data/test-00000-of-00001.parquet").rename(
        hub / "VLM2Vec/ActivityNetQA/data/test-00000-of-00001.csv"), "ActivityNetQA",
        ["VLM2Vec/ActivityNetQA config default split test:", "is neither .parquet nor .jsonl"]),
    "corrupt corpus shard": (lambda hub: (hub / "openbmb/VisRAG-Ret-Test-ChartQA/corpus/train-00000-of-00001.parquet"
                                          ).write_bytes(b"PAR1 not really"), "VisRAG_ChartQA",
                             ["corpus/train-00000-of-00001.parquet:", "unreadable parquet file"]),
    "corrupt corpus page": (lambda hub: shards(hub / "openbmb/VisRAG-Ret-Test-ChartQA", "corpus", "train", [
        {"corpus-id": "c.png", "image": {"bytes": b"not an image", "path": None}}]), "VisRAG_ChartQA",
        ["corpus/train-00000-of-00001.parquet:1: field 'image' not a readable image"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DOWNLOADS))
def test_bad_download_is_one_line_and_exit_2(hub, tmp_path, capsys, case):
    damage, tasks, expected = BAD_DOWNLOADS[case]
    damage(hub)
    rc = main(["data", "mmeb-v2", "--hub-dir", str(hub), "--out", str(tmp_path / "out"), "--tasks", tasks])
    line = _error_line(capsys)
    assert rc == 2 and all(part in line for part in expected), line


def _archive_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, frame in frames("K700/k1").items():
            info = tarfile.TarInfo(name)
            info.size = len(frame)
            tar.addfile(info, io.BytesIO(frame))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    path.write_bytes(buf.getvalue())


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


# a name no other file has: a leftover of another run or another process cannot make the test pass or fail
ABSOLUTE = f"/tmp/umeflow-test-{uuid.uuid4().hex}.txt"
ESCAPING = {
    "dotdot": (tarfile.TarInfo("K700/../../../escaped.txt"), "refusing unsafe member"),
    "absolute": (tarfile.TarInfo(ABSOLUTE), "refusing unsafe member"),
    "symlink": (_symlink("K700/k1/link.jpg", "/etc/passwd"), "refusing unsafe member"),
    # inside the archive (and the scratch folder) but outside K700's folder, the destination it is extracted to
    "sibling symlink": (_symlink("K700/k1/link.jpg", "../../HMDB51/h1/0000.jpg"), "refusing unsafe member"),
    "hard link": (_hardlink("K700/k1/same.jpg", "K700/k1/0000.jpg"), "is a hard link"),
}


@pytest.mark.parametrize("case", sorted(ESCAPING))
def test_tar_member_escaping_the_output_is_refused(hub, tmp_path, capsys, case):
    member, reason = ESCAPING[case]
    _archive_with(hub / MEDIA / "video-tasks/frames/video_cls.tar.gz", member)
    out = tmp_path / "out"
    rc = main(["data", "mmeb-v2", "--hub-dir", str(hub), "--out", str(out), "--tasks", "K700"])
    line = _error_line(capsys)
    assert rc == 2 and "video_cls.tar.gz" in line and f"member {member.name!r}" in line and reason in line, line
    assert "corrupt" not in line
    assert not (tmp_path / "escaped.txt").exists() and not Path(ABSOLUTE).exists()
    assert not (out / "video-tasks/frames/video_cls/K700").exists()  # nothing installed from the archive
    assert not (out / MANIFEST).exists() or "K700" not in json.loads((out / MANIFEST).read_text())["tasks"]


BAD_MANIFESTS = {
    "not an object": ([], "expected a JSON object"),
    "no tasks": ({"format": FORMAT, "media": {}}, "field 'tasks'"),
    "media a list": ({"format": FORMAT, "tasks": {}, "media": []}, "field 'media'"),
    "task not an object": ({"format": FORMAT, "tasks": {"K700": []}, "media": {}}, "field 'tasks.K700'"),
    "task without files": ({"format": FORMAT, "tasks": {"K700": {"sources": {}}}, "media": {}},
                           "field 'tasks.K700.files'"),
    "file without sha256": ({"format": FORMAT, "tasks": {"K700": {"sources": {}, "files": {"a.parquet": {}}}},
                             "media": {}}, "field 'tasks.K700.files'"),
    "media without entries": ({"format": FORMAT, "tasks": {}, "media": {"image-tasks": {"sources": {}}}},
                              "field 'media.image-tasks.entries'"),
    "entry leaving its folder": ({"format": FORMAT, "tasks": {}, "media": {
        "image-tasks": {"sources": {}, "entries": ["../video-tasks"]}}}, "field 'media.image-tasks.entries'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_malformed_manifest_is_one_line_naming_file_and_field(hub, tmp_path, capsys, case):
    manifest, expected = BAD_MANIFESTS[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps(manifest))
    rc = main(["data", "mmeb-v2", "--hub-dir", str(hub), "--out", str(out), "--tasks", "K700"])
    line = _error_line(capsys)
    assert rc == 2 and str(out / MANIFEST) in line and expected in line, line
    assert not (out / "video-tasks").exists()


def test_verify_warns_once_about_a_query_count(hub, tmp_path, caplog):
    assert mmeb_v2_task("K700").num_queries != len(K700_ROWS)  # the fixture is smaller than the published task
    with caplog.at_level(logging.WARNING):
        convert(hub, tmp_path / "out", "K700", verify=True)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "K700" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]


def test_parquet_rows_stream_and_a_corrupt_file_is_one_line(tmp_path):
    path = shards(tmp_path, "data", "test", [{"a": i} for i in range(5)])[0]
    assert list(iter_parquet_rows(path, batch_size=2)) == [{"a": i} for i in range(5)]
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(RecordError, match="unreadable parquet file") as caught:
        list(iter_parquet_rows(path, shown="s3://bucket/data/test.parquet"))
    assert str(caught.value).startswith("s3://bucket/data/test.parquet:") and "\n" not in str(caught.value)


def test_only_mmeb_v2_tasks_are_converted(hub, tmp_path):
    with pytest.raises(UserError, match="MMEB-V2 tasks only"):
        convert(hub, tmp_path / "out", "offline")
    with pytest.raises(UserError, match="unknown task"):
        convert(hub, tmp_path / "out", "NoSuchTask")


# -------------------------------------------------------------------------------------------------- download

def test_download_fetches_only_what_the_tasks_read(hub, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append((repo, kw)))
    tasks = [mmeb_v2_task(n) for n in ("ImageNet-1K", "OK-VQA", "MVBench", "K700")]
    convert(hub, tmp_path / "out", ",".join(t.name for t in tasks), download=True)
    assert {repo: kw["allow_patterns"] for repo, kw in calls} == download_plan(tasks) == {
        IMAGES: ["ImageNet-1K/*", "OK-VQA/*", "README.md"],
        MEDIA: ["image-tasks/mmeb_v1.tar.gz", "video-tasks/frames/video_cls.tar.gz",
                *[f"video-tasks/frames/video_qa.tar.gz-{i:02d}" for i in range(5)]],
        "VLM2Vec/MVBench": ["*.jsonl", "*.parquet", "README.md"],
        "VLM2Vec/Kinetics-700": ["*.jsonl", "*.parquet", "README.md"]}
    assert all(kw["repo_type"] == "dataset" and Path(kw["local_dir"]) == hub / repo for repo, kw in calls)
