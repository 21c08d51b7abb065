"""Pipeline definitions (``train_and_promote``, ``evaluate_only``); compiled YAML lives in ``compiled/``.

``umeflow compile`` regenerates the YAML; a test recompiles and diffs it against the checked-in files.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def pipelines() -> dict:
    """Name → pipeline function (imported lazily: defining components needs kfp and the image settings)."""
    from pipelines.evaluate_only import evaluate_only
    from pipelines.train_and_promote import train_and_promote

    return {"train_and_promote": train_and_promote, "evaluate_only": evaluate_only}


def compile_all(out_dir: str | Path = COMPILED_DIR) -> list[Path]:
    """Compile every pipeline to ``<out_dir>/<name>.yaml``; returns the paths."""
    from kfp import compiler

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, func in pipelines().items():
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(func, str(path))
        path.write_text(canonical_header(path.read_text()))
        paths.append(path)
    return paths


_DEFAULT = re.compile(r"^(#\s+\w+: \w+ \[Default: )(.*)(\])$")


def canonical_header(text: str) -> str:
    """The compiler's header comment prints dict defaults in protobuf map order, which changes from one process to
    the next; print them with sorted keys so that compiling twice gives the same file."""
    lines = []
    for line in text.splitlines(keepends=True):
        m = _DEFAULT.match(line.rstrip("\n"))
        if m:
            try:
                value = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                value = None
            if isinstance(value, (dict, list)):
                line = f"{m.group(1)}{json.dumps(value, sort_keys=True)}{m.group(3)}\n"
        lines.append(line)
    return "".join(lines)
