"""An evaluate output as registry content: the gate's snapshot, flat ``eval.*`` version tags, the model card.

``read_eval_dir`` validates an ``umeflow evaluate`` output folder (``summary.json``, ``report.md``,
``run_info.json``); ``eval_tags`` turns it into version tags; ``model_card`` writes the markdown attached to the
version (as its description, and in full, with the per-task table, as the run artifact ``model_card.md``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from umeflow.errors import RecordError, UserError
from umeflow.registry.gate import EvalSnapshot

SNAPSHOT_TAG = "eval.snapshot"
DESCRIPTION_LIMIT = 5000  # MLflow's model version description column (String(5000) on SQL stores)


@dataclass(frozen=True)
class EvalOutput:
    root: Path
    summary: dict
    report: str
    run_info: dict
    snapshot: EvalSnapshot

    @property
    def model_fingerprint(self) -> str | None:
        return (self.run_info.get("inputs") or {}).get("model_fingerprint")

    @property
    def evaluated_model(self) -> str | None:
        return (self.run_info.get("config") or {}).get("model")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} does not exist; point register.eval_dir at an `umeflow evaluate` output")
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise RecordError(path, None, None, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RecordError(path, None, None, "expected a JSON object")
    return doc


def read_eval_dir(eval_dir: str | os.PathLike) -> EvalOutput:
    root = Path(eval_dir)
    if not root.is_dir():
        raise UserError(f"evaluation folder {root} does not exist; run `umeflow evaluate --out {root}` first")
    summary = _read_json(root / "summary.json")
    run_info = _read_json(root / "run_info.json")
    report_path = root / "report.md"
    if not report_path.is_file():
        raise UserError(f"{report_path} does not exist; point register.eval_dir at an `umeflow evaluate` output")
    suite = str((run_info.get("config") or {}).get("tasks", ""))
    snapshot = EvalSnapshot.from_summary(summary, root / "summary.json", suite=suite)
    return EvalOutput(root, summary, report_path.read_text(), run_info, snapshot)


def _key(name: str) -> str:
    """MLflow tag/metric names allow letters, digits and ``_-. /:``; ``pass@8`` becomes ``pass_at_8``."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name.replace("@", "_at_"))


def _num(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.6g}"


def eval_tags(ev: EvalOutput) -> dict[str, str]:
    """Version tags: the snapshot the gate reads, plus one flat tag per aggregate for people and searches."""
    tags = {SNAPSHOT_TAG: ev.snapshot.to_json(), "eval.suite": ev.snapshot.suite or "unknown",
            "eval.num_tasks": str(len(ev.snapshot.tasks))}
    for col, agg in ev.summary["aggregates"].items():
        tags[_key(f"eval.{col}.overall")] = _num(agg.get("overall"))
        tags[_key(f"eval.{col}.complete")] = str(bool(agg.get("complete"))).lower()
        for group in ("modalities", "categories"):
            for name, value in (agg.get(group) or {}).items():
                tags[_key(f"eval.{col}.{name}")] = _num(value)
    return tags


def eval_metrics(ev: EvalOutput) -> dict[str, float]:
    """The same aggregates as run metrics (numbers only)."""
    return {k: float(v) for k, v in eval_tags(ev).items()
            if k not in (SNAPSHOT_TAG, "eval.suite") and not k.endswith(".complete") and v != "unknown"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def aggregates_table(summary: dict) -> str:
    """Columns × (overall, modalities, categories), scores ×100, as the evaluate report shows them."""
    aggs = summary["aggregates"]
    cols = list(summary.get("columns") or aggs)
    first = aggs[cols[0]]
    rows = [("**overall**", "overall")] + [(f"{m} (modality)", ("modalities", m)) for m in first.get("modalities", {})]
    rows += [(c, ("categories", c)) for c in first.get("categories", {})]

    def cell(col: str, key) -> str:
        agg = aggs.get(col, {})
        return _pct(agg.get("overall") if key == "overall" else (agg.get(key[0]) or {}).get(key[1]))

    lines = ["| aggregate | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {label} | " + " | ".join(cell(c, key) for c in cols) + " |" for label, key in rows]
    if not first.get("complete", False):
        lines.append(f"\nIncomplete: {first.get('num_tasks')} of {first.get('num_expected')} tasks scored "
                     f"(missing: {', '.join(first.get('missing', [])[:10])}).")
    return "\n".join(lines)


def model_card(name: str, version: str, checkpoint: Path, ev: EvalOutput, lineage: dict[str, str],
               training: dict, settings: dict, full: bool) -> str:
    """Markdown model card. ``full`` appends the evaluate report (per-task table); the short form fits the
    version description."""
    config = json.loads((checkpoint / "config.json").read_text())
    lines = [f"# {name} v{version}", "",
             "Reasoning-driven multimodal embedding model (UME-R1 format) trained with umeflow.", "",
             "## Model", "",
             f"- backbone: `{config.get('model_type', 'unknown')}`, embedding size "
             f"{(config.get('text_config') or {}).get('hidden_size') or config.get('hidden_size')}",
             f"- checkpoint: `{checkpoint}` (fingerprint `{lineage.get('lineage.input.model', 'unknown')}`)",
             # ``training``: register's ``train.*`` tags (steps/register.py ``_training_tags``)
             f"- training run: config hash `{training.get('train.config_hash') or 'unknown'}`, MLflow run "
             f"`{training.get('train.mlflow_run_id') or 'unknown'}`",
             f"- serving defaults: mode `{settings['mode']}`, max_new_tokens {settings['max_new_tokens']}, "
             f"batch_size {settings['batch_size']}", "",
             f"## Evaluation (suite `{ev.snapshot.suite or 'unknown'}`, {len(ev.snapshot.tasks)} tasks, scores ×100)",
             "", aggregates_table(ev.summary), "",
             "## Usage", "", "```python",
             "import mlflow, pandas as pd",
             f'model = mlflow.pyfunc.load_model("models:/{name}@champion")',
             'emb = model.predict(pd.DataFrame({"text": ["a red shoe", ""], "image": ["", "shoe.png"]}),',
             '                    params={"mode": "gen"})  # (N, D) float32, L2-normalised; mode disc | gen',
             "```", "",
             "## Lineage", "", "| tag | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(lineage.items())]
    text = "\n".join(lines) + "\n"
    if full:
        report = "##" + ev.report if ev.report.startswith("# ") else ev.report  # nest its title under ours
        return text + "\n## Per-task results (evaluate report)\n\n" + report
    if len(text) > DESCRIPTION_LIMIT:
        note = "\n… (truncated; the full card is the run artifact model_card.md)\n"
        text = text[:DESCRIPTION_LIMIT - len(note)] + note
    return text
