"""Scores in the MMEB-V2 leaderboard's own format, and a side-by-side comparison with a published score file.

Written into the evaluate output folder, for the MMEB-V2 registry tasks of a run (offline tasks have no leaderboard):

- ``scores/{task}_{qmode}_{tmode}_score.json``: one file per task and query-mode × target-mode pair, UME-R1's naming
  (its ``eval_twomode.py``), every task of the run;
- ``leaderboard/{qmode}_{tmode}/{modality}/{task}_score.json``: VLM2Vec ``eval.py``'s per-task file (same keys, same
  order), laid out as VLM2Vec's ``experiments/report_score_v2.py`` reads an experiment folder, so that script runs on
  ``leaderboard/<pair>/`` unchanged;
- ``leaderboard/{qmode}_{tmode}.json``: what ``report_score_v2.py`` writes for that folder: ``{metadata, metrics:
  {image, video, visdoc}}`` with every leaderboard task (``"FILE_N/A"`` for a task not scored, ``"DIR_N/A"`` for every
  task of a modality with none scored) and ViDoSeek-page / MMLongBench-page renamed ``…-fixed``, the format of
  VLM2Vec's ``experiments/public/all_scores/*.json`` and Embed-RL's ``detailed_scores/*.json``.

``load_published`` reads such a file for ``--compare``; ``compare`` puts it beside a run, per task and aggregated as
MMEB aggregates (``report.aggregate``), with the deltas.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from umeflow.errors import RecordError, UserError
from umeflow.evaluate.metrics import SCORE_KEYS
from umeflow.evaluate.mmeb_v2 import MMEB_V2_TASKS, MMEB_V2_VERSION
from umeflow.evaluate.report import aggregate, column_label, columns_of, fmt, fmt_delta, leaderboard_notes
from umeflow.evaluate.tasks import MODALITIES, TaskMeta

MODES = ("disc", "gen")
REGISTRY = {t.name: t for t in MMEB_V2_TASKS}
# report_score_v2.py's task lists, in its order (the registry keeps the same order per modality)
LEADERBOARD_TASKS = {m: tuple(t.name for t in MMEB_V2_TASKS if t.modality == m) for m in MODALITIES}
# report_score_v2.py renames these two in its JSON ("temp fix", 2026-01-27): the page-fixed data of 2025-11-03
FIXED_NAMES = {"ViDoSeek-page": "ViDoSeek-page-fixed", "MMLongBench-page": "MMLongBench-page-fixed"}
COUNT_KEYS = ("num_pred", "num_data")


def mode_pairs(results: dict[str, dict]) -> list[str]:
    """The query-mode × target-mode columns of ``results`` (not oracle, selector or pass@k)."""
    pairs = {f"{q}_{t}" for q in MODES for t in MODES}
    return [c for c in columns_of(results) if c in pairs]


def is_leaderboard_task(task: TaskMeta) -> bool:
    known = REGISTRY.get(task.name)
    return known is not None and (known.modality, known.metric) == (task.modality, task.metric)


def _in_vlm2vec_order(scores: dict) -> dict:
    """A score dict in eval.py's key order (a merge reads it back from summary.json, which sorts keys)."""
    return {**{k: scores[k] for k in SCORE_KEYS if k in scores}, **scores}


def _dump(path: Path, obj) -> None:
    """JSON as VLM2Vec writes it (indent 4, keys in insertion order; ``io.write_json`` sorts them). Plain writes:
    ``publish`` builds the whole output folder under a temporary name and renames it when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4) + "\n")


def model_metadata(model: str, pair: str, max_queries_per_task: int = 0) -> dict:
    """report_score_v2.py's metadata keys (its template, filled where the checkpoint says), then umeflow's own."""
    config = {}
    config_file = Path(model) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    text = config.get("text_config") or {}
    qmode, tmode = pair.split("_")
    meta = {"model_name": Path(model.rstrip("/")).name or model,
            "model_backbone": config.get("model_type"),
            "model_size": None,
            "embedding_dimension": text.get("hidden_size") or config.get("hidden_size"),
            "max_length_tokens": None,
            "model_release_date": None,
            "data_source": "Self-Reported",
            "url": "",
            "query_mode": qmode, "target_mode": tmode, "benchmark_version": MMEB_V2_VERSION}
    if max_queries_per_task:
        meta["max_queries_per_task"] = max_queries_per_task  # a subsample is not a leaderboard score
    return meta


def leaderboard_json(scores: dict[str, dict], metadata: dict) -> dict:
    """``{metadata, metrics}`` as report_score_v2.py builds it from ``{modality}/{task}_score.json`` files whose
    contents are ``scores`` (task name -> score dict)."""
    metrics = {}
    for modality in MODALITIES:
        names = LEADERBOARD_TASKS[modality]
        if not any(n in scores for n in names):  # report_score_v2: no {modality}/ folder
            metrics[modality] = {n: "DIR_N/A" for n in names}
        else:
            metrics[modality] = {n: scores.get(n, "FILE_N/A") for n in names}
    metrics["visdoc"] = {FIXED_NAMES.get(n, n): v for n, v in metrics["visdoc"].items()}
    return {"metadata": {**metadata, "report_generated_date": datetime.now().isoformat()}, "metrics": metrics}


def write_score_files(folder: Path, tasks: list[TaskMeta], results: dict[str, dict], model: str,
                      max_queries_per_task: int = 0) -> None:
    """``scores/`` (every task, UME-R1 names) and ``leaderboard/`` (MMEB-V2 tasks, VLM2Vec layout) under ``folder``."""
    pairs = mode_pairs(results)
    for t in tasks:
        for pair in pairs:
            if pair in results[t.name]["scores"]:
                _dump(folder / "scores" / f"{t.name}_{pair}_score.json",
                      _in_vlm2vec_order(results[t.name]["scores"][pair]))
    board = [t for t in tasks if is_leaderboard_task(t)]
    for pair in pairs:
        scores = {t.name: _in_vlm2vec_order(results[t.name]["scores"][pair])
                  for t in board if pair in results[t.name]["scores"]}
        if not scores:
            continue
        for t in board:
            if t.name in scores:
                _dump(folder / "leaderboard" / pair / t.modality / f"{t.name}_score.json", scores[t.name])
        _dump(folder / "leaderboard" / f"{pair}.json",
              leaderboard_json(scores, model_metadata(model, pair, max_queries_per_task)))


# ------------------------------------------------------------------------------------------------- --compare

@dataclass
class Published:
    path: str
    model_name: str
    scores: dict[str, dict]  # umeflow task name -> metric dict, in [0, 1]
    scale: int = 1  # 100 when the file holds percentages (divided by 100 on reading)
    published_only: list[str] = field(default_factory=list)  # names that are no umeflow task
    unavailable: dict[str, str] = field(default_factory=dict)  # task -> status string (FILE_N/A, DIR_N/A, …)
    notes: list[str] = field(default_factory=list)
    unsuffixed_pages: list[str] = field(default_factory=list)  # ViDoSeek-page / MMLongBench-page without "-fixed"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_published(path: str) -> Published:
    """A leaderboard JSON (``{metadata, metrics: {image, video, visdoc}}``); a bad file raises a ``RecordError``
    naming the file and the field."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"--compare {path}: cannot read it ({e.strerror})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise RecordError(path, None, "metrics", "missing or not an object; a leaderboard score file reads "
                                                 "{metadata, metrics: {image, video, visdoc}}")
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RecordError(path, None, "metadata", "must be an object")
    unfixed = {v: k for k, v in FIXED_NAMES.items()}
    listed: dict[str, dict[str, dict]] = {}  # umeflow name -> {published name: entry}
    out = Published(path=str(path), model_name=str(metadata.get("model_name") or Path(path).stem), scores={})
    for modality, entries in doc["metrics"].items():
        where = f"metrics.{modality}"
        if modality not in MODALITIES:
            raise RecordError(path, None, where, f"unknown modality (expected {', '.join(MODALITIES)})")
        if not isinstance(entries, dict):
            raise RecordError(path, None, where, "must be an object of task name -> metric dict")
        for name, entry in entries.items():
            ours, task_field = unfixed.get(name, name), f"{where}.{name}"
            task = REGISTRY.get(ours)
            if isinstance(entry, str):  # report_score_v2's status for a task it found no scores for
                out.unavailable[ours if task else name] = entry
                continue
            if not isinstance(entry, dict):
                raise RecordError(path, None, task_field, "must be a metric dict or a status string such as FILE_N/A")
            if task is None:
                out.published_only.append(name)
                continue
            if task.modality != modality:
                raise RecordError(path, None, task_field, f"is a {task.modality} task, listed under {modality}")
            for key, value in entry.items():
                if not _number(value) or value < 0:
                    raise RecordError(path, None, f"{task_field}.{key}",
                                      f"must be a non-negative number, got {value!r}")
            if task.metric not in entry:
                raise RecordError(path, None, f"{task_field}.{task.metric}", "missing (the task's main metric)")
            listed.setdefault(ours, {})[name] = entry
    found: dict[str, tuple[str, dict]] = {}  # umeflow name -> (published name, entry)
    for ours, by_name in listed.items():
        if len(by_name) > 1:  # both X-page and X-page-fixed: the fixed one is the task umeflow scores
            out.published_only.append(f"{ours} (pre-fix; {FIXED_NAMES[ours]} compared)")
            by_name = {FIXED_NAMES[ours]: by_name[FIXED_NAMES[ours]]}
        name, entry = next(iter(by_name.items()))
        found[ours] = (name, entry)
        if ours in FIXED_NAMES and name == ours:
            out.unsuffixed_pages.append(ours)
    values = [(f"metrics.{REGISTRY[o].modality}.{n}.{k}", v) for o, (n, e) in found.items()
              for k, v in e.items() if k not in COUNT_KEYS]
    if values and max(v for _, v in values) > 1:
        out.scale = 100
        top_field, top = max(values, key=lambda fv: fv[1])
        if top > 100:
            raise RecordError(path, None, top_field, f"{top} is neither a fraction nor a percentage")
        out.notes.append("the file holds percentages (×100); divided by 100 before comparing")
    out.scores = {o: {k: v if k in COUNT_KEYS else v / out.scale for k, v in e.items()}
                  for o, (_, e) in found.items()}
    return out


def _delta(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else ours - theirs


def compare(published: Published, expected: list[TaskMeta], results: dict[str, dict]) -> dict:
    """Per task (scored on both sides) and per category / modality / overall (over ``expected``, MMEB means): the
    published main metric, ours per mode pair, and ours − published."""
    pairs = mode_pairs(results)
    tasks, counts_differ = {}, []
    for name, r in results.items():
        if name not in published.scores:
            continue
        metric, theirs = REGISTRY[name].metric, published.scores[name]
        ours = {c: r["scores"][c][metric] for c in pairs if c in r["scores"]}
        tasks[name] = {"metric": metric, "published": theirs[metric], "ours": ours,
                       "delta": {c: v - theirs[metric] for c, v in ours.items()}}
        if "num_data" in theirs and theirs["num_data"] != r["num_queries_total"]:
            counts_differ.append(f"{name} ({r['num_queries_total']} here, {theirs['num_data']} published)")
    theirs_agg = aggregate(expected, {n: {"scores": {"published": s}} for n, s in published.scores.items()},
                           "published")
    aggregates = {}
    for c in pairs:
        ours_agg = aggregate(expected, results, c)
        aggregates[c] = {"ours": ours_agg, "delta": {
            "overall": _delta(ours_agg["overall"], theirs_agg["overall"]),
            **{key: {k: _delta(v, theirs_agg[key][k]) for k, v in ours_agg[key].items()}
               for key in ("categories", "modalities")}}}
    scored_here = [n for n in results if n in REGISTRY]
    file_notes = published.notes + [
        f"the file lists {name} without '-fixed': VLM2Vec's v2.0.x score files hold the pre-2025-11-03 (broken) "
        f"page task under that name, its v2.1 baseline files the fixed one; umeflow scores the fixed data "
        f"({REGISTRY[name].dataset_name}), so check the file's version before reading this delta"
        for name in published.unsuffixed_pages if name in tasks]
    return {"file": published.path, "model_name": published.model_name, "scale": published.scale,
            "columns": pairs, "tasks": tasks, "published_aggregates": theirs_agg, "aggregates": aggregates,
            "not_in_published": [n for n in scored_here if n not in published.scores],
            "not_scored_here": [n for n in published.scores if n not in results],
            "published_only": published.published_only, "unavailable": published.unavailable,
            "counts_differ": counts_differ, "file_notes": file_notes,
            "task_notes": leaderboard_notes([REGISTRY[n] for n in tasks])}


def _names(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f" … ({len(names)} in all)" if len(names) > limit else "")


def compare_markdown(cmp: dict) -> str:
    cols = cmp["columns"]
    head = " | ".join(f"{column_label(c)} | Δ" for c in cols)
    lines = ["", f"## Compared with {cmp['model_name']} (`{cmp['file']}`)", "",
             "- Δ = umeflow − published, ×100; aggregates are MMEB means over the suite "
             "(incomplete sets left empty)",
             *(f"- {n}" for n in cmp["file_notes"])]
    for key, text in (("not_in_published", "scored here, not in the published file"),
                      ("not_scored_here", "in the published file, not scored here"),
                      ("published_only", "in the published file, not an MMEB-V2 task of umeflow (not compared)"),
                      ("counts_differ", "query counts differ (different data version or subsample)")):
        if cmp[key]:
            lines.append(f"- {text}: {_names(cmp[key])}")
    if cmp["unavailable"]:
        lines.append(f"- not available in the published file: "
                     f"{_names([f'{n} ({s})' for n, s in cmp['unavailable'].items()])}")
    lines += ["", f"| task | metric | published | {head} |", "|---|---|---|" + "---|---|" * len(cols)]
    for name, row in cmp["tasks"].items():
        cells = " | ".join(f"{fmt(row['ours'].get(c))} | {fmt_delta(row['delta'].get(c))}" for c in cols)
        mark = " ‡" if any(n.startswith(f"{name}: ") for n in cmp["task_notes"]) else ""
        lines.append(f"| {name}{mark} | {row['metric']} | {fmt(row['published'])} | {cells} |")
    theirs = cmp["published_aggregates"]
    lines += ["", f"| aggregate | published | {head} |", "|---|---|" + "---|---|" * len(cols)]

    def agg_row(label, get):
        cells = " | ".join(f"{fmt(get(a['ours']))} | {fmt_delta(get(a['delta']))}"
                           for a in (cmp["aggregates"][c] for c in cols))
        lines.append(f"| {label} | {fmt(get(theirs))} | {cells} |")

    for key, suffix in (("categories", ""), ("modalities", " (modality)")):
        for name in theirs[key]:
            agg_row(f"{name}{suffix}", lambda a, key=key, name=name: a[key][name])
    agg_row(f"**overall** (mean over {theirs['num_expected']} tasks)", lambda a: a["overall"])
    if cmp["task_notes"]:
        lines += ["", "‡ umeflow's score can differ from the leaderboard's by design:",
                  *(f"- {n}" for n in cmp["task_notes"])]
    return "\n".join(lines) + "\n"
