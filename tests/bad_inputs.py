"""The bad-input table of issue #14: each bad input × each step that reads it, run through ``umeflow.cli.main``.

Used by ``tests/test_bad_inputs.py`` (asserts every pair is GOOD) and ``tools/tries_table.py`` (prints the tries
table with GOOD / WEAK / BAD counts). Nothing here depends on pytest, so the tool can import it.

- ``prepare_workspace`` builds one small good workspace: a shadow of the registry assets (symlinks, a handful of
  Tux Paint stamps), a small data build, its annotation, a compact tiny model, an items file for ``embed``, an
  evaluation of the model (for ``register``) and an MLflow store.
- ``CASES`` is the table: a name, the steps it applies to, and a builder that breaks a lazily copied part of the
  workspace for one step (``Env``) and says what the error line must name.
- ``try_case`` runs one (case, step) in-process (the CLI's ``main``), captures stdout, stderr and logging, and
  classifies the outcome:

  GOOD  the expected exit status (2 for a bad input), exactly one ``umeflow <cmd>: error:`` line that names the file
        (and line/field, or the key), no traceback anywhere, nothing left in the step's output looking complete.
  WEAK  it failed, but with a traceback, another exit status, several error lines or a message that does not name
        what is wrong.
  BAD   the bad input was accepted (exit 0), the output of a failed step looks complete, or no result came (hang).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STEPS = ("data", "annotate", "sft", "grpo", "evaluate", "embed", "register", "promote")
RECORD_STEPS = ("annotate", "sft", "grpo", "evaluate", "embed")  # steps that read a JSONL of records
MODEL_STEPS = ("sft", "grpo", "evaluate", "embed", "register")  # steps that load a checkpoint

# A data build of a few dozen pairs and a few queries per task (seconds on 2 cores).
SMALL_BUILD = {"eval_fashion_per_class": 1, "eval_fashion_vqa_per_class": 1, "eval_digits_per_class": 1,
               "eval_retrieval_candidates": 3, "eval_video_segments_per_clip": 1, "train_fashion_per_class": 1,
               "train_fashion_vqa_per_class": 1, "train_mnist_per_class": 1}
N_STAMPS = 30  # Tux Paint stamps copied into the shadow assets
STAMPS_DIR = "usr/share/tuxpaint/stamps"  # inside the tuxpaint-stamps asset
EVAL_TASK = "FashionMNIST-cls"  # the one task `evaluate` scores here: image queries, ten text candidates
EVAL_FILE = "image-tasks/FashionMNIST-cls.jsonl"
EVAL_MEDIA = "image-tasks/images"
REGISTERED_NAME = "badinputs"


# ----------------------------------------------------------------------------------------------------- workspace

@dataclass
class Workspace:
    root: Path
    assets: Path  # shadow of the registry assets: symlinks, plus a small copy of the Tux Paint stamps
    data: Path  # `data build` output: train/pairs.jsonl, eval/tasks.json, ...
    ann: Path  # `annotate` output: sft.jsonl + manifest.json (media_root = data/train)
    model: Path  # compact tiny checkpoint (safetensors)
    items: Path  # folder with items.jsonl for `embed` and the images it names
    eval_dir: Path  # `evaluate` output of `model` (for `register`)
    tracking_uri: str  # MLflow store for `register` / `promote`

    def to_json(self) -> str:
        return json.dumps({k: str(v) for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> Workspace:
        raw = json.loads(text)
        return cls(**{k: (v if k == "tracking_uri" else Path(v)) for k, v in raw.items()})


def shadow_assets(real: Path, dst: Path, skip_wordnet: tuple[str, ...] = ()) -> Path:
    """``dst`` as an assets dir: symlinks to the real assets, except a copy of ``N_STAMPS`` Tux Paint stamps (so a
    build is quick and a case can add a stamp) and, with ``skip_wordnet``, a WordNet folder lacking those files."""
    real = Path(real).resolve()
    dst.mkdir(parents=True)
    for name in ("fashion-mnist", "mnist", "opencv-data", "qwen2-tokenizer"):
        if (real / name).exists():
            (dst / name).symlink_to(real / name)
    if (real / "manifest.lock.json").exists():
        shutil.copy(real / "manifest.lock.json", dst / "manifest.lock.json")
    if skip_wordnet:
        wn = dst / "wordnet"
        shutil.copytree(real / "wordnet", wn, symlinks=True,
                        ignore=lambda d, names: [n for n in names if n in skip_wordnet])
    else:
        (dst / "wordnet").symlink_to(real / "wordnet")
    tux = dst / "tuxpaint-stamps"
    tux.mkdir()
    shutil.copy(real / "tuxpaint-stamps" / ".complete", tux / ".complete")
    src_root = real / "tuxpaint-stamps" / STAMPS_DIR
    copied = 0
    for txt in sorted(src_root.rglob("*.txt")):
        png = txt.with_suffix(".png")
        if not png.is_file() or txt.stem.endswith(("_mirror", "_back")) or len(txt.relative_to(src_root).parts) < 2:
            continue
        folder = tux / STAMPS_DIR / txt.parent.relative_to(src_root)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(txt, folder / txt.name)
        shutil.copy(png, folder / png.name)
        copied += 1
        if copied == N_STAMPS:
            break
    return dst


def _run_main(argv: list[str], cwd: Path) -> None:
    """Run a preparation step (sanitised as a try: own cwd, no tracking server from the environment); a failure
    here means the good workspace is broken, not a case."""
    code, stdout, stderr, logs, _ = run_cli(argv, cwd)
    if code != 0:
        tail = "\n".join((stdout + stderr).splitlines()[-20:] + logs[-10:])
        raise RuntimeError(f"preparing the workspace: `umeflow {' '.join(argv)}` exited {code}:\n{tail}")


def prepare_workspace(root: Path, real_assets: Path, model: Path | None = None) -> Workspace:
    """The good workspace every case starts from (see the module docstring); ``model``: reuse a checkpoint."""
    from PIL import Image

    from umeflow.config import ModelInitConfig
    from umeflow.model.tiny import init_tiny

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    assets = shadow_assets(real_assets, root / "assets")
    data, ann = root / "data", root / "ann"
    _run_main(["data", "build", "--assets-dir", str(assets), "--out", str(data),
               *[a for k, v in SMALL_BUILD.items() for a in ("--set", f"{k}={v}")]], root)
    _run_main(["annotate", "--data", str(data), "--out", str(ann)], root)
    with _quiet():
        if model is None:
            model = init_tiny(ModelInitConfig(out=str(root / "model"), assets_dir=str(real_assets),
                                              tokenizer="compact"))
    items = root / "items"
    items.mkdir()
    Image.new("RGB", (60, 60), (10, 200, 10)).save(items / "g.png")
    Image.new("RGB", (56, 56), (200, 10, 10)).save(items / "r.png")
    rows = [{"text": "only text"}, {"text": "a green square", "image": "g.png"},
            {"text": "a red square", "image": "r.png"}]
    (items / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = Workspace(root=root, assets=assets, data=data, ann=ann, model=Path(model), items=items,
                   eval_dir=root / "eval", tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    _run_main(step_argv("evaluate", ws, ws.eval_dir), root)
    return ws


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def step_argv(step: str, ws: Workspace, out: Path) -> list[str]:
    """The command line that runs ``step`` on the (possibly broken) workspace, cheaply, into ``out``."""
    if step == "data":
        return ["data", "build", "--assets-dir", str(ws.assets), "--out", str(out),
                *[a for k, v in SMALL_BUILD.items() for a in ("--set", f"{k}={v}")]]
    if step == "annotate":
        return ["annotate", "--data", str(ws.data), "--out", str(out)]
    if step == "sft":
        return ["sft", "--model", str(ws.model), "--data", str(ws.ann), "--out", str(out), "--max-steps", "1",
                "--set", "per_device_batch_size=2", "--set", "save_steps=1000", "--set", "logging_steps=1"]
    if step == "grpo":
        return ["grpo", "--model", str(ws.model), "--data", str(ws.data / "train"), "--out", str(out),
                "--max-steps", "1", "--set", "pairs_per_step=2", "--set", "num_generations=2",
                "--set", "per_device_batch_size=8", "--set", "max_completion_length=8", "--set", "save_steps=1000",
                "--set", "single_dataset_steps=false", "--set", "max_pairs=8"]
    if step == "evaluate":
        return ["evaluate", "--model", str(ws.model), "--data-root", str(ws.data / "eval"), "--tasks", EVAL_TASK,
                "--mode", "disc", "--out", str(out), "--cache-dir", "", "--batch-size", "4"]
    if step == "embed":
        return ["embed", "--model", str(ws.model), "--input", str(ws.items / "items.jsonl"), "--mode", "disc",
                "--out", str(out / "emb.npy"), "--batch-size", "2"]
    if step == "register":
        return ["register", "--model", str(ws.model), "--eval-dir", str(ws.eval_dir), "--out", str(out),
                "--tracking-uri", ws.tracking_uri, "--name", REGISTERED_NAME]
    if step == "promote":
        return ["promote", "--name", REGISTERED_NAME, "--tracking-uri", ws.tracking_uri, "--out", str(out)]
    raise ValueError(f"unknown step {step!r}")


# What a finished run of each step leaves; any of these after a failed run is output looking complete.
COMPLETE_MARKERS = {
    "data": ("manifest.json", "metrics.json", "run_info.json", "train/pairs.jsonl"),
    "annotate": ("sft.jsonl", "manifest.json", "metrics.json", "run_info.json"),
    "sft": ("model", "metrics.json", "run_info.json"),
    "grpo": ("model", "metrics.json", "run_info.json"),
    "evaluate": ("summary.json", "report.md", "metrics.json", "run_info.json"),
    "embed": ("emb.npy", "emb.texts.jsonl", "emb.metrics.json", "emb.run_info.json"),
    "register": ("registration.json", "model_card.md", "metrics.json", "run_info.json"),
    "promote": ("decision.json", "metrics.json", "run_info.json"),
}


# ------------------------------------------------------------------------------------------ per-case environment

class Env:
    """One (case, step) try: the workspace with the parts a builder breaks copied first (copy on write), plus what
    the builder adds to the command line and what the error line must (not) say."""

    def __init__(self, ws: Workspace, case_dir: Path, step: str):
        self.base, self.dir, self.step = ws, case_dir, step
        self.ws = dataclasses.replace(ws)
        self.extra: list[str] = []  # appended to the step's command line
        self.expect: list[str] = []  # substrings the error line must contain (file name, :line, field, key)
        self.forbid: list[str] = []  # substrings that would make the message misleading
        self.out: Path = case_dir / "out"
        self.check: Callable[[Path], str | None] | None = None  # exit-0 cases: None when the result is right
        self._owned: set[str] = set()
        case_dir.mkdir(parents=True, exist_ok=True)

    # copy on write: only what a builder changes is copied
    def own_data(self) -> Path:
        if "data" not in self._owned:
            shutil.copytree(self.base.data, self.dir / "data")
            self.ws.data = self.dir / "data"
            self._owned.add("data")
            if "ann" in self._owned:
                self._point_ann_at_data()
        return self.ws.data

    def own_ann(self) -> Path:
        if "ann" not in self._owned:
            shutil.copytree(self.base.ann, self.dir / "ann")
            self.ws.ann = self.dir / "ann"
            self._owned.add("ann")
            self._point_ann_at_data()
        return self.ws.ann

    def _point_ann_at_data(self) -> None:
        manifest = self.ws.ann / "manifest.json"
        doc = json.loads(manifest.read_text())
        doc["media_root"] = str((self.ws.data / "train").resolve())
        manifest.write_text(json.dumps(doc))

    def own_items(self) -> Path:
        if "items" not in self._owned:
            shutil.copytree(self.base.items, self.dir / "items")
            self.ws.items = self.dir / "items"
            self._owned.add("items")
        return self.ws.items

    def own_model(self, name: str, drop: tuple[str, ...] = ()) -> Path:
        """A copy of the good checkpoint in a folder called ``name`` (so messages can be checked for it)."""
        dst = self.dir / name
        shutil.copytree(self.base.model, dst, ignore=lambda d, names: [n for n in names if n in drop])
        self.ws.model = dst
        return dst

    def own_assets(self, skip_wordnet: tuple[str, ...] = ()) -> Path:
        real = Path(os.readlink(self.base.assets / "fashion-mnist")).parent
        self.ws.assets = shadow_assets(real, self.dir / "assets", skip_wordnet)
        return self.ws.assets

    def recipe(self, content) -> None:
        path = self.dir / "recipe.yaml"
        path.write_text(yaml.safe_dump(content) if not isinstance(content, str) else content)
        self.extra += ["--config", str(path)]
        self.expect.append("recipe.yaml")


# ------------------------------------------------------------------------------------------- records per step

@dataclass(frozen=True)
class RecordSpec:
    """Where a step's records live and what their fields are called."""

    file: Callable[[Env], Path]  # the JSONL (after copying what holds it)
    media_root: Callable[[Env], Path]
    text: tuple  # path to a text field inside a record
    image: tuple  # path to the image field
    required: str | None  # a required top-level field (None: the step has none)
    wrong_type: tuple[str, object]  # a field and a value of the wrong type


def _own_pairs(env: Env) -> Path:
    return env.own_data() / "train" / "pairs.jsonl"


def _own_sft(env: Env) -> Path:
    return env.own_ann() / "sft.jsonl"


def _own_eval(env: Env) -> Path:
    return env.own_data() / "eval" / EVAL_FILE


def _own_items(env: Env) -> Path:
    return env.own_items() / "items.jsonl"


RECORDS = {
    "annotate": RecordSpec(_own_pairs, lambda env: env.ws.data / "train", ("qry",), ("qry_image_path",),
                           "pos_text", ("qry", 5)),
    "grpo": RecordSpec(_own_pairs, lambda env: env.ws.data / "train", ("qry",), ("qry_image_path",),
                       "pos_text", ("qry", 5)),
    "sft": RecordSpec(_own_sft, lambda env: env.own_data() / "train", ("qry", "conversations", 0, "value"),
                      ("qry", "image"), "pos", ("qry", "not a side")),
    "evaluate": RecordSpec(_own_eval, lambda env: env.ws.data / "eval" / EVAL_MEDIA, ("qry_text",),
                           ("qry_img_path",), "tgt_text", ("tgt_text", "a string, not a list")),
    "embed": RecordSpec(_own_items, lambda env: env.ws.items, ("text",), ("image",), None, ("text", 5)),
}


def _field_name(path: tuple) -> str:
    """How a loader names a nested field: qry.image, qry.conversations[0].value."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _get_in(rec, path: tuple):
    for part in path:
        rec = rec[part]
    return rec


def _set_in(rec, path: tuple, value) -> None:
    for part in path[:-1]:
        rec = rec[part]
    rec[path[-1]] = value


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _image_line(lines: list[str], spec: RecordSpec) -> int:
    """1-based number of the first record whose image field is set (so changing it changes nothing else)."""
    for i, line in enumerate(lines, 1):
        try:
            if _get_in(json.loads(line), spec.image):
                return i
        except (KeyError, IndexError, TypeError):
            continue
    raise RuntimeError("no record with an image in the good workspace")


def edit_record(env: Env, mutate: Callable[[dict, RecordSpec], None], *, image_line: bool = False,
                field_expected: str | None = None) -> tuple[Path, int]:
    """Apply ``mutate`` to one record of the step's input (line 2, or the first with an image) and expect the error
    line to name the file, that line and ``field_expected``."""
    spec = RECORDS[env.step]
    path = spec.file(env)
    lines = _lines(path)
    n = _image_line(lines, spec) if image_line else 2
    rec = json.loads(lines[n - 1])
    mutate(rec, spec)
    lines[n - 1] = json.dumps(rec)
    _write_lines(path, lines)
    env.expect += [path.name, f":{n}"] + ([field_expected] if field_expected else [])
    return path, n


# --------------------------------------------------------------------------------------------- images

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A PNG (8-bit RGB) with the given size and IDAT payload; every chunk's CRC is valid."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_png(path: Path) -> Path:
    """A decompression bomb: a few hundred bytes declaring 30000 × 30000 pixels (2.7 GB decoded)."""
    path.write_bytes(png_bytes(30000, 30000, zlib.compress(b"\x00" * 4096)))
    return path


def garbage_png(path: Path) -> Path:
    """Structurally valid (``Image.verify`` passes: CRCs are right) but its pixel data is far too short to decode."""
    path.write_bytes(png_bytes(64, 64, zlib.compress(b"\x00\x01\x02" * 7)))
    return path


def good_png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 48), (120, 30, 200)).save(path)
    return path


# ------------------------------------------------------------------------------------------------ builders

def b_non_utf8(env: Env) -> None:
    path = RECORDS[env.step].file(env)
    raw = path.read_bytes().split(b"\n")
    raw[1] = raw[1].replace(b'"', b'"\xff\xfe', 2)  # inside the first string value of line 2
    path.write_bytes(b"\n".join(raw))
    env.expect += [path.name, ":2"]


def b_malformed_json(env: Env) -> None:
    path = RECORDS[env.step].file(env)
    lines = _lines(path)
    lines[1] = lines[1][: len(lines[1]) // 2]
    _write_lines(path, lines)
    env.expect += [path.name, ":2"]


def b_missing_field(env: Env) -> None:
    spec = RECORDS[env.step]
    if spec.required is None:  # embed: an item with neither text nor media
        path = spec.file(env)
        lines = _lines(path)
        lines[1] = json.dumps({"images": []})
        _write_lines(path, lines)
        env.expect += [path.name, ":2", "text"]
        return
    edit_record(env, lambda rec, s: rec.pop(s.required), field_expected=spec.required)


def b_wrong_type(env: Env) -> None:
    key, value = RECORDS[env.step].wrong_type
    edit_record(env, lambda rec, s: rec.__setitem__(key, value), field_expected=key)


def _outside_png(env: Env) -> Path:
    """A readable image outside every data root, so a step that does not contain paths would accept it."""
    return good_png(env.dir / "elsewhere" / "outside.png")


def _set_image(env: Env, value_of: Callable[[Path], str], exists: bool = True) -> None:
    """Point the step's image field at ``value_of(media_root)``; ``exists``: that file is there, so a message saying
    it does not exist misleads (the path is refused for where it points, not for being missing)."""
    spec = RECORDS[env.step]
    if exists:
        env.forbid.append("does not exist")
    field_name = _field_name(spec.image)
    edit_record(env, lambda rec, s: _set_in(rec, s.image, value_of(s.media_root(env))), image_line=True,
                field_expected=field_name)


def b_path_escape(env: Env) -> None:
    outside = _outside_png(env)
    _set_image(env, lambda root: os.path.relpath(outside, root))


def b_absolute_path(env: Env) -> None:
    outside = _outside_png(env)
    _set_image(env, lambda root: str(outside))


def b_symlink_outside(env: Env) -> None:
    outside = _outside_png(env)

    def link(root: Path) -> str:
        (root / "link_outside.png").symlink_to(outside)
        return "link_outside.png"
    _set_image(env, link)


def b_outside_allowed(env: Env) -> None:
    """embed's explicit opt-in: --allow-any-path accepts a user's own file anywhere (exit 0, all items embedded)."""
    b_absolute_path(env)
    env.expect.clear()
    env.extra.append("--allow-any-path")

    def check(out: Path) -> str | None:
        import numpy as np

        n = np.load(out / "emb.npy").shape[0]
        return None if n == 3 else f"{n} embeddings, expected 3"
    env.check = check


def b_missing_image(env: Env) -> None:
    _set_image(env, lambda root: "nope/missing.png", exists=False)


def b_bomb_png(env: Env) -> None:
    if env.step == "data":
        return _bad_stamp(env, "bomb", bomb_png)
    _set_image(env, lambda root: bomb_png(root / "bomb.png").name)
    env.expect[:] = ["bomb.png"]  # the bad file is the PNG itself: naming it is enough (the row may be named too)


def b_garbage_png(env: Env) -> None:
    if env.step == "data":
        return _bad_stamp(env, "garbage", garbage_png)
    _set_image(env, lambda root: garbage_png(root / "garbage.png").name)
    env.expect[:] = ["garbage.png"]


def _bad_stamp(env: Env, name: str, make: Callable[[Path], Path]) -> None:
    """A new captioned Tux Paint stamp whose PNG is broken."""
    folder = env.own_assets() / "tuxpaint-stamps" / STAMPS_DIR / "animals" / "zz_bad"
    folder.mkdir(parents=True, exist_ok=True)
    make(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(f"a {name} stamp\n")
    env.expect.append(f"{name}.png")


def b_bomb_stamp_skipped(env: Env) -> None:
    """--on-bad-record skip: the bomb is counted and the build completes."""
    _bad_stamp(env, "bomb", bomb_png)
    env.expect.clear()
    env.extra += ["--on-bad-record", "skip"]

    def check(out: Path) -> str | None:
        metrics = json.loads((out / "metrics.json").read_text())
        return None if metrics.get("bad_records_skipped") == 1 else f"bad_records_skipped = " \
                                                                   f"{metrics.get('bad_records_skipped')}, expected 1"
    env.check = check


def b_symlink_loop_stamp(env: Env) -> None:
    folder = env.own_assets() / "tuxpaint-stamps" / STAMPS_DIR / "animals" / "zz_bad"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "loop.txt").write_text("a looping stamp\n")
    env.expect.append("loop.png")


def b_wordnet_missing_index(env: Env) -> None:
    env.own_assets(skip_wordnet=("index.noun",))
    env.expect.append("index.noun")


def b_huge_text(env: Env) -> None:
    """One text of 1 MB (about 200k tokens): refused by name before any model work."""
    big = " ".join(f"word{i % 997}" for i in range(130_000))[:1_000_000]
    # appended, so placeholders such as <image> stay where the record had them
    edit_record(env, lambda rec, s: _set_in(rec, s.text, _get_in(rec, s.text) + " " + big))


def b_empty_jsonl(env: Env) -> None:
    path = RECORDS[env.step].file(env)
    path.write_text("")
    env.expect.append(path.name)
    env.forbid += ["dataset_repeats", "fewer than one batch"]
    if env.step == "sft":  # the recipe's repeats used to be checked first and blamed
        env.extra += ["--set", "dataset_repeats={MNIST: 2}"]


def b_missing_input(env: Env) -> None:
    path = RECORDS[env.step].file(env)
    path.unlink()
    env.expect.append(path.name)


def b_recipe_list(env: Env) -> None:
    env.recipe([{"sft": {"max_steps": 1}}])


def b_recipe_scalar(env: Env) -> None:
    env.recipe("just a string\n")


def b_unknown_set_key(env: Env) -> None:
    env.extra += ["--set", "no_such_key=1"]
    env.expect.append("no_such_key")


WRONG_TYPE_KEY = {"register": "max_new_tokens", "promote": "min_overall"}  # the others have `seed`


def b_set_wrong_type(env: Env) -> None:
    key = WRONG_TYPE_KEY.get(env.step, "seed")
    env.extra += ["--set", f"{key}=abc"]
    env.expect.append(key)


def b_batch_size_zero(env: Env) -> None:
    if env.step in ("evaluate", "embed"):
        env.extra += ["--batch-size", "0"]
    else:
        env.extra += ["--set", "per_device_batch_size=0" if env.step in ("sft", "grpo") else "batch_size=0"]
    env.expect.append("batch_size")


def b_repeats_not_a_mapping(env: Env) -> None:
    env.extra += ["--set", "sft.dataset_repeats=foo"]
    env.expect.append("dataset_repeats")
    env.forbid.append("['f', 'o']")


def b_tasks_json_object(env: Env) -> None:
    path = env.own_data() / "eval" / "tasks.json"
    tasks = json.loads(path.read_text())
    path.write_text(json.dumps({"tasks": tasks}))
    env.expect.append("tasks.json")
    env.forbid.append("[0].")


def b_model_no_weights(env: Env) -> None:
    env.own_model("model_noweights", drop=("model.safetensors",))
    env.expect.append("model_noweights")


def b_model_truncated(env: Env) -> None:
    weights = env.own_model("model_truncated") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    env.expect += ["model_truncated", "model.safetensors"]


def b_model_pickled(env: Env) -> None:
    """The checkpoint as ``pytorch_model.bin`` (a pickle, what torch.save writes) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    folder = env.own_model("model_pickled", drop=("model.safetensors",))
    torch.save(load_file(str(env.base.model / "model.safetensors")), folder / "pytorch_model.bin")
    env.expect.append("model_pickled")


def b_model_no_tokenizer(env: Env) -> None:
    env.own_model("model_notokenizer", drop=("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                             "merges.txt", "special_tokens_map.json", "added_tokens.json"))
    env.expect.append("model_notokenizer")
    env.forbid.append("tokenizer lacks")


def b_unwritable_out(env: Env) -> None:
    """The output under a regular file: unwritable even as root."""
    blocker = env.dir / "a_regular_file"
    blocker.write_text("not a folder\n")
    env.out = blocker / "out"
    env.expect.append("a_regular_file")


def b_truncated_cache_part(env: Env) -> None:
    """An embedding cache whose parts were cut short (a full disk, a killed copy): ignored with a warning and
    re-embedded, so the run completes (exit 0)."""
    cache = env.dir / "cache"
    code, *_ = run_cli(step_argv("evaluate", env.ws, env.dir / "warm") + ["--cache-dir", str(cache)], env.dir)
    parts = sorted(cache.rglob("part-*.npz"))
    if code != 0 or not parts:
        raise RuntimeError(f"warming the embedding cache failed (exit {code}, {len(parts)} parts)")
    for part in parts:
        data = part.read_bytes()
        part.write_bytes(data[: len(data) // 2])
    env.extra += ["--cache-dir", str(cache)]  # the last --cache-dir wins over step_argv's ''

    def check(out: Path) -> str | None:
        calls = json.loads((out / "summary.json").read_text())["embedding_calls"]
        return None if calls > 0 else "nothing re-embedded: the truncated parts were used"
    env.check = check


def b_embed_empty_video(env: Env) -> None:
    path = env.own_items() / "items.jsonl"
    lines = _lines(path)
    lines[0] = json.dumps({"text": "a clip", "video": []})
    _write_lines(path, lines)
    env.expect += [path.name, ":1", "video"]


# ------------------------------------------------------------------------------------------------------ table

@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[str, ...]
    build: Callable[[Env], None]
    area: str  # the part of the code (issue #14 work package) that owns the behaviour
    expect_exit: int = 2
    isolate: bool = False  # run in a child process with a timeout (the unfixed behaviour can run for minutes)


CASES: list[Case] = [
    Case("non-UTF-8 bytes in a JSONL", RECORD_STEPS, b_non_utf8, "records"),
    Case("malformed JSON line", RECORD_STEPS, b_malformed_json, "records"),
    Case("record missing a field", RECORD_STEPS, b_missing_field, "records"),
    Case("wrong-type field", RECORD_STEPS, b_wrong_type, "records"),
    Case("input JSONL missing", RECORD_STEPS, b_missing_input, "records"),
    Case("empty JSONL", RECORD_STEPS, b_empty_jsonl, "records"),
    Case("path escaping the root ../../x.png", RECORD_STEPS, b_path_escape, "paths"),
    Case("absolute media path", RECORD_STEPS, b_absolute_path, "paths"),
    Case("symlink pointing outside the root", RECORD_STEPS, b_symlink_outside, "paths"),
    Case("absolute path with --allow-any-path (accepted, exit 0)", ("embed",), b_outside_allowed, "paths",
         expect_exit=0),
    Case("missing image", RECORD_STEPS, b_missing_image, "media"),
    Case("decompression-bomb PNG (30000x30000)", ("data",) + RECORD_STEPS, b_bomb_png, "media"),
    Case("garbage-pixel PNG, valid CRCs", ("data",) + RECORD_STEPS, b_garbage_png, "media"),
    Case("bomb stamp with --on-bad-record skip (counted, exit 0)", ("data",), b_bomb_stamp_skipped, "media",
         expect_exit=0),
    Case("symlink-loop stamp", ("data",), b_symlink_loop_stamp, "media"),
    Case("WordNet index.noun missing", ("data",), b_wordnet_missing_index, "media"),
    Case("1 MB text item", ("sft", "grpo", "evaluate", "embed"), b_huge_text, "token budget", isolate=True),
    Case("recipe top level is a list", STEPS, b_recipe_list, "recipes"),
    Case("recipe top level is a scalar", STEPS, b_recipe_scalar, "recipes"),
    Case("unknown --set key", STEPS, b_unknown_set_key, "recipes"),
    Case("--set value of the wrong type", STEPS, b_set_wrong_type, "recipes"),
    Case("batch size 0", ("sft", "grpo", "evaluate", "embed", "register"), b_batch_size_zero, "recipes"),
    Case("--set sft.dataset_repeats=foo", ("sft",), b_repeats_not_a_mapping, "recipes"),
    Case("tasks.json holding an object", ("evaluate",), b_tasks_json_object, "tasks.json"),
    Case("model folder without weights", MODEL_STEPS, b_model_no_weights, "model folder"),
    Case("truncated safetensors", MODEL_STEPS, b_model_truncated, "model folder"),
    Case("pickled pytorch_model.bin", MODEL_STEPS, b_model_pickled, "model folder"),
    Case("tokenizer files missing", MODEL_STEPS, b_model_no_tokenizer, "model folder"),
    # not promote: without a registered challenger it stops at the registry before its output matters
    Case("output folder unwritable (under a file)", STEPS[:-1], b_unwritable_out, "read-only out"),
    Case('"video": [] in an embed item', ("embed",), b_embed_empty_video, "records"),
    Case("truncated embedding-cache parts (ignored, exit 0)", ("evaluate",), b_truncated_cache_part, "caches",
         expect_exit=0),
]


def pairs(cases: list[Case] = CASES) -> list[tuple[Case, str]]:
    return [(c, s) for c in cases for s in c.steps]


def pair_id(case: Case, step: str) -> str:
    """``step-short_case_name``: usable as a pytest id and with ``-k``."""
    return f"{step}-" + "_".join(re.findall(r"[a-z0-9]+", case.name.lower()))


# ----------------------------------------------------------------------------------------------------- running

@dataclass
class Outcome:
    exit_code: int | None  # None: no result (timed out)
    stderr_lines: list[str]
    first_line: str
    traceback: bool
    names_file: bool
    leftovers: list[str]
    verdict: str = ""
    reason: str = ""
    seconds: float = 0.0
    output: str = field(default="", repr=False)  # everything captured, for a failing assertion's message

    def explain(self) -> str:
        tail = "\n".join(self.output.splitlines()[-40:])
        return (f"{self.verdict}: {self.reason}\nexit {self.exit_code}; first line: {self.first_line}\n"
                f"leftovers: {self.leftovers}\n--- captured output (tail) ---\n{tail}")


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a broken log call must not hide the step's own outcome
            self.lines.append(f"(unformattable log record from {record.name})")


_PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar: stderr noise, never the first line worth reporting


def _is_error_line(line: str) -> bool:
    return line.startswith("umeflow ") and ": error:" in line


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str, list[str], bool]:
    """``main(argv)`` in-process: (exit code, stdout, stderr, log lines, traceback escaped)."""
    import traceback

    from umeflow.cli import main

    out, err, cap = io.StringIO(), io.StringIO(), _Capture()
    root = logging.getLogger()
    old_level, old_cwd = root.level, os.getcwd()
    old_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "UMEFLOW_STATE", "MLFLOW_RUN_ID")}
    root.addHandler(cap)  # also makes main's logging.basicConfig a no-op, so no handler outlives the call
    root.setLevel(logging.INFO)
    escaped = False
    os.chdir(cwd)  # stray relative defaults (state/...) land in the case folder, never in the checkout
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["UMEFLOW_STATE"] = str(cwd / "state")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
                code = 0 if code is None else int(code)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what Python would print and exit 1 with
                escaped = True
                err.write(traceback.format_exc())
                code = 1
    finally:
        os.chdir(old_cwd)
        root.removeHandler(cap)
        root.setLevel(old_level)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _end_mlflow_runs()
    return code, out.getvalue(), err.getvalue(), cap.lines, escaped


def _end_mlflow_runs() -> None:
    """A step that died inside an MLflow run must not leave it active for the next try."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")


def classify(case: Case, env: Env, code: int | None, stdout: str, stderr: str, logs: list[str],
             escaped: bool, seconds: float) -> Outcome:
    everything = "\n".join([stdout, stderr, *logs])
    stderr_lines = [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not _PROGRESS.search(line)
                    and "\x1b" not in line]
    errors = [line for line in stderr_lines if _is_error_line(line)]
    traceback = escaped or "Traceback (most recent call last)" in everything
    if errors:
        first = errors[0]
    elif traceback:
        exc = [line for line in stderr_lines if line and not line.startswith((" ", "Traceback"))]
        first = exc[-1] if exc else "(traceback)"
    elif code is None:
        first = "(no result: timed out)"
    elif code == 0:
        first = "(exit 0, no error line)"
    else:
        first = stderr_lines[0] if stderr_lines else f"(exit {code}, nothing on stderr)"
    error_line = errors[0] if errors else ""
    names = bool(error_line) and all(s in error_line for s in env.expect)
    misleading = [s for s in env.forbid if s in error_line]
    out = env.out
    leftovers = [m for m in COMPLETE_MARKERS[env.step] if (out / m).exists()] if out.parent.is_dir() else []
    o = Outcome(code, stderr_lines, first, traceback, names and not misleading, leftovers, seconds=seconds,
                output=everything)

    if code is None:
        o.verdict, o.reason = "BAD", "no result (hang)"
    elif case.expect_exit == 0:  # a skip-mode case: the run must complete and count the bad record
        problem = None if code == 0 else f"exit {code}"
        if problem is None and env.check is not None:
            problem = env.check(out)
        if problem is None and traceback:
            problem = "traceback in the output"
        o.verdict = "GOOD" if problem is None else ("BAD" if code == 0 else "WEAK")
        o.reason = problem or "completed and counted"
    elif code == 0:
        o.verdict, o.reason = "BAD", "bad input accepted (exit 0)"
    elif leftovers:
        o.verdict, o.reason = "BAD", f"failed but left complete-looking output: {leftovers}"
    elif traceback:
        o.verdict, o.reason = "WEAK", "traceback"
    elif code != case.expect_exit:
        o.verdict, o.reason = "WEAK", f"exit {code}, expected {case.expect_exit}"
    elif len(errors) != 1:
        o.verdict, o.reason = "WEAK", f"{len(errors)} error lines"
    elif misleading:
        o.verdict, o.reason = "WEAK", f"misleading message (mentions {misleading})"
    elif not names:
        missing = [s for s in env.expect if s not in error_line]
        o.verdict, o.reason = "WEAK", f"message does not name {missing}"
    else:
        o.verdict, o.reason = "GOOD", "one line naming " + ", ".join(env.expect)
    return o


def make_env(case: Case, step: str, ws: Workspace, case_dir: Path) -> tuple[Env, list[str]]:
    env = Env(ws, case_dir, step)
    case.build(env)
    return env, step_argv(step, env.ws, env.out) + env.extra


def try_case(case: Case, step: str, ws: Workspace, case_dir: Path | None = None, isolate: bool | None = None,
             timeout: float = 120.0) -> Outcome:
    """Build the bad input for ``step``, run the step, classify what happened. ``isolate`` (default: the case's
    own flag) runs it in a child process that is killed after ``timeout`` seconds."""
    case_dir = case_dir or _fresh_dir(ws, case, step)
    if case.isolate if isolate is None else isolate:
        return _try_in_child(case, step, ws, case_dir, timeout)
    env, argv = make_env(case, step, ws, case_dir)
    t0 = time.perf_counter()
    code, stdout, stderr, logs, escaped = run_cli(argv, case_dir)
    return classify(case, env, code, stdout, stderr, logs, escaped, time.perf_counter() - t0)


def _fresh_dir(ws: Workspace, case: Case, step: str) -> Path:
    slug = "".join(ch if ch.isalnum() else "_" for ch in f"{step}_{case.name}")[:80]
    d = ws.root / "cases" / slug
    n = 0
    while d.exists():
        n += 1
        d = ws.root / "cases" / f"{slug}_{n}"
    return d


def _try_in_child(case: Case, step: str, ws: Workspace, case_dir: Path, timeout: float) -> Outcome:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", case.name, step, ws.to_json(), str(case_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        o = Outcome(None, [], "(no result: timed out)", False, False, [], seconds=time.perf_counter() - t0)
        o.verdict, o.reason = "BAD", f"no result within {timeout:.0f} s (hang)"
        return o
    marker = "@@OUTCOME@@"
    if marker not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(nothing)"]
        o = Outcome(proc.returncode, [], f"child died: {tail[0]}", True, False, [],
                    seconds=time.perf_counter() - t0, output=proc.stdout + proc.stderr)
        o.verdict, o.reason = "WEAK", f"child process exited {proc.returncode} without a result (killed for memory?)"
        return o
    raw = json.loads(proc.stdout.split(marker, 1)[1])
    return Outcome(**raw)


def case_by_name(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def _child_main(argv: list[str]) -> int:
    """``bad_inputs.py --one CASE STEP WORKSPACE_JSON CASE_DIR``: one try in this process, its Outcome as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name, step, ws_json, case_dir = argv
    outcome = try_case(case_by_name(name), step, Workspace.from_json(ws_json), Path(case_dir), isolate=False)
    sys.stdout.write("@@OUTCOME@@" + json.dumps(dataclasses.asdict(outcome)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        sys.exit(_child_main(sys.argv[2:]))
    sys.exit("usage: bad_inputs.py --one CASE STEP WORKSPACE_JSON CASE_DIR (run by try_case; see tools/tries_table.py)")
