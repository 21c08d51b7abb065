"""``prepare_data``: pinned registry assets → MMEB-format training pairs + the offline eval suite (a Dataset)."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from umeflow.pipeline.images import light_image


@dsl.component(base_image=light_image(), install_kfp_package=False)
def prepare_data(recipe: str, overrides: List[str], work_dir: str, run_id: str, data: Output[Dataset],
                 metrics: Output[Metrics]):
    """``umeflow assets fetch`` + ``umeflow data build``; ``data`` holds ``train/``, ``eval/`` and the manifest."""
    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    tasks.log_metrics(metrics, tasks.prepare_data(recipe, overrides, work_dir, data.path))
