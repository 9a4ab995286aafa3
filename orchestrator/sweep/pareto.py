"""Which trial is the champion of a finished sweep, and the Pareto front of a multi-objective one.

A trial is judged by its last evaluation: the one its checkpoint holds, and so the model the
registry would get. Trials that failed or diverged are never on the front. With
``tracking.champion_constraints`` only the trials that keep them are candidates; with
``search.objectives`` the champion is the best on the first objective among the candidates on
their Pareto front, which is the best on the first objective among all candidates (a trial that
beats it on the first objective would dominate it or be on the front itself). The reason is kept
in words for the sweep's summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metasweep.orchestrator.config import Bound
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.sweep.callback import ended
from metasweep.orchestrator.sweep.moasha import pareto_fronts, signs
from metasweep.orchestrator.sweep.trial import DIVERGED, evaluations

FRONT_TAG = "metasweep.pareto_front"
"""The tag of a child run: ``true`` on the Pareto front, ``false`` off it."""


@dataclass(frozen=True)
class Judged:
    """One trial at its last evaluation.

    Attributes:
        trial_id: Tune's id.
        result: Tune's ``Result`` of it.
        values: every metric of its last evaluation.
        front: its Pareto front among the candidates (0: on the front), or ``None`` for a trial
            that is no candidate (failed, diverged, or outside the constraints).
        feasible: whether it keeps the champion constraints.
    """

    trial_id: str
    result: Any
    values: dict[str, float]
    front: int | None
    feasible: bool


@dataclass(frozen=True)
class Choice:
    """The champion, why, and how every trial stood."""

    champion: Judged
    why: str
    trials: tuple[Judged, ...]

    @property
    def front(self) -> tuple[Judged, ...]:
        """The trials on the Pareto front, best on the first objective first."""
        return tuple(t for t in self.trials if t.front == 0)


def last_evaluation(result: Any) -> dict[str, float] | None:
    """The metrics of a trial's last evaluation (progress reports between them carry none)."""
    frame = evaluations(result.metrics_dataframe)
    if frame is None or len(frame) == 0:
        return None
    row = frame.iloc[-1]
    return {
        str(k): float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def choose(
    results: Sequence[Any],
    objectives: Sequence[tuple[str, str]],
    constraints: Mapping[str, Bound],
    sweep: str,
) -> Choice:
    """The champion of ``results`` (Tune ``Result``\\ s) of ``sweep`` under ``objectives``
    (``(metric, mode)``, the first picks) and ``constraints`` (by metric).

    Raises:
        UserError: no trial reported an evaluation, or none keeps the constraints.
    """
    minimised = signs([mode for _, mode in objectives])
    metrics = [metric for metric, _ in objectives]
    seen: list[tuple[Any, dict[str, float], bool]] = []
    for result in results:
        values = last_evaluation(result)
        if values is None:
            continue
        ok = (
            result.error is None
            and DIVERGED not in (result.metrics or {})
            and all(math.isfinite(values.get(m, math.nan)) for m in metrics)
        )
        seen.append((result, values, ok))
    usable = [(r, v) for r, v, ok in seen if ok]
    if not usable:
        raise UserError("no trial reported a result; see the errors above")

    def keeps(values: dict[str, float]) -> bool:
        return all(b.holds(values.get(m, math.nan)) for m, b in constraints.items())

    feasible = [(r, v) for r, v in usable if keeps(v)]
    if not feasible:
        raise UserError(
            f"none of the {len(usable)} trials that reported keeps tracking.champion_constraints "
            f"({_rules(constraints)}), so nothing is scored or registered; `--resume {sweep} --set "
            "tracking.champion_constraints=...` with other limits picks again, and --set "
            "search.num_samples=N with more trials searches further"
        )
    points = np.stack([minimised * np.array([v[m] for m in metrics]) for _, v in feasible])
    fronts = pareto_fronts(points) if len(metrics) > 1 else np.zeros(len(feasible), dtype=int)
    rank = {id(r): int(f) for (r, _), f in zip(feasible, fronts, strict=True)}
    judged = [Judged(_trial_id(r), r, v, rank.get(id(r)), keeps(v)) for r, v, _ in seen]
    first, sign = metrics[0], minimised[0]
    candidates = [t for t in judged if t.front == 0]
    champion = min(candidates, key=lambda t: sign * t.values[first])
    judged.sort(key=lambda t: (t.front is None, t.front or 0, sign * t.values.get(first, math.inf)))
    return Choice(champion, _why(champion, candidates, len(feasible), objectives, constraints), tuple(judged))


def _why(
    champion: Judged,
    candidates: Sequence[Judged],
    feasible: int,
    objectives: Sequence[tuple[str, str]],
    constraints: Mapping[str, Bound],
) -> str:
    first, mode = objectives[0]
    best = "highest" if mode == "max" else "lowest"
    value = f"{champion.values[first]:.4g}"
    kept = f" that {'keeps' if feasible == 1 else 'keep'} {_rules(constraints)}" if constraints else ""
    if len(objectives) == 1:
        return f"trial {champion.trial_id}: the {best} {first} ({value}) of the {_trials(feasible)}{kept}"
    others = ", ".join(f"{m} {champion.values[m]:.4g}" for m, _ in objectives[1:])
    return (
        f"trial {champion.trial_id}: the {best} {first} ({value}; {others}) of the "
        f"{_trials(len(candidates))} on the Pareto front of {', '.join(m for m, _ in objectives)}, "
        f"among the {_trials(feasible)}{kept}"
    )


def _rules(constraints: Mapping[str, Bound]) -> str:
    return " and ".join(b.text(m) for m, b in constraints.items())


def _trials(n: int) -> str:
    return f"{n} trial{'s' * (n != 1)}"


def _trial_id(result: Any) -> str:
    return str((result.metrics or {}).get("trial_id", "?"))


def front_table(choice: Choice, objectives: Sequence[tuple[str, str]], iterations: int, path: Path) -> Path:
    """Every trial's objectives, front and standing, as CSV (the parent run's table artifact)."""
    import csv

    metrics = [m for m, _ in objectives]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *metrics, "pareto_front", "keeps_constraints", "champion", "outcome"])
        for t in choice.trials:
            writer.writerow(
                [
                    t.trial_id,
                    *(f"{t.values[m]:.6g}" if m in t.values else "" for m in metrics),
                    "" if t.front is None else t.front,
                    t.feasible,
                    t is choice.champion,
                    ended(t.result, iterations),
                ]
            )
    return path


def front_plot(choice: Choice, objectives: Sequence[tuple[str, str]], title: str, path: Path) -> Path:
    """The trials on the first two objectives: the front joined up, the champion starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (x, x_mode), (y, y_mode) = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    placed = [t for t in choice.trials if x in t.values and y in t.values]
    others = [t for t in placed if t.front != 0]
    front = sorted((t for t in placed if t.front == 0), key=lambda t: t.values[x])
    if others:
        ax.scatter(
            [t.values[x] for t in others], [t.values[y] for t in others], c="0.6", s=18, label="other trials"
        )
    ax.plot(
        [t.values[x] for t in front],
        [t.values[y] for t in front],
        "o-",
        color="tab:blue",
        markersize=6,
        label="Pareto front",
    )
    c = choice.champion
    ax.scatter([c.values[x]], [c.values[y]], marker="*", s=260, c="tab:red", zorder=5, label="champion")
    for t in front:
        ax.annotate(
            t.trial_id[-5:], (t.values[x], t.values[y]), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xlabel(f"{x} ({'higher' if x_mode == 'max' else 'lower'} is better)")
    ax.set_ylabel(f"{y} ({'higher' if y_mode == 'max' else 'lower'} is better)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
