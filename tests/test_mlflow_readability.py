"""MLflow as people read it (issue #16, item 5): the experiment says it is model training, run names say step and
model, and the evaluation plot names the model and the suite, with a chance line and value labels."""

from __future__ import annotations

import pytest

from umeflow.config import EvaluateConfig
from umeflow.evaluate.report import bar_figure, bar_plot, chance_by_group, plot_title
from umeflow.evaluate.tasks import TaskMeta
from umeflow.registry.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, model_label, step_run


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite store, and no run id or experiment name from the environment deciding where runs go."""
    for var in ("MLFLOW_RUN_ID", "UMEFLOW_PARENT_RUN_ID", "UMEFLOW_PIPELINE_RUN_ID", "KFP_RUN_ID",
                "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _eval_cfg(model: str) -> EvaluateConfig:
    return EvaluateConfig(model=model, tasks="offline", cache_dir="")


def test_step_run_tags_the_experiment_as_model_training(store):
    import mlflow

    with step_run("evaluate", _eval_cfg("state/sft/model"), tracking_uri=store) as run:
        assert run is not None
    exp = mlflow.MlflowClient(tracking_uri=store).get_experiment(run.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development" == EXPERIMENT_KIND


def test_an_existing_untagged_experiment_is_tagged_and_a_chosen_kind_is_kept(store):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    old = client.create_experiment("old")  # e.g. made by an earlier umeflow, or by hand
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "chosen"):
        with step_run("sft", _eval_cfg("state/models/tiny"), tracking_uri=store, experiment=name):
            pass
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_two_evaluations_of_different_models_get_run_names_that_name_them(store):
    import mlflow

    ids = []
    for model in ("state/sft/model", "state/grpo/model"):
        with step_run("evaluate", _eval_cfg(model), tracking_uri=store) as run:
            ids.append(run.run_id)
    client = mlflow.MlflowClient(tracking_uri=store)
    names = [client.get_run(i).info.run_name for i in ids]
    assert names == ["evaluate · sft/model", "evaluate · grpo/model"]
    assert model_label("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"  # a hub id stays whole


def _suite():
    """Two scored categories (one with chance known for both its tasks), one NDCG task (no chance), a smoke task."""
    tasks = [TaskMeta(name="a", modality="image", category="I-CLS"),
             TaskMeta(name="b", modality="image", category="I-CLS"),
             TaskMeta(name="d", modality="visdoc", category="VDRv1", metric="ndcg_linear@5"),
             TaskMeta(name="s", modality="video", category="V-CLS", smoke=True)]
    results = {"a": {"scores": {"disc_disc": {"hit@1": 0.9}, "gen_gen": {"hit@1": 0.5}}, "chance": 1 / 3},
               "b": {"scores": {"disc_disc": {"hit@1": 0.7}, "gen_gen": {"hit@1": 0.25}}, "chance": 0.1},
               "d": {"scores": {"disc_disc": {"ndcg_linear@5": 0.4}, "gen_gen": {"ndcg_linear@5": 0.2}},
                     "chance": None},
               "s": {"scores": {"disc_disc": {"hit@1": 1.0}, "gen_gen": {"hit@1": 1.0}}, "chance": 0.5}}
    return tasks, results


def test_chance_of_a_bar_is_the_mean_chance_of_the_tasks_it_averages():
    tasks, results = _suite()
    chance = chance_by_group(tasks, results)
    assert chance["I-CLS"] == pytest.approx((1 / 3 + 0.1) / 2, rel=1e-9)
    assert chance["VDRv1"] is None and chance["overall"] is None  # an NDCG task has no simple chance level


def test_plot_names_model_and_suite_and_shows_chance_and_value_labels(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    tasks, results = _suite()
    assert plot_title("state/grpo/model", "offline") == "grpo/model on offline"
    fig = bar_figure(tasks, results, "state/grpo/model", "offline")
    ax = fig.axes[0]
    assert "grpo/model" in ax.get_title() and "offline" in ax.get_title()
    texts = {t.get_text() for t in ax.texts}
    # I-CLS: disc (90 + 70) / 2, gen (50 + 25) / 2; VDRv1: 40, 20; overall over a, b, d: 66.7, 31.7
    assert {"80.0", "37.5", "40.0", "20.0", "66.7", "31.7"} <= texts
    dashed = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label() == "chance"]
    assert len(dashed) == 1 and dashed[0].get_segments()[0][0][1] == pytest.approx(100 * (1 / 3 + 0.1) / 2, rel=1e-9)
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().y0 < ax.get_window_extent().y0  # below the bars
    plt.close(fig)
    bar_plot(tasks, results, tmp_path / "categories.png", "state/grpo/model", "offline")
    assert (tmp_path / "categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_chance_level_counts_each_querys_own_candidates():
    from umeflow.evaluate.runner import chance_level
    from umeflow.evaluate.tasks import TaskData

    meta = TaskMeta(name="t", modality="image", category="I-CLS")
    local = TaskData(meta, queries=[None, None], labels=[["x"], ["y"]], candidates={},
                     query_candidates=[["x", "y", "z"], ["x", "y", "z", "w", "v"]])
    assert chance_level(meta, local, ["x", "y", "z", "w", "v"]) == pytest.approx((1 / 3 + 1 / 5) / 2, rel=1e-9)
    pooled = TaskData(meta, queries=[None], labels=[["x"]], candidates={}, query_candidates=None)
    assert chance_level(meta, pooled, ["x", "y", "z", "w"]) == pytest.approx(0.25, rel=1e-9)
    ndcg = TaskMeta(name="d", modality="visdoc", category="VDRv1", metric="ndcg_linear@5")
    assert chance_level(ndcg, pooled, ["x"]) is None
