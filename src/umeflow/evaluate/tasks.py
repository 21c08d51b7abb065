"""Eval task metadata, task selection and frame sampling (method.md §3).

A task is typed metadata, ``TaskMeta`` (MTEB style); the runner is generic. Two sets of tasks exist:

- the **offline suite** built by ``umeflow data build``, listed in ``<data_root>/tasks.json``;
- the **MMEB-V2 registry** (``umeflow.evaluate.mmeb_v2.MMEB_V2_TASKS``, 78 tasks) for users who have the benchmark
  in the VLM2Vec on-disk layout, locally or under ``s3://``.

``select_tasks`` resolves a ``--tasks`` spec against both; ``load_task`` (``umeflow.evaluate.loaders``) turns one task
into query items, candidate items and ground-truth names.

Candidate names follow VLM2Vec: ``local`` tasks rank each query's own candidates, ``global`` tasks rank the
deduplicated pool of all candidates.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from umeflow.errors import RecordError, UserError

if TYPE_CHECKING:
    from umeflow.model.items import Item
    from umeflow.storage import DataRoot

MMEB_VIDEO_FRAMES = 8
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
MODALITIES = ("image", "video", "visdoc")


@dataclass(frozen=True)
class TaskMeta:
    name: str
    modality: str  # image | video | visdoc
    category: str  # I-CLS, I-QA, I-RET, I-GD, V-CLS, V-QA, V-RET, V-MRET, VDRv1, VDRv2, VR, OOD
    metric: str = "hit@1"  # main metric: hit@1 (image, video) or ndcg_linear@5 (visdoc)
    eval_type: str = "local"  # local: per-query candidate list; global: deduplicated pool
    parser: str = ""  # loader key (VLM2Vec dataset_parser name, or "image"/"video_cls" offline); derived if empty
    record_kind: str = ""  # row schema name in umeflow.data.schemas (mmeb_image_task, mmeb_video_cls)
    file: str = ""  # annotation file, or stem (.jsonl/.parquet tried), or visdoc folder; relative to the data root
    media_root: str = ""  # images / frame folders / corpus images, relative to the data root
    smoke: bool = False  # smoke tasks check a path end to end and are never averaged in
    num_queries: int = 0  # expected number of queries (MMEB-V2: num_data of the released score files); load_task
    # logs a warning when the loaded count differs
    dataset_name: str = ""  # HF dataset repo the annotations come from
    revision: str = ""  # HF dataset revision the registry assumes
    description: str = ""
    in_domain: bool | None = None  # MMEB-V1 image tasks: also in MMEB-train (20) or not (16); None elsewhere
    hf_subset: str = ""  # HF config/subset name, when the repo has several
    split: str = ""  # HF split of the annotations
    instruction: str = ""  # task-level query instruction, where the loader does not take it from the rows
    # VLM2Vec's yaml knob of the same name: keep only the first N annotation rows (queries, for visdoc); None = all
    num_sample_per_subset: int | None = None
    # VLM2Vec's num_frames: frames chosen per video by linspace (a shorter video keeps all its frames, unpadded);
    # None = every frame of the folder (MomentSeeker)
    num_frames: int | None = MMEB_VIDEO_FRAMES
    # a packaged class-label list (umeflow.evaluate.class_labels) added whole to a global classification pool
    class_labels: str = ""
    # why this task's score can differ from the published leaderboard (printed by the evaluation report)
    leaderboard_note: str = ""

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
    rel_scores: list[list[float]] | None = None  # graded relevance aligned with labels (visdoc qrels); None = binary
    # where each query / candidate was read ("file:line"), for messages about one input (e.g. over the token budget)
    query_origins: list[str | None] | None = None
    candidate_origins: dict[str, str | None] | None = None


def offline_tasks(data_root: str | os.PathLike | DataRoot) -> list[TaskMeta]:
    """The tasks listed in ``<data_root>/tasks.json`` (written by ``umeflow data build``)."""
    from umeflow.storage import DataRoot

    root = DataRoot.of(data_root)
    if not root.is_file("tasks.json"):
        raise UserError(f"{root.display('tasks.json')} does not exist; build the offline suite with "
                        "`umeflow data build` or point --data-root at it")
    shown = root.display("tasks.json")
    try:
        raw = json.loads(root.path("tasks.json").read_text())
    except json.JSONDecodeError as e:
        raise RecordError(shown, e.lineno, None, f"malformed JSON: {e.msg}") from None
    if not isinstance(raw, list):
        got = "an object" if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise RecordError(shown, None, None, f"must hold a list of tasks ([{{\"name\": ..., \"modality\": ..., "
                                             f"\"category\": ..., \"file\": ...}}, ...]), got {got}")
    known = {f.name for f in fields(TaskMeta)}
    tasks = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise RecordError(shown, None, f"[{i}]", f"each task must be a JSON object, got {entry!r:.60}")
        unknown = set(entry) - known
        if unknown:
            raise RecordError(shown, None, f"[{i}].{sorted(unknown)[0]}", "unknown task field")
        for key in ("name", "modality", "category", "file"):
            if not entry.get(key):
                raise RecordError(shown, None, f"[{i}].{key}", "required task field is missing")
        tasks.append(TaskMeta(**entry))
    return tasks


def select_tasks(data_root: str | os.PathLike | DataRoot, spec: str) -> list[TaskMeta]:
    """Resolve a ``--tasks`` spec.

    ``offline`` (or ``all``/empty, the historical spelling): the suite in ``<data_root>/tasks.json``;
    ``mmeb-v2``: all 78 MMEB-V2 tasks; ``image`` / ``video`` / ``visdoc``: one MMEB-V2 modality; otherwise a
    comma-separated list whose entries are any of those group names or task names from either set (MMEB-V2 names
    win on a clash). The offline suite is only read when the spec needs it, so MMEB-V2 runs need no tasks.json.
    """
    # imported here, not at the top: mmeb_v2 builds TaskMeta objects and so imports this module
    from umeflow.evaluate.mmeb_v2 import MMEB_V2_TASKS

    groups = {"mmeb-v2": list(MMEB_V2_TASKS)}
    groups.update({m: [t for t in MMEB_V2_TASKS if t.modality == m] for m in MODALITIES})
    wanted = [s.strip() for s in (spec or "").split(",") if s.strip()] or ["offline"]
    registry = {t.name: t for t in MMEB_V2_TASKS}
    offline: dict[str, TaskMeta] | None = None
    picked: dict[str, TaskMeta] = {}  # insertion-ordered, so "image,ImageNet-1K" lists each task once
    unknown = []
    for w in wanted:
        if w in ("offline", "all"):
            offline = offline if offline is not None else {t.name: t for t in offline_tasks(data_root)}
            picked.update(offline)
        elif w in groups:
            picked.update((t.name, t) for t in groups[w])
        elif w in registry:
            picked[w] = registry[w]
        else:
            if offline is None:
                offline = _offline_or_empty(data_root)
            if w in offline:
                picked[w] = offline[w]
            else:
                unknown.append(w)
    if unknown:
        raise UserError(
            f"unknown task(s) {unknown}; use offline, mmeb-v2, image, video, visdoc, or task names. "
            f"MMEB-V2 tasks: {sorted(registry)}; offline tasks under {data_root}: {sorted(offline or {}) or 'none'}")
    return list(picked.values())


def _offline_or_empty(data_root) -> dict[str, TaskMeta]:
    """The offline suite by name, or nothing when the root has no tasks.json (an MMEB-V2-only root)."""
    from umeflow.storage import DataRoot

    if not DataRoot.of(data_root).is_file("tasks.json"):
        return {}
    return {t.name: t for t in offline_tasks(data_root)}


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_sort_key(name: str) -> list:
    """``frame_2.jpg`` before ``frame_10.jpg``: digit runs compare as numbers, the rest case-insensitively (the
    order VLM2Vec's ``load_frames`` lists a frame folder in)."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(_DIGIT_RUNS.split(name))]


def sample_frame_names(names: list[str], n: int | None = MMEB_VIDEO_FRAMES) -> list[str]:
    """MMEB-V2 frame choice over one video's frame files (method.md §3.3, as VLM2Vec ``process_video_frames``):
    the image files in natural order, then ``linspace(0, count-1, n)`` (integer) when the folder has at least ``n``
    frames; a shorter folder, or ``n=None``, keeps every frame as is (no padding)."""
    # the plain sort first fixes the order of names the key calls equal (01.jpg / 1.jpg), whatever the listing order
    frames = sorted(sorted(x for x in names if Path(x).suffix.lower() in FRAME_SUFFIXES), key=natural_sort_key)
    if n is None or len(frames) < n:
        return frames
    return [frames[i] for i in np.linspace(0, len(frames) - 1, n, dtype=int)]


def sample_frames(frame_dir: Path, n: int | None = MMEB_VIDEO_FRAMES) -> tuple[Path, ...]:
    """``sample_frame_names`` over a local frame folder."""
    chosen = sample_frame_names([p.name for p in Path(frame_dir).iterdir()], n)
    if not chosen:
        raise UserError(f"no frames in {frame_dir}")
    return tuple(Path(frame_dir) / name for name in chosen)


def load_task(meta: TaskMeta, data_root: str | os.PathLike | DataRoot) -> TaskData:
    """Load one task (see ``umeflow.evaluate.loaders``); ``data_root`` may be a path, ``s3://`` URI or DataRoot."""
    from umeflow.evaluate.loaders import load_task as _load  # loaders imports this module

    return _load(meta, data_root)


def load_task_rows(meta: TaskMeta, data_root: str | os.PathLike | DataRoot) -> tuple[list[Item], dict[str, Item]]:
    data = load_task(meta, data_root)
    return data.queries, data.candidates
