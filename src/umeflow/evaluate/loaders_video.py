"""MMEB-V2 video task loaders, each building its task as VLM2Vec @6e1e1d4 does (``src/data/eval_dataset/*``).

Annotations are ``video-tasks/<Task>.jsonl|parquet`` with the raw HF fields named in each loader; frames are
pre-extracted to ``<meta.media_root>/<video>/`` and chosen by ``loaders_base.frames`` (``meta.num_frames``). Query
and candidate texts are VLM2Vec's strings as the model sees them (``strip_placeholders``: placeholders removed, ends
trimmed); where VLM2Vec's string has an odd detail (a double space after ``Question:``, EgoSchema's question glued to
its first option) it is kept, because the model is fed exactly that.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from umeflow.evaluate.class_labels import class_labels
from umeflow.evaluate.loaders_base import (
    Collector, Row, find_annotation, frames, instructed, media_file, rel_path, task_rows,
)
from umeflow.evaluate.tasks import TaskData, TaskMeta
from umeflow.model.items import Item, strip_placeholders
from umeflow.storage import DataRoot

log = logging.getLogger(__name__)

# VLM2Vec default instructions (method.md §3.3); UME-R1 and Embed-RL keep them.
VIDEO_TARGET = "Understand the content of the provided video."
CLIP_TARGET = "Understand the content of the provided video clip."  # momentseeker_dataset.py:15
# videomme/egoschema/nextqa/mvbench/activitynetqa TASK_PROMPT, trailing space included: process_query then adds
# another one before the question ("Question:  <question>")
VIDEO_QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
                   "Return only the exact text of your chosen answer. Question: ")
MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_QUERY = {"text": "Find the clip that corresponds to the given text:",
                      "image": "Select the video clip that aligns with the given text and image:",
                      "video": "Find the clip that corresponds to the given sentence and video segment:"}


def _start(meta: TaskMeta, root: DataRoot) -> tuple[Collector, str]:
    rel = find_annotation(root, meta.file, meta.name)
    return Collector(meta, root.display(rel)), rel


# ------------------------------------------------------------------------------------------ classification

def load_video_cls_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """``video_classification`` (K700, HMDB51, UCF101, Breakfast) and the offline ``video_cls``: ``video_id,
    pos_text``; query = the video with the dataset instruction (``meta.instruction``, else the row's optional
    ``qry_inst``); candidates = label texts, ranked globally over the labels occurring in the file plus, when
    ``meta.class_labels`` names one, the dataset's full class list (video_classification_datasets.py:61-64)."""
    out, rel = _start(meta, root)
    for row in task_rows(meta, root, rel):
        vid, label = row.ident("video_id"), row.text("pos_text")
        video = frames(root, row, "video_id", rel_path(meta.media_root, vid), meta.num_frames)
        instruction = meta.instruction or row.optional_text("qry_inst")
        out.add(Item(strip_placeholders(instruction), video=video), [out.candidate(label, lambda: Item(label))])
    if meta.class_labels:
        listed = class_labels(meta.class_labels)
        unlisted = sorted(set(out.pool) - set(listed))
        if unlisted:  # VLM2Vec pools them too; say so, since it usually means a label spelled differently
            log.warning("task %s: %d label(s) of %s are not in the %s class list and join its %d labels: %s",
                        meta.name, len(unlisted), out.source, meta.class_labels, len(listed), unlisted[:5])
        for label in listed:
            out.candidate(label, lambda label=label: Item(label))
    return out.build()


def load_ssv2_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """SmthSmthV2 multiple choice: ``video_id, pos_text, neg_text`` where ``neg_text`` is the query's whole
    candidate list and contains ``pos_text``; ranked locally (the registry keeps the first 1,000 rows)."""
    out, rel = _start(meta, root)
    for row in task_rows(meta, root, rel):
        vid, label, options = row.ident("video_id"), row.text("pos_text"), row.strings("neg_text")
        if label not in options:
            raise row.error("neg_text", f"candidate list does not contain pos_text {label!r}")
        video = frames(root, row, "video_id", rel_path(meta.media_root, vid), meta.num_frames)
        names = [out.candidate(o, lambda o=o: Item(o)) for o in options]
        out.add(Item(strip_placeholders(meta.instruction), video=video), [label], names)
    return out.build()


# ----------------------------------------------------------------------------------------------- retrieval

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
    out, rel = _start(meta, root)
    for row in task_rows(meta, root, rel):
        vid = row.ident(id_field)
        if meta.loader == "didemo":
            vid = PurePosixPath(vid).stem
        caption = row.text(caption_field)
        make = lambda vid=vid, row=row: Item(  # noqa: E731
            VIDEO_TARGET, video=frames(root, row, id_field, rel_path(meta.media_root, vid), meta.num_frames))
        out.add(Item(strip_placeholders(instructed(instruction, caption))), [out.candidate(vid, make)])
    return out.build()


# ---------------------------------------------------------------------------------------------------- QA

def _lettered(options: list[str]) -> list[str]:
    """VLM2Vec ``qa_template`` (vision_utils.py:34-46): options as ``(A) text``."""
    return [f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options)]


def _with_options_block(question: str, options: list[str]) -> str:
    """``qa_template``'s question: ``question\\nOptions:\\n(A) ...\\n(B) ...`` (trailing whitespace dropped)."""
    return (question + "\nOptions:\n" + "".join(o + "\n" for o in _lettered(options))).rstrip()


def _after_letter(row: Row, field: str, option: str) -> str:
    """Video-MME / EgoSchema candidate text: ``o[o.find('. '):].strip('. ')`` (videomme_dataset.py:63,
    egoschema_dataset.py:64): from the first ``". "`` on, with dots and spaces trimmed at both ends, so ``"B. Two."``
    gives ``"Two"``."""
    if ". " not in option:  # VLM2Vec would take the option's last character; no real option lacks the letter
        raise row.error(field, f"option {option!r} does not start with a letter and '. '")
    return option[option.find(". "):].strip(". ")


# Each adapter returns (frame folder under media_root, question text, candidates as (name, text), ground-truth name)
QA = tuple[str, str, list[tuple[str, str]], str]


def _qa_videomme(row: Row) -> QA:
    options = row.strings("options")  # "A. text" strings; names are the raw options (videomme_dataset.py:70-71)
    answer = row.text("answer")
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if answer not in letters:
        raise row.error("answer", f"expected one of {letters}")
    question = row.text("question") + "\n" + "\n".join(options)  # videomme_dataset.py:32
    cands = [(o, _after_letter(row, "options", o)) for o in options]
    return row.ident("videoID"), question, cands, options[letters.index(answer)]


def _qa_nextqa(row: Row) -> QA:
    options = [row.text(f"a{i}") for i in range(5)]  # the MC config's a0..a4 (nextqa_dataset.py:31-32)
    question = _with_options_block(row.text("question"), options)  # nextqa_dataset.py:33-34
    # the raw option is both name and text (l.65, 71): no "(A) " prefix, nothing stripped
    return row.ident("video"), question, [(o, o) for o in options], options[row.index("answer", len(options))]


def _qa_egoschema(row: Row) -> QA:
    options = row.strings("option")
    question = row.text("question") + " ".join(options)  # egoschema_dataset.py:32: no separator before option 1
    cands = [(o, _after_letter(row, "option", o)) for o in options]
    return row.ident("video_idx"), question, cands, options[row.index("answer", len(options))]


def _qa_mvbench(row: Row) -> QA:
    candidates, answer = row.strings("candidates"), row.text("answer")
    if answer not in candidates:
        raise row.error("answer", "not among candidates")
    lettered = _lettered(candidates)  # "(A) text" is both name and text (mvbench_dataset.py:150,156)
    truth = max(i for i, c in enumerate(candidates) if c == answer)  # qa_template keeps the last match (l.42-43)
    question = _with_options_block(row.text("question"), candidates)
    return rel_path(row.text("subset"), row.text("video")), question, [(o, o) for o in lettered], lettered[truth]


def _qa_activitynetqa(row: Row) -> QA:
    answer = row.text("answer")
    if answer not in ("yes", "no"):
        raise row.error("answer", "expected 'yes' or 'no'")
    question = row.text("question") + "? (A) yes; (B) no."  # activitynetqa_dataset.py:36
    return "v_" + row.ident("video_name"), question, [("yes", "yes"), ("no", "no")], answer


# parser -> (adapter, the field naming the video)
VIDEO_QA = {"videomme": (_qa_videomme, "videoID"), "nextqa": (_qa_nextqa, "video"),
            "egoschema": (_qa_egoschema, "video_idx"), "mvbench": (_qa_mvbench, "video"),
            "activitynetqa": (_qa_activitynetqa, "video_name")}


def load_video_qa_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """Video QA, ranked locally over the answer options (field layouts per parser in the ``_qa_*`` functions:
    Video-MME ``videoID, question, options, answer`` letter; NExTQA ``video, question, a0..a4, answer`` index;
    EgoSchema ``video_idx, question, option, answer`` index; MVBench ``subset, video, question, candidates, answer``
    text, frames in ``<subset>/<video>``; ActivityNetQA ``video_name, question, answer`` yes/no, frames in
    ``v_<video_name>``). Query = ``VIDEO_QA_PROMPT + " " + question`` (``process_query``); candidate names and
    texts as VLM2Vec builds them."""
    adapt, video_field = VIDEO_QA[meta.loader]
    out, rel = _start(meta, root)
    for row in task_rows(meta, root, rel):
        folder, question, cands, label = adapt(row)
        video = frames(root, row, video_field, rel_path(meta.media_root, folder), meta.num_frames)
        names = [out.candidate(name, lambda text=text: Item(strip_placeholders(text))) for name, text in cands]
        out.add(Item(strip_placeholders(VIDEO_QA_PROMPT + " " + question), video=video), [label], names)
    return out.build()


# ---------------------------------------------------------------------------------------- moment retrieval

def load_moment_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """QVHighlight / Charades-STA: ``query, video_path``. Frames live in ``<media_root>/<video stem>/`` with a
    ``query/`` folder (the full video, part of the query) and one folder per candidate clip; folders named
    ``positive*`` are the ground truth. Candidates are named by their root-relative folder; ranked locally."""
    out, rel = _start(meta, root)
    for row in task_rows(meta, root, rel):
        video_dir = rel_path(meta.media_root, PurePosixPath(row.text("video_path")).stem)
        query_video = frames(root, row, "video_path", rel_path(video_dir, "query"), meta.num_frames)
        clips = [rel_path(video_dir, d) for d in root.listdir(video_dir)
                 if d != "query" and root.is_dir(rel_path(video_dir, d))]
        positives = [c for c in clips if PurePosixPath(c).name.startswith("positive")]
        if not positives:
            raise row.error("video_path", f"no positive* clip folder under {root.display(video_dir)}")
        # VLM2Vec labels only the last one os.listdir returns (moment_retrieval_datasets.py:62-75)
        if len(positives) > 1:
            log.warning("%s line %d: %d positive* clip folders under %s; umeflow counts all as relevant, VLM2Vec "
                        "only one, so this query can score differently", row.path, row.line, len(positives),
                        root.display(video_dir))
        names = [out.candidate(c, lambda c=c: Item(VIDEO_TARGET,
                                                   video=frames(root, row, "video_path", c, meta.num_frames)))
                 for c in clips]
        out.add(Item(strip_placeholders(instructed(MOMENT_QUERY, row.text("query"))), video=query_video), positives, names)
    return out.build()


def _clip_dir(media_root: str, entry: Any, row: Row, field: str) -> str:
    path = entry.get("output_path") if isinstance(entry, dict) else entry
    if not isinstance(path, str) or not path:
        raise row.error(field, "each clip must be a path string or {output_path: ...}")
    return rel_path(media_root, "video_frames", path.replace("/", "_").split(".mp4")[0])


def load_momentseeker_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """MomentSeeker: ``query, input_frames, positive_frames, negative_frames``. ``input_frames`` is empty (text
    query), ``*.jpg`` (image at ``<media_root>/query_<name>``) or ``*.mp4`` (frames in ``<media_root>/video_frames/
    <path with / as _>``); clips are ``{output_path}`` entries (or plain paths) with frames in the same
    ``video_frames`` scheme. Every frame of a folder is fed (``meta.num_frames`` None: momentseeker_dataset.py:40,
    68, 82 call ``load_frames``). Candidates named by their root-relative folder; ranked locally."""
    out, rel = _start(meta, root)
    n = meta.num_frames
    for row in task_rows(meta, root, rel):
        text, source = row.text("query"), row.text("input_frames", allow_empty=True)
        if source.endswith(".mp4"):
            folder = rel_path(meta.media_root, "video_frames", source.split(".mp4")[0].replace("/", "_"))
            query = Item(strip_placeholders(instructed(MOMENTSEEKER_QUERY["video"], text)),
                         video=frames(root, row, "input_frames", folder, n))
        elif source.endswith(".jpg"):
            image = media_file(root, row, "input_frames", rel_path(meta.media_root, f"query_{source}"))
            query = Item(strip_placeholders(instructed(MOMENTSEEKER_QUERY["image"], text)), images=(image,))
        elif not source:
            query = Item(strip_placeholders(instructed(MOMENTSEEKER_QUERY["text"], text)))
        else:  # VLM2Vec would silently make it a text query (l.46-56); a new kind of input deserves a look
            raise row.error("input_frames", f"expected '', a .jpg or an .mp4 path, got {source!r}")
        names = {}
        for field in ("positive_frames", "negative_frames"):
            entries = row.raw(field)
            if not isinstance(entries, list):
                raise row.error(field, "expected a list of clips")
            if field == "positive_frames" and not entries:
                raise row.error(field, "no positive clip")
            names[field] = [out.candidate(d, lambda d=d, f=field: Item(CLIP_TARGET, video=frames(root, row, f, d, n)))
                            for d in (_clip_dir(meta.media_root, e, row, field) for e in entries)]
        out.add(query, names["positive_frames"], names["positive_frames"] + names["negative_frames"])
    return out.build()
