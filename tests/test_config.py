"""Recipes load into the typed step configs; typos and bad values are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from umeflow import config as C

STEP_CONFIGS = {cls.SECTION: cls for cls in vars(C).values() if isinstance(cls, type) and hasattr(cls, "SECTION")}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("presets/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_section_loads(recipe):
    doc = yaml.safe_load(recipe.read_text())
    assert doc, recipe
    for section in doc:
        assert section in STEP_CONFIGS, f"{recipe.name}: unknown section {section}"
        C.load_config(STEP_CONFIGS[section], recipe)


def test_typos_and_bad_values_name_the_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("sft:\n  learnig_rate: 1.0\n")
    with pytest.raises(C.ConfigError, match="sft.learnig_rate"):
        C.load_config(C.SFTConfig, bad)
    with pytest.raises(C.ConfigError, match="max_steps"):
        C.load_config(C.SFTConfig, None, ["max_steps=lots"])
    cfg = C.load_config(C.SFTConfig, None, ["sft.max_steps=7", "bf16=true"], out="x")
    assert (cfg.max_steps, cfg.bf16, cfg.out) == (7, True, "x")


def test_a_preset_overlays_the_recipe_key_by_key():
    base = C.load_config(C.GRPOConfig, CONFIGS / "qwen2-vl-2b.yaml")
    both = C.load_config(C.GRPOConfig, [CONFIGS / "qwen2-vl-2b.yaml", CONFIGS / "presets" / "1x80gb.yaml"])
    assert (base.pairs_per_step, base.max_completion_length) == (32, 2048)
    assert (both.pairs_per_step, both.max_completion_length, both.max_pixels) == (4, 1024, 1003520)
    assert both.learning_rate == base.learning_rate == 1e-6  # untouched keys keep the recipe's value
    assert (both.num_generations, both.beta, both.epsilon_low, both.epsilon_high) == (8, 0.04, 0.2, 0.28)


@pytest.mark.parametrize("override, allowed", [
    ("grpo.recipe=ume_r2", "ume_r1, embed_rl"),
    ("evaluate.mode=bothh", "disc, gen, both"),
    ("annotate.backend=opnai", "grounded, openai"),
    ("sft.on_bad_record=skipp", "error, skip"),
    ("model.family=qwen4_vl", "qwen2_vl, qwen2_5_vl, qwen3_vl"),
])
def test_prepare_run_refuses_a_bad_choice_naming_key_and_choices(tmp_path, override, allowed):
    """Issue #16: prepare_run promises to fail in seconds, but accepted misspelt choices that failed (or, worse, fell
    through to a default branch) only when their step ran; choices are Literal fields checked at load."""
    from umeflow.pipeline.tasks import prepare_run

    key, _, value = override.partition("=")
    with pytest.raises(C.ConfigError, match=rf"{key}='{value}' is not one of {allowed}$"):
        prepare_run("configs/tiny.yaml", [override], str(tmp_path / "ckpt"), str(tmp_path), "run1")
    recipe = tmp_path / "r.yaml"
    section, _, field = key.partition(".")
    recipe.write_text(yaml.safe_dump({section: {field: value}}))
    cls = next(c for c in vars(C).values() if isinstance(c, type) and getattr(c, "SECTION", None) == section)
    with pytest.raises(C.ConfigError, match=rf"{recipe}: {key}='{value}' is not one of"):
        C.load_config(cls, str(recipe))
