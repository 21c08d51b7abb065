"""Where the pipeline keeps checkpoints, and how a task gets a local copy of them.

A *location* is a local path (a laptop, or a ReadWriteMany PVC mounted at the same path in every pod) or an
``s3://bucket/prefix`` URI (any S3-compatible store; endpoint from ``AWS_ENDPOINT_URL``, credentials from the
environment, i.e. the Kubernetes secret the pipeline maps in). Steps only ever see local directories:

- ``local_copy(uri, work_dir)`` returns the directory itself for a local location, or mirrors the S3 prefix into
  ``<work_dir>/staged/<bucket>/<prefix>`` (files whose size already matches are not fetched again, so a second task
  on the same volume downloads nothing);
- ``output_dir(uri, work_dir)`` yields the directory a step writes to; for S3 it is the staged mirror, uploaded when
  the step succeeds. Because the staged path depends only on the URI, a retried pod on the same volume finds its
  own resumable checkpoints again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from umeflow.errors import UserError
from umeflow.storage import _s3_error, s3_client, split_s3_uri, upload_dir


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(root: str, *parts: str) -> str:
    """``join("s3://b/p", "run", "sft")`` → ``s3://b/p/run/sft``; local roots join as paths (made absolute)."""
    parts = tuple(p.strip("/") for p in parts if p)
    if is_s3(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root).expanduser().absolute().joinpath(*parts))


def staged_path(uri: str, work_dir: str | os.PathLike) -> Path:
    bucket, prefix = split_s3_uri(uri)
    return Path(work_dir).expanduser().absolute() / "staged" / bucket / prefix


def local_copy(uri: str, work_dir: str | os.PathLike, client=None) -> Path:
    """A local directory holding what ``uri`` holds (see the module docstring)."""
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise UserError(f"{path} does not exist (an upstream task should have written it)")
        return path
    bucket, prefix = split_s3_uri(uri)
    dest = staged_path(uri, work_dir)
    client = client or s3_client()
    found = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) + 1:]
                if not rel or rel.endswith("/"):
                    continue
                found += 1
                target = dest / rel
                if target.is_file() and target.stat().st_size == obj["Size"]:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
                os.close(fd)
                try:
                    client.download_file(bucket, obj["Key"], tmp)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    except UserError:
        raise
    except Exception as e:
        raise _s3_error(e, uri) from None
    if not found:
        raise UserError(f"{uri} holds no objects (an upstream task should have written it)")
    return dest


@contextlib.contextmanager
def output_dir(uri: str, work_dir: str | os.PathLike, skip: tuple[str, ...] = (), client=None) -> Iterator[Path]:
    """Yield the local directory a step writes ``uri``'s content to; upload it (minus top-level ``skip`` names,
    e.g. resumable trainer state) when the block succeeds."""
    if not is_s3(uri):
        path = Path(uri).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
        return
    local = staged_path(uri, work_dir)
    local.parent.mkdir(parents=True, exist_ok=True)
    yield local
    client = client or s3_client()
    for child in sorted(local.iterdir()) if local.is_dir() else []:
        if child.name in skip:
            continue
        if child.is_dir():
            upload_dir(child, join(uri, child.name), client)
        else:
            bucket, prefix = split_s3_uri(join(uri, child.name))
            try:
                client.upload_file(str(child), bucket, prefix)
            except Exception as e:
                raise _s3_error(e, join(uri, child.name)) from None
