"""Serving safety (issue #14 items 5 and 6): concurrent requests on one Embedder get their own embeddings, and the
served pyfunc reads no server files, answers every undecodable input alike, and maps user errors to HTTP 400 and
server faults to HTTP 500 without a traceback in the body."""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

GEN_TOKENS = 5
TEXTS = [f"query {i}: {w}" for i, w in enumerate(["a red square", "the colour blue", "two cats on a sofa",
                                                     "a bridge at night", "what is this?", "green leaves",
                                                     "a page of text", "an empty street"])]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    from umeflow.model.embedder import Embedder

    return Embedder(tiny_model_dir)


def _sequential(embedder, jobs):
    return [embedder.encode([{"text": t}], mode=m, max_new_tokens=GEN_TOKENS, progress=False).embeddings[0]
            for t, m in jobs]


def _concurrent(embedder, jobs):
    """Every job in its own thread, released together by a barrier so that the calls overlap."""
    barrier = threading.Barrier(len(jobs))

    def one(job):
        text, mode = job
        barrier.wait()
        return embedder.encode([{"text": text}], mode=mode, max_new_tokens=GEN_TOKENS, progress=False).embeddings[0]

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))  # re-raises the first exception of any thread


@pytest.mark.parametrize("modes", [["gen"], ["gen", "disc"]], ids=["gen", "gen-and-disc"])
def test_concurrent_encodes_on_one_embedder_equal_the_sequential_ones(embedder, modes):
    jobs = [(t, modes[i % len(modes)]) for i, t in enumerate(TEXTS)]
    expected = _sequential(embedder, jobs)
    gen = [e for e, (_, m) in zip(expected, jobs) if m == "gen"]
    assert max(_cos(a, b) for i, a in enumerate(gen) for b in gen[i + 1:]) < 0.9999  # items are told apart
    got = _concurrent(embedder, jobs)
    for (text, mode), e, g in zip(jobs, expected, got):
        assert g.shape == e.shape and _cos(g, e) >= 0.9999, (text, mode)


# ------------------------------------------------------------------------- the served pyfunc (item 6, weak items)

SETTINGS = {"mode": "disc", "max_new_tokens": GEN_TOKENS, "batch_size": 8}


def _png(path: Path, rgb=(200, 40, 40), size=(40, 30)) -> Path:
    Image.new("RGB", size, rgb).save(path)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The model as ``register`` logs it, saved locally and loaded by MLflow's own loader; MLflow's scoring server
    app (what ``mlflow models serve`` runs) on a uvicorn thread on 127.0.0.1; files a caller might name."""
    import mlflow
    import uvicorn
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.pyfunc import scoring_server

    from umeflow.registry.pyfunc import save_embedding_model

    tmp = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("UMEFLOW_SERVE_MEDIA_ROOT", raising=False)
        mp.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "false")  # init() sets it; restored afterwards
        save_embedding_model(tiny_model_dir, SETTINGS, tmp / "model")
        model = mlflow.pyfunc.load_model(str(tmp / "model"))
        server = uvicorn.Server(uvicorn.Config(scoring_server.init(model), host="127.0.0.1", port=0,  # any free one
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:  # started, or the thread died (then fail instead of waiting)
            assert thread.is_alive(), "uvicorn did not start"
            thread.join(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        files = tmp / "server-files"
        files.mkdir()
        res = {"model": model, "url": f"http://127.0.0.1:{port}/invocations", "tmp": tmp, "mp": mp,
               "png": _png(files / "secret.png"), "text": files / "notes.txt", "missing": files / "gone.png",
               "dir": files}
        res["text"].write_text("not an image\n")
        yield res
        server.should_exit = True
        thread.join(30)


def _post(url: str, frame: dict, params: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    body = {"dataframe_split": frame, **({"params": params} if params else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _error_line(body: dict) -> str:
    """Our message: MLflow prefixes it with "Failed to predict data '<the frame>'. \\nError: "."""
    return body["message"].rsplit("\nError: ", 1)[-1]


def test_served_image_paths_are_refused_alike_whether_an_image_not_an_image_missing_or_a_folder(served):
    from umeflow.registry.pyfunc import ServingInputError

    lines, local = set(), set()
    for path in (served["png"], served["text"], served["missing"], served["dir"], "/etc/hostname"):
        status, body = _post(served["url"], {"columns": ["image"], "data": [[str(path)]]})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", (path, body)
        assert "stack_trace" not in body and "Traceback" not in json.dumps(body)
        line = _error_line(body)
        assert "\n" not in line and str(path) not in line
        lines.add(line)
        with pytest.raises(ServingInputError) as err:
            served["model"].predict(pd.DataFrame({"image": [str(path)]}))
        local.add(str(err.value).rsplit("\nError: ", 1)[-1])
    assert len(lines) == 1 and lines == local, lines | local
    assert lines.pop().startswith("row 0, column 'image': not a usable image; expected base64")


def test_base64_and_data_url_images_are_embedded_like_the_embedders(served, embedder):
    png = served["png"]
    b64 = _b64(png)
    status, body = _post(served["url"], {"columns": ["text", "image"],
                                         "data": [["", b64], ["a red patch", "data:image/png;base64," + b64]]})
    assert status == 200, body
    got = np.asarray(body["predictions"], dtype=np.float32)
    want = embedder.encode([{"images": [Image.open(png).convert("RGB")]},
                            {"text": "a red patch", "images": [Image.open(png).convert("RGB")]}],
                           progress=False).embeddings
    assert got.shape == want.shape and min(_cos(g, w) for g, w in zip(got, want)) >= 0.9999
    for bad in ("data:image/png," + b64, "data:image/png;base64,AAAA", b64[: len(b64) // 2], "aGVsbG8="):
        status, body = _post(served["url"], {"columns": ["image"], "data": [[bad]]})
        assert status == 400 and _error_line(body).startswith("row 0, column 'image': not a usable image"), bad


def test_image_paths_are_served_only_inside_an_explicit_media_root(served, tmp_path, monkeypatch):
    import mlflow

    from umeflow.registry.pyfunc import ServingInputError

    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    inside = _png(root / "sub" / "a.png")
    outside = _png(tmp_path / "outside.png")
    (root / "link.png").symlink_to(outside)
    monkeypatch.setenv("UMEFLOW_SERVE_MEDIA_ROOT", str(root))
    model = mlflow.pyfunc.load_model(str(served["tmp"] / "model"))
    want = model.predict(pd.DataFrame({"image": [_b64(inside)]}))
    got = model.predict(pd.DataFrame({"image": ["sub/a.png", str(inside)]}))
    assert min(_cos(g, want[0]) for g in got) >= 0.9999
    messages = set()
    for value in (str(outside), "../outside.png", "sub/../../outside.png", "link.png", "sub", "sub/none.png",
                  str(served["text"])):
        with pytest.raises(ServingInputError) as err:
            model.predict(pd.DataFrame({"image": [value]}))
        messages.add(str(err.value).rsplit("\nError: ", 1)[-1])
    assert messages == {"row 0, column 'image': not a usable image; expected base64 image bytes or a "
                        "data:image/...;base64, URL or the path of an image file under the serving media root"}


def test_a_media_root_that_is_not_a_folder_is_refused_at_load(served, monkeypatch):
    import mlflow

    from umeflow.errors import UserError

    monkeypatch.setenv("UMEFLOW_SERVE_MEDIA_ROOT", str(served["missing"]))
    with pytest.raises(UserError, match="UMEFLOW_SERVE_MEDIA_ROOT=.* is not a folder"):
        mlflow.pyfunc.load_model(str(served["tmp"] / "model"))


def test_unknown_columns_are_named_with_the_accepted_ones(served):
    from umeflow.registry.pyfunc import ServingInputError, parse_inputs

    status, body = _post(served["url"], {"columns": ["txt"], "data": [["a"]]})
    assert status == 400
    assert _error_line(body) == ("the input has none of the accepted columns text, image, mode (MLflow drops any "
                                 "other column before the model sees it)")
    with pytest.raises(ServingInputError, match=r"unknown input column\(s\) \['txt', 'img'\]; the accepted columns "
                                                r"are text, image, mode"):
        parse_inputs({"text": ["a"], "txt": ["b"], "img": ["c"]}, "disc")


def test_user_errors_are_400_and_an_injected_internal_fault_is_500_without_details(served, monkeypatch):
    status, body = _post(served["url"], {"columns": ["text", "mode"], "data": [["a", "both"]]})
    assert status == 400 and _error_line(body) == "row 0, column 'mode': 'both' is not one of ['disc', 'gen']"
    assert "stack_trace" not in body

    def fault(*args, **kwargs):  # stands in for a server fault (a CUDA error, a bug): none can be caused on demand
        raise RuntimeError("model state broken at /srv/secret/weights")

    monkeypatch.setattr(served["model"].unwrap_python_model().embedder, "encode", fault)
    status, body = _post(served["url"], {"columns": ["text"], "data": [["a"]]})
    assert status == 500 and body["error_code"] == "INTERNAL_ERROR"
    assert _error_line(body) == "internal error while embedding; the server log has the details"
    assert "stack_trace" not in body and "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_concurrent_served_gen_requests_get_their_own_embeddings(served):
    texts = TEXTS[:8]
    expected = [served["model"].predict(pd.DataFrame({"text": [t]}), params={"mode": "gen"})[0] for t in texts]
    barrier = threading.Barrier(len(texts))

    def one(text):
        barrier.wait()
        return _post(served["url"], {"columns": ["text"], "data": [[text]]}, params={"mode": "gen"})

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(one, texts))
    assert [s for s, _ in answers] == [200] * len(texts), answers
    for (_, body), want in zip(answers, expected):
        assert _cos(np.asarray(body["predictions"][0], dtype=np.float32), want) >= 0.9999
