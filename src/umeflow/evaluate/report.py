"""Aggregation (MMEB: unweighted means per category, per modality, and overall over tasks) and the report files."""

from __future__ import annotations

from collections import defaultdict

from umeflow.evaluate.tasks import TaskMeta


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(tasks: list[TaskMeta], results: dict[str, dict], mode: str) -> dict:
    """Means of each task's main metric; smoke tasks are reported but never averaged in.

    ``overall`` is the plain mean over tasks (task-weighted), not the mean of modality means (method.md §3.5).
    """
    by_cat, by_mod, all_scores = defaultdict(list), defaultdict(list), []
    for t in tasks:
        if t.smoke or t.name not in results:
            continue
        s = results[t.name]["scores"][mode][t.metric]
        by_cat[t.category].append(s)
        by_mod[t.modality].append(s)
        all_scores.append(s)
    return {"overall": _mean(all_scores), "num_tasks": len(all_scores),
            "categories": {k: _mean(v) for k, v in sorted(by_cat.items())},
            "modalities": {k: _mean(v) for k, v in sorted(by_mod.items())}}


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(tasks: list[TaskMeta], results: dict[str, dict], modes: tuple[str, ...], title: str,
             notes: list[str]) -> str:
    head = "| task | modality | category | metric | " + " | ".join(modes) + " | queries |"
    lines = [f"# {title}", "", *(f"- {n}" for n in notes), "", head,
             "|" + "---|" * (5 + len(modes))]
    for t in tasks:
        r = results[t.name]
        name = f"{t.name} (smoke, not averaged)" if t.smoke else t.name
        scores = " | ".join(_fmt(r["scores"][m][t.metric]) for m in modes)
        n = f"{r['num_queries']}" + (f" of {r['num_queries_total']}" if r["num_queries"] < r["num_queries_total"] else "")
        lines.append(f"| {name} | {t.modality} | {t.category} | {t.metric} | {scores} | {n} |")
    aggs = {m: aggregate(tasks, results, m) for m in modes}
    lines += ["", "| aggregate | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    cats = sorted({c for a in aggs.values() for c in a["categories"]})
    mods = sorted({c for a in aggs.values() for c in a["modalities"]})
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(_fmt(aggs[m]["categories"].get(c)) for m in modes) + " |")
    for c in mods:
        lines.append(f"| {c} (modality) | " + " | ".join(_fmt(aggs[m]["modalities"].get(c)) for m in modes) + " |")
    lines.append("| **overall** (mean over tasks) | " + " | ".join(_fmt(aggs[m]["overall"]) for m in modes) + " |")
    return "\n".join(lines) + "\n"
