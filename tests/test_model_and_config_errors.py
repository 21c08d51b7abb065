"""Bad models, recipes, assets and output folders (issue #14, "Weak"): each stops with exit 2 and one line on stderr
that names the file or key at fault, no traceback, and before the step does its work.

Every case runs ``umeflow.cli.main`` in process. Inputs that the case is not about point at paths that do not
exist, so the check under test must come first for the named file/key to show up in the message.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from umeflow.cli import main


def run_cli(capsys, *argv: str) -> str:
    """Run the CLI, assert the one-line exit-2 contract, return that line."""
    capsys.readouterr()  # drop what earlier fixtures printed
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"umeflow {argv[0]}: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------------- models

def _model_copy(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the checkpoint folder without ``skip``; small files copied, the weights linked (read-only use)."""
    dest.mkdir()
    for f in src.iterdir():
        if f.name in skip:
            continue
        if f.suffix == ".safetensors":
            os.symlink(f, dest / f.name)
        else:
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture
def items_file(tmp_path) -> Path:
    p = tmp_path / "items.jsonl"
    p.write_text('{"text": "a red shoe"}\n')
    return p


def _embed(capsys, model: Path, items: Path, tmp_path: Path) -> str:
    return run_cli(capsys, "embed", "--model", str(model), "--input", str(items), "--out", str(tmp_path / "e.npy"))


def test_model_without_weights(capsys, tiny_model_dir, items_file, tmp_path):
    model = _model_copy(tiny_model_dir, tmp_path / "noweights", skip=("model.safetensors",))
    line = _embed(capsys, model, items_file, tmp_path)
    assert str(model) in line and "no weights" in line


def test_truncated_safetensors(capsys, tiny_model_dir, items_file, tmp_path):
    model = _model_copy(tiny_model_dir, tmp_path / "truncated", skip=("model.safetensors",))
    data = (tiny_model_dir / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])  # as a copy killed half way
    line = _embed(capsys, model, items_file, tmp_path)
    assert str(model / "model.safetensors") in line and "not a complete safetensors file" in line


@pytest.fixture(scope="module")
def pickled_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint with its weights as a pickled ``pytorch_model.bin`` (loadable by transformers)."""
    import torch
    from safetensors.torch import load_file

    model = _model_copy(tiny_model_dir, tmp_path_factory.mktemp("pickled") / "model", skip=("model.safetensors",))
    torch.save(load_file(tiny_model_dir / "model.safetensors"), model / "pytorch_model.bin")
    return model


def test_pickled_weights_refused_by_embed(capsys, pickled_model, items_file, tmp_path):
    line = _embed(capsys, pickled_model, items_file, tmp_path)
    assert str(pickled_model) in line and "pytorch_model.bin" in line and "pickle" in line


def test_pickled_weights_refused_by_evaluate(capsys, pickled_model, tmp_path):
    root = tmp_path / "suite"
    root.mkdir()
    (root / "tasks.json").write_text(json.dumps([{"name": "T", "modality": "image", "category": "I-CLS",
                                                  "file": "t.jsonl"}]))
    line = run_cli(capsys, "evaluate", "--model", str(pickled_model), "--data-root", str(root), "--out",
                   str(tmp_path / "eval"), "--cache-dir", "")
    assert str(pickled_model) in line and "pytorch_model.bin" in line and "pickle" in line


@pytest.mark.parametrize("gone", [("tokenizer.json", "tokenizer_config.json"), ("tokenizer.json",)])
def test_missing_tokenizer_files(capsys, tiny_model_dir, items_file, tmp_path, gone):
    model = _model_copy(tiny_model_dir, tmp_path / "notokenizer", skip=gone)
    line = _embed(capsys, model, items_file, tmp_path)
    assert str(model) in line and "tokenizer files missing" in line and "tokenizer.json" in line
    assert "object_ref" not in line  # the old message blamed a token, not the missing files


# ---------------------------------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("text, kind", [("- data\n- sft\n", "list"), ("just a string\n", "string"), ("3\n", "number")])
@pytest.mark.parametrize("step", ["sft", "evaluate", "embed"])
def test_recipe_top_level_not_a_mapping(capsys, tmp_path, text, kind, step):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    line = run_cli(capsys, step, "--config", str(recipe))
    assert str(recipe) in line and "top level must be a mapping" in line and kind in line


@pytest.mark.parametrize("step, key", [
    ("embed", "batch_size"), ("evaluate", "batch_size"), ("evaluate", "cache_chunk_size"),
    ("sft", "per_device_batch_size"), ("sft", "gradient_accumulation_steps"),
    ("grpo", "per_device_batch_size"), ("grpo", "num_generations"), ("grpo", "pairs_per_step"),
    ("register", "batch_size"), ("annotate", "concurrency"),
])
def test_batch_size_zero_refused_at_load(capsys, tmp_path, step, key):
    line = run_cli(capsys, step, "--set", f"{step}.{key}=0", "--out", str(tmp_path / "out"))
    assert f"{step}.{key}=0" in line and "at least 1" in line


def test_batch_size_zero_in_recipe_and_flag(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  per_device_batch_size: 0\n")
    line = run_cli(capsys, "sft", "--config", str(recipe))
    assert str(recipe) in line and "sft.per_device_batch_size=0" in line
    line = run_cli(capsys, "embed", "--batch-size", "-3", "--input", "x.jsonl", "--out", "x.npy")
    assert "--batch-size -3" in line and "embed.batch_size" in line


def test_dataset_repeats_not_a_mapping(capsys):
    line = run_cli(capsys, "sft", "--set", "sft.dataset_repeats=foo")
    assert "sft.dataset_repeats='foo'" in line and "must be a mapping" in line and "{name: 2}" in line
    assert "['f'" not in line


def test_tasks_json_holding_an_object(capsys, tmp_path):
    root = tmp_path / "suite"
    root.mkdir()
    (root / "tasks.json").write_text(json.dumps({"name": "T", "modality": "image", "category": "I-CLS",
                                                 "file": "t.jsonl"}))
    line = run_cli(capsys, "evaluate", "--data-root", str(root), "--model", str(tmp_path / "no-model"),
                   "--out", str(tmp_path / "eval"))
    assert str(root / "tasks.json") in line and "must hold a list of tasks" in line and "[0]" not in line


# ------------------------------------------------------------------------------------------------- data build

def _assets_with(assets_dir: Path, dest: Path, name: str) -> Path:
    """An assets folder linking every asset of ``assets_dir`` except ``name``, which gets an empty tree with the
    right ``.complete`` marker (so it passes the version check) for the test to fill."""
    dest.mkdir()
    for a in assets_dir.iterdir():
        if a.is_dir() and a.name != name:
            os.symlink(a.resolve(), dest / a.name)
    (dest / name).mkdir()
    shutil.copy(assets_dir / name / ".complete", dest / name / ".complete")
    return dest / name


def test_missing_wordnet_index(capsys, assets_dir, tmp_path):
    assets = tmp_path / "assets"
    wordnet = _assets_with(assets_dir, assets, "wordnet") / "usr" / "share" / "wordnet"
    wordnet.mkdir(parents=True)
    for f in (assets_dir / "wordnet" / "usr" / "share" / "wordnet").iterdir():
        if f.name != "index.noun":
            os.symlink(f.resolve(), wordnet / f.name)
    line = run_cli(capsys, "data", "build", "--assets-dir", str(assets), "--out", str(tmp_path / "data"),
                   "--set", "data.tuxpaint_limit=4")
    assert str(wordnet / "index.noun") in line and "umeflow assets fetch" in line
    assert not (tmp_path / "data").exists()


def _stamps_with_loop(assets_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A Tux Paint asset with one real stamp and one whose PNG is a symlink to itself."""
    assets = tmp_path / "assets"
    stamps = _assets_with(assets_dir, assets, "tuxpaint-stamps") / "usr" / "share" / "tuxpaint" / "stamps"
    real = sorted((assets_dir / "tuxpaint-stamps" / "usr" / "share" / "tuxpaint" / "stamps" / "animals" /
                   "birds").glob("*.png"))[0]
    (stamps / "animals").mkdir(parents=True)
    shutil.copy(real, stamps / "animals" / real.name)
    shutil.copy(real.with_suffix(".txt"), stamps / "animals" / real.with_suffix(".txt").name)
    loop = stamps / "animals" / "loop.png"
    os.symlink(loop.name, loop)  # loop.png -> loop.png
    (stamps / "animals" / "loop.txt").write_text("a looping stamp\n")
    return assets, loop


def test_symlink_loop_stamp_fails_in_error_mode(capsys, assets_dir, tmp_path):
    assets, loop = _stamps_with_loop(assets_dir, tmp_path)
    line = run_cli(capsys, "data", "build", "--assets-dir", str(assets), "--out", str(tmp_path / "data"))
    assert str(loop) in line and "symlink loop" in line


def test_symlink_loop_stamp_counted_in_skip_mode(assets_dir, tmp_path):
    from umeflow.data.sources import tuxpaint_stamps
    from umeflow.errors import BadRecordCounter

    assets, loop = _stamps_with_loop(assets_dir, tmp_path)
    counter = BadRecordCounter("skip")
    stamps = tuxpaint_stamps(assets, counter)
    assert [s.stem for s in stamps] != [] and all("loop" not in s.stem for s in stamps)
    assert counter.count == 1 and str(loop) in str(counter.skipped[0])


# --------------------------------------------------------------------------------------------- output folders

def _steps(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    """Each step's command line with ``--out`` at ``out`` and every input missing."""
    missing = str(tmp_path / "missing")
    return {
        "data": ["data", "build", "--out", str(out), "--assets-dir", missing],
        "model": ["model", "init-tiny", "--out", str(out), "--assets-dir", missing],
        "annotate": ["annotate", "--data", missing, "--out", str(out)],
        "sft": ["sft", "--model", missing, "--data", missing, "--out", str(out)],
        "grpo": ["grpo", "--model", missing, "--data", missing, "--out", str(out)],
        "evaluate": ["evaluate", "--model", missing, "--data-root", missing, "--out", str(out), "--cache-dir", ""],
        "embed": ["embed", "--model", missing, "--input", missing, "--out", str(out / "vectors.npy")],
        "register": ["register", "--model", missing, "--eval-dir", missing, "--out", str(out),
                     "--tracking-uri", f"sqlite:///{missing}/mlflow.db"],
        "promote": ["promote", "--out", str(out), "--tracking-uri", f"sqlite:///{missing}/mlflow.db"],
    }


@pytest.mark.parametrize("step", ["data", "model", "annotate", "sft", "grpo", "evaluate", "embed", "register",
                                  "promote"])
def test_output_under_a_file_fails_first(capsys, tmp_path, step):
    """An output location that cannot be created (a file sits where a folder must be): works as root too."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    line = run_cli(capsys, *_steps(tmp_path, blocker / "out")[step])
    assert str(blocker) in line and "not a folder" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a read-only (0555) folder; the 'under a file' test covers root")
@pytest.mark.parametrize("step", ["evaluate", "sft", "embed"])
def test_read_only_output_folder_fails_first(capsys, tmp_path, step):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        line = run_cli(capsys, *_steps(tmp_path, parent / "out")[step])
    finally:
        parent.chmod(0o755)
    assert str(parent) in line and "not writable" in line
