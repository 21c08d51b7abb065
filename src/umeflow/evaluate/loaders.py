"""Loaders for MMEB-V2 tasks in the VLM2Vec on-disk layout, and for the offline suite (method.md §3.3, §3.7).

One entry point, ``load_task(meta, data_root)``, dispatches on ``meta.loader`` (VLM2Vec's ``dataset_parser`` names)
and returns a ``TaskData``: query items, ground-truth candidate names, the deduplicated candidate pool, each query's
own candidate list for ``local`` tasks, and graded relevance for visdoc. ``data_root`` is a directory, an ``s3://``
URI or a ``DataRoot``; media come back as local paths (S3 objects are cached on first use).

Annotations are HF datasets upstream; here each is a file with the HF rows, ``.jsonl`` (errors name the line) or
``.parquet`` (errors name the 1-based row as "line"). Layout relative to the data root:

image   ``image-tasks/<Task>.jsonl|parquet``, rows of ``ziyjiang/MMEB_Test_Instruct``: ``qry_inst, qry_text,
        qry_img_path, tgt_inst, tgt_text[], tgt_img_path[]``; the first target is the ground truth; image paths are
        relative to ``image-tasks/`` (the ``mmeb_v1.tar.gz`` layout).
video   ``video-tasks/<Task>.jsonl|parquet`` with the raw HF fields named in each loader below; frames pre-extracted
        to ``<meta.media_root>/<video>/*.jpg`` (``video-tasks/frames/<group>/<Dataset>/``), 8 chosen by linspace.
visdoc  ``visdoc-tasks/<Task>/{queries,corpus,qrels}.jsonl|parquet`` (BEIR): ``query-id, query``;
        ``corpus-id, image`` (a path relative to the task folder, or image bytes / an HF image struct in parquet,
        written to a content-addressed cache); ``query-id, corpus-id, score``.

Candidate names follow VLM2Vec so scores are comparable: classification / QA / i2t candidates are named by their
text, t2i by image path, ``image_i2i_vg`` by ``"{image_path}:{caption}"``, retrieval videos by video id, moment clips
by their frame folder (root-relative here, so a local and an S3 copy name them alike), visdoc pages by corpus id.
Every bad input raises ``RecordError`` naming file, line and field; a missing annotation file is a ``UserError``.
Nothing is skipped: a row whose media is missing is an error.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from umeflow.errors import RecordError, UserError
from umeflow.evaluate.tasks import TaskData, TaskMeta, sample_frame_names, sample_frames  # noqa: F401 (re-export)
from umeflow.io import iter_jsonl_lenient
from umeflow.model.items import Item, strip_placeholders
from umeflow.storage import DataRoot

ANNOTATION_SUFFIXES = (".jsonl", ".parquet")

# VLM2Vec default instructions (method.md §3.3); UME-R1 and Embed-RL keep them.
VIDEO_TARGET = "Understand the content of the provided video."
CLIP_TARGET = "Understand the content of the provided video clip."  # MomentSeeker's own wording
VIDEO_QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
                   "Return only the exact text of your chosen answer. Question:")
MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_QUERY = {"text": "Find the clip that corresponds to the given text:",
                      "image": "Select the video clip that aligns with the given text and image:",
                      "video": "Find the clip that corresponds to the given sentence and video segment:"}
VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_TARGET = "Understand the content of the provided document image."


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


def iter_rows(root: DataRoot, rel: str) -> Iterator[Row]:
    shown = root.display(rel)
    local = root.path(rel)
    if rel.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(local).to_pylist()
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise RecordError(shown, None, None, f"unreadable parquet file: {e}") from None
        for i, rec in enumerate(records, 1):
            yield Row(shown, i, rec)
        return
    for line, rec in iter_jsonl_lenient(local):
        if isinstance(rec, RecordError):  # re-raise naming the data-root path, not the S3 cache copy
            raise RecordError(shown, rec.line, rec.field, rec.reason)
        yield Row(shown, line, rec)


# ----------------------------------------------------------------------------------------------------- media

def _rel(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _inside(root: DataRoot, row: Row, field: str, rel: str) -> str:
    """A record must not point outside the data root; say which record does."""
    if ".." in PurePosixPath(rel).parts:
        raise row.error(field, f"path {rel!r} leaves the data root")
    return rel


def media_file(root: DataRoot, row: Row, field: str, rel: str) -> Path:
    if not root.is_file(_inside(root, row, field, rel)):
        raise row.error(field, f"media file {root.display(rel)} does not exist")
    return root.path(rel)


def frames(root: DataRoot, row: Row, field: str, rel_dir: str) -> tuple[Path, ...]:
    """The 8 MMEB-V2 frames of a pre-extracted frame folder; only those 8 are fetched from S3."""
    if not root.is_dir(_inside(root, row, field, rel_dir)):
        raise row.error(field, f"frame folder {root.display(rel_dir)} does not exist")
    chosen = sample_frame_names(root.listdir(rel_dir))
    if not chosen:
        raise row.error(field, f"no .jpg/.jpeg/.png frames in {root.display(rel_dir)}")
    return tuple(root.path(_rel(rel_dir, name)) for name in chosen)


def _join(*parts: str) -> str:
    return "\n".join(p for p in (strip_placeholders(x) for x in parts) if p)


def _prompt(instruction: str, text: str = "") -> str:
    """VLM2Vec's ``process_input_text``: instruction, a space, the text (media go in as chat items)."""
    return " ".join(p for p in (strip_placeholders(instruction), strip_placeholders(text)) if p)


class _Collector:
    """Accumulates a task: queries with their labels and candidate lists, and the pool deduplicated by name
    (first occurrence wins; ``make`` is only called for new names, so a shared candidate's media load once)."""

    def __init__(self, meta: TaskMeta, source: str):
        self.meta, self.source = meta, source
        self.queries: list[Item] = []
        self.labels: list[list[str]] = []
        self.cand_lists: list[list[str]] = []
        self.rel_scores: list[list[float]] = []
        self.pool: dict[str, Item] = {}

    def candidate(self, name: str, make: Callable[[], Item]) -> str:
        if name not in self.pool:
            self.pool[name] = make()
        return name

    def add(self, query: Item, labels: list[str], cands: list[str] | None = None, rel: list[float] | None = None):
        self.queries.append(query)
        self.labels.append(labels)
        self.cand_lists.append(list(dict.fromkeys(cands if cands is not None else labels)))
        if rel is not None:
            self.rel_scores.append(rel)

    def build(self) -> TaskData:
        if not self.queries:
            raise UserError(f"task {self.meta.name}: {self.source} has no rows")
        local = self.cand_lists if self.meta.eval_type == "local" else None
        return TaskData(self.meta, self.queries, self.labels, self.pool, local, self.rel_scores or None)


# ------------------------------------------------------------------------------------------------ image tasks

def _image_name(parser: str, row: Row, text: str, img: str) -> str:
    if parser == "image":  # offline suite: image path when there is one, else the text
        return img or text
    if parser in ("image_t2i", "image_i2i_vg") and not img:
        raise row.error("tgt_img_path", f"{parser} candidates need an image path")
    if parser == "image_t2i":
        return img
    if parser == "image_i2i_vg":  # several objects can share one image (RefCOCO-Matching)
        return f"{img}:{text}"
    return text  # image_cls, image_qa, image_i2t


def load_image_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """MMEB_Test_Instruct rows. A query's targets are its local candidate list, ground truth first; candidate
    names per parser (see ``_image_name``). Repeated names within one list are ranked once."""
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        qry_img = row.text("qry_img_path", allow_empty=True)
        q_images = (media_file(root, row, "qry_img_path", _rel(meta.media_root, qry_img)),) if qry_img else ()
        query = Item(_join(row.rec.get("qry_inst") or "", row.text("qry_text", allow_empty=True)), images=q_images)
        texts = row.raw("tgt_text")
        if not isinstance(texts, list) or not texts:
            raise row.error("tgt_text", "expected a non-empty list (ground truth first)")
        imgs = row.rec.get("tgt_img_path")
        imgs = [""] * len(texts) if imgs is None else imgs
        if not isinstance(imgs, list) or len(imgs) != len(texts):
            raise row.error("tgt_img_path", f"expected a list of {len(texts)} paths (one per tgt_text)")
        tgt_inst = row.rec.get("tgt_inst") or ""
        names = []
        for text, img in zip(texts, imgs):
            if not isinstance(text, str) or not isinstance(img or "", str):
                raise row.error("tgt_text", "candidates must be strings")
            img = img or ""
            make = lambda img=img, text=text: Item(  # noqa: E731
                _join(tgt_inst, text),
                images=(media_file(root, row, "tgt_img_path", _rel(meta.media_root, img)),) if img else ())
            names.append(out.candidate(_image_name(meta.loader, row, text, img), make))
        out.add(query, [names[0]], names)
    return out.build()


# ------------------------------------------------------------------------------------------------ video tasks

def load_video_cls_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """``video_classification`` (K700, HMDB51, UCF101, Breakfast) and the offline ``video_cls``: ``video_id,
    pos_text``; query = the video with the dataset instruction (``meta.instruction``, else the row's optional
    ``qry_inst``); candidates = label texts, ranked globally over the labels occurring in the file."""
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        vid, label = row.ident("video_id"), row.text("pos_text")
        video = frames(root, row, "video_id", _rel(meta.media_root, vid))
        instruction = meta.instruction or row.rec.get("qry_inst") or ""
        out.add(Item(strip_placeholders(instruction), video=video), [out.candidate(label, lambda: Item(label))])
    return out.build()


def load_ssv2_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """SmthSmthV2 multiple choice: ``video_id, pos_text, neg_text`` where ``neg_text`` is the query's whole
    candidate list and contains ``pos_text``; ranked locally."""
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        vid, label, options = row.ident("video_id"), row.text("pos_text"), row.strings("neg_text")
        if label not in options:
            raise row.error("neg_text", f"candidate list does not contain pos_text {label!r}")
        video = frames(root, row, "video_id", _rel(meta.media_root, vid))
        names = [out.candidate(o, lambda o=o: Item(o)) for o in options]
        out.add(Item(strip_placeholders(meta.instruction), video=video), [label], names)
    return out.build()


# parser -> (video id field, caption field, query instruction); ids name the frame folder and the candidate
VIDEO_RETRIEVAL = {
    "msrvtt": ("video_id", "caption", "Find a video that contains the following visual content:"),
    "msvd": ("video_id", "caption", "Find the video snippet that corresponds to the given summary:"),
    "didemo": ("video", "caption", "Find a video that includes the following described scenes:"),
    "vatex": ("videoID", "enCap", "Select a video that fits the description provided:"),
    "youcook2": ("id", "sentence", "Find a video that demonstrates the following action while making a recipe:"),
}


def load_video_retrieval_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """Text-to-video retrieval (fields per parser in ``VIDEO_RETRIEVAL``; a caption list gives its first caption;
    DiDeMo's ``video`` is a file path whose stem is the id). Ranked globally over the pooled videos."""
    id_field, caption_field, instruction = VIDEO_RETRIEVAL[meta.loader]
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        vid = row.ident(id_field)
        if meta.loader == "didemo":
            vid = PurePosixPath(vid).stem
        caption = row.text(caption_field)
        make = lambda vid=vid, row=row: Item(  # noqa: E731
            VIDEO_TARGET, video=frames(root, row, id_field, _rel(meta.media_root, vid)))
        out.add(Item(_prompt(instruction, caption)), [out.candidate(vid, make)])
    return out.build()


_LETTER_PREFIX = re.compile(r"^\(?[A-Z][.)]\s*")


def _options_block(options: list[str]) -> list[str]:
    """VLM2Vec ``qa_template``: options as ``(A) text`` lines."""
    return [f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options)]


def _qa_videomme(row: Row):
    options = row.strings("options")  # "A. text" strings
    answer = row.text("answer")
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if answer not in letters:
        raise row.error("answer", f"expected one of {letters}")
    text = row.text("question") + "\n" + "\n".join(options)
    return row.ident("videoID"), text, options, options[letters.index(answer)]


def _qa_nextqa(row: Row):
    options = [row.text(f"a{i}") for i in range(10) if f"a{i}" in row.rec]  # NExTQA MC stores a0..a4
    if not options:
        raise row.error("a0", "required field is missing (answer options a0..a4)")
    text = row.text("question") + "\nOptions:\n" + "\n".join(_options_block(options))
    return row.ident("video"), text, options, options[row.index("answer", len(options))]


def _qa_egoschema(row: Row):
    options = row.strings("option")
    text = row.text("question") + "\n" + "\n".join(options)
    return row.ident("video_idx"), text, options, options[row.index("answer", len(options))]


def _qa_mvbench(row: Row):
    candidates, answer = row.strings("candidates"), row.text("answer")
    if answer not in candidates:
        raise row.error("answer", "not among candidates")
    options = _options_block(candidates)
    text = row.text("question") + "\nOptions:\n" + "\n".join(options)
    return _rel(row.text("subset"), row.text("video")), text, options, options[candidates.index(answer)]


def _qa_activitynetqa(row: Row):
    answer = row.text("answer")
    if answer not in ("yes", "no"):
        raise row.error("answer", "expected 'yes' or 'no'")
    return "v_" + row.ident("video_name"), row.text("question") + "? (A) yes; (B) no.", ["yes", "no"], answer


# parser -> row -> (frame folder under media_root, question with options, candidate names, ground-truth name)
VIDEO_QA = {"videomme": _qa_videomme, "nextqa": _qa_nextqa, "egoschema": _qa_egoschema, "mvbench": _qa_mvbench,
            "activitynetqa": _qa_activitynetqa}
_QA_VIDEO_FIELD = {"videomme": "videoID", "nextqa": "video", "egoschema": "video_idx", "mvbench": "video",
                   "activitynetqa": "video_name"}


def load_video_qa_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """Video QA, ranked locally over the answer options (field layouts per parser in the ``_qa_*`` functions:
    Video-MME ``videoID, question, options, answer`` letter; NExTQA ``video, question, answer`` index, options
    ``a0..a4``; EgoSchema ``video_idx, question, option, answer`` index; MVBench ``subset, video, question,
    candidates, answer`` text, frames in ``<subset>/<video>``; ActivityNetQA ``video_name, question, answer``
    yes/no, frames in ``v_<video_name>``). Candidates are named by the option string as VLM2Vec names them."""
    adapt = VIDEO_QA[meta.loader]
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        folder, question, options, label = adapt(row)
        video = frames(root, row, _QA_VIDEO_FIELD[meta.loader], _rel(meta.media_root, folder))
        names = [out.candidate(o, lambda o=o: Item(_LETTER_PREFIX.sub("", o) or o)) for o in options]
        out.add(Item(_prompt(VIDEO_QA_PROMPT, question), video=video), [label], names)
    return out.build()


def load_moment_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """QVHighlight / Charades-STA: ``query, video_path``. Frames live in ``<media_root>/<video stem>/`` with a
    ``query/`` folder (the full video, part of the query) and one folder per candidate clip; folders named
    ``positive*`` are the ground truth. Candidates are named by their root-relative folder; ranked locally."""
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        video_dir = _rel(meta.media_root, PurePosixPath(row.text("video_path")).stem)
        query_video = frames(root, row, "video_path", _rel(video_dir, "query"))
        clips = [_rel(video_dir, d) for d in root.listdir(video_dir)
                 if d != "query" and root.is_dir(_rel(video_dir, d))]
        positives = [c for c in clips if PurePosixPath(c).name.startswith("positive")]
        if not positives:
            raise row.error("video_path", f"no positive* clip folder under {root.display(video_dir)}")
        names = [out.candidate(c, lambda c=c: Item(VIDEO_TARGET, video=frames(root, row, "video_path", c)))
                 for c in clips]
        out.add(Item(_prompt(MOMENT_QUERY, row.text("query")), video=query_video), positives, names)
    return out.build()


def _clip_dir(media_root: str, entry: Any, row: Row, field: str) -> str:
    path = entry.get("output_path") if isinstance(entry, dict) else entry
    if not isinstance(path, str) or not path:
        raise row.error(field, "each clip must be a path string or {output_path: ...}")
    return _rel(media_root, "video_frames", path.replace("/", "_").split(".mp4")[0])


def load_momentseeker_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """MomentSeeker: ``query, input_frames, positive_frames, negative_frames``. ``input_frames`` is empty (text
    query), ``*.jpg`` (image at ``<media_root>/query_<name>``) or ``*.mp4`` (frames in ``<media_root>/video_frames/
    <path with / as _>``); clips are ``{output_path}`` entries (or plain paths) with frames in the same
    ``video_frames`` scheme. Candidates named by their root-relative folder; ranked locally."""
    rel = find_annotation(root, meta.file, meta.name)
    out = _Collector(meta, root.display(rel))
    for row in iter_rows(root, rel):
        text, source = row.text("query"), row.text("input_frames", allow_empty=True)
        if source.endswith(".mp4"):
            folder = _rel(meta.media_root, "video_frames", source.split(".mp4")[0].replace("/", "_"))
            query = Item(_prompt(MOMENTSEEKER_QUERY["video"], text), video=frames(root, row, "input_frames", folder))
        elif source:
            image = media_file(root, row, "input_frames", _rel(meta.media_root, f"query_{source}"))
            query = Item(_prompt(MOMENTSEEKER_QUERY["image"], text), images=(image,))
        else:
            query = Item(_prompt(MOMENTSEEKER_QUERY["text"], text))
        names = {}
        for field in ("positive_frames", "negative_frames"):
            entries = row.raw(field)
            if not isinstance(entries, list):
                raise row.error(field, "expected a list of clips")
            if field == "positive_frames" and not entries:
                raise row.error(field, "no positive clip")
            names[field] = [out.candidate(d, lambda d=d, f=field: Item(CLIP_TARGET, video=frames(root, row, f, d)))
                            for d in (_clip_dir(meta.media_root, e, row, field) for e in entries)]
        out.add(query, names["positive_frames"], names["positive_frames"] + names["negative_frames"])
    return out.build()


# ----------------------------------------------------------------------------------------------- visdoc tasks

def _corpus_image(root: DataRoot, meta: TaskMeta, row: Row) -> Path:
    """A corpus page: a path relative to the task folder, raw bytes, or an HF image struct ``{bytes, path}``."""
    value = row.raw("image")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and value:
        return media_file(root, row, "image", _rel(meta.media_root, value))
    if isinstance(value, (bytes, bytearray)) and value:
        try:
            fmt = Image.open(io.BytesIO(value)).format or "PNG"
        except Exception:
            raise row.error("image", "bytes are not a readable image") from None
        return root.blob_path(bytes(value), "." + fmt.lower().replace("jpeg", "jpg"))
    raise row.error("image", "expected a relative image path, image bytes, or {bytes, path}")


def load_visdoc_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """ViDoRe / VisRAG / ViDoSeek / MMLongBench (BEIR). Every corpus page is a candidate (global ranking); a query's
    labels are its qrels entries with score > 0 (score 0 means judged irrelevant), ``rel_scores`` their scores."""
    files = {part: find_annotation(root, _rel(meta.file, part), meta.name) for part in ("queries", "corpus", "qrels")}
    out = _Collector(meta, root.display(files["queries"]))
    queries: dict[str, tuple[str, Row]] = {}
    for row in iter_rows(root, files["queries"]):
        qid = row.ident("query-id")
        if qid in queries:
            raise row.error("query-id", f"duplicate query id {qid!r}")
        queries[qid] = (row.text("query"), row)
    for row in iter_rows(root, files["corpus"]):
        page = lambda row=row: Item(VISDOC_TARGET, images=(_corpus_image(root, meta, row),))  # noqa: E731
        out.candidate(row.ident("corpus-id"), page)
    qrels: dict[str, dict[str, float]] = {}
    for row in iter_rows(root, files["qrels"]):
        qid, cid, score = row.ident("query-id"), row.ident("corpus-id"), row.raw("score")
        if qid not in queries:
            raise row.error("query-id", f"unknown query id {qid!r} (not in {root.display(files['queries'])})")
        if cid not in out.pool:
            raise row.error("corpus-id", f"unknown corpus id {cid!r} (not in {root.display(files['corpus'])})")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise row.error("score", "expected a number")
        if score > 0:
            qrels.setdefault(qid, {})[cid] = float(score)
    for qid, (text, row) in queries.items():
        judged = qrels.get(qid)
        if not judged:
            raise row.error("query-id", f"query {qid!r} has no relevant document in {root.display(files['qrels'])}")
        out.add(Item(_prompt(VISDOC_QUERY, text)), list(judged), rel=list(judged.values()))
    return out.build()


LOADERS: dict[str, Callable[[TaskMeta, DataRoot], TaskData]] = {
    "image": load_image_task, "video_cls": load_video_cls_task,  # offline suite
    **{p: load_image_task for p in ("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg")},
    "video_classification": load_video_cls_task, "ssv2": load_ssv2_task,
    **{p: load_video_retrieval_task for p in VIDEO_RETRIEVAL},
    **{p: load_video_qa_task for p in VIDEO_QA},
    "moment_retrieval": load_moment_task, "momentseeker": load_momentseeker_task,
    "vidore": load_visdoc_task, "visrag": load_visdoc_task,
}


def load_task(meta: TaskMeta, data_root: str | os.PathLike | DataRoot) -> TaskData:
    loader = LOADERS.get(meta.loader)
    if loader is None:
        raise UserError(f"task {meta.name}: no loader for '{meta.loader}' (known: {sorted(LOADERS)})")
    return loader(meta, DataRoot.of(data_root))
