"""Persistent, content-addressed embedding cache: each unique input is embedded once per model and setting.

Layout: ``<cache_dir>/<model fingerprint>/<inputs>/<setting>/part-<n>.npz``, where ``inputs`` names how pixels are
sized (``VisionSizing.tag``: other pixel limits are other inputs) and a setting is the mode plus everything that
changes a gen embedding (``max_new_tokens``, sampling, temperature, sample index). Each part holds ``keys`` (content
hashes, see ``content_key``), ``vectors`` and, for gen settings, the generated ``texts``, the ``fallback`` flags and,
for the disc vectors read from the same prefill, nothing extra (they are stored under the disc setting).

Parts are written atomically after every chunk the runner embeds, so a run that is killed loses at most one chunk
and the next run resumes from what is on disk. Parts are never rewritten; a reader takes the union. Every part gets a
name of its own (time + random), so concurrent writers (evaluate shards sharing the cache on a volume) never collide.
A part that cannot be read (truncated, empty, garbage, inconsistent) is ignored with a warning and re-embedded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from umeflow.io import atomic_path, sha256_file
from umeflow.model.items import Item

log = logging.getLogger(__name__)


def content_key(item: Item) -> str:
    """Stable key of what the model sees: text plus the bytes of every image/frame (paths may differ)."""
    h = hashlib.sha256(item.text.encode())
    for group, media in (("i", item.images), ("v", item.video or ())):
        for m in media:
            h.update(group.encode())
            if isinstance(m, (str, Path)):
                h.update(_file_digest(Path(m)))
            else:
                h.update(hashlib.sha256(m.tobytes()).digest())
    return h.hexdigest()


def _file_digest(path: Path) -> bytes:
    """sha256 of a media file (candidates repeat across queries and tasks, so it is memoised; see ``file_sha256``)."""
    return bytes.fromhex(file_sha256(path))


# ------------------------------------------------------------------------------------------------ file digests
#
# A digest is reused only for the very same, untouched file: the key is the path plus size, mtime, ctime, inode and
# device. Size and mtime alone can be restored after an in-place edit (os.utime, ``cp -p``, ``rsync -t``), but the
# kernel sets ctime on every write and every utime and offers no way to set it back, and a file replaced by another
# (a rename, a fresh copy) has another inode. Digests of big files (where hashing costs) also persist in a small JSON
# file under the user's cache dir (``UMEFLOW_CACHE_DIR`` or ~/.cache/umeflow, see ``storage.default_cache_dir``), so a
# multi-GB checkpoint is hashed once per machine rather than once per process: evaluate, register and the pipeline
# tasks each fingerprint the same model in their own process. Small files are rehashed (cheaper than bookkeeping).

_PERSIST_MIN_BYTES = 1 << 20
_DIGEST_STORE = "file-digests.json"
_memo: dict[str, tuple[tuple[int, ...], str]] = {}
_memo_lock = threading.Lock()


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _store_path() -> Path:
    from umeflow.storage import default_cache_dir

    return default_cache_dir() / _DIGEST_STORE


def _read_store(path: Path) -> dict[str, dict]:
    try:
        files = json.loads(path.read_text())["files"]
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: a cache, so start afresh
        return {}


def _still(path: str, sig: list) -> bool:
    try:
        return list(_signature(os.stat(path))) == sig
    except OSError:
        return False


def _write_store(path: Path, new: dict[str, dict]) -> None:
    """Merge ``new`` into the store under a file lock (several processes may fingerprint at once); entries of files
    that are gone or have changed since are dropped, so the store holds only what can still match."""
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=30):
            files = {k: v for k, v in _read_store(path).items() if k not in new and _still(k, v.get("sig"))}
            files.update(new)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True) + "\n")
    except (OSError, Timeout) as e:  # an unwritable cache dir costs a rehash next time, nothing else
        log.warning("cannot update the file digest cache %s (%s)", path, e)


def _hash_files(paths: list[str], persist: bool) -> list[str]:
    """sha256 (hex) of each file, from the memo or (``persist``) the on-disk store where the file is untouched since."""
    store_path = _store_path() if persist else None
    stored: dict[str, dict] | None = None
    new: dict[str, dict] = {}
    out = []
    for path in paths:
        sig = _signature(os.stat(path))
        with _memo_lock:
            hit = _memo.get(path)
        if hit is not None and hit[0] == sig:
            out.append(hit[1])
            continue
        keep = persist and sig[0] >= _PERSIST_MIN_BYTES
        if keep and stored is None:
            stored = _read_store(store_path)
        entry = stored.get(path) if keep else None
        if isinstance(entry, dict) and entry.get("sig") == list(sig) and isinstance(entry.get("sha256"), str):
            digest = entry["sha256"]
        else:
            digest = sha256_file(path)
            if _signature(os.stat(path)) != sig:  # written to while we read it: the digest describes no file
                out.append(digest)
                continue
            if keep:
                new[path] = {"sig": list(sig), "sha256": digest}
        with _memo_lock:
            _memo[path] = (sig, digest)
        out.append(digest)
    if new:
        _write_store(store_path, new)
    return out


def file_sha256(path: str | os.PathLike, persist: bool = False) -> str:
    """sha256 (hex) of a file's whole content, hashed once per untouched file (see above); ``persist`` also keeps a
    big file's digest on disk for other processes (model weights: yes; media, which are many and small: no)."""
    return _hash_files([os.path.abspath(path)], persist)[0]


# Model-card text is edited on the hub without touching the weights; everything else in the folder counts.
_NOT_MODEL = (".md",)


def _model_files(root: Path) -> list[tuple[str, str]]:
    """(posix path relative to ``root``, absolute path) of every file that makes up the model, sorted.

    Subfolders are walked: transformers reads only the top level, but sharded indexes, remote code and other loaders
    may point below it, and hashing an unused file costs only time (once, see above). Hidden entries (``.cache/``
    of ``hf download --local-dir``, ``.git``) and ``__pycache__`` describe how the folder was made, not the model.
    Symlinked files (the hub cache's snapshot folders) count by their target's content."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            full = os.path.join(folder, name)
            if name.startswith(".") or name.endswith(_NOT_MODEL) or not os.path.isfile(full):
                continue
            files.append((Path(full).relative_to(root).as_posix(), os.path.abspath(full)))
    return sorted(files)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Identifies the weights + tokenizer + processor: the sha256 of every file in the model folder (weights of any
    format, index, config, tokenizer, processor, chat template, remote code) with its relative path. Two checkpoints
    that differ in one tensor anywhere in one file differ here; a copy of a checkpoint elsewhere does not."""
    root = Path(model_dir).expanduser()
    h = hashlib.sha256()
    if root.is_file():  # a single-file checkpoint (GGUF and the like)
        h.update(file_sha256(root, persist=True).encode())
        return h.hexdigest()[:20]
    if not root.is_dir():  # a hub name: the name is all we have
        h.update(str(model_dir).encode())
        return h.hexdigest()[:20]
    files = _model_files(root)
    for (rel, _), digest in zip(files, _hash_files([full for _, full in files], persist=True)):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:20]


# How a gen vector is read out of a generation. v2 (issue #13): generate until EOS and take the last <gen_emb>.
# Unversioned names ("gen-t64-greedy") hold vectors of the old rule (stop one step after the first <gen_emb>); the
# version in the name keeps them from being reused. Bump it whenever the gen read-out changes.
GEN_READOUT_VERSION = 2


def setting_name(mode: str, max_new_tokens: int = 0, do_sample: bool = False, temperature: float = 1.0,
                 sample: int = 0, engine: str = "hf") -> str:
    """The cache folder of one embedding setting. Gen vectors of another generation engine are other vectors (vLLM
    or a server generates other reasoning than in-process ``generate`` in another precision); the in-process
    engine keeps the unsuffixed name its vectors always had."""
    if mode == "disc":
        return "disc"
    name = f"gen-v{GEN_READOUT_VERSION}-t{max_new_tokens}"
    name += f"-sample{sample}-temp{temperature:g}" if do_sample else "-greedy"
    return name if engine == "hf" else f"{name}-{engine}"


def _part_name(suffix: str) -> str:
    # Shards of one evaluation (pods on a shared volume, where pids repeat) write the same folder at once, so a
    # name owes nothing to the folder's state or the pid: time orders the parts, a random suffix makes it unique.
    # Each writer then publishes its own file by rename and no lock is needed (nor trusted on every volume).
    return f"part-{time.time_ns():020d}-{uuid.uuid4().hex}{suffix}"


class EmbeddingCache:
    """Read-through cache of vectors (and gen texts/fallback flags) per setting; ``None`` dir = memory only."""

    def __init__(self, cache_dir: str | os.PathLike | None, fingerprint: str, inputs: str = ""):
        # ``inputs``: how the model's inputs were prepared (pixel limits); vectors of other inputs are never reused
        self.root = Path(cache_dir).expanduser() / fingerprint / inputs if cache_dir else None
        self._data: dict[str, dict[str, tuple[np.ndarray, str | None, bool | None]]] = {}
        self.loaded_from_disk = 0

    def _setting(self, setting: str) -> dict:
        if setting not in self._data:
            self._data[setting] = {}
            if self.root is not None and (self.root / setting).is_dir():
                for part in sorted((self.root / setting).glob("part-*.npz")):
                    self._read_part(part, self._data[setting])
                self.loaded_from_disk += len(self._data[setting])
        return self._data[setting]

    @staticmethod
    def _read_part(part: Path, into: dict) -> None:
        """Add a part's entries to ``into``; a part that cannot be read whole and consistent adds nothing (a warning
        names it) and its inputs are embedded again. Any exception counts: the bytes on disk are untrusted, and a
        truncated zip, an empty file or garbage each fail in their own way (BadZipFile, EOFError, ValueError...)."""
        try:
            with np.load(part, allow_pickle=False) as z:
                keys, vecs = z["keys"], z["vectors"]
                texts = z["texts"] if "texts" in z.files else None
                fb = z["fallback"] if "fallback" in z.files else None
            n = len(keys)
            if keys.ndim != 1 or keys.dtype.kind != "U":
                raise ValueError(f"keys are {keys.dtype} of shape {keys.shape}, not a list of strings")
            if vecs.ndim != 2 or len(vecs) != n or vecs.dtype.kind != "f":
                raise ValueError(f"vectors are {vecs.dtype} of shape {vecs.shape} for {n} keys")
            for name, extra in (("texts", texts), ("fallback", fb)):
                if extra is not None and extra.shape != (n,):
                    raise ValueError(f"{name} have shape {extra.shape} for {n} keys")
            dim = next((v[0].shape for v in into.values()), vecs.shape[1:])
            if vecs.shape[1:] != dim:
                raise ValueError(f"vectors have dimension {vecs.shape[1]}, the other parts {dim[0]}")
        except Exception as e:  # see the docstring: ignored, not trusted, re-embedded
            log.warning("ignoring unreadable cache part %s (%s: %s)", part, type(e).__name__, e)
            return
        for i, k in enumerate(keys.tolist()):
            into[k] = (vecs[i], None if texts is None else str(texts[i]), None if fb is None else bool(fb[i]))

    def get(self, setting: str, key: str):
        return self._setting(setting).get(key)

    def missing(self, setting: str, keys: list[str]) -> list[str]:
        have = self._setting(setting)
        return [k for k in keys if k not in have]

    def put(self, setting: str, keys: list[str], vectors: np.ndarray, texts: list[str] | None = None,
            fallback: np.ndarray | None = None) -> None:
        store = self._setting(setting)
        for i, k in enumerate(keys):
            store[k] = (vectors[i], None if texts is None else texts[i],
                        None if fallback is None else bool(fallback[i]))
        if self.root is None or not keys:
            return
        folder = self.root / setting
        folder.mkdir(parents=True, exist_ok=True)
        name = _part_name(".npz")
        arrays = {"keys": np.asarray(keys), "vectors": np.asarray(vectors, dtype=np.float32)}
        if texts is not None:
            arrays["texts"] = np.asarray(texts, dtype=str)
        if fallback is not None:
            arrays["fallback"] = np.asarray(fallback, dtype=bool)
        with atomic_path(folder / name) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def describe(self) -> dict:
        return {"dir": str(self.root) if self.root else None, "loaded_from_disk": self.loaded_from_disk,
                "settings": {s: len(v) for s, v in self._data.items()}}

    def write_info(self, model: str) -> None:
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            info = self.root / "model.json"
            if not info.exists():  # by rename: a shard reading it while another writes sees all or nothing
                with atomic_path(info) as tmp:
                    tmp.write_text(json.dumps({"model": str(model)}) + "\n")


class TraceCache:
    """What gen mode generated, per engine and sampling setting, beside the embedding cache of the same model and
    inputs: ``<cache_dir>/<fingerprint>/<inputs>/traces/<engine>-<sampling tag>/part-*.jsonl``, one JSON object per
    line (``key`` = ``content_key`` of the item, and the ``Trace``). Written in parts like the embeddings (atomic,
    uniquely named, never rewritten), so it is shared across tasks, runs and shards and a killed run resumes; a part
    that cannot be read whole is ignored with a warning and its items are generated again. Re-extracting (another
    read-out, a mode pair, the faithfulness check) then costs a prefill, not a generation."""

    def __init__(self, cache_dir: str | os.PathLike | None, fingerprint: str, inputs: str = ""):
        self.root = Path(cache_dir).expanduser() / fingerprint / inputs / "traces" if cache_dir else None
        self._data: dict[str, dict] = {}
        self.loaded_from_disk = 0

    def _setting(self, setting: str) -> dict:
        if setting not in self._data:
            found: dict = {}
            folder = self.root / setting if self.root is not None else None
            if folder is not None and folder.is_dir():
                for part in sorted(folder.glob("part-*.jsonl")):
                    found.update(self._read_part(part))
            self.loaded_from_disk += len(found)
            self._data[setting] = found
        return self._data[setting]

    @staticmethod
    def _read_part(part: Path) -> dict:
        from umeflow.model.generation import Trace

        try:
            entries = {}
            for line in part.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if not isinstance(row.get("key"), str):
                    raise ValueError("a line without a key")
                entries[row["key"]] = Trace.from_json(row)
            return entries
        except Exception as e:  # untrusted bytes: a torn or foreign part adds nothing and is regenerated
            log.warning("ignoring unreadable trace cache part %s (%s: %s)", part, type(e).__name__, e)
            return {}

    def get(self, setting: str, key: str):
        return self._setting(setting).get(key)

    def put(self, setting: str, traces: dict) -> None:
        """Keep ``{key: Trace}`` (one part on disk)."""
        if not traces:
            return
        self._setting(setting).update(traces)
        if self.root is None:
            return
        folder = self.root / setting
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"key": k, **t.to_json()}, ensure_ascii=False) for k, t in traces.items()]
        with atomic_path(folder / _part_name(".jsonl")) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def describe(self) -> dict:
        return {"dir": str(self.root) if self.root else None, "loaded_from_disk": self.loaded_from_disk,
                "settings": {s: len(v) for s, v in self._data.items()}}
