"""``umeflow submit`` / ``umeflow schedule`` against a mocked ``kfp.Client`` (there is no KFP API server here):
the calls, their arguments, and idempotency by recurring-run name."""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest import mock

import pytest

from umeflow.errors import UserError
from umeflow.pipeline import kfp_client
from umeflow.pipeline.local import import_pipelines

PACKAGE = str(import_pipelines().COMPILED_DIR / "train_and_promote.yaml")


class FakeKFP:
    """Records calls; keeps recurring runs in memory the way the API lists them (by experiment, paged)."""

    def __init__(self, page_size: int = 1):
        self.jobs: dict[str, SimpleNamespace] = {}
        self.calls: list[tuple[str, dict]] = []
        self.page_size = page_size
        self.created = 0

    def create_experiment(self, name):
        self.calls.append(("create_experiment", {"name": name}))
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def create_run_from_pipeline_package(self, **kw):
        self.calls.append(("create_run", kw))
        return SimpleNamespace(run_id="run-123")

    def list_recurring_runs(self, page_token="", page_size=10, experiment_id=None, filter=None):
        self.calls.append(("list", {"page_token": page_token, "experiment_id": experiment_id, "filter": filter}))
        name = json.loads(filter)["predicates"][0]["stringValue"]
        matching = [j for j in self.jobs.values() if j.experiment_id == experiment_id and j.display_name == name]
        start = int(page_token or 0)
        page = matching[start:start + self.page_size]
        nxt = str(start + self.page_size) if start + self.page_size < len(matching) else ""
        return SimpleNamespace(recurring_runs=page or None, next_page_token=nxt)

    def create_recurring_run(self, **kw):
        self.calls.append(("create_recurring_run", kw))
        self.created += 1
        job_id = f"job-{self.created}"
        self.jobs[job_id] = SimpleNamespace(recurring_run_id=job_id, display_name=kw["job_name"],
                                            description=kw["description"], experiment_id=kw["experiment_id"])
        return self.jobs[job_id]

    def delete_recurring_run(self, job_id):
        self.calls.append(("delete_recurring_run", {"id": job_id}))
        del self.jobs[job_id]

    def names(self):
        return [c[0] for c in self.calls]


def test_submit_mocked_sends_recipe_text_overrides_and_params(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  max_steps: 5\n")
    args = kfp_client.pipeline_arguments(PACKAGE, ["eval_shards=8", "node_selector={gpu: h100}"], str(recipe),
                                         ["sft.max_steps=7"])
    assert args == {"eval_shards": 8, "node_selector": {"gpu": "h100"}, "recipe": "sft:\n  max_steps: 5\n",
                    "overrides": ["sft.max_steps=7"]}
    fake = FakeKFP()
    assert kfp_client.submit(PACKAGE, args, "umeflow", "nightly", kfp=fake, pipeline_root="s3://b/kfp") == "run-123"
    (name, kw), = fake.calls
    assert name == "create_run"
    assert kw == {"pipeline_file": PACKAGE, "arguments": args, "run_name": "nightly", "experiment_name": "umeflow",
                  "pipeline_root": "s3://b/kfp", "service_account": None}


def test_submit_mocked_rejects_unknown_parameters_before_calling_the_server():
    with pytest.raises(UserError, match="eval_shardz"):
        kfp_client.pipeline_arguments(PACKAGE, ["eval_shardz=8"])


def test_schedule_mocked_is_idempotent_by_name():
    fake = FakeKFP()
    first = kfp_client.schedule(PACKAGE, "retrain", "0 0 3 * * 1", "umeflow", {"eval_shards": 4}, kfp=fake)
    assert first.action == "created"
    create = next(kw for n, kw in fake.calls if n == "create_recurring_run")
    assert create["cron_expression"] == "0 0 3 * * 1" and create["max_concurrency"] == 1
    assert create["no_catchup"] is True and create["pipeline_package_path"] == PACKAGE
    assert create["params"] == {"eval_shards": 4} and create["experiment_id"] == "exp-umeflow"

    again = kfp_client.schedule(PACKAGE, "retrain", "0 0 3 * * 1", "umeflow", {"eval_shards": 4}, kfp=fake)
    assert (again.action, again.recurring_run_id) == ("unchanged", first.recurring_run_id)
    assert fake.names().count("create_recurring_run") == 1 and "delete_recurring_run" not in fake.names()

    changed = kfp_client.schedule(PACKAGE, "retrain", "0 0 4 * * 1", "umeflow", {"eval_shards": 4}, kfp=fake)
    assert changed.action == "replaced" and changed.recurring_run_id != first.recurring_run_id
    assert list(fake.jobs) == [changed.recurring_run_id]  # replaced, never duplicated

    other = kfp_client.schedule(PACKAGE, "retrain-weekly", "0 0 4 * * 1", "umeflow", {}, kfp=fake)
    assert other.action == "created" and len(fake.jobs) == 2  # a different name is a different job


def test_schedule_mocked_collapses_duplicates_across_pages():
    fake = FakeKFP(page_size=1)
    for _ in range(2):  # e.g. two jobs created by hand with the same name
        fake.create_recurring_run(job_name="retrain", description="by hand", experiment_id="exp-umeflow")
    result = kfp_client.schedule(PACKAGE, "retrain", "0 0 3 * * *", "umeflow", {}, kfp=fake)
    assert result.action == "replaced" and list(fake.jobs) == [result.recurring_run_id]
    assert sum(1 for n, kw in fake.calls if n == "list" and kw["page_token"]) >= 1  # followed the second page


@pytest.mark.parametrize("cron", ["0 3 * * 1", "* * * * * * *", "0 0 3 * * mon;rm"])
def test_schedule_mocked_rejects_non_6_field_cron(cron):
    fake = FakeKFP()
    with pytest.raises(UserError, match="6 fields"):
        kfp_client.schedule(PACKAGE, "retrain", cron, "umeflow", {}, kfp=fake)
    assert fake.calls == []


def test_client_mocked_reads_endpoint_and_token_from_env(monkeypatch):
    monkeypatch.delenv("KFP_HOST", raising=False)
    with pytest.raises(UserError, match="KFP_HOST"):
        kfp_client.client()
    monkeypatch.setenv("KFP_HOST", "https://kfp.example")
    monkeypatch.setenv("KFP_TOKEN", "secret-token")
    monkeypatch.setenv("KFP_NAMESPACE", "team-a")
    with mock.patch("kfp.Client") as client_cls:
        kfp_client.client()
    client_cls.assert_called_once_with(host="https://kfp.example", existing_token="secret-token", namespace="team-a")


def test_cli_submit_and_schedule_mocked(monkeypatch, tmp_path, capsys):
    from umeflow.cli import main

    fake = FakeKFP()
    monkeypatch.setattr(kfp_client, "client", lambda host=None: fake)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  max_steps: 5\n")
    assert main(["submit", "--config", str(recipe), "--set", "sft.max_steps=9", "--param", "eval_shards=2",
                 "--run-name", "r1"]) == 0
    assert capsys.readouterr().out.strip() == "run-123"
    assert main(["schedule", "--config", str(recipe), "--cron", "0 0 3 * * *", "--name", "nightly"]) == 0
    assert capsys.readouterr().out.startswith("created job-1")
    assert main(["schedule", "--config", str(recipe), "--cron", "0 0 3 * * *", "--name", "nightly"]) == 0
    assert capsys.readouterr().out.startswith("unchanged job-1")
    assert main(["schedule", "--config", str(recipe), "--cron", "0 3 * * *", "--name", "nightly"]) == 2
    assert "6 fields" in capsys.readouterr().err


class FakeUploads(FakeKFP):
    def __init__(self):
        super().__init__()
        self.pipelines: dict[str, str] = {}
        self.versions: dict[str, list[str]] = {}

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, pipeline_package_path, pipeline_name, description=None):
        self.calls.append(("upload_pipeline", {"name": pipeline_name}))
        self.pipelines[pipeline_name] = f"p-{len(self.pipelines) + 1}"
        self.versions[self.pipelines[pipeline_name]] = [pipeline_name]  # KFP's implicit first version
        return SimpleNamespace(pipeline_id=self.pipelines[pipeline_name])

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10, filter=None):
        name = json.loads(filter)["predicates"][0]["stringValue"]
        found = [SimpleNamespace(display_name=v) for v in self.versions[pipeline_id] if v == name]
        return SimpleNamespace(pipeline_versions=found or None, next_page_token="")

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id):
        self.calls.append(("upload_pipeline_version", {"name": pipeline_version_name, "id": pipeline_id}))
        self.versions[pipeline_id].append(pipeline_version_name)


def test_upload_mocked_adds_one_version_per_package_content(tmp_path):
    fake = FakeUploads()
    first = kfp_client.upload(PACKAGE, "umeflow-train-and-promote", kfp=fake)
    assert first.action == "created" and first.version_name.startswith("umeflow-train-and-promote-")
    assert kfp_client.upload(PACKAGE, "umeflow-train-and-promote", kfp=fake).action == "unchanged"
    changed = tmp_path / "p.yaml"
    changed.write_text(open(PACKAGE).read() + "\n# rebuilt\n")
    second = kfp_client.upload(str(changed), "umeflow-train-and-promote", kfp=fake)
    assert second.action == "new-version" and second.version_name != first.version_name
    assert fake.names().count("upload_pipeline") == 1 and fake.names().count("upload_pipeline_version") == 2


def test_cli_accepts_the_helm_bootstrap_arguments_mocked(monkeypatch, capsys):
    """charts/umeflow's bootstrap Job runs exactly these commands (values.yaml bootstrap.steps)."""
    from umeflow.cli import main

    fake = FakeUploads()
    hosts = []
    monkeypatch.setattr(kfp_client, "client", lambda host=None: hosts.append(host) or fake)
    assert main(["upload", "--pipeline", PACKAGE, "--name", "umeflow-train-and-promote",
                 "--host", "http://ml-pipeline.kubeflow.svc.cluster.local:8888"]) == 0
    assert capsys.readouterr().out.startswith("created p-1 umeflow-train-and-promote-")
    assert main(["schedule", "--pipeline", PACKAGE, "--name", "umeflow-weekly-retrain", "--cron", "0 0 3 * * 1",
                 "--host", "http://ml-pipeline.kubeflow.svc.cluster.local:8888"]) == 0
    assert capsys.readouterr().out.startswith("created job-1")
    assert hosts == ["http://ml-pipeline.kubeflow.svc.cluster.local:8888"] * 2
