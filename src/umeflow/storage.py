"""One way to read a data tree, whether it sits in a local directory or under ``s3://bucket/prefix``.

Loaders hand media to the model as local paths (PIL, the Qwen-VL processor and the embedding cache all want files),
so an S3 root downloads each object on first use into a local cache and returns the cached path. Only what a loader
asks for is fetched (8 of a video's 64 frames, not the folder), and a cached file is reused while its size matches the
object's, so a second run, or a second pod on the same volume, issues no GETs.

The S3 client is plain boto3: the endpoint comes from the standard ``AWS_ENDPOINT_URL`` variable (any S3-compatible
store: MinIO, Ceph, moto) and credentials from boto3's usual chain (environment, pod identity). Nothing here reads
or writes credentials, so no recipe or config file ever holds one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

from umeflow.errors import UserError

DEFAULT_CACHE_DIR = Path("~/.cache/umeflow")


def default_cache_dir() -> Path:
    """``UMEFLOW_CACHE_DIR`` if set (a shared volume on a cluster), else ``~/.cache/umeflow``."""
    return Path(os.environ.get("UMEFLOW_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def _clean_rel(rel: str | os.PathLike) -> str:
    """A root-relative path in POSIX form; refuses to climb out of the root (a record naming ``../x`` is a bug)."""
    parts = [p for p in PurePosixPath(str(rel).replace(os.sep, "/")).parts if p not in ("", ".", "/")]
    if ".." in parts:
        raise UserError(f"path {rel!r} leaves the data root")
    return "/".join(parts)


class OutsideRoot(ValueError):
    """A record's media path that is absolute, climbs out of its root, or resolves outside it through a symlink."""


def path_inside(root: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """``root / rel`` for a media path a record names, refusing (``OutsideRoot``) anything that leaves ``root``.

    Records come from files users and annotators write; a path like ``../../x.png``, ``/etc/x.png`` or a symlink
    to a file elsewhere would make a step read (and train on, or publish) a file outside the data it was given.
    The check resolves symlinks, so ``a/../b`` inside the root is fine and a symlinked root itself is fine.
    """
    root = Path(root)
    text = str(rel)
    if Path(text).is_absolute() or PurePosixPath(text.replace(os.sep, "/")).is_absolute():
        raise OutsideRoot(f"path {text!r} is absolute; media paths are relative to the data root {root}")
    target = root / text
    real_root, real = root.resolve(), target.resolve()
    if real != real_root and real_root not in real.parents:
        climbs = ".." in PurePosixPath(text.replace(os.sep, "/")).parts
        how = "leaves" if climbs else "resolves (through a symlink) outside"
        raise OutsideRoot(f"path {text!r} {how} the data root {root}")
    return target


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise UserError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise UserError(f"{uri!r} names no bucket (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def s3_client():
    """A boto3 S3 client for the configured endpoint (``AWS_ENDPOINT_URL``; unset means AWS itself)."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _s3_error(err: Exception, where: str) -> UserError:
    """Turn a botocore failure into a one-line message that says what to fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return UserError(f"cannot read {where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         "(and AWS_ENDPOINT_URL for a non-AWS store) in the environment")
    if isinstance(err, EndpointConnectionError):
        return UserError(f"cannot read {where}: S3 endpoint unreachable ({err}); check AWS_ENDPOINT_URL")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return UserError(f"cannot read {where}: the bucket does not exist")
        if code in ("404", "NoSuchKey"):
            return UserError(f"{where} does not exist")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return UserError(f"cannot read {where}: access denied ({code}); check the S3 credentials in the "
                             "environment")
        return UserError(f"cannot read {where}: S3 error {code or err}")
    return UserError(f"cannot read {where}: {err}")


class DataRoot:
    """A data tree addressed by root-relative POSIX paths (``"video-tasks/frames/video_cls/K700/abc/0001.jpg"``).

    ``uri`` is a local directory or ``s3://bucket/prefix``. ``path(rel)`` always returns a local file; for S3 the
    object is fetched into ``<cache_dir>/s3/<bucket>/<prefix>/<rel>`` on first access. Directory listings are kept
    in memory for the life of the object (one LIST per folder, which also gives every file's size for the cache
    check), so build one ``DataRoot`` per run and pass it around.
    """

    def __init__(self, uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.uri = str(uri)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.is_s3 = self.uri.startswith("s3://")
        if self.is_s3:
            self.bucket, self.prefix = split_s3_uri(self.uri)
            self.local_root = self.cache_dir / "s3" / self.bucket / self.prefix
            self._client = None
            self._listings: dict[str, tuple[dict[str, int], set[str]]] = {}
        else:
            self.local_root = Path(self.uri).expanduser()

    @classmethod
    def of(cls, root: "DataRoot | str | os.PathLike") -> "DataRoot":
        """Accept what callers have (a DataRoot, a path, a URI) so loaders take any of them."""
        return root if isinstance(root, DataRoot) else cls(root)

    def __repr__(self) -> str:
        return f"DataRoot({self.uri!r})"

    def display(self, rel: str | os.PathLike = "") -> str:
        """Where ``rel`` lives, as a user would type it; used in every error message."""
        rel = _clean_rel(rel)
        if self.is_s3:
            return "s3://" + "/".join(p for p in (self.bucket, self.prefix, rel) if p)
        return str(self.local_root / rel) if rel else str(self.local_root)

    # ------------------------------------------------------------------------------------------------ queries

    def exists(self, rel: str | os.PathLike) -> bool:
        rel = _clean_rel(rel)
        if not self.is_s3:
            return (self.local_root / rel).exists()
        return self._s3_size(rel) is not None or self.is_dir(rel)

    def is_file(self, rel: str | os.PathLike) -> bool:
        rel = _clean_rel(rel)
        if not self.is_s3:
            return (self.local_root / rel).is_file()
        return self._s3_size(rel) is not None

    def is_dir(self, rel: str | os.PathLike) -> bool:
        rel = _clean_rel(rel)
        if not self.is_s3:
            return (self.local_root / rel).is_dir()
        if not rel:
            return True
        parent, _, name = rel.rpartition("/")
        return name in self._s3_listing(parent)[1]

    def listdir(self, rel: str | os.PathLike = "") -> list[str]:
        """Sorted names of the files and folders directly under ``rel``; a missing folder is a UserError."""
        rel = _clean_rel(rel)
        if not self.is_dir(rel):
            raise UserError(f"folder {self.display(rel)} does not exist")
        if not self.is_s3:
            return sorted(os.listdir(self.local_root / rel))
        files, dirs = self._s3_listing(rel)
        return sorted(set(files) | dirs)

    def path(self, rel: str | os.PathLike) -> Path:
        """The local file for ``rel``: the file itself for a local root, the cached download for S3.

        A local root does not check existence here (callers that want a RecordError check ``is_file`` first); an S3
        root must, because it has to fetch, and raises a UserError naming the missing key.
        """
        rel = _clean_rel(rel)
        local = self.local_root / rel
        if not self.is_s3:
            return local
        size = self._s3_size(rel)
        if size is None:
            raise UserError(f"{self.display(rel)} does not exist")
        if local.is_file() and local.stat().st_size == size:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        # download next to the target and rename, so a killed run never leaves a truncated file that looks cached
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(rel), tmp)
            os.replace(tmp, local)
        except Exception as e:
            raise _s3_error(e, self.display(rel)) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return local

    def blob_path(self, data: bytes, suffix: str) -> Path:
        """Store inline media (e.g. image bytes inside a parquet file) as a content-addressed cache file and return
        its path, so items can refer to it like any other image and repeated loads write nothing."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.cache_dir / "blobs" / digest[:2] / f"{digest}{suffix}"
        if path.is_file() and path.stat().st_size == len(data):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path

    # ---------------------------------------------------------------------------------------------- S3 plumbing

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.prefix, rel) if p)

    def _s3_size(self, rel: str) -> int | None:
        parent, _, name = rel.rpartition("/")
        return self._s3_listing(parent)[0].get(name)

    def _s3_listing(self, rel: str) -> tuple[dict[str, int], set[str]]:
        """One delimiter LIST of a folder: ``({file name: size}, {sub-folder names})``, memoised."""
        if rel in self._listings:
            return self._listings[rel]
        key = self._key(rel)
        files: dict[str, int] = {}
        dirs: set[str] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{key}/" if key else "", Delimiter="/")
            for page in pages:
                for obj in page.get("Contents", []):
                    files[obj["Key"].rsplit("/", 1)[-1]] = obj["Size"]
                for common in page.get("CommonPrefixes", []):
                    dirs.add(common["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        except Exception as e:
            raise _s3_error(e, self.display(rel)) from None
        files.pop("", None)  # a "folder marker" object some tools create
        self._listings[rel] = (files, dirs)
        return files, dirs


def upload_dir(local_dir: str | os.PathLike, s3_uri: str, client=None) -> int:
    """Upload every file under ``local_dir`` to ``s3_uri`` keeping relative paths; returns the number of files.

    Used to publish a prepared data tree (tests, the prepare step) so later steps can read it through ``DataRoot``.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise UserError(f"{local_dir} is not a directory")
    bucket, prefix = split_s3_uri(s3_uri)
    client = client or s3_client()
    count = 0
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        key = "/".join(p for p in (prefix, path.relative_to(local_dir).as_posix()) if p)
        try:
            client.upload_file(str(path), bucket, key)
        except Exception as e:
            raise _s3_error(e, f"s3://{bucket}/{key}") from None
        count += 1
    return count
