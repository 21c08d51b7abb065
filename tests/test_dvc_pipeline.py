"""DVC wiring: dvc.yaml runs the step CLIs in order with the recipe as the one parameter source, and the project's
S3 remote pushes and pulls against a real S3 server (SeaweedFS on 127.0.0.1; credentials from the env only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from minimal_recipe import write_minimal_recipe

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
ORDER = ["assets", "data", "model", "annotate", "sft", "grpo", "evaluate", "register", "promote"]


def _dvc(*args, cwd, env=None, check=True, timeout=120):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})}
    out = subprocess.run([DVC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def _stages():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.name: s for s in repo.index.stages}


def test_stages_run_the_step_clis_in_order_from_the_recipe():
    recipe = yaml.safe_load((REPO / "params.yaml").read_text())["recipe"]
    sections = yaml.safe_load((REPO / recipe).read_text())
    stages = _stages()
    assert list(stages) == ORDER
    for name, stage in stages.items():
        command = {"model": "umeflow model init-tiny", "assets": "umeflow assets fetch",
                   "data": "umeflow data build"}.get(name, f"umeflow {name}")
        assert stage.cmd.startswith(f"{command} --config {recipe}"), stage.cmd
        tracked = {p.def_path: p.params for p in stage.deps if hasattr(p, "params")}
        assert tracked[recipe] == [name] and name in sections, (name, tracked)
    # each stage consumes what the previous ones produce
    deps = {name: {str(Path(d.def_path)) for d in s.deps} for name, s in stages.items()}
    assert {"state/models/tiny", "state/annotate"} <= deps["sft"]
    assert {"state/sft/model", "state/data/train"} <= deps["grpo"]
    assert "state/grpo/model" in deps["evaluate"] and "state/eval/grpo/summary.json" in deps["register"]
    assert "state/register/registration.json" in deps["promote"]


def test_metrics_and_plots_are_declared():
    stages = _stages()
    metrics = {str(o.def_path) for s in stages.values() for o in s.outs if o.metric}
    plots = {str(o.def_path) for s in stages.values() for o in s.outs if o.plot}
    assert {"state/eval/grpo/metrics.json", "state/sft/metrics.json", "state/grpo/metrics.json",
            "state/register/metrics.json"} <= metrics
    assert "state/eval/grpo/categories.png" in plots


def _dag_edges(cwd=REPO):
    """(upstream, downstream) pairs of `dvc dag --dot`, as DVC itself links outputs to dependencies."""
    dot = _dvc("dag", "--dot", cwd=cwd).stdout
    return {tuple(part.strip().strip('";') for part in line.split("->")) for line in dot.splitlines() if "->" in line}


def test_dvc_accepts_the_pipeline(tmp_path):
    edges = _dag_edges()
    for a, b in zip(ORDER, ORDER[1:]):
        if (a, b) not in {("data", "model"), ("model", "annotate")}:  # the model is built beside the data
            assert (a, b) in edges, (a, b, edges)
    assert {("assets", "model"), ("model", "sft")} <= edges
    remotes = _dvc("remote", "list", cwd=REPO).stdout
    assert "s3://umeflow-dvc/cache" in remotes and "(default)" in remotes.splitlines()[0]


def test_promote_runs_after_register_as_in_run_local():
    """`dvc repro` ends like `umeflow run-local` (pipelines/train_and_promote.py): register, then the promotion gate
    on the version register just made."""
    edges = _dag_edges()
    assert ("register", "promote") in edges
    assert not any(a == "promote" for a, _ in edges)  # the last stage: nothing consumes the decision
    promote = _stages()["promote"]
    assert promote.cmd.split()[:2] == ["umeflow", "promote"] and "--out state/promote" in promote.cmd
    outs = {str(o.def_path) for o in promote.outs}
    assert {"state/promote/decision.json", "state/promote/metrics.json"} <= outs


def _copy_checkout(repo: Path) -> None:
    """The checkout's tracked and unignored files (the working tree as it is, not HEAD) in a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)


def _changed(repo: Path) -> dict[str, set[str]]:
    """`dvc status --json` as {stage: the dependency paths it reports changed}."""
    status = json.loads(_dvc("status", "--json", cwd=repo).stdout or "{}")
    return {stage: {path for entry in entries if isinstance(entry, dict) for path in entry.get("changed deps", {})}
            for stage, entries in status.items()}


def test_a_code_change_marks_the_stages_that_import_it_changed(tmp_path):
    """Editing the prompt builder (src/umeflow/model/chat.py) or config.py in a copy of the checkout makes
    `dvc status` report sft, grpo and evaluate changed because of that code, not only the model stage.

    No stage runs: placeholder outputs stand in for real ones and `dvc commit --force` records the lock from them
    (the checked-in dvc.lock may be older than the working tree)."""
    repo = tmp_path / "repo"
    _copy_checkout(repo)
    for stage in _stages().values():
        for item in [*stage.outs, *stage.deps]:
            path = repo / str(getattr(item, "def_path", ""))
            if not str(item.def_path).startswith("state/") or path.exists():
                continue
            if path.suffix:  # a file output (json, md, png): any content will do
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
            else:
                path.mkdir(parents=True)
                (path / "placeholder").write_text("x")
    _dvc("commit", "--force", "-q", cwd=repo)
    assert _changed(repo) == {}  # the lock matches the copy

    chat = repo / "src" / "umeflow" / "model" / "chat.py"
    chat.write_text(chat.read_text() + "\n# an edit to the prompt builder\n")
    changed = _changed(repo)
    for stage in ("sft", "grpo", "evaluate", "annotate", "model"):
        assert "src/umeflow/model" in changed.get(stage, set()), (stage, changed)
    assert "register" in changed  # the registered model carries the package's code
    assert not {"assets", "promote"} & set(changed), changed

    config = repo / "src" / "umeflow" / "config.py"
    config.write_text(config.read_text() + "\n# an edit to the defaults\n")
    changed = _changed(repo)
    for stage in ("sft", "grpo", "evaluate"):
        assert "src/umeflow/config.py" in changed.get(stage, set()), (stage, changed)


def test_push_and_pull_through_the_projects_s3_remote(tmp_path, s3_server, use_s3):
    """A scratch repository with the project's .dvc/config: `dvc repro` a stage, `dvc push -r s3`, wipe the cache
    and outputs, `dvc pull -r s3` restores them byte for byte; the S3 endpoint and credentials come from the env."""
    env = s3_server.env
    use_s3("umeflow-dvc")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    shutil.copyfile(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "make.py").write_text(
        "import json, pathlib\n"
        "out = pathlib.Path('state/data'); out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'pairs.jsonl').write_text(''.join(json.dumps({'i': i}) + '\\n' for i in range(500)))\n"
        "(out / 'blob.bin').write_bytes(bytes(range(256)) * 40)\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"data": {
        "cmd": f"{sys.executable} make.py", "deps": ["make.py"], "outs": ["state/data"]}}}))
    _dvc("repro", "-q", cwd=repo, env=env)
    before = {p.name: p.read_bytes() for p in (repo / "state/data").iterdir()}
    assert "files pushed" in _dvc("push", "-r", "s3", cwd=repo, env=env).stdout

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "state")
    _dvc("pull", "-r", "s3", cwd=repo, env=env)
    assert {p.name: p.read_bytes() for p in (repo / "state/data").iterdir()} == before
    assert "up to date" in _dvc("status", cwd=repo, env=env).stdout.lower()
    config = (repo / ".dvc" / "config").read_text()
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # nothing from the env written
        assert env[var] not in config, var

    # without credentials the push fails loudly instead of silently skipping
    failed = _dvc("push", "-r", "s3", cwd=repo, check=False,
                  env={**env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL":
                       "http://127.0.0.1:9"})
    assert failed.returncode != 0


@pytest.mark.slow  # ~150 s on 2 cores; `make test-all` runs it. The fast tests above check the stages and the DAG
def test_dvc_repro_runs_the_whole_pipeline_then_only_what_changed(tmp_path, assets_dir):
    """`dvc repro` in a copy of the checkout on the minimal recipe: every stage runs and is locked, a second repro
    runs nothing, and changing one evaluate key reruns evaluate, register and promote only."""
    repo = tmp_path / "repo"
    _copy_checkout(repo)
    # the session's extracted registry packages, hard-linked: `umeflow assets fetch` finds them complete
    shutil.copytree(Path(assets_dir).absolute(), repo / "state" / "assets", copy_function=os.link)
    write_minimal_recipe(repo / "configs" / "minimal.yaml")
    (repo / "params.yaml").write_text("recipe: configs/minimal.yaml\n")
    (repo / "dvc.lock").unlink(missing_ok=True)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "UMEFLOW_STATE": str(repo / "state")}
    for var in ("MLFLOW_RUN_ID", "UMEFLOW_PARENT_RUN_ID", "KFP_RUN_ID"):
        env[var] = ""

    _dvc("repro", cwd=repo, env=env, timeout=900)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(ORDER) <= set(lock)
    assert lock["sft"]["params"]["configs/minimal.yaml"]["sft"]["max_steps"] == 2
    summary = json.loads((repo / "state" / "eval" / "grpo" / "summary.json").read_text())
    assert "FashionMNIST-cls" in summary["tasks"]
    assert (repo / "state" / "register" / "metrics.json").is_file()
    assert (repo / "state" / "promote" / "decision.json").is_file()

    again = _dvc("repro", cwd=repo, env=env, timeout=900).stdout
    assert "up to date" in again.lower() or all(f"Running stage '{s}'" not in again for s in ORDER), again

    recipe = yaml.safe_load((repo / "configs" / "minimal.yaml").read_text())
    recipe["evaluate"]["max_queries_per_task"] = 3
    (repo / "configs" / "minimal.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    changed = _dvc("repro", cwd=repo, env=env, timeout=900).stdout
    ran = {s for s in ORDER if f"Running stage '{s}'" in changed}
    assert ran == {"evaluate", "register", "promote"}, changed
