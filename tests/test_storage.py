"""DataRoot against a real S3 server (SeaweedFS on 127.0.0.1): loading through s3:// equals loading locally,
the download cache is reused, and missing keys, buckets and credentials are reported as user errors."""

from __future__ import annotations

import os

import pytest
from mmeb_fixtures import FIXTURE_TASKS, write_mmeb_fixture

from umeflow.errors import RecordError, UserError
from umeflow.evaluate.mmeb_v2 import mmeb_v2_task
from umeflow.evaluate.tasks import load_task
from umeflow.storage import DataRoot, upload_dir

BUCKET = "mmeb"


@pytest.fixture
def s3_env(use_s3, monkeypatch, tmp_path):
    monkeypatch.setenv("UMEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return use_s3(BUCKET)


@pytest.fixture(scope="module")
def local_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("local") / "mmeb"
    write_mmeb_fixture(root)
    return root


@pytest.fixture
def s3_tree(s3_env, local_tree, request):
    """The fixture tree uploaded under a prefix unique to the test."""
    uri = f"s3://{BUCKET}/{request.node.name}/v2"
    count = upload_dir(local_tree, uri, client=s3_env)
    assert count == sum(1 for p in local_tree.rglob("*") if p.is_file())
    return uri


def _count_gets(root: DataRoot) -> list:
    calls = []
    root.client.meta.events.register("before-parameter-build.s3.GetObject", lambda **kw: calls.append(kw["params"]["Key"]))
    return calls


def _relative(paths, base):
    return [os.path.relpath(p, base) for p in paths]


def test_s3_load_equals_local_load_and_reuses_the_cache(s3_tree, local_tree, tmp_path):
    cache = tmp_path / "s3cache"
    first = DataRoot(s3_tree, cache_dir=cache)
    gets = _count_gets(first)
    for name in FIXTURE_TASKS:
        meta = mmeb_v2_task(name)
        remote, local = load_task(meta, first), load_task(meta, local_tree)
        assert remote.labels == local.labels and remote.rel_scores == local.rel_scores, name
        assert list(remote.candidates) == list(local.candidates), name
        assert remote.query_candidates == local.query_candidates, name
        assert [q.text for q in remote.queries] == [q.text for q in local.queries], name
        for r, lq in zip(remote.queries, local.queries):
            assert _relative(r.images + (r.video or ()), first.local_root) == \
                _relative(lq.images + (lq.video or ()), local_tree), name
    assert gets, "the first load must download"
    assert all(k.startswith(first.prefix + "/") for k in gets)
    # only the 8 frames linspace picks from a 10-frame video are fetched, not the whole folder
    assert len([k for k in gets if "/frames/video_cls/K700/k2/" in k]) == 8
    assert not any(k.endswith("/k2/0004.jpg") for k in gets)
    mtimes = {p: p.stat().st_mtime_ns for p in first.local_root.rglob("*") if p.is_file()}

    again = DataRoot(s3_tree, cache_dir=cache)  # a new run: fresh listings, same cache
    gets_again = _count_gets(again)
    for name in FIXTURE_TASKS:
        load_task(mmeb_v2_task(name), again)
    assert gets_again == []
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_stale_cache_file_is_downloaded_again(s3_tree, tmp_path):
    root = DataRoot(s3_tree, cache_dir=tmp_path / "c")
    rel = "video-tasks/K700.jsonl"
    good = root.path(rel).read_bytes()
    root.path(rel).write_bytes(b"truncated")  # size differs from the object: not trusted
    fresh = DataRoot(s3_tree, cache_dir=tmp_path / "c")
    gets = _count_gets(fresh)
    assert fresh.path(rel).read_bytes() == good and len(gets) == 1


def test_listing_and_existence(s3_tree, tmp_path):
    root = DataRoot(s3_tree, cache_dir=tmp_path / "c")
    assert root.listdir("video-tasks/frames/video_cls/K700") == ["k1", "k2", "k3"]
    assert root.is_dir("video-tasks/frames/video_cls") and not root.is_file("video-tasks/frames/video_cls")
    assert root.is_file("video-tasks/K700.jsonl") and root.exists("video-tasks/K700.jsonl")
    assert not root.exists("video-tasks/Nope.jsonl") and not root.is_dir("video-tasks/Nope")
    with pytest.raises(UserError, match="folder s3://mmeb/.*/video-tasks/Nope does not exist"):
        root.listdir("video-tasks/Nope")


def test_missing_key_names_the_uri(s3_tree, s3_env, tmp_path):
    root = DataRoot(s3_tree, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match=f"{s3_tree}/image-tasks/nope.png does not exist"):
        root.path("image-tasks/nope.png")
    empty = f"s3://{BUCKET}/nothing-here"
    with pytest.raises(UserError, match=f"{empty}/video-tasks/MSR-VTT.jsonl or {empty}/video-tasks/MSR-VTT.parquet"):
        load_task(mmeb_v2_task("MSR-VTT"), DataRoot(empty, cache_dir=tmp_path / "c"))
    # a record whose media object is gone names the S3 annotation file, line and field
    prefix = s3_tree[len(f"s3://{BUCKET}/"):]
    s3_env.delete_object(Bucket=BUCKET, Key=f"{prefix}/image-tasks/images/dog.png")
    with pytest.raises(RecordError) as err:
        load_task(mmeb_v2_task("VisDial"), DataRoot(s3_tree, cache_dir=tmp_path / "c"))
    assert (err.value.path, err.value.line, err.value.field) == (f"{s3_tree}/image-tasks/VisDial.jsonl", 1,
                                                                  "tgt_img_path")
    assert f"{s3_tree}/image-tasks/images/dog.png does not exist" in str(err.value)


def test_missing_bucket_and_missing_credentials_are_user_errors(s3_env, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="bucket does not exist"):
        DataRoot("s3://no-such-bucket/x", cache_dir=tmp_path).is_file("a.json")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="no S3 credentials; set AWS_ACCESS_KEY_ID"):
        DataRoot(f"s3://{BUCKET}/x", cache_dir=tmp_path).is_file("a.json")


def test_local_root_and_uri_parsing(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    root = DataRoot(tmp_path)
    assert root.listdir() == ["d"] and root.is_file("d/f.txt") and root.path("d/f.txt") == tmp_path / "d/f.txt"
    assert DataRoot.of(root) is root and DataRoot.of(str(tmp_path)).local_root == tmp_path
    with pytest.raises(UserError, match="leaves the data root"):
        root.path("../etc/passwd")
    with pytest.raises(UserError, match="names no bucket"):
        DataRoot("s3:///prefix")
