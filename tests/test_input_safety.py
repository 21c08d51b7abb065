"""Hostile but fair inputs (issue #14 items 3, 7, 8 and the record/media weak items): media paths outside the data
root, over-long texts, decompression bombs, undecodable pixels, non-UTF-8 lines, empty files, stale embed sidecars.

Each bad input must stop a step with exit 2 and one line naming the file, line and field (or be skipped and counted
under ``--on-bad-record skip``), before any training or embedding starts, and leave no output that looks complete.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umeflow.cli import main
from umeflow.data.schemas import load_records
from umeflow.errors import RecordError, UserError
from umeflow.model.chat import GENERATION_PROMPT
from umeflow.model.inputs import open_image
from umeflow.steps.embed import read_items
from umeflow.train.sft_data import load_sft_pairs

LONG_TEXT = "many words " * 100_000  # ~1.1 MB: far over the default budget of 8,192 tokens


# ------------------------------------------------------------------------------------------------------ helpers

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, idat: bytes, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG with the given header and pixel stream, every chunk checksum correct."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def write_bomb(path: Path, side: int) -> Path:
    """A real decompression bomb: a black 1-bit side×side PNG (a few KB on disk, side² pixels decoded)."""
    rows = b"\x00" * ((side + 7) // 8 + 1) * side  # filter byte + packed bits, per row
    path.write_bytes(png_bytes(side, side, zlib.compress(rows, 1), bit_depth=1, colour_type=0))
    return path


def write_garbage_pixels(path: Path) -> Path:
    """A 56×56 RGB PNG whose pixel stream is random bytes: every CRC is right, so ``verify()`` passes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(56, 56, np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()))
    return path


def write_pairs(data: Path, records: list[dict]) -> Path:
    """An ``umeflow data build``-style folder (train/pairs.jsonl + images) holding ``records``."""
    train = data / "train"
    (train / "images").mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (28, 28), rgb).save(train / "images" / f"{i}.png")
    (train / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return data


def pair(image: str = "images/0.png", qry: str = "<|image_1|> Represent the image", pos: str = "red") -> dict:
    return {"qry": qry, "qry_image_path": image, "pos_text": pos, "pos_image_path": "", "dataset_name": "Colours"}


def sft_record(image: str = "images/0.png", text: str = "red") -> dict:
    human_q = f"<image>\nRepresent the given image\n<disc_emb>\n{GENERATION_PROMPT}"
    human_t = f"{text}\n<disc_emb>\n{GENERATION_PROMPT}"
    gpt = "<think>A square.</think><answer>red<gen_emb>"
    return {"dataset_name": "Colours",
            "qry": {"conversations": [{"from": "human", "value": human_q}, {"from": "gpt", "value": gpt}],
                    "image": image},
            "pos": {"conversations": [{"from": "human", "value": human_t}, {"from": "gpt", "value": gpt}]}}


def write_sft(root: Path, records: list[dict] | None = None, raw: bytes | None = None) -> Path:
    """An annotate-style output (sft.jsonl + manifest.json) whose media root is ``root/train``."""
    train = root / "train" / "images"
    train.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (28, 28), (200, 30, 30)).save(train / "0.png")
    data = root / "annotate"
    data.mkdir(exist_ok=True)
    if raw is None:
        raw = "".join(json.dumps(r) + "\n" for r in records or []).encode()
    (data / "sft.jsonl").write_bytes(raw)
    (data / "manifest.json").write_text(json.dumps({"media_root": str(root / "train")}))
    return data


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err and "Warning" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ item 3: paths outside the root

def _outside_variants(tmp_path: Path, root: Path) -> dict[str, str]:
    """Three ways a record can name a file outside ``root``: climbing, absolute, a symlink inside that leads out."""
    outside = tmp_path / "outside.png"
    Image.new("RGB", (28, 28), (1, 2, 3)).save(outside)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "link.png").symlink_to(outside)
    return {"climbs": os.path.relpath(outside, root), "absolute": str(outside), "symlink": "images/link.png"}


@pytest.mark.parametrize("variant", ["climbs", "absolute", "symlink"])
def test_annotate_refuses_media_outside_the_data_root(tmp_path, capsys, variant):
    data = tmp_path / "data"
    rel = _outside_variants(tmp_path, data / "train")[variant]
    write_pairs(data, [pair(), pair(image=rel)])
    out = tmp_path / "ann"
    rc, err = run_cli(["annotate", "--data", str(data), "--out", str(out)], capsys)
    line = one_line_error(err)
    assert rc == 2 and "pairs.jsonl:2: field 'qry_image_path'" in line and "the data root" in line
    assert not out.exists()
    # skip mode counts it and annotates the rest; the outside file never reaches sft.jsonl
    rc, _ = run_cli(["annotate", "--data", str(data), "--out", str(out), "--on-bad-record", "skip"], capsys)
    assert rc == 0
    assert json.loads((out / "metrics.json").read_text())["bad_records_skipped"] == 1
    assert "outside" not in (out / "sft.jsonl").read_text() and "link.png" not in (out / "sft.jsonl").read_text()


@pytest.mark.parametrize("variant", ["climbs", "absolute", "symlink"])
def test_sft_refuses_media_outside_the_data_root_before_training(tmp_path, capsys, variant):
    rel = _outside_variants(tmp_path, tmp_path / "train")[variant]
    data = write_sft(tmp_path, [sft_record(), sft_record(image=rel)])
    out = tmp_path / "sft"
    # no model is needed to reach the refusal: it comes before anything loads or trains
    rc, err = run_cli(["sft", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(out)], capsys)
    line = one_line_error(err)
    assert rc == 2 and "sft.jsonl:2: field 'qry.image'" in line and "the data root" in line
    assert not (out / "model").exists()


def test_grpo_pairs_outside_the_data_root_are_record_errors(tmp_path):
    from umeflow.train.grpo_data import load_rl_pairs

    data = tmp_path / "data"
    rel = _outside_variants(tmp_path, data / "train")["climbs"]
    write_pairs(data, [pair(), pair(image=rel)])
    with pytest.raises(RecordError) as err:
        load_rl_pairs(data / "train")
    assert (err.value.line, err.value.field) == (2, "qry_image_path")
    pairs, info = load_rl_pairs(data / "train", "skip")
    assert len(pairs) == 1 and info["bad_records_skipped"] == 1


def test_embed_items_stay_in_the_media_root_unless_allowed(tmp_path):
    items_dir = tmp_path / "items"
    variants = _outside_variants(tmp_path, items_dir)
    Image.new("RGB", (28, 28), (9, 9, 9)).save(items_dir / "in.png")
    for variant, rel in variants.items():
        path = items_dir / f"{variant}.jsonl"
        path.write_text(json.dumps({"text": "ok", "image": "in.png"}) + "\n" + json.dumps({"image": rel}) + "\n")
        with pytest.raises(RecordError, match="--allow-any-path") as err:
            read_items(path)
        assert (err.value.line, err.value.field) == (2, "image")
        items = read_items(path, allow_any_path=True)  # the explicit opt-in: the user's own files
        assert Path(items[1].images[0]).resolve() == (tmp_path / "outside.png").resolve()
    # --media-root moves the root: the same outside file is inside a root one level up
    path = items_dir / "climbs.jsonl"
    path.write_text(json.dumps({"image": "outside.png"}) + "\n")
    assert Path(read_items(path, media_root=tmp_path)[0].images[0]) == tmp_path / "outside.png"
    with pytest.raises(RecordError, match="does not exist"):
        read_items(path)


# ------------------------------------------------------------------------------------ item 7: unbounded input

def test_text_budget_counts_only_what_it_must(tiny_model_dir):
    """Short texts are never tokenized (bytes bound tokens); a 1 MB text is refused from a window of it."""
    from transformers import AutoTokenizer

    from umeflow.model.items import TextBudget

    real = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    seen: list[int] = []

    def spy(text, **kw):  # the real tokenizer, recording how much text it was handed
        seen.append(len(text))
        return real(text, **kw)

    budget = TextBudget(100, spy)
    assert budget.check("a short caption") is None and seen == []
    assert budget.check("word " * 90) is None  # 450 bytes: counted, 90 tokens fit
    reason = budget.check(LONG_TEXT)
    assert reason.startswith("has more than ") and "over max_input_tokens=100" in reason
    assert max(seen) <= 100 * TextBudget.WINDOW_CHARS_PER_TOKEN
    exact = TextBudget(100, real).check(" ".join(["word"] * 150))
    assert exact == "has 150 tokens, over max_input_tokens=100"
    assert TextBudget(0, spy).check(LONG_TEXT) is None  # 0 = no limit
    with pytest.raises(UserError, match="max_input_tokens"):
        TextBudget(-1)


def test_embed_refuses_an_over_long_text_by_line_before_embedding(tmp_path, tiny_model_dir, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": LONG_TEXT}) + "\n")
    out = tmp_path / "e.npy"
    rc, err = run_cli(["embed", "--model", str(tiny_model_dir), "--input", str(items), "--mode", "gen",
                       "--out", str(out)], capsys)
    line = one_line_error(err)
    assert rc == 2 and "items.jsonl:2: field 'text'" in line and "over max_input_tokens=8,192" in line
    assert not out.exists()


def test_sft_over_long_record_is_refused_or_skipped_and_counted(tmp_path, tiny_model_dir, capsys):
    from umeflow.model.items import TextBudget

    data = write_sft(tmp_path, [sft_record(), sft_record(text=LONG_TEXT), sft_record()])
    rc, err = run_cli(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "o")],
                      capsys)
    line = one_line_error(err)
    assert rc == 2 and "sft.jsonl:2: field 'pos.conversations'" in line and "over max_input_tokens=8,192" in line
    pairs, counter = load_sft_pairs(data / "sft.jsonl", tmp_path / "train", "skip",
                                    TextBudget(8192, tiny_model_dir))
    assert len(pairs) == 2 and counter.count == 1 and counter.skipped[0].line == 2


def _eval_root(root: Path, query_text: str) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, rgb in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (28, 28), rgb).save(root / "images" / f"{i}.png")
        rows.append({"qry_inst": "Represent the image", "qry_text": query_text if i else "",
                     "qry_img_path": f"{i}.png", "tgt_inst": "", "tgt_text": ["red", "green"],
                     "tgt_img_path": ["", ""]})
    (root / "Colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps([dict(name="Colors", modality="image", category="I-CLS",
                                                      eval_type="local", file="Colors.jsonl", media_root="images",
                                                      num_queries=2)]))
    return root


def test_evaluate_refuses_an_over_long_row_by_file_line_and_task(tmp_path, tiny_model_dir, capsys):
    root = _eval_root(tmp_path / "data", LONG_TEXT)
    out = tmp_path / "eval"
    rc, err = run_cli(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(root), "--mode", "disc",
                       "--out", str(out), "--cache-dir", ""], capsys)
    line = one_line_error(err)
    assert rc == 2 and "Colors.jsonl:2: task Colors: the query text" in line and "over max_input_tokens=8,192" in line
    assert not out.exists()


# ------------------------------------------------------------------------- pixel budget and full decoding

@pytest.mark.parametrize("side", [10_000, 14_000])  # PIL warns between its limit and twice it, raises above
def test_decompression_bomb_is_refused_by_name_and_pixel_count(tmp_path, side):
    bomb = write_bomb(tmp_path / "bomb.png", side)
    with pytest.raises(UserError) as err:
        open_image(bomb)
    assert str(bomb) in str(err.value) and f"{side * side:,} pixels" in str(err.value)
    assert "89,478,485" in str(err.value)


def test_bomb_in_training_pairs_is_a_record_error_and_skipped_in_skip_mode(tmp_path, capsys):
    data = write_pairs(tmp_path / "data", [])
    write_bomb(data / "train" / "images" / "bomb.png", 10_000)  # the range where PIL only warns
    write_pairs(data, [pair(), pair(image="images/bomb.png"), pair(image="images/1.png")])
    out = tmp_path / "ann"
    rc, err = run_cli(["annotate", "--data", str(data), "--out", str(out)], capsys)
    line = one_line_error(err)
    assert rc == 2 and "pairs.jsonl:2: field 'qry_image_path'" in line and "100,000,000 pixels" in line
    rc, _ = run_cli(["annotate", "--data", str(data), "--out", str(out), "--on-bad-record", "skip"], capsys)
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["bad_records_skipped"] == 1
    assert json.loads((out / "metrics.json").read_text())["pairs_kept"] == 2


def test_garbage_pixels_with_valid_checksums_fail_validation_not_training(tmp_path):
    bad = write_garbage_pixels(tmp_path / "train" / "images" / "garbage.png")
    with Image.open(bad) as im:
        im.verify()  # the structure check alone lets it through
    data = write_sft(tmp_path, [sft_record(), sft_record(image="images/garbage.png")])
    with pytest.raises(RecordError) as err:
        load_sft_pairs(data / "sft.jsonl", tmp_path / "train")
    assert (err.value.line, err.value.field) == (2, "qry.image") and "not a readable image" in err.value.reason
    items = tmp_path / "train" / "items.jsonl"
    items.write_text(json.dumps({"image": "images/garbage.png"}) + "\n")
    with pytest.raises(RecordError, match="not a readable image"):
        read_items(items)


# ------------------------------------------------------------------------------------- weak: files and lines

def test_non_utf8_line_is_named_by_its_line_in_every_step(tmp_path, capsys):
    bad_line = b'{"text": "caf\xe9"}\n'
    # sft
    data = write_sft(tmp_path, raw=(json.dumps(sft_record()) + "\n").encode() + bad_line)
    rc, err = run_cli(["sft", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "o")],
                      capsys)
    assert rc == 2 and "sft.jsonl:2:" in one_line_error(err) and "not valid UTF-8" in err
    # embed (before any model loads)
    items = tmp_path / "items.jsonl"
    items.write_bytes(b'{"text": "fine"}\n' + bad_line)
    rc, err = run_cli(["embed", "--model", str(tmp_path / "m"), "--input", str(items), "--out",
                       str(tmp_path / "e.npy")], capsys)
    assert rc == 2 and "items.jsonl:2:" in one_line_error(err) and "byte 0xe9" in err
    # annotate, and its skip mode counts the line
    pairs_data = write_pairs(tmp_path / "data", [pair()])
    pairs_file = pairs_data / "train" / "pairs.jsonl"
    pairs_file.write_bytes(pairs_file.read_bytes() + bad_line + (json.dumps(pair()) + "\n").encode())
    rc, err = run_cli(["annotate", "--data", str(pairs_data), "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "pairs.jsonl:2:" in one_line_error(err)
    records, counter = load_records(pairs_file, "mmeb_train", pairs_data / "train", "skip")
    assert [r["_line"] for r in records] == [1, 3] and counter.count == 1


def test_evaluate_names_the_non_utf8_line(tmp_path, tiny_model_dir, capsys):
    root = _eval_root(tmp_path / "data", "fine")
    rows = root / "Colors.jsonl"
    rows.write_bytes(rows.read_bytes().replace(b"fine", b"caf\xe9"))
    rc, err = run_cli(["evaluate", "--model", str(tiny_model_dir), "--data-root", str(root), "--mode", "disc",
                       "--out", str(tmp_path / "eval"), "--cache-dir", ""], capsys)
    assert rc == 2 and "Colors.jsonl:2:" in one_line_error(err) and "not valid UTF-8" in err


def test_empty_sft_file_says_it_has_no_records(tmp_path, capsys):
    data = write_sft(tmp_path, [])
    rc, err = run_cli(["sft", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "o"),
                       "--set", "dataset_repeats={Colours: 2}"], capsys)
    line = one_line_error(err)
    assert rc == 2 and "sft.jsonl holds no records" in line and "dataset_repeats" not in line


def test_embed_refuses_an_empty_video_list(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "a clip", "video": []}) + "\n")
    with pytest.raises(RecordError) as err:
        read_items(items)
    assert (err.value.line, err.value.field) == (1, "video")


# --------------------------------------------------------------------------------- item 8: stale sidecars

def test_embed_publishes_one_runs_outputs_and_removes_stale_sidecars(tmp_path, tiny_model_dir):
    Image.new("RGB", (28, 28), (200, 30, 30)).save(tmp_path / "r.png")
    many, few = tmp_path / "many.jsonl", tmp_path / "few.jsonl"
    many.write_text("".join(json.dumps({"text": f"item {i}", "image": "r.png"}) + "\n" for i in range(3)))
    few.write_text(json.dumps({"text": "one item"}) + "\n")
    out = tmp_path / "out" / "x.npy"
    base = ["embed", "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "2"]
    assert main(base + ["--input", str(many), "--mode", "gen"]) == 0
    texts = tmp_path / "out" / "x.texts.jsonl"
    assert len(texts.read_text().splitlines()) == 3
    assert main(base + ["--input", str(few), "--mode", "disc"]) == 0
    assert np.load(out).shape[0] == 1
    assert not texts.exists()  # the gen run's texts do not describe the new vectors
    assert json.loads((tmp_path / "out" / "x.metrics.json").read_text())["num_items"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.metrics.json", "x.npy", "x.run_info.json"]
