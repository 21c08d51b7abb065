"""MLflow registry: the promotion gate (pure), lineage, the run tree, and register → challenger → promote → champion
against a real ``mlflow server`` on 127.0.0.1, whose champion serves the Embedder's embeddings."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umeflow.errors import UserError
from umeflow.evaluate.report import aggregate
from umeflow.evaluate.tasks import TaskMeta
from umeflow.registry.gate import EvalSnapshot, PromotionPolicy, decide, resolve_required_tasks

# ------------------------------------------------------------------------------------------ gate (pure)

TASKS = [TaskMeta("I-cls", "image", "I-CLS"), TaskMeta("I-ret", "image", "I-RET"),
         TaskMeta("V-cls", "video", "V-CLS"), TaskMeta("V-smoke", "video", "V-CLS", smoke=True)]


def snapshot(scores: dict[str, float], column: str = "disc_disc", expected=TASKS) -> EvalSnapshot:
    """A snapshot of an evaluate summary.json whose aggregates come from the evaluate step's own ``aggregate``."""
    results = {name: {"scores": {column: {"hit@1": s}}} for name, s in scores.items()}
    summary = {"tasks": {t.name: {"meta": t.__dict__, **results[t.name]} for t in expected if t.name in results},
               "aggregates": {column: aggregate(expected, results, column)}}
    return EvalSnapshot.from_summary(json.loads(json.dumps(summary)), "summary.json", suite="offline")


BASE = {"I-cls": 0.6, "I-ret": 0.4, "V-cls": 0.5, "V-smoke": 0.0}


def test_gate_passes_the_first_model_without_a_champion():
    d = decide(snapshot(BASE), None, PromotionPolicy(min_overall=0.4, modality_floors={"image": 0.4},
                                                      min_gain=0.05))
    assert d.passed and d.reasons == []
    assert d.inputs["champion"] is None and d.inputs["candidate"]["overall"] == pytest.approx(0.5)
    assert any(c.name == "gain" and "no champion" in c.detail for c in d.checks)


def test_gate_passes_with_enough_gain_and_regression_within_tolerance():
    champ = snapshot(BASE)
    cand = snapshot({**BASE, "I-cls": 0.9, "V-cls": 0.49})  # overall +0.097, video −0.01
    d = decide(cand, champ, PromotionPolicy(min_gain=0.05, max_modality_regression=0.02))
    assert d.passed, d.reasons
    assert d.inputs["champion"]["modalities"] == {"image": pytest.approx(0.5), "video": pytest.approx(0.5)}


def test_gate_fails_on_overall_and_modality_floors():
    d = decide(snapshot(BASE), None, PromotionPolicy(min_overall=0.55, modality_floors={"video": 0.6, "visdoc": 0.1}))
    assert not d.passed
    failed = {c.name for c in d.checks if not c.passed}
    assert failed == {"floor_overall", "floor_video", "floor_visdoc"}  # visdoc: a floor but no score
    assert any("overall 0.5000 vs floor 0.5500" in r for r in d.reasons)


def test_gate_fails_on_a_modality_regression_beyond_tolerance_despite_overall_gain():
    champ = snapshot(BASE)
    cand = snapshot({**BASE, "I-cls": 1.0, "V-cls": 0.4})  # overall +0.1, video −0.1
    d = decide(cand, champ, PromotionPolicy(min_gain=0.0, max_modality_regression=0.05))
    assert not d.passed
    assert [c.name for c in d.checks if not c.passed] == ["regression_video"]
    assert decide(cand, champ, PromotionPolicy(max_modality_regression=0.1)).passed


def test_gate_fails_when_the_gain_over_the_champion_is_too_small():
    d = decide(snapshot({**BASE, "I-cls": 0.63}), snapshot(BASE), PromotionPolicy(min_gain=0.02))
    assert not d.passed and [c.name for c in d.checks if not c.passed] == ["gain"]


def test_gate_fails_on_an_incomplete_evaluation():
    partial = snapshot({"I-cls": 0.9, "I-ret": 0.9})  # V-cls missing: no overall, suite incomplete
    d = decide(partial, None, PromotionPolicy())
    assert not d.passed
    assert any("incomplete evaluation: 2 of 3 tasks" in r and "V-cls" in r for r in d.reasons)
    assert not decide(partial, None, PromotionPolicy(require_complete=False)).passed  # no overall → floor fails


def test_gate_fails_on_missing_required_tasks_and_on_task_sets_that_differ():
    required = PromotionPolicy(required_tasks=frozenset({"I-cls", "ImageNet-1K"}))
    d = decide(snapshot(BASE), None, required)
    assert not d.passed and any("ImageNet-1K" in r for r in d.reasons)
    other_suite = snapshot({"I-cls": 0.9, "V-cls": 0.9}, expected=[t for t in TASKS if t.name != "I-ret"])
    d = decide(other_suite, snapshot(BASE), PromotionPolicy())
    assert not d.passed and [c.name for c in d.checks if not c.passed] == ["comparable"]
    assert decide(other_suite, snapshot(BASE), PromotionPolicy(require_same_tasks=False)).passed


def test_gate_scores_the_configured_column_only():
    gen = snapshot(BASE, column="gen_gen")
    d = decide(gen, None, PromotionPolicy(column="disc_disc"))
    assert not d.passed and "no 'disc_disc' scores" in d.reasons[0]
    assert decide(gen, None, PromotionPolicy(column="gen_gen")).passed


def test_snapshot_round_trips_and_bad_summaries_name_the_field(tmp_path):
    snap = snapshot(BASE)
    assert EvalSnapshot.from_json(snap.to_json()) == snap
    assert snap.tasks == ("I-cls", "I-ret", "V-cls")  # smoke task not counted
    with pytest.raises(UserError, match=r"summary.json: field 'aggregates'"):
        EvalSnapshot.from_summary({"tasks": {}}, "summary.json")
    with pytest.raises(UserError, match="eval.snapshot"):
        EvalSnapshot.from_json("{not json", source="eval.snapshot")


def test_required_tasks_resolve_from_the_mmeb_v2_registry():
    assert len(resolve_required_tasks("mmeb-v2")) == 78
    assert resolve_required_tasks("ImageNet-1K,visdoc") >= {"ImageNet-1K", "ViDoRe_arxivqa"}
    with pytest.raises(UserError, match="data_root"):
        resolve_required_tasks("offline")


# ----------------------------------------------------------------------------------- lineage and runs

def test_lineage_prefers_env_records_unknowns_and_reads_dvc_lock_and_manifests(tmp_path, monkeypatch):
    from umeflow.config import EvaluateConfig, config_hash
    from umeflow.registry.lineage import lineage_tags

    for var in ("UMEFLOW_GIT_SHA", "UMEFLOW_IMAGE_DIGEST", "KFP_RUN_ID", "UMEFLOW_DVC_REV"):
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "state" / "data"
    (data / "eval").mkdir(parents=True)
    (data / "manifest.json").write_text(json.dumps({"content_hash": "c0ffee", "files": {"eval/tasks.json": {}}}))
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  data:\n    cmd: x\n    outs:\n"
                                       "    - path: state/data/eval\n      hash: md5\n      md5: abc123.dir\n")
    (tmp_path / ".git").mkdir()  # a repository root without commits: git answers nothing
    cfg = EvaluateConfig(model=str(tmp_path / "missing-model"), data_root=str(data / "eval"))
    tags = lineage_tags(cfg, cwd=tmp_path)
    assert tags["lineage.config_hash"] == config_hash(cfg)
    assert tags["lineage.image_digest"] == tags["lineage.kfp_run_id"] == tags["lineage.git_sha"] == "unknown"
    assert tags["lineage.dvc.state/data/eval"] == "abc123.dir"
    assert tags["lineage.input.data_root"] == "md5:abc123.dir"  # the DVC hash wins over the manifest
    assert tags["lineage.input.model"] == "unknown"
    (tmp_path / "dvc.lock").unlink()
    monkeypatch.setenv("UMEFLOW_GIT_SHA", "feedface")
    monkeypatch.setenv("KFP_RUN_ID", "run-42")
    monkeypatch.setenv("UMEFLOW_IMAGE_DIGEST", "sha256:1234")
    tags = lineage_tags(cfg, cwd=tmp_path)
    assert tags["lineage.git_sha"] == "feedface" and tags["lineage.kfp_run_id"] == "run-42"
    assert tags["lineage.image_digest"] == "sha256:1234" and tags["lineage.dvc_rev"] == "unknown"
    assert tags["lineage.input.data_root"] == "sha256:c0ffee"  # the data manifest's content hash


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    for var in ("MLFLOW_RUN_ID", "UMEFLOW_PARENT_RUN_ID", "UMEFLOW_PIPELINE_RUN_ID", "KFP_RUN_ID", "RANK"):
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_steps_of_one_pipeline_run_become_children_of_one_parent(sqlite_store, monkeypatch):
    import mlflow

    from umeflow.config import EvaluateConfig, PromoteConfig
    from umeflow.registry.runs import step_run

    monkeypatch.setenv("KFP_RUN_ID", "3f1c-run")
    with step_run("evaluate", EvaluateConfig()) as a:
        mlflow.log_metric("x", 1.0)
    with pytest.raises(RuntimeError):
        with step_run("promote", PromoteConfig()) as b:
            raise RuntimeError("boom")
    client = mlflow.MlflowClient(sqlite_store)
    ra, rb = client.get_run(a.run_id), client.get_run(b.run_id)
    assert a.parent_run_id and a.parent_run_id == b.parent_run_id
    assert ra.data.tags["mlflow.parentRunId"] == a.parent_run_id
    parent = client.get_run(a.parent_run_id)
    assert parent.data.tags["umeflow.pipeline_run"] == "3f1c-run" and parent.data.tags["umeflow.role"] == "pipeline"
    assert parent.info.status == "FAILED"  # mirrors its last step
    assert ra.info.status == "FINISHED" and rb.info.status == "FAILED"
    assert ra.data.tags["lineage.kfp_run_id"] == "3f1c-run" and ra.data.params["evaluate.mode"] == "both"
    assert ra.data.tags["lineage.config_hash"] != rb.data.tags["lineage.config_hash"]


def test_an_injected_mlflow_run_id_wins_and_is_hidden_while_the_step_runs(sqlite_store, monkeypatch):
    import mlflow

    from umeflow.config import SFTConfig
    from umeflow.registry.runs import pipeline_run, step_run

    client = mlflow.MlflowClient(sqlite_store)
    injected = client.create_run(client.create_experiment("kfp")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", injected)
    with step_run("sft", SFTConfig()) as s:
        assert "MLFLOW_RUN_ID" not in os.environ  # transformers' MLflowCallback logs into the active run
        assert mlflow.active_run().info.run_id == injected
    assert s.run_id == injected and os.environ["MLFLOW_RUN_ID"] == injected
    assert client.get_run(injected).data.tags["umeflow.step"] == "sft"
    monkeypatch.delenv("MLFLOW_RUN_ID")
    with pipeline_run("tiny") as parent:
        with step_run("sft", SFTConfig()) as child:
            pass
    assert child.parent_run_id == parent and client.get_run(parent).info.status == "FINISHED"
    assert "UMEFLOW_PARENT_RUN_ID" not in os.environ


def test_checkpoints_are_validated_and_eval_tags_are_valid_mlflow_names(tmp_path):
    from mlflow.utils.validation import _validate_tag_name

    from umeflow.registry.card import EvalOutput, eval_metrics, eval_tags
    from safetensors.numpy import save_file

    from umeflow.registry.pyfunc import validate_checkpoint

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(UserError, match=r"ckpt: config.json is missing"):
        validate_checkpoint(ckpt)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "pytorch_model.bin"):
        (ckpt / name).write_text("{}")
    with pytest.raises(UserError, match=r"pickled weight files \['pytorch_model.bin'\]"):
        validate_checkpoint(ckpt)
    (ckpt / "pytorch_model.bin").unlink()
    with pytest.raises(UserError, match=r"model.safetensors: not a complete safetensors file"):
        validate_checkpoint(ckpt)
    save_file({"w": np.zeros((2, 2), np.float32)}, str(ckpt / "model.safetensors"))
    assert validate_checkpoint(ckpt) == ckpt

    results = {t.name: {"scores": {"disc_disc": {"hit@1": 0.5}, "pass@4": {"hit@1": 0.75}}} for t in TASKS}
    summary = {"tasks": {t.name: {"meta": t.__dict__, **results[t.name]} for t in TASKS},
               "aggregates": {c: aggregate(TASKS, results, c) for c in ("disc_disc", "pass@4")}}
    ev = EvalOutput(tmp_path, summary, "# Evaluation\n", {}, EvalSnapshot.from_summary(summary, "summary.json"))
    tags = eval_tags(ev)
    for key in tags:
        _validate_tag_name(key)
    assert tags["eval.pass_at_4.overall"] == "0.75" and tags["eval.disc_disc.video"] == "0.5"
    assert eval_metrics(ev)["eval.disc_disc.I-CLS"] == 0.5 and "eval.snapshot" not in eval_metrics(ev)

    # the card names the training run from register's train.* tags (it used to read unprefixed keys: "unknown")
    from umeflow.registry.card import model_card
    from umeflow.steps.register import _training_tags

    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "hidden_size": 64}))
    (tmp_path / "run_info.json").write_text(json.dumps({"config_hash": "c0ffee", "mlflow_run_id": "r123"}))
    card = model_card("umeflow", "1", ckpt, ev, {}, _training_tags(ckpt),
                      {"mode": "disc", "max_new_tokens": 8, "batch_size": 2}, full=False)
    assert "config hash `c0ffee`, MLflow run `r123`" in card


def test_pyfunc_inputs_are_validated_with_row_and_column(tmp_path):
    from umeflow.registry.pyfunc import parse_inputs

    img = tmp_path / "a.png"
    Image.new("RGB", (28, 28), (1, 2, 3)).save(img)
    b64 = base64.b64encode(img.read_bytes()).decode()
    items, modes = parse_inputs({"text": ["x", None, ""], "image": [None, str(img), "data:image/png;base64," + b64],
                                 "mode": [None, "gen", None]}, "disc", root=tmp_path)  # paths: media root only
    assert modes == ["disc", "gen", "disc"]
    assert items[1].images[0].size == (28, 28) and items[2].images[0].size == (28, 28)
    with pytest.raises(UserError, match=r"row 1, column 'image'"):
        parse_inputs({"text": ["a", "b"], "image": [None, "not-a-file-nor-base64"]}, "disc")
    with pytest.raises(UserError, match=r"row 0, column 'mode'"):
        parse_inputs({"text": ["a"], "mode": ["both"]}, "disc")
    with pytest.raises(UserError, match=r"row 0: needs a 'text' or an 'image'"):
        parse_inputs({"text": [""]}, "disc")
    with pytest.raises(UserError, match="unknown input column"):
        parse_inputs({"txt": ["a"]}, "disc")


# ---------------------------------------------------------------- register → promote on a real mlflow server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a sqlite backend and a local artifact root on a free 127.0.0.1 port. Started without
    waiting, so the caller builds models while it boots; ``ready()`` waits for ``/health``."""

    def __init__(self, root: Path):
        self.root, port = root, _free_port()
        self.uri = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log = open(root / "server.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                                      f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
                                      str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                                      "--workers", "1"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: our own process group
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def _write_suite(root: Path) -> Path:
    """A one-task offline suite in the evaluate layout: colour squares classified among three colour names."""
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    images = root / "image-tasks" / "images"
    images.mkdir(parents=True)
    rows = []
    for name, rgb in colours.items():
        Image.new("RGB", (56, 56), rgb).save(images / f"{name}.png")
        rows.append({"qry_inst": "Represent the given image for classification", "qry_text": "",
                     "qry_img_path": f"{name}.png", "tgt_inst": "", "tgt_text": [name] + [c for c in colours if c != name],
                     "tgt_img_path": [""] * 3})
    (root / "image-tasks" / "Colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps([dict(name="Colors", modality="image", category="I-CLS",
                                                      file="image-tasks/Colors.jsonl", media_root="image-tasks/images",
                                                      num_queries=3)]))
    return root


def _perturbed_copy(src: Path, dst: Path) -> Path:
    """Another checkpoint: the same files with every weight nudged (a different model to the Embedder)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v
               for k, v in weights.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


PROBE_TEXTS = ["a red square", "the colour blue", "What colour is this square?", ""]


def _probe(tmp: Path) -> tuple[list[dict], list[dict]]:
    """Rows for the pyfunc and the same items for the Embedder: text, image path, base64 image, both."""
    img = tmp / "probe.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(img)
    b64 = base64.b64encode(img.read_bytes()).decode()
    rows = [{"text": PROBE_TEXTS[0], "image": None}, {"text": PROBE_TEXTS[1], "image": None},
            {"text": PROBE_TEXTS[2], "image": str(img)}, {"text": "", "image": b64}]
    items = [{"text": PROBE_TEXTS[0]}, {"text": PROBE_TEXTS[1]}, {"text": PROBE_TEXTS[2], "image": str(img)},
             {"text": "", "images": [Image.open(img).convert("RGB")]}]
    return rows, items


@pytest.fixture(scope="module")
def flow(mlflow_server, assets_dir, tmp_path_factory):
    """The whole scenario once: v1 registered → promoted (first champion) → promote again (no-op); champion loaded
    and asked for embeddings; v2 registered → rejected by the gate (CLI, --fail-on-reject); champion loaded again."""
    import mlflow
    import pandas as pd

    from umeflow.cli import main
    from umeflow.config import EvaluateConfig, ModelInitConfig, PromoteConfig, RegisterConfig
    from umeflow.model.tiny import init_tiny
    from umeflow.steps import evaluate, promote, register

    tmp = tmp_path_factory.mktemp("flow")
    res: dict = {"tmp": tmp}
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_RUN_ID", "UMEFLOW_PARENT_RUN_ID", "UMEFLOW_PIPELINE_RUN_ID", "RANK", "MLFLOW_TRACKING_URI"):
            mp.delenv(var, raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("UMEFLOW_GIT_SHA", "0123456789abcdef0123456789abcdef01234567")
        mp.setenv("UMEFLOW_IMAGE_DIGEST", "sha256:" + "ab" * 32)
        mp.setenv("KFP_RUN_ID", "8c1f2d3e-kfp-run")
        mp.setenv("UMEFLOW_SERVE_MEDIA_ROOT", str(tmp))  # the probe's image path is served from here

        # while the server boots: two checkpoints and their real evaluations (not tracked)
        v1 = init_tiny(ModelInitConfig(out=str(tmp / "v1"), assets_dir=str(assets_dir), tokenizer="compact"))
        v2 = _perturbed_copy(Path(v1), tmp / "v2")
        suite = _write_suite(tmp / "suite")
        for name, model in (("v1", v1), ("v2", v2)):
            evaluate.run(EvaluateConfig(model=str(model), data_root=str(suite), tasks="offline", mode="disc",
                                        out=str(tmp / f"eval-{name}"), cache_dir=str(tmp / "cache")))
        uri = res["uri"] = mlflow_server.ready()
        mp.setenv("MLFLOW_TRACKING_URI", uri)  # restored at the end: steps export the URI they use
        common = dict(tracking_uri=uri, model_name="umeflow")
        res["register_v1"] = register.run(RegisterConfig(model=str(v1), eval_dir=str(tmp / "eval-v1"),
                                                         out=str(tmp / "reg-v1"), max_new_tokens=8, **common))
        policy = dict(column="disc_disc", min_overall=0.0, floor_image=0.01, min_gain=0.0, **common)
        res["promote_1"] = promote.run(PromoteConfig(out=str(tmp / "promote-1"), **policy))
        client = mlflow.MlflowClient(uri)
        res["v1_tags_after_first"] = dict(client.get_model_version("umeflow", "1").tags)
        res["promote_again"] = promote.run(PromoteConfig(out=str(tmp / "promote-2"), **policy))
        res["v1_tags_after_again"] = dict(client.get_model_version("umeflow", "1").tags)

        rows, items = _probe(tmp)
        champion = mlflow.pyfunc.load_model("models:/umeflow@champion")
        frame = pd.DataFrame(rows)
        res["served"] = {"disc": champion.predict(frame),
                         "gen": champion.predict(frame, params={"mode": "gen", "max_new_tokens": 8}),
                         "mixed": champion.predict(frame.assign(mode=["gen", "disc", "gen", "disc"]),
                                                   params={"max_new_tokens": 8})}
        res["items"], res["v1"], res["v2"] = items, Path(v1), v2
        res["v1_version"] = client.get_model_version("umeflow", "1")
        res["register_run"] = client.get_run(res["register_v1"]["run_id"])
        res["promote_run"] = client.get_run(res["promote_1"]["run_id"])
        res["requirements"] = Path(mlflow.pyfunc.get_model_dependencies("models:/umeflow@champion")).read_text()

        try:  # v2 with v1's evaluation: refused before anything is logged
            register.run(RegisterConfig(model=str(v2), eval_dir=str(tmp / "eval-v1"), out=str(tmp / "reg-x"), **common))
        except UserError as e:
            res["foreign_eval_error"] = str(e)
        res["register_v2"] = register.run(RegisterConfig(model=str(v2), eval_dir=str(tmp / "eval-v2"),
                                                         out=str(tmp / "reg-v2"), max_new_tokens=8, **common))
        res["reject_exit"] = main(["promote", "--tracking-uri", uri, "--name", "umeflow",
                                   "--out", str(tmp / "promote-3"), "--fail-on-reject",
                                   "--set", "required_tasks=Colors,ImageNet-1K", "--set", f"data_root={suite}",
                                   "--set", "challenger_version=2"])
        try:  # a run that registered version 1 must not judge the newer challenger
            promote.run(PromoteConfig(out=str(tmp / "promote-x"), challenger_version="1", **policy))
        except UserError as e:
            res["stale_challenger_error"] = str(e)
        res["reject_decision"] = json.loads((tmp / "promote-3" / "decision.json").read_text())
        res["champion_after_reject"] = client.get_model_version_by_alias("umeflow", "champion")
        res["challenger_after_reject"] = client.get_model_version_by_alias("umeflow", "challenger")
        res["v2_version"] = client.get_model_version("umeflow", "2")
        res["served_after_reject"] = mlflow.pyfunc.load_model("models:/umeflow@champion").predict(frame)
    return res


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_champion_serves_the_embedders_embeddings_disc_and_gen(flow):
    from umeflow.model.embedder import Embedder

    emb = Embedder(flow["v1"])
    disc = emb.encode(flow["items"], mode="disc").embeddings
    gen = emb.encode(flow["items"], mode="gen", max_new_tokens=8).embeddings
    served = flow["served"]
    assert served["disc"].shape == disc.shape == (4, disc.shape[1]) and served["disc"].dtype == np.float32
    assert _cosines(served["disc"], disc).min() >= 0.999
    assert _cosines(served["gen"], gen).min() >= 0.999
    assert _cosines(served["mixed"][[0, 2]], gen[[0, 2]]).min() >= 0.999  # per-row mode column
    assert _cosines(served["mixed"][[1, 3]], disc[[1, 3]]).min() >= 0.999
    assert _cosines(disc, gen).min() < 0.99  # the two modes differ, so the comparison above means something
    assert "torch==2.13.0" in flow["requirements"] and "transformers==" in flow["requirements"]
    assert "torchvision" not in flow["requirements"]


def test_first_promotion_moves_champion_and_records_the_decision(flow):
    reg, first = flow["register_v1"], flow["promote_1"]
    assert reg["version"] == "1" and reg["alias"] == "challenger"
    assert first["status"] == "promoted" and first["champion_before"] is None and first["champion"] == "1"
    tags = flow["v1_tags_after_first"]
    assert tags["promotion.decision"] == "passed" and tags["promotion.champion_before"] == "none"
    inputs = json.loads(tags["promotion.inputs"])
    assert inputs["champion"] is None and inputs["policy"]["modality_floors"] == {"image": 0.01}
    assert inputs["candidate"]["overall"] == pytest.approx(float(tags["eval.disc_disc.overall"]))


def test_lineage_and_eval_tags_on_the_version_and_the_runs(flow):
    version, run, prun = flow["v1_version"], flow["register_run"], flow["promote_run"]
    for tags in (version.tags, run.data.tags, prun.data.tags):
        assert tags["lineage.git_sha"] == "0123456789abcdef0123456789abcdef01234567"
        assert tags["lineage.image_digest"] == "sha256:" + "ab" * 32
        assert tags["lineage.kfp_run_id"] == "8c1f2d3e-kfp-run"
        assert len(tags["lineage.config_hash"]) == 16 and "lineage.dvc_rev" in tags
    assert version.tags["lineage.input.model"].startswith("fp:")
    assert version.tags["lineage.input.eval_dir"].startswith("sha256:")
    assert version.tags["train.config_hash"] != "unknown"  # init-tiny's run_info.json
    snap = EvalSnapshot.from_json(version.tags["eval.snapshot"])
    assert snap.tasks == ("Colors",) and snap.columns["disc_disc"].complete
    assert version.tags["eval.disc_disc.image"] == version.tags["eval.disc_disc.overall"]
    assert "| **overall** |" in version.description and "models:/umeflow@champion" in version.description
    # one pipeline run (KFP_RUN_ID) → one parent; register and promote are its children
    assert run.data.tags["mlflow.parentRunId"] == prun.data.tags["mlflow.parentRunId"]
    assert run.data.params["register.model_name"] == "umeflow"
    assert float(run.data.metrics["eval.disc_disc.overall"]) == pytest.approx(snap.columns["disc_disc"].overall)
    card = (flow["tmp"] / "reg-v1" / "model_card.md").read_text()
    assert "## Per-task results" in card and "| Colors |" in card


def test_promote_is_idempotent_when_the_challenger_already_is_champion(flow):
    again = flow["promote_again"]
    assert again["status"] == "noop" and again["challenger"] == again["champion"] == "1"
    assert "already" in again["message"]
    assert flow["v1_tags_after_again"] == flow["v1_tags_after_first"]  # nothing rewritten


def test_register_refuses_an_evaluation_of_another_checkpoint(flow):
    assert "eval-v1/run_info.json: the evaluation scored model fingerprint" in flow["foreign_eval_error"]
    assert flow["register_v2"]["version"] == "2"  # nothing was registered by the refused attempt
    assert "is version 2, not version 1 (promote.challenger_version)" in flow["stale_challenger_error"]


def test_a_rejected_challenger_leaves_the_champion_unchanged(flow):
    assert flow["register_v2"]["version"] == "2"
    assert flow["reject_exit"] == 3  # --fail-on-reject
    decision = flow["reject_decision"]
    assert decision["status"] == "rejected" and decision["champion"] == "1"
    assert any("ImageNet-1K" in r for r in decision["decision"]["reasons"])
    assert str(flow["champion_after_reject"].version) == "1"
    assert str(flow["challenger_after_reject"].version) == "2"
    tags = flow["v2_version"].tags
    assert tags["promotion.decision"] == "rejected" and tags["promotion.champion_before"] == "1"
    assert "ImageNet-1K" in tags["promotion.reasons"]
    # the champion still serves v1's weights, not the rejected v2's
    np.testing.assert_allclose(flow["served_after_reject"], flow["served"]["disc"], atol=1e-5)
