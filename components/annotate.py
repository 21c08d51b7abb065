"""``annotate``: reasoning + summary per side of each training pair (UME-R1 SFT records, a Dataset)."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from umeflow.pipeline.images import light_image


@dsl.component(base_image=light_image(), install_kfp_package=False)
def annotate(recipe: str, overrides: List[str], work_dir: str, run_id: str, data: Input[Dataset],
             annotated: Output[Dataset], metrics: Output[Metrics]):
    """``umeflow annotate`` on ``data``; answers are cached on the work volume, so a retried task resumes."""
    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    tasks.log_metrics(metrics, tasks.annotate(recipe, overrides, work_dir, data.path, annotated.path))
