"""Small I/O helpers every step shares: atomic writes, hashing, JSONL with line numbers, run_info."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    Works for files and directories, so an interrupted step never leaves an output that looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists():
            final.unlink()
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def iter_jsonl_lenient(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)``, or ``(line_number, RecordError)`` for a malformed line, so that callers
    in skip mode can count it and go on.

    The file is read as bytes and each line decoded on its own: one line that is not UTF-8 is that line's error
    (named by its number), not a ``UnicodeDecodeError`` for the whole file. Lines end at ``\n`` only.
    """
    from umeflow.errors import RecordError

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                # a BOM some editors put at the start of a file is not part of the first record
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield lineno, RecordError(path, lineno, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                                                              f"byte column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, RecordError(path, lineno, None, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(rec, dict):
                yield lineno, RecordError(path, lineno, None, f"expected a JSON object, got {type(rec).__name__}")
                continue
            yield lineno, rec


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)``; a malformed line raises ``RecordError`` naming file and line."""
    from umeflow.errors import RecordError

    for lineno, rec in iter_jsonl_lenient(path):
        if isinstance(rec, RecordError):
            raise rec
        yield lineno, rec


@contextlib.contextmanager
def arrow_read_errors(shown: str | os.PathLike, kind: str) -> Iterator[None]:
    """Turn what pyarrow raises for a corrupt or truncated ``kind`` file (ArrowInvalid, ArrowIOError and other
    types, depending on where it breaks) into one RecordError naming ``shown``, arrow's reason on one line."""
    import pyarrow as pa

    from umeflow.errors import RecordError

    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise RecordError(shown, None, None, f"unreadable {kind} file: {' '.join(str(e).split())}") from None


def iter_parquet_rows(path: str | os.PathLike, shown: str | os.PathLike | None = None,
                      batch_size: int = 1024) -> Iterator[dict]:
    """The rows of a parquet file as dicts, read batch by batch (a corpus of page images runs to gigabytes). A
    corrupt file is a RecordError naming ``shown`` (default ``path``; e.g. the data-root name of a cached copy)."""
    import pyarrow.parquet as pq

    with arrow_read_errors(path if shown is None else shown, "parquet"), pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()


def git_sha() -> str | None:
    """``UMEFLOW_GIT_SHA`` (set in images, which have no .git), else the checkout's HEAD."""
    if os.environ.get("UMEFLOW_GIT_SHA"):
        return os.environ["UMEFLOW_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _active_mlflow_run_id() -> str | None:
    """The run a step is logging into (``umeflow.registry.runs.step_run``), without importing mlflow for it."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None and hasattr(mlflow, "active_run") else None
    return run.info.run_id if run is not None else None


def write_run_info(out_dir: str | os.PathLike, cfg: Any, inputs: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None, name: str = "run_info.json") -> dict:
    """Write the step contract's ``run_info.json``: git sha, resolved config + hash, input hashes, MLflow run."""
    from umeflow.config import config_hash
    from umeflow.tracking import redact_values

    info = {
        "git_sha": git_sha(),
        # credentials in any URI of the config (a tracking URI, an endpoint) never reach a stored file
        "config": redact_values(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg),
        "config_hash": config_hash(cfg) if dataclasses.is_dataclass(cfg) else None,
        "inputs": inputs or {},
        "mlflow_run_id": _active_mlflow_run_id() or os.environ.get("MLFLOW_RUN_ID"),
        "image_digest": os.environ.get("UMEFLOW_IMAGE_DIGEST"),
    }
    info.update(extra or {})
    write_json(Path(out_dir) / name, info)
    return info


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before a step does any work, that it can write ``path`` (a folder, existing or to be created).

    A step publishes its outputs at the end (``atomic_path``), so a read-only or impossible output location would
    otherwise surface only after the whole run. The check creates and removes a probe file in ``path`` if it exists
    and in the nearest existing folder above it (where ``atomic_path`` makes its temporary sibling), rather than
    reading permission bits, which say nothing about read-only mounts, ACLs or root. Raises ``UserError`` naming it.
    """
    from umeflow.errors import UserError

    target = Path(path).expanduser()
    # the folder itself (outputs written inside it) and its parent (temp sibling + rename); the nearest existing
    # ancestor stands in for one that does not exist yet, since the step would create it there
    candidates = [target, target.parent] if target.exists() else [target.parent]
    for cand in candidates:
        existing = cand
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"{what} {target} cannot be created: {existing} is not a folder")
        try:
            fd, probe = tempfile.mkstemp(prefix=".umeflow-write-probe-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"{what} {target} is not writable ({existing}: {e.strerror or e})") from None
    return target
