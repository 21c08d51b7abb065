"""Issue #14's table-driven check: every bad input of ``tests/bad_inputs.py`` fed to every step that reads it.

Each (input, step) must end GOOD: exit 2 (or the documented status), exactly one ``umeflow <cmd>: error:`` line that
names the file (and line / field, or the key), no traceback anywhere in stdout, stderr or the log, and nothing in the
step's output that looks complete. ``tools/tries_table.py`` prints the same table with GOOD / WEAK / BAD counts.

The steps run in-process (``umeflow.cli.main``) on one small workspace built once for the module; each try copies
only what it breaks. Every bad input is refused before training or embedding starts, so each try is cheap.
"""

from __future__ import annotations

import pytest

import bad_inputs as bi


@pytest.fixture(scope="module")
def workspace(assets_dir, tmp_path_factory) -> bi.Workspace:
    return bi.prepare_workspace(tmp_path_factory.mktemp("bad-inputs") / "ws", assets_dir)


@pytest.mark.parametrize("case,step", bi.pairs(), ids=[bi.pair_id(c, s) for c, s in bi.pairs()])
def test_bad_input_is_refused_with_one_line_naming_it(case, step, workspace, tmp_path):
    # in-process even for the cases the tool isolates: refused by name, they cost no model work
    outcome = bi.try_case(case, step, workspace, case_dir=tmp_path / "case", isolate=False)
    assert outcome.verdict == "GOOD", outcome.explain()
