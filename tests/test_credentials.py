"""Credentials in a tracking URI (issue #14, item 4) and an unreachable tracking server.

A URI such as ``http://alice:<password>@host:port`` is accepted: its credentials move to
``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` and nothing a step writes, prints or logs holds them — checked with
passwords holding ``/``, ``@``, ``:`` and ``%`` against a real ``mlflow server`` on 127.0.0.1. An unreachable server
fails in one line after a bounded number of attempts.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from test_registry import MlflowServer, _write_suite
from umeflow.tracking import HTTP_RETRY_DEFAULTS, redact_text, redact_uri, split_credentials

USER = "alice"
# every character that breaks naive parsing: "/" ends the authority, "@" the userinfo, ":" the user name, "%" an escape
PASSWORD = "Hx9/q@Z:7%zzSECRET"
ENCODED = quote(PASSWORD, safe="")  # Hx9%2Fq%40Z%3A7%25zzSECRET
# what must never be written anywhere: the password raw and encoded, its head and tail (a cut at the wrong "@" or
# "/" leaks one of them), and the HTTP Basic header value
NEEDLES = [PASSWORD, ENCODED, "Hx9/q", "zzSECRET", base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]

ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "UMEFLOW_PARENT_RUN_ID", "UMEFLOW_PIPELINE_RUN_ID", "KFP_RUN_ID",
            "RANK", "UMEFLOW_STATE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture
def clean_env(monkeypatch):
    """None of the variables the steps read or write; every one restored afterwards (the steps set some)."""
    for var in ENV_VARS:
        monkeypatch.setenv(var, "x")  # recorded, so teardown restores the original (set or absent)
        monkeypatch.delenv(var)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return monkeypatch


def _leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


def _leaking_files(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            data = path.read_bytes()
            found += [f"{path}: {n!r}" for n in NEEDLES if n.encode() in data]
    return found


# ------------------------------------------------------------------------------------------ parsing (pure)

@pytest.mark.parametrize("uri, clean, user, password", [
    (f"http://{USER}:{ENCODED}@127.0.0.1:5000", "http://127.0.0.1:5000", USER, PASSWORD),
    (f"http://{USER}:{PASSWORD}@127.0.0.1:5000/", "http://127.0.0.1:5000/", USER, PASSWORD),  # raw / @ : %
    ("https://a%40b:p%3Aw@mlflow.example.com/prefix", "https://mlflow.example.com/prefix", "a@b", "p:w"),
    ("http://alice:12/ab@host:80", "http://host:80", "alice", "12/ab"),  # a "/" right after a numeric "port"
    ("s3://key:sec/ret@bucket/path", "s3://bucket/path", "key", "sec/ret"),
    ("http://token@host", "http://host", "token", ""),
    ("http://u:p@[::1]:5000", "http://[::1]:5000", "u", "p"),
])
def test_credentials_are_split_off_uris_with_reserved_characters(uri, clean, user, password):
    assert split_credentials(uri) == (clean, user, password)
    assert redact_uri(uri) == clean
    masked = redact_text(f"request to '{uri}/api/2.0' failed")
    assert masked == f"request to '{clean.replace('://', '://***@', 1)}/api/2.0' failed"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:////tmp/a@b/mlflow.db", "s3://bucket/key@v1",
                                 "models:/umeflow@champion", "file:///tmp/x", "databricks", ""])
def test_uris_without_credentials_are_left_alone(uri):
    assert split_credentials(uri) == (uri, None, None)
    assert redact_text(f"at {uri}.") == f"at {uri}."


def test_the_registry_mask_hides_a_password_with_a_slash():
    from umeflow.registry.runs import mask

    assert not _leaks(mask(f"MLflow at http://{USER}:{PASSWORD}@host:5000: denied"))


def test_credentials_in_mlflow_tracking_uri_move_to_the_credential_variables(clean_env):
    from umeflow.tracking import tracking_uri

    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{ENCODED}@127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"  # what subprocesses inherit
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (USER, PASSWORD)


def test_the_config_hash_does_not_depend_on_credentials():
    """A short hash of an otherwise known config would let anyone test password guesses offline."""
    from umeflow.config import EvaluateConfig, config_hash

    hashes = {config_hash(EvaluateConfig(tracking_uri=f"http://{USER}:{pw}@h:5000")) for pw in (PASSWORD, "guess")}
    assert len(hashes) == 1
    assert config_hash(EvaluateConfig(tracking_uri="http://h:5000")) != hashes.pop()  # the URI itself still counts


def test_tracking_and_registry_uris_with_different_credentials_are_refused(clean_env):
    from umeflow.config import PromoteConfig
    from umeflow.errors import UserError
    from umeflow.tracking import accept_config_credentials

    cfg = PromoteConfig(tracking_uri=f"http://{USER}:{ENCODED}@h:1", registry_uri="http://bob:other@h:2")
    with pytest.raises(UserError) as e:
        accept_config_credentials(cfg)
    assert not _leaks(str(e.value)) and "other" not in str(e.value)


# ------------------------------------------------ evaluate → register → promote on a real mlflow server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("cred-server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def checkpoint_and_suite(assets_dir, tmp_path_factory):
    from umeflow.config import ModelInitConfig
    from umeflow.model.tiny import init_tiny

    tmp = tmp_path_factory.mktemp("cred-model")
    model = init_tiny(ModelInitConfig(out=str(tmp / "model"), assets_dir=str(assets_dir), tokenizer="compact"))
    return Path(model), _write_suite(tmp / "suite")


def test_no_step_writes_prints_or_logs_the_tracking_password(server, checkpoint_and_suite, clean_env, tmp_path,
                                                              capfd, caplog):
    import mlflow
    from mlflow.tracking._tracking_service.utils import get_default_host_creds

    from umeflow.cli import main

    model, suite = checkpoint_and_suite
    clean = server.ready()
    host = clean.split("://", 1)[1]
    clean_env.chdir(tmp_path)  # anything written relative to the cwd (./mlruns, ./state) is scanned too
    caplog.set_level("DEBUG")

    # evaluate: a properly percent-encoded password in the config
    assert main(["evaluate", "--model", str(model), "--data-root", str(suite), "--tasks", "offline", "--mode", "disc",
                 "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache"),
                 "--set", f"tracking_uri=http://{USER}:{ENCODED}@{host}"]) == 0
    # register: the raw password (/ @ : % unencoded) on the command line
    assert main(["register", "--model", str(model), "--eval-dir", str(tmp_path / "eval"), "--name", "credtest",
                 "--out", str(tmp_path / "register"), "--tracking-uri", f"http://{USER}:{PASSWORD}@{host}",
                 "--set", "max_new_tokens=4"]) == 0
    # promote: credentials in MLFLOW_TRACKING_URI, as a cluster secret would pass them
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{ENCODED}@{host}")
    clean_env.delenv("MLFLOW_TRACKING_USERNAME")
    clean_env.delenv("MLFLOW_TRACKING_PASSWORD")
    assert main(["promote", "--name", "credtest", "--out", str(tmp_path / "promote"),
                 "--set", "min_overall=0", "--set", "floor_image=0"]) == 0

    # the credentials reached MLflow through its variables, and the URI everyone sees is the clean one
    assert os.environ["MLFLOW_TRACKING_URI"] == clean
    creds = get_default_host_creds(clean)
    assert (creds.username, creds.password) == (USER, PASSWORD)
    version = mlflow.MlflowClient(clean).get_model_version_by_alias("credtest", "champion")
    assert version.version == "1"
    recorded = {step: json.loads((tmp_path / step / "run_info.json").read_text())["config"]["tracking_uri"]
                for step in ("eval", "register", "promote")}
    # evaluate records the configured URI masked, register the URI it used, promote none (it came from the env)
    assert recorded == {"eval": f"http://***@{host}", "register": clean, "promote": ""}
    assert json.loads((tmp_path / "register" / "registration.json").read_text())["tracking_uri"] == clean

    out, err = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert host in out + err + logs  # the server was named (MLflow's "View run … at", our log lines), cleanly
    assert not _leaks(out), out
    assert not _leaks(err), err
    assert not _leaks(logs), logs
    assert not _leaking_files(tmp_path, server.root)  # step outputs, caches, the store, its artifacts, server log


def test_run_local_summary_and_tasks_get_the_uri_without_credentials_pipeline_mocked(clean_env, tmp_path, capfd):
    """The pipeline itself is replaced (a real ``run-local`` trains for minutes): what matters here is the
    environment its tasks inherit and the final JSON."""
    import umeflow.pipeline.local as local_mod
    from umeflow.cli import main

    seen = {}

    def train_and_promote(**kwargs):
        seen.update({k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                                     "MLFLOW_TRACKING_PASSWORD")})
        (Path(kwargs["work_dir"]) / "kfp" / "run-1").mkdir(parents=True)

    class Pipelines:
        @staticmethod
        def pipelines():
            return {"train_and_promote": train_and_promote}

    clean_env.setattr(local_mod, "import_pipelines", lambda root=None: Pipelines)
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@127.0.0.1:5000")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    assert main(["run-local", "--config", str(recipe), "--state", str(tmp_path / "state")]) == 0

    out, err = capfd.readouterr()
    summary = json.loads(out[out.index("{"):])
    assert summary["tracking_uri"] == "http://127.0.0.1:5000"
    assert seen == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_TRACKING_USERNAME": USER,
                    "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    assert not _leaks(out + err)


# ------------------------------------------------------------------------------- unreachable tracking server

class DroppingServer:
    """A TCP port that accepts every connection and closes it at once (a server that is down behind its port):
    counts how often the client tries."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.attempts = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts += 1
            conn.close()

    def close(self):
        self.sock.close()


def test_an_unreachable_server_fails_in_one_line_after_bounded_retries(clean_env, tmp_path, capfd):
    from umeflow.cli import main

    # only the pause between tries is the user's here (none, to keep the test short); the number of tries is ours
    clean_env.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    clean_env.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    dead = DroppingServer()
    try:
        code = main(["promote", "--name", "credtest", "--out", str(tmp_path / "promote"),
                     "--tracking-uri", f"http://{USER}:{PASSWORD}@127.0.0.1:{dead.port}"])
    finally:
        dead.close()
    out, err = capfd.readouterr()
    assert code == 2
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "0"  # a value the user set is kept
    assert dead.attempts == 1 + int(HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    errors = [line for line in err.splitlines() if line.startswith("umeflow promote: error:")]
    assert len(errors) == 1 and f"MLflow at http://127.0.0.1:{dead.port}" in errors[0], err
    assert "Traceback" not in err
    assert not _leaks(out + err)
    assert not (tmp_path / "promote").exists()


def test_retry_defaults_apply_only_where_the_user_set_nothing(clean_env):
    from umeflow.tracking import tracking_uri

    clean_env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    assert tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    assert tracking_uri(None) is None
