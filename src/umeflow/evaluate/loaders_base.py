"""What every task loader shares: annotation rows that name their file and line, media lookups under the data root,
the text rules VLM2Vec builds inputs with, and the collector that deduplicates the candidate pool.

See ``umeflow.evaluate.loaders`` for the layout and the entry point ``load_task``.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from umeflow.errors import RecordError, UserError
from umeflow.evaluate.tasks import TaskData, TaskMeta, sample_frame_names
from umeflow.io import iter_jsonl_lenient, iter_parquet_rows
from umeflow.model.items import Item
from umeflow.storage import DataRoot, OutsideRoot, path_inside

ANNOTATION_SUFFIXES = (".jsonl", ".parquet")


# ------------------------------------------------------------------------------------------------ reading rows

@dataclass
class Row:
    """One annotation row plus where it came from, so every field check can name file, line and field."""

    path: str
    line: int
    rec: dict

    def error(self, field: str | None, reason: str) -> RecordError:
        return RecordError(self.path, self.line, field, reason)

    def raw(self, key: str) -> Any:
        if key not in self.rec:
            raise self.error(key, "required field is missing")
        return self.rec[key]

    def text(self, key: str, allow_empty: bool = False) -> str:
        """A string field; a list (several captions per video, e.g. MSVD, VATEX) gives its first element."""
        value = self.raw(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None and allow_empty:
            value = ""
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self.error(key, "expected a non-empty string" if not allow_empty else "expected a string")
        return value

    def optional_text(self, key: str) -> str:
        """An optional string field (instructions): absent or null gives ""; anything but a string is an error."""
        value = self.rec.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(key, "expected a string")
        return value

    def ident(self, key: str) -> str:
        """An id that upstream stores as a string or an integer (NExTQA videos, BEIR ids)."""
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise self.error(key, "expected a non-empty string or integer id")
        return str(value)

    def strings(self, key: str) -> list[str]:
        value = self.raw(key)
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a non-empty list of strings")
        return value

    def index(self, key: str, size: int) -> int:
        value = self.raw(key)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise self.error(key, f"expected an option index in [0, {size})")
        return value


def find_annotation(root: DataRoot, rel: str, task: str) -> str:
    """``rel`` itself when it has a suffix, else the first of ``rel.jsonl`` / ``rel.parquet`` that exists."""
    options = [rel] if PurePosixPath(rel).suffix in ANNOTATION_SUFFIXES else [rel + s for s in ANNOTATION_SUFFIXES]
    for option in options:
        if root.is_file(option):
            return option
    raise UserError(f"task {task}: annotation file {' or '.join(root.display(o) for o in options)} does not exist")


# The row a loader is turning into queries and candidates (set by ``iter_rows``; a generator shares its caller's
# context), so that ``Collector`` records where each input came from without every parser passing the row along.
_CURRENT_ROW: ContextVar["Row | None"] = ContextVar("umeflow_current_row", default=None)


def _current_origin() -> str | None:
    row = _CURRENT_ROW.get()
    return f"{row.path}:{row.line}" if row is not None else None


def iter_rows(root: DataRoot, rel: str) -> Iterator[Row]:
    shown = root.display(rel)
    local = root.path(rel)
    if rel.endswith(".parquet"):  # streamed: a task that keeps the first n rows reads no further
        rows = (Row(shown, i, rec) for i, rec in enumerate(iter_parquet_rows(local, shown), 1))
    else:
        rows = (Row(shown, line, rec) for line, rec in iter_jsonl_lenient(local))
    for row in rows:
        if isinstance(row.rec, RecordError):  # re-raise naming the data-root path, not the S3 cache copy
            raise RecordError(shown, row.rec.line, row.rec.field, row.rec.reason)
        _CURRENT_ROW.set(row)
        yield row
    _CURRENT_ROW.set(None)


def task_rows(meta: TaskMeta, root: DataRoot, rel: str) -> Iterator[Row]:
    """The rows a task uses: the first ``meta.num_sample_per_subset`` of the file when set, in file order, as
    VLM2Vec's ``sample_dataset`` keeps them (``dataset.select(range(n))``); rows after those are not read."""
    rows = iter_rows(root, rel)
    return rows if meta.num_sample_per_subset is None else itertools.islice(rows, meta.num_sample_per_subset)


# ----------------------------------------------------------------------------------------------------- media

def rel_path(*parts: str) -> str:
    """Join root-relative parts. A part that is absolute (a record naming ``/etc/x.png``) restarts the path, as
    ``posixpath.join`` does, so that ``inside`` sees it and refuses it instead of finding it under the media root."""
    kept = [p for p in parts if p and p.strip("/")]
    return posixpath.join(*kept).rstrip("/") if kept else ""


def inside(root: DataRoot, row: Row, field: str, rel: str) -> str:
    """A record must not point outside the data root (``..``, an absolute path, or, on a local root, a symlink that
    resolves elsewhere: the rule every step's record loader applies, ``storage.path_inside``); say which record does."""
    if rel.startswith("/"):
        raise row.error(field, f"path {rel!r} is absolute; media paths are relative to the data root")
    if ".." in PurePosixPath(rel).parts:  # DataRoot refuses any "..", even one that comes back inside
        raise row.error(field, f"path {rel!r} leaves the data root")
    if root.is_s3:  # no symlinks in a bucket
        return rel
    try:
        path_inside(root.local_root, rel)
    except OutsideRoot as e:
        raise row.error(field, str(e)) from None
    return rel


def media_file(root: DataRoot, row: Row, field: str, rel: str) -> Path:
    if not root.is_file(inside(root, row, field, rel)):
        raise row.error(field, f"media file {root.display(rel)} does not exist")
    return root.path(rel)


def frames(root: DataRoot, row: Row, field: str, rel_dir: str, n: int | None) -> tuple[Path, ...]:
    """The frames MMEB-V2 feeds from a pre-extracted frame folder (``sample_frame_names``: natural order, ``n`` by
    linspace, all of a shorter folder, all when ``n`` is None); only the chosen files are fetched from S3."""
    if not root.is_dir(inside(root, row, field, rel_dir)):
        raise row.error(field, f"frame folder {root.display(rel_dir)} does not exist")
    chosen = sample_frame_names(root.listdir(rel_dir), n)
    if not chosen:
        raise row.error(field, f"no .jpg/.jpeg/.png frames in {root.display(rel_dir)}")
    return tuple(root.path(rel_path(rel_dir, name)) for name in chosen)


# ------------------------------------------------------------------------------------------------------ text

def instructed(instruction: str, text: str = "") -> str:
    """VLM2Vec's ``process_input_text`` (src/model/processor.py:663-665): the instruction, then a space and the
    text when there is one. Neither part is trimmed; ``strip_placeholders`` trims the ends of the result, as UME-R1's
    eval collator does (UME-R1 @08891de src/eval/VLM2Vec/src/data/collator/eval_collator.py:225,253,294)."""
    return instruction + " " + text if text else instruction


# ------------------------------------------------------------------------------------------------- collecting

class Collector:
    """Accumulates a task: queries with their labels and candidate lists, and the pool deduplicated by name
    (first occurrence wins; ``make`` is only called for new names, so a shared candidate's media load once)."""

    def __init__(self, meta: TaskMeta, source: str):
        self.meta, self.source = meta, source
        self.queries: list[Item] = []
        self.labels: list[list[str]] = []
        self.cand_lists: list[list[str]] = []
        self.rel_scores: list[list[float]] = []
        self.pool: dict[str, Item] = {}
        self.query_origins: list[str | None] = []
        self.candidate_origins: dict[str, str | None] = {}
        _CURRENT_ROW.set(None)  # a row left current by an earlier task's (sliced) iteration is not this task's

    def candidate(self, name: str, make: Callable[[], Item]) -> str:
        if name not in self.pool:
            self.pool[name] = make()
            self.candidate_origins[name] = _current_origin()
        return name

    def add(self, query: Item, labels: list[str], cands: list[str] | None = None, rel: list[float] | None = None,
            row: Row | None = None):
        """``row``: where the query was read, for loaders that add queries after reading other files (visdoc);
        default: the row being read."""
        self.queries.append(query)
        self.query_origins.append(f"{row.path}:{row.line}" if row is not None else _current_origin())
        self.labels.append(labels)
        self.cand_lists.append(list(dict.fromkeys(cands if cands is not None else labels)))
        if rel is not None:
            self.rel_scores.append(rel)

    def build(self) -> TaskData:
        if not self.queries:
            raise UserError(f"task {self.meta.name}: {self.source} has no rows")
        local = self.cand_lists if self.meta.eval_type == "local" else None
        return TaskData(self.meta, self.queries, self.labels, self.pool, local, self.rel_scores or None,
                        self.query_origins, self.candidate_origins)
