"""``prepare_run``: the first task of every pipeline; fails in seconds on a bad recipe or unreachable storage."""

from typing import List, NamedTuple

from kfp import dsl

from umeflow.pipeline.images import light_image


@dsl.component(base_image=light_image(), install_kfp_package=False)
def prepare_run(recipe: str, overrides: List[str], checkpoint_root: str, work_dir: str,
                run_id: str) -> NamedTuple("RunInfo", run_root=str, recipe_sha256=str, run_id=str):
    """Resolve every step's config from ``recipe`` + ``overrides`` and check ``checkpoint_root``; returns the run's
    checkpoint folder ``<checkpoint_root>/<run_id>``."""
    from collections import namedtuple

    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    info = tasks.prepare_run(recipe, overrides, checkpoint_root, work_dir, run_id)
    return namedtuple("RunInfo", "run_root recipe_sha256 run_id")(info["run_root"], info["recipe_sha256"], run_id)
