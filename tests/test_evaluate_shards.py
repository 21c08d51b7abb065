"""Sharded evaluation (the KFP fan-out): shards planned from the task set, scored separately, merged into the same
report a single run writes."""

from __future__ import annotations

import json

import pytest

from test_evaluate import ColourOracleEmbedder, _write_fixture
from umeflow.config import EvaluateConfig
from umeflow.errors import UserError
from umeflow.steps import evaluate

VOLATILE = {"seconds", "cache", "shards", "embedding_calls", "embedding_requests", "generation"}  # work done, not scores


@pytest.fixture
def oracle(monkeypatch):
    """The colour oracle stands in for the model, so scores are exact and the test takes a second."""
    import umeflow.model.embedder as embedder

    monkeypatch.setattr(embedder, "Embedder", lambda model, **kw: ColourOracleEmbedder(blind={"gen": ["red"]}))


def _cfg(root, out, tasks="offline", cache=""):
    return EvaluateConfig(model="oracle", data_root=str(root), tasks=tasks, mode="both", out=str(out),
                          max_new_tokens=4, cache_dir=cache)


def test_plan_shards_balances_by_queries_and_covers_every_task_once(tmp_path):
    root = _write_fixture(tmp_path / "data")
    tasks = json.loads((root / "tasks.json").read_text())
    tasks += [dict(tasks[0], name=f"Colors{i}", num_queries=n) for i, n in ((2, 9), (3, 1), (4, 2))]
    (root / "tasks.json").write_text(json.dumps(tasks))
    shards = evaluate.plan_shards(str(root), "offline", 2)
    names = [n for s in shards for n in s.split(",")]
    assert sorted(names) == sorted(t["name"] for t in tasks)  # each task exactly once
    load = [sum(next(t["num_queries"] for t in tasks if t["name"] == n) for n in s.split(",")) for s in shards]
    assert sorted(load) == [8, 9]  # 9 | 3+2+2+1: the largest task alone, the rest together
    assert evaluate.plan_shards(str(root), "offline", 10) == shards[:0] + evaluate.plan_shards(str(root), "offline", 5)
    assert len(evaluate.plan_shards(str(root), "offline", 10)) == len(tasks)  # never an empty shard
    with pytest.raises(UserError):
        evaluate.plan_shards(str(root), "offline", 0)


def test_merged_shards_equal_a_single_run(tmp_path, oracle):
    root = _write_fixture(tmp_path / "data")
    whole = evaluate.run(_cfg(root, tmp_path / "whole"))
    shard_dirs = []
    for i, spec in enumerate(evaluate.plan_shards(str(root), "offline", 2)):
        evaluate.run(_cfg(root, tmp_path / f"shard{i}", tasks=spec), log_to_mlflow=False)
        shard_dirs.append(tmp_path / f"shard{i}")
    merged = evaluate.merge_shards(_cfg(root, tmp_path / "merged"), shard_dirs)

    strip = lambda s: {k: v for k, v in s.items() if k not in VOLATILE}  # noqa: E731
    assert strip(merged) == strip(whole)
    assert sorted(t for s in merged["shards"] for t in s["tasks"]) == ["Clips", "Colors"]
    m_whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    m_merged = json.loads((tmp_path / "merged" / "metrics.json").read_text())
    assert {k: v for k, v in m_merged.items() if k not in VOLATILE} == {
        k: v for k, v in m_whole.items() if k not in VOLATILE}
    assert m_merged["embedding_requests"] == sum(
        json.loads((d / "metrics.json").read_text())["embedding_requests"] for d in shard_dirs)
    assert merged["aggregates"]["disc_disc"]["overall"] == whole["aggregates"]["disc_disc"]["overall"]
    for name in ("report.md", "categories.png", "per_query.json", "scores/Colors_gen_gen_score.json"):
        assert (tmp_path / "merged" / name).is_file(), name


def test_merge_refuses_overlapping_or_foreign_shards(tmp_path, oracle):
    root = _write_fixture(tmp_path / "data")
    evaluate.run(_cfg(root, tmp_path / "a", tasks="Colors"), log_to_mlflow=False)
    evaluate.run(_cfg(root, tmp_path / "b", tasks="Colors"), log_to_mlflow=False)
    with pytest.raises(UserError, match="more than one shard"):
        evaluate.merge_shards(_cfg(root, tmp_path / "m"), [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UserError, match="not part of --tasks"):
        evaluate.merge_shards(_cfg(root, tmp_path / "m", tasks="Clips"), [tmp_path / "a"])
    with pytest.raises(UserError, match="not an evaluate output"):
        evaluate.merge_shards(_cfg(root, tmp_path / "m"), [tmp_path / "nothing"])


def test_merge_logs_to_mlflow_once_and_shards_not_at_all(tmp_path, oracle, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = _write_fixture(tmp_path / "data")
    evaluate.run(_cfg(root, tmp_path / "s0", tasks="Colors"), log_to_mlflow=False)
    evaluate.run(_cfg(root, tmp_path / "s1", tasks="Clips"), log_to_mlflow=False)
    mlflow.set_tracking_uri(uri)
    assert mlflow.search_runs(search_all_experiments=True).empty
    evaluate.merge_shards(_cfg(root, tmp_path / "m"), [tmp_path / "s0", tmp_path / "s1"])
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs["metrics.eval.disc_disc.overall"].notna().all()


def test_cli_merge_flag(tmp_path, oracle):
    from umeflow.cli import main

    root = _write_fixture(tmp_path / "data")
    for name, spec in (("s0", "Colors"), ("s1", "Clips")):
        evaluate.run(_cfg(root, tmp_path / name, tasks=spec), log_to_mlflow=False)
    assert main(["evaluate", "--data-root", str(root), "--tasks", "offline", "--mode", "both", "--cache-dir", "",
                 "--out", str(tmp_path / "merged"), "--merge", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert set(summary["tasks"]) == {"Colors", "Clips"} and len(summary["shards"]) == 2
