"""``umeflow data build``: MMEB-format training pairs + the offline MMEB-style eval suite from the registry assets.

The step is a thin wrapper: all logic lives in ``umeflow.data.build`` so the CLI, DVC and KFP run the same code.
"""

from __future__ import annotations

import logging

from umeflow.config import DataConfig
from umeflow.data.build import build

log = logging.getLogger(__name__)


def run(cfg: DataConfig) -> dict:
    """Build the dataset into ``cfg.out`` (atomically) and return the flat metrics also written to metrics.json."""
    from umeflow.io import ensure_writable_dir

    ensure_writable_dir(cfg.out)  # fail before any work, not at publish
    metrics = build(cfg)
    log.info("data: %d training pairs, %d eval tasks, %d bad records skipped", metrics["train_pairs"],
             sum(k.startswith("eval_queries.") for k in metrics), metrics["bad_records_skipped"])
    return metrics
