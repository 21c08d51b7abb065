"""MMEB / UME-R1 record schemas and a validating JSONL loader.

The field names are those of the released files (reference/method.md §1.5, §1.6, §3.3, §3.8), so a user's real
MMEB-train, UME-sft-train, UME-rl-train or MMEB_Test_Instruct files load unchanged. Validation happens once, at load
time, so a bad record fails with its file, line and field instead of as a shape error deep inside training.

Kinds:
  ``mmeb_train``      qry, qry_image_path, pos_text, pos_image_path [, neg_text, neg_image_path, dataset_name]
  ``ume_sft``         [dataset_name,] qry/pos: {conversations: [{from: human, value}, {from: gpt, value}],
                      image: str | [str] | video: [str]}
  ``ume_rl``          [dataset, dataset_name,] qry_text, pos_text [, qry_image, pos_image: str,
                      qry_video, pos_video: [str] ([""] = none), solution]
  ``mmeb_image_task`` qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text: [str], tgt_img_path: [str] (same length;
                      the first target is the ground truth)
  ``mmeb_video_cls``  video_id, pos_text [, qry_inst]; frames live in ``<media_root>/<video_id>/*.jpg``
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import UnidentifiedImageError

from umeflow.errors import BadRecordCounter, RecordError
from umeflow.io import iter_jsonl_lenient
from umeflow.model.items import TextBudget
from umeflow.model.vision import PixelBudgetError, open_bounded
from umeflow.storage import OutsideRoot, path_inside

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class FieldError(Exception):
    """A bad field inside one record; ``load_records`` adds the file and line."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


# A validator checks one record and returns the media it references as (field, relative path, is_frame_dir).
Media = list[tuple[str, str, bool]]


def _get(rec: dict, key: str, types: type | tuple[type, ...], required: bool = True, where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in rec:
        if required:
            raise FieldError(name, "missing required field")
        return None
    value = rec[key]
    if not isinstance(value, types) or isinstance(value, bool):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise FieldError(name, f"expected {want}, got {type(value).__name__}")
    return value


def _str_list(rec: dict, key: str, required: bool = True, where: str = "", allow_str: bool = False) -> list[str]:
    value = _get(rec, key, (list, str) if allow_str else list, required, where)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise FieldError(f"{where}{key}[{i}]", f"expected str, got {type(v).__name__}")
    return value


def _mmeb_train(rec: dict) -> Media:
    for key in ("qry", "pos_text"):
        _get(rec, key, str)
    media = [(k, _get(rec, k, str), False) for k in ("qry_image_path", "pos_image_path")]
    _get(rec, "dataset_name", str, required=False)
    # VLM2Vec >= 2.1 stores hard negatives as lists; older files as strings.
    _str_list(rec, "neg_text", required=False, allow_str=True)
    media += [("neg_image_path", p, False) for p in _str_list(rec, "neg_image_path", required=False, allow_str=True)]
    return [m for m in media if m[1]]


def _ume_sft(rec: dict) -> Media:
    _get(rec, "dataset_name", str, required=False)
    media: Media = []
    for side in ("qry", "pos"):
        part = _get(rec, side, dict)
        conv = _get(part, "conversations", list, where=f"{side}.")
        if len(conv) < 2:
            raise FieldError(f"{side}.conversations", f"expected a human and a gpt turn, got {len(conv)} turns")
        for i, turn in enumerate(conv):
            where = f"{side}.conversations[{i}]."
            if not isinstance(turn, dict):
                raise FieldError(where[:-1], f"expected an object, got {type(turn).__name__}")
            speaker = _get(turn, "from", str, where=where)
            want = "human" if i % 2 == 0 else "gpt"
            if speaker != want:
                raise FieldError(f"{where}from", f"expected {want!r} (turns alternate human, gpt), got {speaker!r}")
            _get(turn, "value", str, where=where)
        media += [(f"{side}.image", p, False)
                  for p in _str_list(part, "image", required=False, where=f"{side}.", allow_str=True)]
        media += [(f"{side}.video", p, False) for p in _str_list(part, "video", required=False, where=f"{side}.")]
    return [m for m in media if m[1]]


def _ume_rl(rec: dict) -> Media:
    for key in ("dataset", "dataset_name", "solution"):
        _get(rec, key, str, required=False)
    media: Media = []
    for side in ("qry", "pos"):
        _get(rec, f"{side}_text", str)
        image = _get(rec, f"{side}_image", str, required=False)
        if image:
            media.append((f"{side}_image", image, False))
        # No video is written as [""] in the released file.
        media += [(f"{side}_video", p, False) for p in _str_list(rec, f"{side}_video", required=False) if p]
    return media


def _mmeb_image_task(rec: dict) -> Media:
    for key in ("qry_inst", "qry_text", "tgt_inst"):
        _get(rec, key, str)
    media: Media = [("qry_img_path", _get(rec, "qry_img_path", str), False)]
    texts = _str_list(rec, "tgt_text")
    paths = _str_list(rec, "tgt_img_path")
    if not texts:
        raise FieldError("tgt_text", "empty candidate list")
    if len(paths) != len(texts):
        raise FieldError("tgt_img_path", f"has {len(paths)} entries but tgt_text has {len(texts)}")
    media += [("tgt_img_path", p, False) for p in paths]
    return [m for m in media if m[1]]


def _mmeb_video_cls(rec: dict) -> Media:
    video_id = _get(rec, "video_id", (str, int))
    _get(rec, "pos_text", str)
    _get(rec, "qry_inst", str, required=False)
    if str(video_id) in ("", ".", "..") or "/" in str(video_id):
        raise FieldError("video_id", f"{video_id!r} is not a folder name")
    return [("video_id", str(video_id), True)]


VALIDATORS: dict[str, Callable[[dict], Media]] = {
    "mmeb_train": _mmeb_train,
    "ume_sft": _ume_sft,
    "ume_rl": _ume_rl,
    "mmeb_image_task": _mmeb_image_task,
    "mmeb_video_cls": _mmeb_video_cls,
}


def image_problem(path: Path) -> str | None:
    """None if ``path`` is an image whose pixels decode, else the reason.

    Decoding fully (``load``), not only ``verify``: a PNG with garbage pixel data but valid chunk checksums passes
    ``verify`` and would fail only in the middle of training, without naming its record. An image over the pixel
    budget (a decompression bomb) is refused from its header, before decoding."""
    try:
        st = path.stat()
    except OSError:
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    return _decode_problem(str(path.resolve()), st.st_size, st.st_mtime_ns)


# Keyed by (resolved path, size, mtime): steps validate the same images again and again (annotate, sft and grpo in one
# pipeline process; the data build's self-check), and a changed file is decoded again.
@functools.lru_cache(maxsize=1 << 18)
def _decode_problem(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        with open_bounded(path) as im:
            im.load()
    except PixelBudgetError as e:
        return str(e)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as e:
        return f"is not a readable image ({type(e).__name__}: {e})"
    return None


def _side_texts(rec: dict) -> list[tuple[str, str]]:
    """ume_sft: one input per side, its turns as the model reads them together."""
    return [(f"{side}.conversations", "".join(t["value"] for t in rec[side]["conversations"]))
            for side in ("qry", "pos")]


def _neg_texts(rec: dict) -> list[str]:
    neg = rec.get("neg_text") or []
    return [neg] if isinstance(neg, str) else neg


# The texts of a (validated) record that a model reads, as (field, text), for the token budget.
TEXTS: dict[str, Callable[[dict], list[tuple[str, str]]]] = {
    "mmeb_train": lambda r: [("qry", r["qry"]), ("pos_text", r["pos_text"])]
                            + [("neg_text", t) for t in _neg_texts(r)],
    "ume_sft": _side_texts,
    "ume_rl": lambda r: [("qry_text", r["qry_text"]), ("pos_text", r["pos_text"])],
    "mmeb_image_task": lambda r: [("qry_text", r["qry_inst"] + " " + r["qry_text"])]
                                 + [("tgt_text", r["tgt_inst"] + " " + t) for t in r["tgt_text"]],
    "mmeb_video_cls": lambda r: [("pos_text", r["pos_text"])],
}


def _check_frames(folder: Path) -> str | None:
    if not folder.is_dir():
        return "has no frame folder"
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        return "has an empty frame folder"
    for frame in frames:
        try:
            path_inside(folder, frame.name)  # a frame symlinked to a file elsewhere leaves the data root too
        except OutsideRoot as e:
            return f"frame {frame.name}: {e}"
        if reason := image_problem(frame):
            return f"frame {frame.name} {reason}"
    return None


def load_records(path: str | os.PathLike, kind: str, media_root: str | os.PathLike | None = None,
                 on_bad_record: str | BadRecordCounter = "error",
                 budget: TextBudget | None = None) -> tuple[list[dict], BadRecordCounter]:
    """Read and validate a JSONL file of records of ``kind``; return ``(records, counter)``.

    With ``media_root`` every referenced image must lie inside it (no absolute path, no ``..`` out of it, no
    symlink that resolves outside it: ``storage.path_inside``), exist and decode (video frame folders must hold
    decodable frames), within the pixel budget. With ``budget`` every text a model reads must fit its token budget
    (``TEXTS``). Each returned record gets ``_line`` (its line number) so later errors can point back to the file.
    ``on_bad_record="error"`` raises the first ``RecordError``; ``"skip"`` (or a shared counter) counts bad records
    and returns the rest.
    """
    if kind not in VALIDATORS:
        raise ValueError(f"unknown record kind {kind!r} (known: {', '.join(VALIDATORS)})")
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, None, "file does not exist")
    counter = on_bad_record if isinstance(on_bad_record, BadRecordCounter) else BadRecordCounter(on_bad_record)
    validate = VALIDATORS[kind]
    root = Path(media_root) if media_root is not None else None
    media_status: dict[str, str | None] = {}  # retrieval tasks name the same image many times: check each once
    records = []
    for lineno, rec in iter_jsonl_lenient(path):
        if isinstance(rec, RecordError):
            counter.handle(rec)
            continue
        try:
            media = validate(rec)
            if root is not None:
                for field, rel, is_dir in media:
                    if rel not in media_status:
                        try:
                            target = path_inside(root, rel)
                        except OutsideRoot as e:
                            media_status[rel] = str(e)
                        else:
                            status = _check_frames(target) if is_dir else image_problem(target)
                            media_status[rel] = status and f"{rel} {status} under {root}"
                    if media_status[rel]:
                        raise FieldError(field, media_status[rel])
            if budget is not None:
                for field, text in TEXTS[kind](rec):
                    if reason := budget.check(text):
                        raise FieldError(field, f"text {reason}")
        except FieldError as e:
            counter.handle(RecordError(path, lineno, e.field, e.reason))
            continue
        rec["_line"] = lineno
        records.append(rec)
    return records, counter


__all__ = ["load_records", "image_problem", "VALIDATORS", "TEXTS", "FieldError", "IMAGE_SUFFIXES"]
