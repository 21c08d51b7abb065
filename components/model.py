"""``init_model``: the initial checkpoint (the recipe's tiny Qwen-VL) written to the run's checkpoint folder."""

from typing import List

from kfp import dsl
from kfp.dsl import Model, Output

from umeflow.pipeline.images import light_image


@dsl.component(base_image=light_image(), install_kfp_package=False)
def init_model(recipe: str, overrides: List[str], work_dir: str, run_id: str, run_root: str,
               model: Output[Model]) -> str:
    """``umeflow model init-tiny`` into ``<run_root>/init``; returns that checkpoint URI."""
    from umeflow.pipeline import staging, tasks

    tasks.bind_run(run_id)
    uri = staging.join(run_root, "init")
    result = tasks.init_model(recipe, overrides, work_dir, uri)
    tasks.describe_checkpoint(model, uri, **result)
    return uri
