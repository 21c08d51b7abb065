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

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from umeflow.errors import BadRecordCounter, RecordError
from umeflow.io import iter_jsonl_lenient

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


def _check_image(path: Path) -> str | None:
    """None if ``path`` is a readable image, else the reason. ``verify`` checks structure without decoding pixels."""
    if not path.is_file():
        return "does not exist"
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return f"is not a readable image ({type(e).__name__}: {e})"
    return None


def _check_frames(folder: Path) -> str | None:
    if not folder.is_dir():
        return "has no frame folder"
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        return "has an empty frame folder"
    for frame in frames:
        if reason := _check_image(frame):
            return f"frame {frame.name} {reason}"
    return None


def load_records(path: str | os.PathLike, kind: str, media_root: str | os.PathLike | None = None,
                 on_bad_record: str | BadRecordCounter = "error") -> tuple[list[dict], BadRecordCounter]:
    """Read and validate a JSONL file of records of ``kind``; return ``(records, counter)``.

    With ``media_root`` every referenced image must exist under it and be a readable image (video frame folders
    must hold readable frames). Each returned record gets ``_line`` (its line number) so later errors can point
    back to the file. ``on_bad_record="error"`` raises the first ``RecordError``; ``"skip"`` (or a shared counter)
    counts bad records and returns the rest.
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
                        target = root / rel
                        media_status[rel] = _check_frames(target) if is_dir else _check_image(target)
                    if media_status[rel]:
                        raise FieldError(field, f"{rel} {media_status[rel]} under {root}")
        except FieldError as e:
            counter.handle(RecordError(path, lineno, e.field, e.reason))
            continue
        rec["_line"] = lineno
        records.append(rec)
    return records, counter


__all__ = ["load_records", "VALIDATORS", "FieldError", "IMAGE_SUFFIXES"]
