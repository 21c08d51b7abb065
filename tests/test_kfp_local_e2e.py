"""The whole ``train_and_promote`` pipeline on the KFP local runner (what ``make run`` does), with a minimal recipe:
it must end in an MLflow ``champion`` whose eval metrics and lineage tags are recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from minimal_recipe import MINIMAL, REPO


@pytest.mark.slow  # ~110 s: the whole pipeline on kfp.local; `make test-all` and `make run` cover it
def test_train_and_promote_on_the_local_runner_ends_in_a_champion(tmp_path, assets_dir, monkeypatch):
    from mlflow import MlflowClient

    from umeflow.pipeline.local import run_local

    state = tmp_path / "state"
    state.mkdir()
    (state / "assets").symlink_to(Path(assets_dir).absolute())  # the session's extracted registry packages
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "UMEFLOW_PARENT_RUN_ID", "KFP_RUN_ID",
                "UMEFLOW_PIPELINE_RUN_ID"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("UMEFLOW_STATE", str(state))  # run_local sets both; monkeypatch restores them afterwards
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow' / 'mlflow.db'}")
    (state / "mlflow").mkdir()
    monkeypatch.chdir(tmp_path)  # run_local finds the checkout through UMEFLOW_REPO, not the cwd
    monkeypatch.setenv("UMEFLOW_REPO", str(REPO))

    out = run_local(str(REPO / "configs" / "tiny.yaml"), MINIMAL, state, eval_shards=2)

    run_dir = Path(out["run_dir"])
    report = Path(out["report"]).read_text()
    assert "FashionMNIST-cls" in report and "TuxPaint-I2T" in report
    shards = sorted(run_dir.glob("for-loop-*/evaluate-shard/scores/summary.json"))
    assert len(shards) == 2, "the evaluation fanned out over two shard tasks"
    scored = [set(json.loads(p.read_text())["tasks"]) for p in shards]
    assert not scored[0] & scored[1]
    (run_id,) = [p.name for p in (state / "runs").iterdir()]
    checkpoint = state / "runs" / run_id / "grpo" / "model"
    assert sorted(p.name for p in checkpoint.glob("*.safetensors"))

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("umeflow", "champion")
    tags = champion.tags
    assert tags["lineage.kfp_run_id"] == run_id  # every task of the run carried the pipeline run id
    for key in ("lineage.git_sha", "lineage.config_hash", "lineage.umeflow_version"):
        assert tags.get(key) and tags[key] != "unknown", key
    assert tags["umeflow.checkpoint"] == str(checkpoint.resolve())
    version_run = client.get_run(champion.run_id)
    merged = json.loads((run_dir / "merge-evaluation" / "evaluation" / "summary.json").read_text())
    assert set(merged["tasks"]) == scored[0] | scored[1]
    logged = next(v for k, v in version_run.data.metrics.items() if k.endswith("disc_disc.overall"))
    assert logged == pytest.approx(merged["aggregates"]["disc_disc"]["overall"], abs=1e-6)  # logged rounded
    # one parent run for the pipeline run, every step a child of it
    parent = client.search_runs([version_run.info.experiment_id],
                                f"tags.`umeflow.pipeline_run` = '{run_id}' and tags.`umeflow.role` = 'pipeline'")
    assert len(parent) == 1
    children = client.search_runs([version_run.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    steps = {r.data.tags.get("umeflow.step") for r in children}
    assert {"sft", "grpo", "register", "promote"} <= steps
