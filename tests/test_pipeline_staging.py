"""Checkpoint locations for pipeline tasks against a real S3 server (SeaweedFS on 127.0.0.1): a step writes to a
local staging folder that is published to ``s3://`` (trainer state excluded), and the next task mirrors it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from umeflow.errors import UserError
from umeflow.pipeline import staging

BUCKET = "ckpt"


@pytest.fixture
def s3(use_s3):
    return use_s3(BUCKET)


def _write_step_output(out: Path) -> None:
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"w" * 1000)
    (out / "model" / "config.json").write_text("{}")
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"o" * 5000)
    (out / "metrics.json").write_text('{"loss": 1}')


def test_output_dir_publishes_to_s3_without_trainer_state_and_local_copy_mirrors_it(s3, tmp_path):
    uri = f"s3://{BUCKET}/runs/r1/sft"
    with staging.output_dir(uri, tmp_path / "work-a", skip=("checkpoints",)) as out:
        assert out == staging.staged_path(uri, tmp_path / "work-a")  # deterministic: a retried pod resumes here
        _write_step_output(out)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/r1/sft/")["Contents"])
    assert keys == ["runs/r1/sft/metrics.json", "runs/r1/sft/model/config.json", "runs/r1/sft/model/model.safetensors"]

    # another pod (another work volume) gets the model back
    model = staging.local_copy(f"{uri}/model", tmp_path / "work-b")
    assert (model / "model.safetensors").read_bytes() == b"w" * 1000
    # a second call downloads nothing (sizes match)
    gets = []
    s3.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(kw))
    assert staging.local_copy(f"{uri}/model", tmp_path / "work-b", client=s3) == model
    assert gets == []


def test_failed_step_publishes_nothing(s3, tmp_path):
    uri = f"s3://{BUCKET}/runs/r2/sft"
    with pytest.raises(RuntimeError):
        with staging.output_dir(uri, tmp_path) as out:
            _write_step_output(out)
            raise RuntimeError("training diverged")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/r2/")


def test_missing_locations_are_user_errors(s3, tmp_path):
    with pytest.raises(UserError, match="holds no objects"):
        staging.local_copy(f"s3://{BUCKET}/nothing/here", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        staging.local_copy(str(tmp_path / "absent"), tmp_path)
    with pytest.raises(UserError, match="bucket does not exist"):
        staging.local_copy("s3://no-such-bucket/x", tmp_path)


def test_local_locations_are_used_in_place(tmp_path):
    uri = staging.join(str(tmp_path / "ck"), "run", "sft")
    assert uri == str(tmp_path / "ck" / "run" / "sft")
    assert staging.join("s3://b/prefix/", "run", "sft") == "s3://b/prefix/run/sft"
    with staging.output_dir(uri, tmp_path / "work") as out:
        assert out == Path(uri)
        _write_step_output(out)
    assert staging.local_copy(uri, tmp_path / "work") == Path(uri)
    assert not (tmp_path / "work" / "staged").exists()


def test_prepare_run_checks_the_s3_checkpoint_root(s3, tmp_path):
    from umeflow.pipeline.tasks import prepare_run

    info = prepare_run("configs/tiny.yaml", [], f"s3://{BUCKET}/runs", str(tmp_path), "kfp-1")
    assert info["run_root"] == f"s3://{BUCKET}/runs/kfp-1"
    with pytest.raises(UserError, match="missing-bucket/runs does not exist"):
        prepare_run("configs/tiny.yaml", [], "s3://missing-bucket/runs", str(tmp_path), "kfp-2")
