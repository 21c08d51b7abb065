"""Does the reasoning matter? (issue #15 item 6)

UME-R1 issue #12 reports that ``<gen_emb>`` barely moves with the thinking text: cosine 0.95–0.98 between embeddings
of the same input with different ``<think>`` content, 0.977 with no thinking at all. ``--faithfulness`` measures it
per task on the model being evaluated: each gen-mode query's trace (from the trace cache: no generation) is
re-extracted twice, with its ``<think>…</think>`` content removed and with the next query's reasoning swapped in
(queries in task order, wrapping around; every other part of the trace — summary, ``<gen_emb>`` — unchanged). Per
task: the mean cosine of each variant to the original gen embedding, and the main metric (gen query → gen targets)
with each variant, beside the original. A model whose embedding follows its reasoning has cosines well below 1 and
loses accuracy when the reasoning is removed or swapped; cosines near 1 mean the reasoning is decoration.

Only queries whose trace has a ``<think>`` block take part (``queries`` counts them); a task without any has no
entry.
"""

from __future__ import annotations

import re

import numpy as np

from umeflow.model.generation import Trace

THINK = re.compile(r"(<think>)(.*?)(</think>)", re.DOTALL)
VARIANTS = ("removed", "swapped")


def reasoning(text: str) -> str | None:
    """The content of the first ``<think>…</think>`` block, or None when the text has none."""
    m = THINK.search(text)
    return m.group(2) if m else None


def with_reasoning(trace: Trace, content: str) -> Trace:
    """``trace`` with its first ``<think>`` block's content replaced (a text trace: tokenized again)."""
    text = THINK.sub(lambda m: m.group(1) + content + m.group(3), trace.text, count=1)
    return Trace(text, None, trace.finished)


def variants(traces: list[Trace]) -> tuple[list[int], dict[str, list[Trace]]]:
    """(indices of the traces with reasoning, {variant: the changed traces of those indices})."""
    idx = [i for i, t in enumerate(traces) if reasoning(t.text) is not None]
    thoughts = [reasoning(traces[i].text) for i in idx]
    swapped = [with_reasoning(traces[i], thoughts[(j + 1) % len(idx)]) for j, i in enumerate(idx)]
    return idx, {"removed": [with_reasoning(traces[i], "") for i in idx], "swapped": swapped}


def summarise(results: dict[str, dict]) -> dict | None:
    """Query-weighted means over the tasks that have a faithfulness entry, for the report and MLflow."""
    entries = [r["faithfulness"] for r in results.values() if r.get("faithfulness")]
    n = sum(e["queries"] for e in entries)
    if not n:
        return None
    out = {"queries": n, "tasks": len(entries)}
    for key in ("cos_removed", "cos_swapped", "delta_removed", "delta_swapped"):
        out[key] = float(sum(e[key] * e["queries"] for e in entries) / n)
    return out


def markdown(results: dict[str, dict]) -> list[str]:
    rows = [(name, r["faithfulness"]) for name, r in results.items() if r.get("faithfulness")]
    if not rows:
        return []
    lines = ["", "## Does the reasoning matter? (faithfulness)", "",
             "Each gen query re-extracted from its own trace with the `<think>` content removed, and with the next "
             "query's reasoning swapped in (prefills only). cos: mean cosine to the original gen embedding; "
             "scores ×100, gen query → gen targets.", "",
             "| task | queries | cos removed | cos swapped | gen | removed | swapped |", "|---|---|---|---|---|---|---|"]
    for name, f in rows:
        lines.append(f"| {name} | {f['queries']} | {f['cos_removed']:.4f} | {f['cos_swapped']:.4f} | "
                     f"{100 * f['original']:.1f} | {100 * f['removed']:.1f} ({100 * f['delta_removed']:+.1f}) | "
                     f"{100 * f['swapped']:.1f} ({100 * f['delta_swapped']:+.1f}) |")
    s = summarise(results)
    lines.append(f"| **all** ({s['tasks']} tasks) | {s['queries']} | {s['cos_removed']:.4f} | {s['cos_swapped']:.4f} "
                 f"| | ({100 * s['delta_removed']:+.1f}) | ({100 * s['delta_swapped']:+.1f}) |")
    return lines


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=-1)))
