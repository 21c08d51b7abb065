"""Training safety nets (issue #14 item 9) that need no training run: the GRPO format guard's rule, and the tiny
recipe's gate floors against the offline suite's chance level. The training-run tests of resume identity,
half-written checkpoints, time caps and the format guard are in test_sft.py and test_grpo.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_format_guard_passes_a_healthy_run_and_catches_fallbacks_alone():
    from transformers import TrainerControl, TrainerState

    from umeflow.train.grpo import FormatGuard

    def feed(guard, rows):
        state, control = TrainerState(), TrainerControl()
        for step, (fmt, fallback) in enumerate(rows, start=1):
            state.global_step = step
            guard.on_log(None, state, control, logs={"rewards/format/mean": fmt, "embedding/fallback_rate": fallback})
        return control.should_training_stop

    healthy = [(0.9, 0.1), (0.6, 0.3), (0.95, 0.05), (0.8, 0.2)]  # from a real tiny run's first steps
    assert not feed(FormatGuard(3, 0.05, 0.5, "rewards/format/mean"), healthy)
    guard = FormatGuard(3, 0.05, 0.5, "rewards/format/mean")
    assert feed(guard, [(0.3, 0.7), (0.2, 0.8), (0.3, 0.7)]) and "fallback_rate 0.733 > " in guard.message
    # early steps are not judged, and 0 turns the guard off
    assert not feed(FormatGuard(5, 0.05, 0.5, "rewards/format/mean"), [(0.0, 1.0)] * 4)
    resumed = FormatGuard(3, 0.05, 0.5, "rewards/format/mean")  # resumed at step 50: judged once 3 steps are logged
    state, control = TrainerState(), TrainerControl()
    for step in (51, 52):
        state.global_step = step
        resumed.on_log(None, state, control, logs={"rewards/format/mean": 0.0, "embedding/fallback_rate": 1.0})
        assert not control.should_training_stop
    state.global_step = 53
    resumed.on_log(None, state, control, logs={"rewards/format/mean": 0.0, "embedding/fallback_rate": 1.0})
    assert control.should_training_stop and "rewards/format/mean 0.000 < grpo.min_format_rate" in resumed.message
    assert not feed(FormatGuard(0, 0.05, 0.5, "rewards/format/mean"), [(0.0, 1.0)] * 4)


# ---------------------------------------------------------------------------------------- gate floors

def offline_suite_chance(assets_dir: Path) -> float:
    """Chance Hit@1 of the offline suite's overall score, from the suite's definition (umeflow.data.build): each
    averaged task ranks its query's own candidates, so chance is 1 / candidates, averaged over the tasks."""
    from umeflow.config import DataConfig, load_config
    from umeflow.data import sources as src
    from umeflow.data.build import in_eval_split
    from umeflow.errors import BadRecordCounter

    data = load_config(DataConfig, REPO / "configs" / "tiny.yaml", assets_dir=str(assets_dir))
    stamps = [s for s in src.tuxpaint_stamps(data.assets_dir, BadRecordCounter("skip"))
              if in_eval_split(s.stem, data.eval_tuxpaint_fraction)]
    captions = {s.caption.strip().lower() for s in stamps}
    retrieval = min(data.eval_retrieval_candidates, len(captions))
    per_task = {"FashionMNIST-cls": 1 / len(src.FASHION_CLASSES), "FashionMNIST-VQA": 1 / 2,  # yes / no
                "Digits-cls": 1 / len(src.DIGIT_WORDS), "TuxPaint-I2T": 1 / retrieval, "TuxPaint-T2I": 1 / retrieval,
                "TuxPaint-Category-VQA": 1 / len({s.category_text for s in stamps})}
    return sum(per_task.values()) / len(per_task)


def test_tiny_recipe_gate_floors_sit_between_chance_and_the_reached_score(assets_dir):
    chance = offline_suite_chance(assets_dir)
    assert 0.10 < chance < 0.16  # what the untrained model scores (README: 12.9 disc / 12.6 gen)
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| SFT + GRPO (`make run`, seed 0), disc"))
    reached = float(re.findall(r"[\d.]+", row.rsplit("|", 2)[-2])[0]) / 100
    promote = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["promote"]
    assert promote["column"] == "disc_disc"  # the column whose reached score is `reached`
    for key in ("min_overall", "floor_image"):
        floor = promote[key]
        # well clear of chance (a model trained a fraction of the recipe fails), well below the recipe's score
        # (seed-to-seed spread of the SFT disc overall is 1.6 points)
        assert floor - chance >= 0.4 * (reached - chance), (key, floor, chance, reached)
        assert reached - floor >= 0.1, (key, floor, reached)
