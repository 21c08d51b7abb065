"""Print the tries table of issue #14: every bad input × every step that reads it → exit code, first line, verdict.

    .venv/bin/python tools/tries_table.py                 # the whole table (a few minutes on 2 cores)
    .venv/bin/python tools/tries_table.py -k bomb -k sft  # only rows whose "step: case" contains every -k
    .venv/bin/python tools/tries_table.py --controls      # first run every step on the good workspace (exit 0)

The table, its cases and the GOOD / WEAK / BAD rules are those of ``tests/bad_inputs.py`` (what
``tests/test_bad_inputs.py`` asserts). Assets come from ``UMEFLOW_TEST_ASSETS`` (default ``state/assets``, fetched
if missing); everything else is built in a temporary folder (``--keep`` keeps it and prints where).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline, as the tests

import bad_inputs as bi  # noqa: E402  (needs the path above)

CONTROL = bi.Case("good workspace (control)", bi.STEPS, lambda env: None, "-", expect_exit=0)


def _cell(text: str, width: int = 100) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", action="append", default=[], help="keep rows whose 'step: case' contains this (repeatable)")
    ap.add_argument("--controls", action="store_true", help="also run each step on the good workspace")
    ap.add_argument("--width", type=int, default=100, help="truncate first lines to this many characters")
    ap.add_argument("--keep", action="store_true", help="keep the workspace and print its folder")
    ap.add_argument("--isolate", action="store_true",
                    help="run the cases marked isolate (1 MB text) in a child process killed after --timeout; for "
                         "checking a build where they may still run for minutes")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds for an isolated (child process) try")
    args = ap.parse_args(argv)

    from umeflow.assets import fetch
    from umeflow.config import AssetsConfig

    assets = Path(os.environ.get("UMEFLOW_TEST_ASSETS", REPO / "state" / "assets")).resolve()
    fetch(AssetsConfig(cache_dir=str(assets)))
    tmp = tempfile.mkdtemp(prefix="umeflow-tries-")
    t0 = time.perf_counter()
    ws = bi.prepare_workspace(Path(tmp) / "ws", assets)
    print(f"workspace ready in {time.perf_counter() - t0:.0f} s: {ws.root}", file=sys.stderr)

    rows = ([(CONTROL, s) for s in bi.STEPS] if args.controls else []) + bi.pairs()
    rows = [(c, s) for c, s in rows if all(k.lower() in bi.pair_id(c, s).lower() for k in args.k)]
    print("| input | step | exit | first line | verdict |")
    print("|---|---|---|---|---|")
    counts: Counter[str] = Counter()
    by_area: dict[str, Counter] = {}
    grid: dict[str, dict[str, str]] = {}  # case → step → "exit verdict", for the compact matrix
    for case, step in rows:
        o = bi.try_case(case, step, ws, isolate=case.isolate and args.isolate, timeout=args.timeout)
        if case is not CONTROL:
            counts[o.verdict] += 1
            by_area.setdefault(case.area, Counter())[o.verdict] += 1
        verdict = o.verdict if o.verdict == "GOOD" else f"**{o.verdict}** ({_cell(o.reason, 60)})"
        code = "—" if o.exit_code is None else str(o.exit_code)
        grid.setdefault(case.name, {})[step] = f"{code} {o.verdict}"
        # paths inside the temporary workspace are shown from the case's folder: what the line names, not where
        first = _cell(o.first_line.replace(f"{ws.root}/cases/", "…/").replace(f"{ws.root}/", "…/"), args.width)
        print(f"| {_cell(case.name, 60)} | {step} | {code} | {first} | {verdict} |", flush=True)
        print(f"  {bi.pair_id(case, step)}: {o.verdict} in {o.seconds:.1f} s", file=sys.stderr)
    total = sum(counts.values())
    print()
    print(f"**{total} tries: {counts['GOOD']} GOOD, {counts['WEAK']} WEAK, {counts['BAD']} BAD**")
    print()
    print("| area | GOOD | WEAK | BAD |")
    print("|---|---|---|---|")
    for area, c in sorted(by_area.items()):
        print(f"| {area} | {c['GOOD']} | {c['WEAK']} | {c['BAD']} |")
    print()
    print("| input | " + " | ".join(bi.STEPS) + " |")
    print("|---|" + "---|" * len(bi.STEPS))
    for name, cells in grid.items():
        print(f"| {_cell(name, 60)} | " + " | ".join(cells.get(s, "") for s in bi.STEPS) + " |")
    print(f"(wall time {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.keep:
        print(f"workspace kept at {tmp}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
