"""The ``umeflow`` command line as people expect it: --version, log options anywhere, Ctrl-C, stdout kept for
results, ``section.key`` overrides on every step, exit codes in --help. In-process calls of ``main`` (fast)."""

from __future__ import annotations

import logging
import sys
from importlib.metadata import version

import pytest

from umeflow import cli
from umeflow import config as C


@pytest.fixture
def data_run(monkeypatch):
    """``umeflow data build`` with its step replaced by a recorder (the CLI is under test, not the data step)."""
    seen = []
    monkeypatch.setattr("umeflow.steps.data.run", seen.append)
    return seen


@pytest.fixture
def log_level(monkeypatch):
    """The level ``main`` configures logging with."""
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw.get("level")))
    return levels


def test_version_prints_name_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"umeflow {version('umeflow')}\n"


@pytest.mark.parametrize("argv, level", [
    (["data", "build", "-v"], "DEBUG"),
    (["-q", "data", "build"], "WARNING"),
    (["data", "build", "--quiet"], "WARNING"),
    (["data", "build", "--log-level", "error"], "ERROR"),
    (["--log-level", "error", "data", "build"], "ERROR"),  # not reset by the sub-command's parser
    (["-v", "data", "build", "-q"], "WARNING"),  # the last one wins
])
def test_log_options_before_or_after_the_command(argv, level, data_run, log_level):
    assert cli.main(argv) == 0
    assert log_level == [level]
    assert len(data_run) == 1


def test_log_options_on_nested_and_pipeline_commands():
    parser = cli.build_parser()
    assert parser.parse_args(["run-local", "--config", "r.yaml", "-v"]).log_level == "DEBUG"
    assert parser.parse_args(["model", "init-tiny", "-q"]).log_level == "WARNING"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("umeflow.steps.data.run", interrupted)
    assert cli.main(["data", "build"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "umeflow data: interrupted\n"
    assert captured.out == ""


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for code, words in (("0", "success"), ("2", "user error"), ("3", "promotion gate"), ("130", "interrupted")):
        assert any(line.split()[:1] == [code] and words in line for line in out.splitlines()), (code, out)


def test_one_override_list_for_every_step(data_run):
    overrides = ["sft.max_steps=2", "grpo.recipe=embed_rl", "data.seed=7", "on_bad_record=skip"]
    assert cli.main(["data", "build", *[a for o in overrides for a in ("--set", o)]]) == 0
    (cfg,) = data_run
    assert (cfg.seed, cfg.on_bad_record) == (7, "skip")


def test_override_of_another_section_is_ignored_unknown_ones_are_errors():
    cfg = C.load_config(C.DataConfig, None, ["sft.max_steps=2", "seed=5"])
    assert cfg.seed == 5
    with pytest.raises(C.ConfigError, match="unknown section 'sftt'"):
        C.load_config(C.DataConfig, None, ["sftt.max_steps=2"])
    with pytest.raises(C.ConfigError, match="unknown key 'sed' for step 'data'"):
        C.load_config(C.DataConfig, None, ["data.sed=1"])


def test_unknown_override_section_exits_2_naming_it(capsys):
    assert cli.main(["data", "build", "--set", "sftt.max_steps=2"]) == 2
    assert "unknown section 'sftt'" in capsys.readouterr().err


def _stdout_logger(name: str) -> logging.Logger:
    """A library logger as DeepSpeed makes one: its own StreamHandler on sys.stdout, not propagating."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler(stream=sys.stdout))
    return logger


def test_third_party_banners_go_to_stderr(capsys):
    early = _stdout_logger("umeflow-test.early-banner")
    try:
        with cli._third_party_output_to_stderr():
            late = _stdout_logger("umeflow-test.late-banner")
            early.info("early banner")
            late.info("late banner")
            print("printed banner")
        print("the result")
        captured = capsys.readouterr()
        assert captured.out == "the result\n"
        assert all(b in captured.err for b in ("early banner", "late banner", "printed banner"))
    finally:
        for lg in (early, logging.getLogger("umeflow-test.late-banner")):
            lg.handlers.clear()


def test_init_tiny_stdout_is_only_the_path_fake_model(monkeypatch, capsys, tmp_path):
    """Building a model needs assets; a fake ``init_tiny`` that logs like DeepSpeed's import shows the wiring."""
    def fake_init_tiny(cfg):
        logger = _stdout_logger("umeflow-test.init-banner")
        logger.info("Setting ds_accelerator to cpu")
        logger.handlers.clear()
        return cfg.out

    monkeypatch.setattr("umeflow.model.tiny.init_tiny", fake_init_tiny)
    assert cli.main(["model", "init-tiny", "--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'm'}\n"
    assert "Setting ds_accelerator" in captured.err
