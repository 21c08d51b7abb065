"""The promotion gate: a pure function from two evaluation snapshots and a policy to a decision.

``decide(candidate, champion, policy)`` checks, on the policy's score column (``disc_disc``, ``gen_gen``, ...):

- **complete**: the candidate's evaluation covered its whole suite (the evaluate step's completeness check against
  the task registry: every non-smoke task scored, so an overall score exists), and every task the policy requires
  (``required_tasks``: names, already resolved from groups such as ``mmeb-v2``) was scored;
- **comparable**: with ``require_same_tasks``, candidate and champion were scored on the same task set — an overall
  over other tasks is a different number;
- **floors**: overall ≥ ``min_overall`` and, per modality with a floor, that modality's mean ≥ its floor;
- **gain**: overall − champion overall ≥ ``min_gain``;
- **no regression**: for every modality the champion has a score in, candidate ≥ champion − ``max_modality_regression``.

Without a champion (the first model) gain and regression are not applicable and pass. The semantics follow
``mlflow.models.MetricThreshold`` (absolute floor + minimum absolute change over a baseline), applied per modality.
An ``EvalSnapshot`` is what the gate needs from an evaluate output (``summary.json``); it is stored as the JSON version
tag ``eval.snapshot`` at registration, so promotion needs the registry only, not the evaluation files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from umeflow.errors import RecordError, UserError

EPS = 1e-9  # scores are means of fractions; this absorbs float noise from recomputed means


@dataclass(frozen=True)
class ColumnScores:
    """One score column of an evaluation (aggregates as the evaluate step computes them)."""

    overall: float | None
    modalities: dict[str, float | None]
    complete: bool
    missing: tuple[str, ...] = ()
    num_tasks: int = 0
    num_expected: int = 0


@dataclass(frozen=True)
class EvalSnapshot:
    """What the gate compares: per column the overall and modality means plus completeness, and the task set."""

    suite: str  # the evaluated --tasks spec (offline, mmeb-v2, a list ...)
    tasks: tuple[str, ...]  # scored tasks that count (smoke tasks excluded), sorted
    columns: dict[str, ColumnScores]
    # evaluate --faithfulness means over all tasks (cos_removed, cos_swapped, delta_…, queries); None when not run
    faithfulness: dict[str, float] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "eval.snapshot") -> "EvalSnapshot":
        try:
            doc = json.loads(text)
            return cls(suite=str(doc["suite"]), tasks=tuple(doc["tasks"]),
                       columns={c: ColumnScores(**{**v, "missing": tuple(v.get("missing", ()))})
                                for c, v in doc["columns"].items()},
                       faithfulness=doc.get("faithfulness"))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{source}: not an evaluation snapshot written by `umeflow register` ({e})") from None

    @classmethod
    def from_summary(cls, summary: dict, source: str | os.PathLike, suite: str = "") -> "EvalSnapshot":
        """From an evaluate ``summary.json`` (``source`` names it in errors)."""
        if not isinstance(summary, dict):
            raise RecordError(source, None, None, "expected a JSON object")
        for key in ("tasks", "aggregates"):
            if not isinstance(summary.get(key), dict):
                raise RecordError(source, None, key, "missing or not an object; is this an evaluate summary.json?")
        tasks = []
        for name, entry in summary["tasks"].items():
            meta = entry.get("meta") if isinstance(entry, dict) else None
            if not isinstance(meta, dict):
                raise RecordError(source, None, f"tasks.{name}.meta", "missing")
            if not meta.get("smoke", False):
                tasks.append(name)
        columns = {}
        for col, agg in summary["aggregates"].items():
            if not isinstance(agg, dict) or "overall" not in agg or "complete" not in agg:
                raise RecordError(source, None, f"aggregates.{col}", "needs 'overall' and 'complete'")
            columns[col] = ColumnScores(overall=agg["overall"], modalities=dict(agg.get("modalities") or {}),
                                        complete=bool(agg["complete"]), missing=tuple(agg.get("missing") or ()),
                                        num_tasks=int(agg.get("num_tasks", 0)),
                                        num_expected=int(agg.get("num_expected", 0)))
        if not columns:
            raise RecordError(source, None, "aggregates", "no score columns")
        faithful = summary.get("faithfulness")
        return cls(suite=suite, tasks=tuple(sorted(tasks)), columns=columns,
                   faithfulness=faithful if isinstance(faithful, dict) else None)


@dataclass(frozen=True)
class PromotionPolicy:
    column: str = "disc_disc"
    min_overall: float = 0.0
    modality_floors: dict[str, float] = field(default_factory=dict)  # modality -> floor; 0 or absent = none
    min_gain: float = 0.0  # absolute gain on the overall score over the champion
    max_modality_regression: float = 0.0  # tolerated drop of any modality's mean vs the champion
    require_complete: bool = True
    required_tasks: frozenset[str] = frozenset()
    require_same_tasks: bool = True
    # 0 = off; else the mean cosine between a query's gen embedding and the one with its reasoning removed must be at
    # most this (evaluate --faithfulness): a model whose embedding ignores its reasoning is not promoted
    max_reasoning_cosine: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["required_tasks"] = sorted(self.required_tasks)
        return d


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    reasons: list[str]  # why it failed (one line per failed check); empty when it passed
    checks: list[Check]  # every check with its outcome, passed or not
    inputs: dict[str, Any]  # the numbers compared and the policy, as recorded on the version

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "checks": [asdict(c) for c in self.checks],
                "inputs": self.inputs}


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.4f}"


def _inputs(snap: EvalSnapshot | None, column: str) -> dict[str, Any] | None:
    if snap is None:
        return None
    col = snap.columns.get(column)
    return {"suite": snap.suite, "num_tasks": len(snap.tasks),
            "overall": col.overall if col else None, "modalities": dict(col.modalities) if col else {},
            "complete": col.complete if col else False, "missing": list(col.missing) if col else []}


def decide(candidate: EvalSnapshot, champion: EvalSnapshot | None, policy: PromotionPolicy) -> Decision:
    """Apply ``policy`` to ``candidate`` against the current ``champion`` (None for the first model). Pure."""
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(name, bool(ok), detail))

    c = policy.column
    cand = candidate.columns.get(c)
    champ = champion.columns.get(c) if champion is not None else None
    if cand is None:
        check("complete", False, f"the candidate has no '{c}' scores (columns: {', '.join(sorted(candidate.columns))})")
    else:
        if policy.require_complete:
            if cand.complete and cand.overall is not None:
                check("complete", True, f"{cand.num_tasks} of {cand.num_expected} tasks of suite "
                                        f"'{candidate.suite}' scored")
            else:
                missing = ", ".join(cand.missing[:10]) + (" …" if len(cand.missing) > 10 else "")
                check("complete", False, f"incomplete evaluation: {cand.num_tasks} of {cand.num_expected} tasks of "
                                         f"suite '{candidate.suite}' scored (missing: {missing or 'unknown'})")
        absent = sorted((policy.required_tasks - set(candidate.tasks)) | (policy.required_tasks & set(cand.missing)))
        if policy.required_tasks:
            check("required_tasks", not absent,
                  f"required tasks not scored: {', '.join(absent[:10])}{' …' if len(absent) > 10 else ''}"
                  if absent else f"all {len(policy.required_tasks)} required tasks scored")

        overall = cand.overall
        check("floor_overall", overall is not None and overall + EPS >= policy.min_overall,
              f"overall {_fmt(overall)} vs floor {policy.min_overall:.4f}")
        for modality, floor in sorted(policy.modality_floors.items()):
            if floor <= 0:
                continue
            got = cand.modalities.get(modality)
            check(f"floor_{modality}", got is not None and got + EPS >= floor,
                  f"{modality} {_fmt(got)} vs floor {floor:.4f}" if got is not None
                  else f"{modality} has a floor of {floor:.4f} but no score (not evaluated or incomplete)")

    if policy.max_reasoning_cosine > 0:
        got = (candidate.faithfulness or {}).get("cos_removed")
        check("reasoning_matters", got is not None and got <= policy.max_reasoning_cosine + EPS,
              f"gen embedding with the reasoning removed: mean cosine {got:.4f} to the original vs at most "
              f"{policy.max_reasoning_cosine:.4f}" if got is not None else
              "the policy gates on the reasoning's effect but the evaluation has no faithfulness numbers "
              "(evaluate with --faithfulness)")

    if champion is None:
        check("gain", True, "no champion yet: gain and regression checks do not apply")
    elif cand is not None:
        if policy.require_same_tasks:
            only_c = sorted(set(candidate.tasks) - set(champion.tasks))
            only_p = sorted(set(champion.tasks) - set(candidate.tasks))
            check("comparable", not (only_c or only_p),
                  f"candidate and champion were scored on different tasks (only candidate: "
                  f"{', '.join(only_c[:5]) or '-'}; only champion: {', '.join(only_p[:5]) or '-'})"
                  if only_c or only_p else f"both scored on the same {len(candidate.tasks)} tasks")
        if champ is None or champ.overall is None:
            check("gain", False, f"the champion has no overall '{c}' score to compare with")
        elif cand.overall is None:
            check("gain", False, "the candidate has no overall score")
        else:
            gain = cand.overall - champ.overall
            check("gain", gain + EPS >= policy.min_gain,
                  f"overall {_fmt(cand.overall)} vs champion {_fmt(champ.overall)}: gain {gain:+.4f}, "
                  f"required ≥ {policy.min_gain:+.4f}")
        for modality, before in sorted((champ.modalities if champ else {}).items()):
            if before is None:
                continue
            after = cand.modalities.get(modality)
            ok = after is not None and after + policy.max_modality_regression + EPS >= before
            check(f"regression_{modality}", ok,
                  f"{modality} {_fmt(after)} vs champion {_fmt(before)} (tolerance {policy.max_modality_regression:.4f})")

    failed = [ch.detail for ch in checks if not ch.passed]
    inputs = {"column": c, "candidate": _inputs(candidate, c), "champion": _inputs(champion, c),
              "policy": policy.to_dict()}
    return Decision(passed=not failed, reasons=failed, checks=checks, inputs=inputs)


def resolve_required_tasks(spec: str, data_root: str = "") -> frozenset[str]:
    """Task names from a ``required_tasks`` spec: comma-separated task names and the groups ``--tasks`` knows
    (``mmeb-v2``, ``image``, ``video``, ``visdoc`` from the MMEB-V2 registry; ``offline`` needs ``data_root``).
    Smoke tasks are never required (they are never averaged)."""
    if not spec.strip():
        return frozenset()
    from umeflow.evaluate.tasks import select_tasks

    if "offline" in {s.strip() for s in spec.split(",")} and not data_root:
        raise UserError("promote.required_tasks names the offline suite; set promote.data_root to the folder "
                        "holding its tasks.json")
    return frozenset(t.name for t in select_tasks(data_root or ".", spec) if not t.smoke)
