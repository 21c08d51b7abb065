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
                 "oracle": "oracle†", "selector": "selector (margin)", "selector_cross": "selector (cross-check)",
                 "fused": "fused L2(disc+gen)"}


def column_label(column: str) -> str:
    if column.startswith("pass@"):
        return f"{column}†"
    return COLUMN_LABELS.get(column, column)


def columns_of(results: dict[str, dict]) -> list[str]:
    order = ["disc_disc", "gen_gen", "disc_gen", "gen_disc", "oracle", "selector", "selector_cross", "fused"]
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
    for column, how in (("selector", "label-free disc/gen choice per query"),
                        ("selector_cross", "label-free disc/gen choice per query"),
                        ("fused", "label-free L2(disc + gen) on both sides")):
        gap = selector_gap(aggs, column)
        if gap is not None:
            label = column_label(column)
            lines.append(f"{label[0].upper() + label[1:]} ({how}) closes {100 * gap:.1f}% of the gap between "
                         "the better single mode and the oracle (overall mean).")
    return "\n".join(lines) + "\n"


def plot_title(model: str, suite: str) -> str:
    """``grpo/model on offline``: the checkpoint (its folder and that folder's parent, see ``model_label``) and the
    task suite, so a plot read on its own says what was evaluated."""
    from umeflow.registry.runs import model_label

    return f"{model_label(model) or model} on {suite}"


def chance_by_group(expected: list[TaskMeta], results: dict[str, dict]) -> dict[str, float | None]:
    """The chance level of each plotted bar group: the mean of its tasks' chance levels (``results[t]["chance"]``),
    the same unweighted mean the bars take; None where a task of the group has none (NDCG tasks, a missing task)."""
    counted = [t for t in expected if not t.smoke]
    groups: dict[str, list[TaskMeta]] = defaultdict(list)
    for t in counted:
        groups[t.category].append(t)
    groups["overall"] = counted

    def mean_chance(tasks: list[TaskMeta]) -> float | None:
        have = [results[t.name].get("chance") for t in tasks if t.name in results]
        return _mean(have) if tasks and len(have) == len(tasks) and None not in have else None

    return {k: mean_chance(v) for k, v in groups.items()}


def bar_figure(expected: list[TaskMeta], results: dict[str, dict], model: str, suite: str):
    """Per-category grouped bars, one bar per column (disc, gen, oracle, selector, …), each labelled with its
    value; a dashed line over each group at its chance level where that is known; the legend below the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns_of(results)
    aggs = {c: aggregate(expected, results, c) for c in cols}
    cats = list(aggs[cols[0]]["categories"]) + ["overall"]
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cats) * max(1, len(cols) / 4)), 4.6))
    for i, c in enumerate(cols):
        vals = [aggs[c]["categories"].get(k) if k != "overall" else aggs[c]["overall"] for k in cats]
        xs = [j + (i - (len(cols) - 1) / 2) * width for j in range(len(cats))]
        bars = ax.bar(xs, [100 * v if v is not None else 0 for v in vals], width, label=column_label(c))
        # an incomplete aggregate is drawn as an empty bar labelled "–", never as a score of 0
        ax.bar_label(bars, labels=[fmt(v) for v in vals], fontsize=7, padding=1)
    chance = chance_by_group(expected, results)
    labelled = False
    for j, k in enumerate(cats):
        if chance.get(k) is not None:
            ax.hlines(100 * chance[k], j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label=None if labelled else "chance", zorder=3)
            labelled = True
    ax.set_xticks(range(len(cats)), cats, rotation=20)
    ax.set_ylabel("score ×100 (Hit@1 / NDCG@5)")
    ax.set_ylim(0, 110)  # room for the value labels above a bar at 100
    ax.set_title(plot_title(model, suite))
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(fontsize=8, ncol=min(4, len(handles)), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.tight_layout()
    return fig


def bar_plot(expected: list[TaskMeta], results: dict[str, dict], path: str | Path, model: str, suite: str) -> None:
    """``bar_figure`` saved as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = bar_figure(expected, results, model, suite)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": the legend below the axes stays in the image
    plt.close(fig)
