"""Full class-label lists of the MMEB-V2 video classification datasets (data, shipped with the package).

VLM2Vec ranks a K700 / HMDB51 / UCF101 / Breakfast query against **every** class label of the dataset, not only the
labels that occur in the test file: ``video_classification_datasets.py:61-64`` adds the whole list from
``video_classification_utils.py:2-14`` (``VIDEOCLS_LABEL_MAPPING``) to the candidate pool. The HF annotation repos
(``VLM2Vec/Kinetics-700`` …) carry only each row's ``pos_text``, so the lists cannot be read from a download; they
are copied here, one JSON file per task (``{task, dataset, count, source, labels}``), with the exact VLM2Vec commit,
file and line in ``source`` and the label order kept. The label names themselves come from the datasets' authors
(Kinetics-700: DeepMind, CC BY 4.0; HMDB51; UCF101; Breakfast Actions).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from umeflow.errors import UserError


@cache
def class_labels(name: str) -> tuple[str, ...]:
    """The packaged label list ``<name>.json`` (a task's ``TaskMeta.class_labels``)."""
    path = resources.files(__name__).joinpath(f"{name}.json")
    if not path.is_file():
        known = sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))
        raise UserError(f"no packaged class-label list {name!r} (known: {known})")
    data = json.loads(path.read_text(encoding="utf-8"))
    labels = tuple(data["labels"])
    if len(labels) != data["count"] or len(set(labels)) != len(labels):
        raise UserError(f"packaged class-label list {name!r} is corrupt: {len(labels)} labels, count {data['count']}")
    return labels
