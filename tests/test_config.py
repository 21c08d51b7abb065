"""Recipes load into the typed step configs; typos and bad values are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from umeflow import config as C

STEP_CONFIGS = {cls.SECTION: cls for cls in (C.AssetsConfig, C.DataConfig, C.ModelInitConfig, C.EmbedConfig,
                                             C.AnnotateConfig, C.SFTConfig, C.EvaluateConfig)}
RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


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
