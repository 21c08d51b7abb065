"""A content-addressed response cache: JSONL shards under one folder, one new shard per run.

Each answer is appended the moment it arrives (flush + fsync per line), so a killed run keeps every completed call and
the rerun repeats none of them. Every run writes its own shard, so concurrent runs never interleave lines and a line
torn by a kill can only be the last line of a shard that nobody appends to again; torn lines are skipped and counted.
A shard's name is random and the file is created exclusively, so runs on several machines sharing the folder (where
pids and clocks repeat) can never append to one file; no lock is needed, nor trusted on every shared volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path


def content_key(model: str, prompt: str, text: str, image: Path | None) -> str:
    """sha256 of (model, prompt, text, image bytes): equal inputs to the same annotator share one answer."""
    image_digest = hashlib.sha256(image.read_bytes()).hexdigest() if image is not None else None
    return hashlib.sha256(json.dumps([model, prompt, text, image_digest]).encode()).hexdigest()


class ResponseCache:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        self.data: dict[str, str] = {}
        self.torn_lines = 0
        self._lock = threading.Lock()
        self._shard = None
        for shard in sorted(self.folder.glob("shard-*.jsonl")):
            for line in shard.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn_lines += 1

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put(self, key: str, response: str) -> None:
        line = json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._shard is None:  # opened on the first answer, so a fully cached rerun adds no file
                self.folder.mkdir(parents=True, exist_ok=True)
                name = f"shard-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex}.jsonl"
                self._shard = open(self.folder / name, "x", encoding="utf-8")  # "x": never someone else's shard
            self._shard.write(line)
            self._shard.flush()
            os.fsync(self._shard.fileno())
            self.data[key] = response

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.close()
                self._shard = None
