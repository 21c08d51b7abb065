"""Persistent, content-addressed embedding cache: each unique input is embedded once per model and setting.

Layout: ``<cache_dir>/<model fingerprint>/<inputs>/<setting>/part-<n>.npz``, where ``inputs`` names how pixels are
sized (``VisionSizing.tag``: other pixel limits are other inputs) and a setting is the mode plus everything that
changes a gen embedding (``max_new_tokens``, sampling, temperature, sample index). Each part holds ``keys`` (content
hashes, see ``content_key``), ``vectors`` and, for gen settings, the generated ``texts``, the ``fallback`` flags and,
for the disc vectors read from the same prefill, nothing extra (they are stored under the disc setting).

Parts are written atomically after every chunk the runner embeds, so a run that is killed loses at most one chunk
and the next run resumes from what is on disk. Parts are never rewritten; a reader takes the union.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from umeflow.io import atomic_path
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


_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def _file_digest(path: Path) -> bytes:
    """sha256 of a media file, memoised per (path, size, mtime): candidates repeat across queries and tasks."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(path.read_bytes()).digest()
    return _DIGESTS[key]


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Identifies the weights + tokenizer + processor: config files in full, weight files by name, size and the
    hash of their first and last MiB (cheap for multi-GB checkpoints, and a retrained model differs there)."""
    root = Path(model_dir)
    h = hashlib.sha256()
    if not root.is_dir():  # a hub name: the name is all we have
        h.update(str(model_dir).encode())
        return h.hexdigest()[:20]
    for p in sorted(root.iterdir()):
        if not p.is_file():
            continue
        h.update(p.name.encode())
        if p.suffix in (".json", ".jinja", ".txt", ".model"):
            h.update(p.read_bytes())
        elif p.suffix == ".safetensors":
            size = p.stat().st_size
            h.update(str(size).encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:20]


# How a gen vector is read out of a generation. v2 (issue #13): generate until EOS and take the last <gen_emb>.
# Unversioned names ("gen-t64-greedy") hold vectors of the old rule (stop one step after the first <gen_emb>); the
# version in the name keeps them from being reused. Bump it whenever the gen read-out changes.
GEN_READOUT_VERSION = 2


def setting_name(mode: str, max_new_tokens: int = 0, do_sample: bool = False, temperature: float = 1.0,
                 sample: int = 0) -> str:
    if mode == "disc":
        return "disc"
    name = f"gen-v{GEN_READOUT_VERSION}-t{max_new_tokens}"
    return name + (f"-sample{sample}-temp{temperature:g}" if do_sample else "-greedy")


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
        try:
            with np.load(part, allow_pickle=False) as z:
                keys, vecs = z["keys"], z["vectors"]
                texts = z["texts"] if "texts" in z.files else None
                fb = z["fallback"] if "fallback" in z.files else None
        except (OSError, ValueError, KeyError) as e:  # a damaged part is ignored, not trusted; it is re-embedded
            log.warning("ignoring unreadable cache part %s (%s)", part, e)
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
        n = len(list(folder.glob("part-*.npz")))
        name = f"part-{n:06d}-{os.getpid()}-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:8]}.npz"
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
            if not info.exists():
                info.write_text(json.dumps({"model": str(model)}) + "\n")
