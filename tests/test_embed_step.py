"""``umeflow embed`` end to end, and its input validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from umeflow.cli import main
from umeflow.errors import RecordError
from umeflow.model.embedder import Embedder
from umeflow.steps.embed import read_items


def _items_file(tmp_path):
    Image.new("RGB", (60, 60), (10, 200, 10)).save(tmp_path / "g.png")
    for i in range(3):
        Image.new("RGB", (56, 56), (i * 80, 0, 0)).save(tmp_path / f"f{i}.jpg")
    lines = [{"text": "a green square", "image": "g.png"}, {"text": "only text"},
             {"text": "", "video": ["f0.jpg", "f1.jpg", "f2.jpg"]}]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("mode", ["disc", "gen"])
def test_embed_cli_writes_normalised_embeddings(tmp_path, tiny_model_dir, mode):
    items = _items_file(tmp_path)
    out = tmp_path / "out" / "emb.npy"
    rc = main(["embed", "--model", str(tiny_model_dir), "--input", str(items), "--mode", mode, "--out", str(out),
               "--max-new-tokens", "4"])
    assert rc == 0
    emb = np.load(out)
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    direct = Embedder(tiny_model_dir).encode(read_items(items), mode=mode, max_new_tokens=4)
    np.testing.assert_allclose(emb, direct.embeddings, atol=1e-5)
    texts = tmp_path / "out" / "emb.texts.jsonl"
    assert texts.exists() == (mode == "gen")
    assert json.loads((tmp_path / "out" / "emb.metrics.json").read_text())["num_items"] == 3


def test_embed_input_errors_name_line_and_field(tmp_path):
    path = _items_file(tmp_path)
    path.write_text(path.read_text() + json.dumps({"text": "x", "image": "missing.png"}) + "\n")
    with pytest.raises(RecordError) as err:
        read_items(path)
    assert (err.value.line, err.value.field) == (4, "image")
    path.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(RecordError, match="neither text nor media"):
        read_items(path)


def test_embed_cli_exit_code_on_bad_input(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "items.jsonl"
    path.write_text('{"text": "ok"}\n{broken\n')
    rc = main(["embed", "--model", str(tiny_model_dir), "--input", str(path), "--out", str(tmp_path / "e.npy")])
    assert rc == 2
    assert "items.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()
