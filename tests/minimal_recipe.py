"""The tiny recipe cut to seconds per step, for end-to-end tests of the wiring (KFP local runner, `dvc repro`):
a few pairs, two SFT steps, one GRPO step, four queries per task. Quality is not the point here."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

MINIMAL = [
    "data.eval_fashion_per_class=3", "data.eval_fashion_vqa_per_class=2", "data.eval_digits_per_class=2",
    "data.eval_retrieval_candidates=8", "data.eval_video_segments_per_clip=1", "data.train_fashion_per_class=6",
    "data.train_fashion_vqa_per_class=2", "data.train_mnist_per_class=3", "data.tuxpaint_limit=30",
    "sft.max_steps=2", "sft.per_device_batch_size=8", "sft.max_minutes=0", "sft.save_steps=2",
    "grpo.max_steps=1", "grpo.pairs_per_step=2", "grpo.num_generations=2", "grpo.per_device_batch_size=8",
    "grpo.max_completion_length=12", "grpo.max_minutes=0",
    "evaluate.max_queries_per_task=4", "evaluate.max_new_tokens=8",
    # two training steps do not reach the recipe's quality floors; the gate's logic has its own tests
    "promote.min_overall=0", "promote.floor_image=0", "promote.min_gain=0",
]


def write_minimal_recipe(path: Path) -> Path:
    """configs/tiny.yaml with MINIMAL applied, as one recipe file (what DVC's `params:` reads)."""
    recipe = yaml.safe_load(TINY.read_text())
    for item in MINIMAL:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        recipe[section][name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
