"""Task metadata and loaders for MMEB-style evaluation tasks (method.md §3.3).

A task is described by ``TaskMeta`` (MTEB style). The offline suite built by ``umeflow data build`` lists its tasks in
``<data_root>/tasks.json``; the full MMEB-V2 registry joins this module later with the same fields. Loaders turn a
task file into query ``Item``s and candidate lists, and fail with the file, line and field on bad input.

Candidate names follow VLM2Vec: a candidate with an image is named by its image path, a text candidate by its text;
``local`` tasks rank each query's own candidates, ``global`` tasks rank the deduplicated pool of all candidates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from umeflow.errors import RecordError, UserError
from umeflow.io import iter_jsonl
from umeflow.model.items import Item, strip_placeholders

MMEB_VIDEO_FRAMES = 8


@dataclass(frozen=True)
class TaskMeta:
    name: str
    modality: str  # image | video | visdoc
    category: str  # I-CLS, I-QA, I-RET, I-GD, V-CLS, ...
    metric: str = "hit@1"
    eval_type: str = "local"  # local: per-query candidate list; global: deduplicated pool
    parser: str = ""  # loader: "image" (MMEB_Test_Instruct rows) or "video_cls"; derived if empty
    record_kind: str = ""  # row schema name in umeflow.data.schemas (mmeb_image_task, mmeb_video_cls)
    file: str = ""  # relative to the data root
    media_root: str = ""  # relative to the data root
    smoke: bool = False  # smoke tasks check a path end to end and are never averaged in
    num_queries: int = 0
    dataset_name: str = ""
    revision: str = ""
    description: str = ""

    @property
    def loader(self) -> str:
        if self.parser:
            return self.parser
        by_kind = {"mmeb_image_task": "image", "mmeb_video_cls": "video_cls"}
        return by_kind.get(self.record_kind) or ("video_cls" if self.modality == "video" else "image")


@dataclass
class TaskData:
    meta: TaskMeta
    queries: list[Item]
    labels: list[list[str]]  # ground-truth candidate names per query
    candidates: dict[str, Item]  # name -> item (deduplicated, first occurrence wins)
    query_candidates: list[list[str]] | None  # local tasks: each query's own candidate names


def offline_tasks(data_root: str | Path) -> list[TaskMeta]:
    """The tasks listed in ``<data_root>/tasks.json`` (written by ``umeflow data build``)."""
    path = Path(data_root) / "tasks.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; build the offline suite with `umeflow data build` or point "
                        "--data-root at it")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None
    known = {f.name for f in fields(TaskMeta)}
    tasks = []
    for i, entry in enumerate(raw):
        unknown = set(entry) - known
        if unknown:
            raise RecordError(path, None, f"[{i}].{sorted(unknown)[0]}", "unknown task field")
        for key in ("name", "modality", "category", "file"):
            if not entry.get(key):
                raise RecordError(path, None, f"[{i}].{key}", "required task field is missing")
        tasks.append(TaskMeta(**entry))
    return tasks


def select_tasks(data_root: str | Path, spec: str) -> list[TaskMeta]:
    tasks = offline_tasks(data_root)
    if spec in ("offline", "all", ""):
        return tasks
    by_name = {t.name: t for t in tasks}
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise UserError(f"unknown task(s) {unknown}; available under {data_root}: {sorted(by_name)}")
    return [by_name[w] for w in wanted]


def _join(*parts: str) -> str:
    return "\n".join(p for p in (strip_placeholders(x) for x in parts) if p)


def _str_field(path, line, rec, key, allow_empty=True) -> str:
    if key not in rec:
        raise RecordError(path, line, key, "required field is missing")
    value = rec[key]
    if value is None:
        value = ""
    if not isinstance(value, str) or (not allow_empty and not value):
        raise RecordError(path, line, key, "expected a non-empty string" if not allow_empty else "expected a string")
    return value


def _media(path, line, key, rel: str, root: Path) -> Path:
    p = root / rel
    if not p.is_file():
        raise RecordError(path, line, key, f"media file {rel} does not exist under {root}")
    return p


def _load_image_task(meta: TaskMeta, root: Path) -> TaskData:
    path = root / meta.file
    media_root = root / meta.media_root
    if not path.is_file():
        raise UserError(f"task {meta.name}: file {path} does not exist")
    queries, labels, cand_lists, pool = [], [], [], {}
    for line, rec in iter_jsonl(path):
        qry_img = _str_field(path, line, rec, "qry_img_path")
        q_images = (_media(path, line, "qry_img_path", qry_img, media_root),) if qry_img else ()
        queries.append(Item(_join(rec.get("qry_inst", "") or "", _str_field(path, line, rec, "qry_text")),
                            images=q_images))
        texts, imgs = rec.get("tgt_text"), rec.get("tgt_img_path")
        if not isinstance(texts, list) or not texts:
            raise RecordError(path, line, "tgt_text", "expected a non-empty list (ground truth first)")
        if imgs is None:
            imgs = [""] * len(texts)
        if not isinstance(imgs, list) or len(imgs) != len(texts):
            raise RecordError(path, line, "tgt_img_path", f"expected a list of {len(texts)} paths (one per tgt_text)")
        tgt_inst = rec.get("tgt_inst", "") or ""
        names = []
        for text, img in zip(texts, imgs):
            if not isinstance(text, str) or not isinstance(img or "", str):
                raise RecordError(path, line, "tgt_text", "candidates must be strings")
            name = img if img else text
            if name not in pool:
                images = (_media(path, line, "tgt_img_path", img, media_root),) if img else ()
                pool[name] = Item(_join(tgt_inst, text), images=images)
            names.append(name)
        if len(set(names)) != len(names):
            raise RecordError(path, line, "tgt_text", "duplicate candidates in one query's list")
        labels.append([names[0]])
        cand_lists.append(names)
    if not queries:
        raise UserError(f"task {meta.name}: {path} has no rows")
    return TaskData(meta, queries, labels, pool, cand_lists if meta.eval_type == "local" else None)


def sample_frames(frame_dir: Path, n: int = MMEB_VIDEO_FRAMES) -> tuple[Path, ...]:
    """MMEB-V2 frame choice: ``linspace(0, count-1, n)`` (integer) over the sorted frames; a shorter clip keeps all
    its frames and repeats the last one up to ``n``."""
    frames = sorted(p for p in frame_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not frames:
        raise UserError(f"no frames in {frame_dir}")
    if len(frames) < n:
        return tuple(frames) + (frames[-1],) * (n - len(frames))
    return tuple(frames[i] for i in np.linspace(0, len(frames) - 1, n, dtype=int))


def _load_video_cls_task(meta: TaskMeta, root: Path) -> TaskData:
    path = root / meta.file
    frames_root = root / meta.media_root
    if not path.is_file():
        raise UserError(f"task {meta.name}: file {path} does not exist")
    queries, labels, pool = [], [], {}
    for line, rec in iter_jsonl(path):
        vid = _str_field(path, line, rec, "video_id", allow_empty=False)
        label = _str_field(path, line, rec, "pos_text", allow_empty=False)
        frame_dir = frames_root / vid
        if not frame_dir.is_dir():
            raise RecordError(path, line, "video_id", f"frame folder {vid} does not exist under {frames_root}")
        queries.append(Item(_join(rec.get("qry_inst", "") or ""), video=sample_frames(frame_dir)))
        labels.append([label])
        pool.setdefault(label, Item(label))
    if not queries:
        raise UserError(f"task {meta.name}: {path} has no rows")
    return TaskData(meta, queries, labels, pool, None)


LOADERS = {"image": _load_image_task, "video_cls": _load_video_cls_task}


def load_task(meta: TaskMeta, data_root: str | Path) -> TaskData:
    loader = LOADERS.get(meta.loader)
    if loader is None:
        raise UserError(f"task {meta.name}: no loader for '{meta.loader}' (known: {sorted(LOADERS)})")
    return loader(meta, Path(data_root))


def load_task_rows(meta: TaskMeta, data_root: str | Path) -> tuple[list[Item], dict[str, Item]]:
    data = load_task(meta, data_root)
    return data.queries, data.candidates
