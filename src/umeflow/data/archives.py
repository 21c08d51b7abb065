"""Streaming, safe extraction of ``.tar.gz`` archives, including archives split into parts (``cat a-00 a-01 … | tar
-xz``): one pass over the compressed bytes, progress shown, the sha256 of every part computed on the way, and every
member checked by tarfile's ``data`` filter (no absolute paths, no ``..``, no links or special files that leave the
destination) before anything is written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from umeflow.errors import UserError

# member name -> (destination folder, name inside it), or None to leave the member out
Route = Callable[[str], "tuple[Path, str] | None"]


class _Parts(io.RawIOBase):
    """The parts of a split archive read back to back as one stream, hashing each part and counting progress."""

    def __init__(self, paths: list[Path], bar: tqdm):
        self.paths, self.bar = paths, bar
        self.digests = [hashlib.sha256() for _ in paths]
        self._index, self._file = 0, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._index < len(self.paths):
            if self._file is None:
                self._file = open(self.paths[self._index], "rb")
            count = self._file.readinto(buffer)
            if count:
                self.digests[self._index].update(memoryview(buffer)[:count])
                self.bar.update(count)
                return count
            self._file.close()
            self._file, self._index = None, self._index + 1
        return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def extract(parts: list[Path], route: Route, scratch: Path, shown: str) -> list[str]:
    """Extract the members of the gzip'd tar made of ``parts`` that ``route`` places; returns each part's sha256.

    ``scratch`` is the folder every destination lies under. A member that would leave it, or (when extracted) the
    destination ``route`` gives it, e.g. a link to a sibling folder, is refused (UserError naming the archive and
    the member) before anything of it is written. Hard links cannot be followed in one streaming pass and are
    refused too. A corrupt or truncated archive is a UserError naming it.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sum(p.stat().st_size for p in parts), unit="B", unit_scale=True, desc=shown, leave=False) as bar:
        reader = _Parts(parts, bar)
        try:
            with gzip.GzipFile(fileobj=io.BufferedReader(reader, 1 << 20)) as unzipped:
                with tarfile.open(fileobj=unzipped, mode="r|") as tar:
                    for member in tar:
                        tar.members.clear()  # a streamed TarFile keeps every header; frame archives have millions
                        _check(member, scratch, shown)
                        target = route(member.name)
                        if target is None:
                            continue
                        dest, name = target
                        try:  # the data filter checks the member against the folder it really lands in
                            tar.extract(member.replace(name=name, deep=False), dest, filter="data")
                        except tarfile.FilterError as e:  # e.g. a link to a sibling folder of the archive
                            raise _unsafe(shown, member, e) from None
                # read on to the gzip trailer: its CRC and length check the whole archive, and every byte is hashed
                while unzipped.read(1 << 20):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise UserError(f"{shown}: corrupt or truncated archive ({reason})") from None
        finally:
            reader.close()
    return [d.hexdigest() for d in reader.digests]


def _check(member: tarfile.TarInfo, scratch: Path, shown: str) -> None:
    """Every member, extracted or not, must be safe within the archive's scratch folder: an archive carrying an
    absolute path or a ``..`` escape is refused whole."""
    if member.islnk():
        raise UserError(f"{shown}: member {member.name!r} is a hard link, which a streamed extraction cannot follow")
    try:
        if member.name.startswith(("/", "\\")):  # the data filter would strip the slash; such a member is suspect
            raise tarfile.AbsolutePathError(member)
        tarfile.data_filter(member, str(scratch))
    except tarfile.FilterError as e:
        raise _unsafe(shown, member, e) from None


def _unsafe(shown: str, member: tarfile.TarInfo, e: tarfile.FilterError) -> UserError:
    reason = " ".join(str(e).split())
    return UserError(f"{shown}: refusing unsafe member {member.name!r}: {reason}")
