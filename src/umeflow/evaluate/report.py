"""Aggregation as MMEB does it, with a completeness check, and the report files (markdown, JSON, PNG).

MMEB aggregates are unweighted means of each task's main metric: per category, per modality, and overall = plain
mean over tasks (task-weighted, not the mean of modality means; method.md §3.5). An aggregate is only computed over a
*complete* set: if any task of the suite (or of a category/modality) is missing, that aggregate is ``None`` and the
report says "incomplete (k of n)" — never an average over whatever happens to exist. Smoke tasks are reported but
never averaged in.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from umeflow.evaluate.selector import gap_closed
from umeflow.evaluate.tasks import TaskMeta

COLUMN_LABELS = {"disc_disc": "disc", "gen_gen": "gen", "disc_gen": "q disc → t gen", "gen_disc": "q gen → t disc",
                 "oracle": "oracle†", "selector": "selector (margin)", "selector_cross": "selector (cross-check)"}


def column_label(column: str) -> str:
    if column.startswith("pass@"):
        return f"{column}†"
    return COLUMN_LABELS.get(column, column)


def columns_of(results: dict[str, dict]) -> list[str]:
    order = ["disc_disc", "gen_gen", "disc_gen", "gen_disc", "oracle", "selector", "selector_cross"]
    present = {c for r in results.values() for c in r["scores"]}
    return [c for c in order if c in present] + sorted(c for c in present if c not in order)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def aggregate(expected: list[TaskMeta], results: dict[str, dict], column: str) -> dict:
    """Category, modality and overall means of ``column`` over the ``expected`` tasks (smoke tasks excluded)."""
    counted = [t for t in expected if not t.smoke]
    groups = {"categories": defaultdict(list), "modalities": defaultdict(list)}
    for t in counted:
        groups["categories"][t.category].append(t)
        groups["modalities"][t.modality].append(t)

    def mean_or_none(tasks: list[TaskMeta]):
        have = [results[t.name]["scores"][column][t.metric] for t in tasks
                if t.name in results and column in results[t.name]["scores"]]
        return _mean(have) if tasks and len(have) == len(tasks) else None

    missing = [t.name for t in counted if t.name not in results or column not in results[t.name]["scores"]]
    return {
        "overall": mean_or_none(counted),
        "complete": not missing,
        "num_tasks": len(counted) - len(missing),
        "num_expected": len(counted),
        "missing": missing,
        "categories": {k: mean_or_none(v) for k, v in sorted(groups["categories"].items())},
        "modalities": {k: mean_or_none(v) for k, v in sorted(groups["modalities"].items())},
    }


def selector_gap(aggs: dict[str, dict], column: str = "selector") -> float | None:
    need = (column, "disc_disc", "gen_gen", "oracle")
    if not all(c in aggs for c in need):
        return None
    o = {c: aggs[c]["overall"] for c in need}
    return gap_closed(o[column], o["disc_disc"], o["gen_gen"], o["oracle"])


def fmt(x: float | None) -> str:
    """A score in [0, 1] as the report shows it: ×100, one decimal."""
    return "–" if x is None else f"{100 * x:.1f}"


def fmt_delta(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def leaderboard_notes(tasks: list[TaskMeta]) -> list[str]:
    """Why a task's score can differ from the MMEB-V2 leaderboard by design (``TaskMeta.leaderboard_note``)."""
    return [f"{t.name}: {t.leaderboard_note}" for t in tasks if t.leaderboard_note]


def markdown(ran: list[TaskMeta], expected: list[TaskMeta], results: dict[str, dict], title: str,
             notes: list[str]) -> str:
    cols = columns_of(results)
    labels = [column_label(c) for c in cols]
    lines = [f"# {title}", "", *(f"- {n}" for n in notes), "",
             "| task | modality | category | metric | " + " | ".join(labels) + " | queries |",
             "|" + "---|" * (5 + len(cols))]
    for t in ran:
        r = results[t.name]
        name = f"{t.name} (smoke, not averaged)" if t.smoke else t.name
        cells = " | ".join(fmt(r["scores"][c][t.metric]) if c in r["scores"] else "–" for c in cols)
        n = str(r["num_queries"]) + (f" of {r['num_queries_total']}"
                                     if r["num_queries"] < r["num_queries_total"] else "")
        lines.append(f"| {name} | {t.modality} | {t.category} | {t.metric} | {cells} | {n} |")
    aggs = {c: aggregate(expected, results, c) for c in cols}
    lines += ["", "| aggregate | " + " | ".join(labels) + " |", "|---|" + "---|" * len(cols)]
    first = aggs[cols[0]]
    for key, suffix in (("categories", ""), ("modalities", " (modality)")):
        for name in first[key]:
            lines.append(f"| {name}{suffix} | " + " | ".join(fmt(aggs[c][key][name]) for c in cols) + " |")
    overall = " | ".join(fmt(aggs[c]["overall"]) for c in cols)
    lines.append(f"| **overall** (mean over {first['num_expected']} tasks) | {overall} |")
    if not first["complete"]:
        lines += ["", f"**Incomplete:** {first['num_tasks']} of {first['num_expected']} tasks of the suite were "
                      f"scored; aggregates over missing tasks are left empty (missing: "
                      f"{', '.join(first['missing'][:10])}{' …' if len(first['missing']) > 10 else ''})."]
    notes_by_design = leaderboard_notes(ran)
    if notes_by_design:
        lines += ["", "Tasks whose score can differ from the MMEB-V2 leaderboard by design:",
                  *(f"- {n}" for n in notes_by_design)]
    if "oracle" in cols:
        lines += ["", "† upper bound: uses the ground truth to choose per query (oracle) or among k samples (pass@k)."]
    for column in ("selector", "selector_cross"):
        gap = selector_gap(aggs, column)
        if gap is not None:
            lines.append(f"{column_label(column).capitalize()} (label-free disc/gen choice per query) closes "
                         f"{100 * gap:.1f}% of the gap between the better single mode and the oracle (overall mean).")
    return "\n".join(lines) + "\n"


def bar_plot(expected: list[TaskMeta], results: dict[str, dict], path: str | Path, title: str) -> None:
    """Per-category grouped bars, one bar per column (disc, gen, oracle, selector, …)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns_of(results)
    aggs = {c: aggregate(expected, results, c) for c in cols}
    cats = list(aggs[cols[0]]["categories"]) + ["overall"]
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cats)), 4))
    for i, c in enumerate(cols):
        vals = [aggs[c]["categories"].get(k) if k != "overall" else aggs[c]["overall"] for k in cats]
        xs = [j + (i - (len(cols) - 1) / 2) * width for j in range(len(cats))]
        ax.bar(xs, [100 * v if v is not None else 0 for v in vals], width, label=column_label(c))
    ax.set_xticks(range(len(cats)), cats, rotation=20)
    ax.set_ylabel("score ×100 (Hit@1 / NDCG@5)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(4, len(cols)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
