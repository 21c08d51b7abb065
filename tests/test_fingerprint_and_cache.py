"""Model fingerprints cover every byte of the weights; damaged cache parts are skipped; concurrent cache writers.

Issue #14: a checkpoint changed only in the middle of its safetensors file (or any ``.bin``) kept the fingerprint of
the model it came from, so ``evaluate`` served that model's cached embeddings and ``register`` accepted its scores.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from umeflow.evaluate import cache as ecache
from umeflow.evaluate.cache import EmbeddingCache, model_fingerprint


@pytest.fixture(autouse=True)
def digest_store(tmp_path, monkeypatch):
    """Each test gets its own on-disk digest store and an empty in-process memo (a fresh process, in effect)."""
    store_dir = tmp_path / "user-cache"
    monkeypatch.setenv("UMEFLOW_CACHE_DIR", str(store_dir))
    monkeypatch.setattr(ecache, "_memo", {}, raising=False)
    return store_dir / "file-digests.json"


def _tensor_span(path, name) -> tuple[int, int]:
    """Byte range of tensor ``name`` inside a safetensors file (8-byte header length, JSON header, data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        begin, end = json.loads(f.read(n))[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def _overwrite_in_place(path, offset: int, data: bytes) -> None:
    """Change bytes without changing the size, then put size and mtime back as they were (``cp -p``/``rsync -t``
    would): only ctime, which no user can set, still tells."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _checkpoint(folder, middle_value: float = 0.5):
    """A 3 MiB safetensors checkpoint: three 1 MiB tensors, the one in the middle filled with ``middle_value``."""
    folder.mkdir(parents=True)
    rows = (1 << 20) // (4 * 256)
    save_file({"a.weight": np.ones((rows, 256), np.float32), "b.weight": np.full((rows, 256), middle_value, np.float32),
               "c.weight": np.zeros((rows, 256), np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "toy"}\n')
    (folder / "tokenizer.json").write_text('{"vocab": {}}\n')
    return folder


def test_a_tensor_changed_in_the_middle_of_the_file_changes_the_fingerprint(tmp_path):
    a = _checkpoint(tmp_path / "a")
    weights = a / "model.safetensors"
    begin, end = _tensor_span(weights, "b.weight")
    assert weights.stat().st_size > 2 << 20 and begin >= 1 << 20 and end <= weights.stat().st_size - (1 << 20)
    b = tmp_path / "b"
    shutil.copytree(a, b)  # copy2: same bytes, same mtimes
    before = model_fingerprint(a)
    assert model_fingerprint(b) == before  # the same checkpoint elsewhere is the same model

    _overwrite_in_place(b / "model.safetensors", begin + 4096, np.full(1024, 2.0, np.float32).tobytes())
    changed = model_fingerprint(b)
    assert changed != before  # and the memo of b's unchanged digest (same path, size, mtime) was not reused
    assert model_fingerprint(a) == before


def test_the_digest_store_is_reused_across_processes_but_not_for_a_touched_file(tmp_path, digest_store,
                                                                                 monkeypatch):
    model = _checkpoint(tmp_path / "m")
    weights = model / "model.safetensors"
    first = model_fingerprint(model)
    stored = json.loads(digest_store.read_text())["files"]
    assert list(stored) == [str(weights)]  # only the big file: small ones are rehashed rather than stored

    hashed = []
    real_sha256 = ecache.sha256_file
    monkeypatch.setattr(ecache, "sha256_file", lambda p: hashed.append(os.path.basename(p)) or real_sha256(p))
    ecache._memo.clear()  # another process: only the store on disk remembers
    assert model_fingerprint(model) == first
    assert "model.safetensors" not in hashed

    begin, _ = _tensor_span(weights, "b.weight")
    _overwrite_in_place(weights, begin, np.full(16, 7.0, np.float32).tobytes())
    ecache._memo.clear()
    assert model_fingerprint(model) != first  # size and mtime match the stored entry; ctime does not
    assert "model.safetensors" in hashed

    # replaced by another file of the same size and mtime: a new inode
    st = weights.stat()
    _checkpoint(tmp_path / "other", middle_value=0.25)
    os.utime(tmp_path / "other" / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "other" / "model.safetensors", weights)
    ecache._memo.clear()
    replaced = model_fingerprint(model)
    assert replaced != first
    assert replaced == model_fingerprint(_copy_with(model, tmp_path / "again"))  # a fresh hash agrees


def _copy_with(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth", "model.gguf",
                                  "onnx/model.onnx", "model.safetensors.index.json"])
def test_every_weight_format_counts_in_full(tmp_path, name):
    """Two checkpoints whose weight files differ only in content (same names and sizes) never share a fingerprint;
    before, ``.bin`` and the other formats did not count at all."""
    fingerprints = []
    for tag, byte in (("trained", 1), ("untrained", 2)):
        folder = tmp_path / tag
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text('{"model_type": "toy"}\n')
        data = bytearray(3 << 20)
        data[len(data) // 2] = byte  # the difference sits in the middle
        (folder / name).write_bytes(bytes(data))
        fingerprints.append(model_fingerprint(folder))
    assert fingerprints[0] != fingerprints[1]


def test_what_describes_the_folder_not_the_model_does_not_count(tmp_path):
    a = _checkpoint(tmp_path / "a")
    b = _copy_with(a, tmp_path / "b")
    (b / ".cache" / "huggingface").mkdir(parents=True)  # written by `hf download --local-dir`
    (b / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("etag 123\n")
    (b / "README.md").write_text("# a model card edited on the hub\n")
    assert model_fingerprint(a) == model_fingerprint(b)
    (b / "tokenizer.json").write_text('{"vocab": {"x": 1}}\n')
    assert model_fingerprint(a) != model_fingerprint(b)


def test_an_unwritable_digest_store_only_costs_a_rehash(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("UMEFLOW_CACHE_DIR", str(blocker / "cache"))
    model = _checkpoint(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="umeflow.evaluate.cache"):
        assert model_fingerprint(model) == model_fingerprint(_copy_with(model, tmp_path / "m2"))
    assert "file digest cache" in caplog.text


def test_evaluate_does_not_reuse_embeddings_of_a_model_changed_in_the_middle(tmp_path, tiny_model_dir):
    """End to end: evaluate a copy of the tiny model whose token embedding rows were shifted in the middle of the
    file (size and mtime kept); the second evaluation must embed everything again, not serve the first's cache."""
    from test_evaluate import _write_fixture

    from umeflow.cli import main

    root = _write_fixture(tmp_path / "data")
    a = _copy_with(tiny_model_dir, tmp_path / "a")
    b = _copy_with(tiny_model_dir, tmp_path / "b")
    weights = b / "model.safetensors"
    begin, end = _tensor_span(weights, "model.embed_tokens.weight")
    row = 64 * 4  # one row of the tiny model's float32 token embeddings
    lo, hi = begin + row * ((2 << 20) // row), begin + row * ((end - begin - (2 << 20)) // row)
    assert hi - lo > (8 << 20) and hi < weights.stat().st_size - (1 << 20)
    with open(weights, "rb") as f:
        f.seek(lo)
        block = f.read(hi - lo)
    _overwrite_in_place(weights, lo, block[-row:] + block[:-row])  # every row moves down one token

    summaries = []
    for name, model in (("a", a), ("b", b)):
        out = tmp_path / f"eval-{name}"
        rc = main(["evaluate", "--model", str(model), "--data-root", str(root), "--tasks", "Colors", "--mode", "disc",
                   "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
        assert rc == 0
        summaries.append(json.loads((out / "summary.json").read_text()))
    first, second = summaries
    assert first["embedding_calls"] > 0
    assert second["cache"]["loaded_from_disk"] == 0
    assert second["embedding_calls"] == first["embedding_calls"]

    # register's check, in a fresh process in effect: each evaluation matches its own checkpoint, not the other
    from umeflow.errors import UserError
    from umeflow.registry.card import read_eval_dir
    from umeflow.steps.register import _check_eval_matches

    ecache._memo.clear()
    _check_eval_matches(a, read_eval_dir(tmp_path / "eval-a"))
    _check_eval_matches(b, read_eval_dir(tmp_path / "eval-b"))
    with pytest.raises(UserError, match="the evaluation scored model fingerprint"):
        _check_eval_matches(b, read_eval_dir(tmp_path / "eval-a"))


# ----------------------------------------------------------------------------------------- damaged cache parts

def _good_part_bytes(tmp_path) -> bytes:
    c = EmbeddingCache(tmp_path / "scratch", "fp")
    c.put("disc", ["x1", "x2"], np.ones((2, 4), np.float32))
    return next((tmp_path / "scratch").glob("**/part-*.npz")).read_bytes()


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


DAMAGED = {
    "truncated": lambda good: good[: len(good) // 2],
    "zero_bytes": lambda good: b"",
    "garbage": lambda good: b"\x00not a zip at all" * 40,
    "missing_vectors": lambda good: _npz(keys=np.asarray(["x1", "x2"])),
    "missing_keys": lambda good: _npz(vectors=np.ones((2, 4), np.float32)),
    "more_keys_than_vectors": lambda good: _npz(keys=np.asarray(["x1", "x2", "x3"]),
                                                vectors=np.ones((2, 4), np.float32)),
    "more_vectors_than_keys": lambda good: _npz(keys=np.asarray(["x1"]), vectors=np.ones((2, 4), np.float32)),
    "texts_of_another_length": lambda good: _npz(keys=np.asarray(["x1", "x2"]), vectors=np.ones((2, 4), np.float32),
                                                 texts=np.asarray(["only one"])),
    "vectors_of_another_dimension": lambda good: _npz(keys=np.asarray(["x1", "x2"]),
                                                      vectors=np.ones((2, 3), np.float32)),
    "keys_not_strings": lambda good: _npz(keys=np.arange(2), vectors=np.ones((2, 4), np.float32)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_cache_part_is_ignored_with_a_warning(tmp_path, damage, caplog):
    good = EmbeddingCache(tmp_path / "cache", "fp")
    good.put("disc", ["k1", "k2"], np.arange(8, dtype=np.float32).reshape(2, 4))
    folder = next((tmp_path / "cache").glob("**/disc"))
    bad = folder / "part-99999999999999999999-damaged.npz"  # sorts last: read after the good part
    bad.write_bytes(DAMAGED[damage](_good_part_bytes(tmp_path)))

    with caplog.at_level(logging.WARNING, logger="umeflow.evaluate.cache"):
        reread = EmbeddingCache(tmp_path / "cache", "fp")
        assert reread.missing("disc", ["k1", "k2", "x1", "x2"]) == ["x1", "x2"]  # re-embedded, not trusted
    np.testing.assert_allclose(reread.get("disc", "k2")[0], [4, 5, 6, 7])
    assert bad.name in caplog.text and "ignoring unreadable cache part" in caplog.text


# ----------------------------------------------------------------------------------------- concurrent writers

N_PARTS = 40


def _embedding_writer(root: str, barrier, tag: str) -> None:
    cache = EmbeddingCache(root, "fp")
    barrier.wait()
    for i in range(N_PARTS):  # both writers embed the same shared inputs, as shards with common candidates do
        cache.put("disc", [f"shared-{i}", f"{tag}-{i}"], np.full((2, 4), i, np.float32))


def _annotation_writer(folder: str, barrier, tag: str) -> None:
    from umeflow.annotate.cache import ResponseCache

    cache = ResponseCache(folder)
    barrier.wait()
    for i in range(N_PARTS):
        cache.put(f"{tag}-{i}", f"answer {tag} {i}")
    cache.close()


def _run_two(target, where) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=target, args=(str(where), barrier, tag)) for tag in ("w0", "w1")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]


def test_two_processes_write_one_embedding_cache_without_losing_a_part(tmp_path):
    _run_two(_embedding_writer, tmp_path / "cache")
    parts = list((tmp_path / "cache").glob("fp/disc/part-*.npz"))
    assert len(parts) == 2 * N_PARTS  # no name chosen twice, so no part replaced another
    union = EmbeddingCache(tmp_path / "cache", "fp")
    keys = [f"{p}-{i}" for p in ("shared", "w0", "w1") for i in range(N_PARTS)]
    assert union.missing("disc", keys) == []
    for i in range(N_PARTS):
        np.testing.assert_allclose(union.get("disc", f"w1-{i}")[0], np.full(4, i))


def test_two_processes_write_one_annotation_cache_without_sharing_a_shard(tmp_path):
    from umeflow.annotate.cache import ResponseCache

    _run_two(_annotation_writer, tmp_path / "annotate")
    assert len(list((tmp_path / "annotate").glob("shard-*.jsonl"))) == 2  # one each
    union = ResponseCache(tmp_path / "annotate")
    assert union.torn_lines == 0
    assert union.data == {f"{t}-{i}": f"answer {t} {i}" for t in ("w0", "w1") for i in range(N_PARTS)}
