"""Shared pytest fixtures.

Everything runs offline: the hub is disabled for the whole session and data comes from the pinned registry assets.
"""

from __future__ import annotations

import os
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


# ---------------------------------------------------------------------------------------------- S3 (moto)

@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """A real S3-protocol server (moto) on 127.0.0.1, one per session; tests keep to their own buckets/prefixes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()

