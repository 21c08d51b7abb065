"""Errors users can act on. The CLI prints these as one line (no traceback) and exits with status 2.

``RecordError`` always names the file, the line and the field of a bad input record.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """A problem the user can fix (missing asset, unreachable registry, bad setting); the message says how."""


class RecordError(UserError, ValueError):
    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, reason: str):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {reason}")


class BadRecordCounter:
    """Implements ``--on-bad-record``: ``error`` raises the first RecordError, ``skip`` counts and keeps going."""

    def __init__(self, policy: str = "error"):
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped: list[RecordError] = []

    def handle(self, err: RecordError) -> None:
        if self.policy == "error":
            raise err
        self.skipped.append(err)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> dict:
        return {"bad_records_skipped": self.count,
                "bad_records_examples": [str(e) for e in self.skipped[:20]]}
