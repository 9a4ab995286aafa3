"""What problem a run solves, said once.

A :class:`Problem` is computed from the config and the dataset's metadata
(:meth:`metasweep.orchestrator.config.RunConfig.problem`) where a command starts, and handed down
to the sweep, the trial, the training loop, the registry and the served model. None of them
re-derives the task kind, the input shape or the metric from names.

Plain values and the standard library only: the served model imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

TaskKind = Literal["regression", "classification"]
Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Problem:
    """The kind of tasks, the inputs a learner sees and how it is scored.

    Attributes:
        task_kind: ``regression`` (sinusoids) or ``classification`` (images).
        input_shape: one example as the learner sees it: ``(1,)`` for sinusoids,
            ``(C, H, W)`` for images.
        ways: classes per task (classification), ``None`` for regression.
        invert: the stored pixels are inverted before use (Omniglot's black ink on white
            becomes ink = 1, background = 0).
        dataset: the dataset's location (``sinusoid`` for the built-in tasks).
        fingerprint: what identifies the dataset's content and split; models are compared only
            on the same fingerprint.
    """

    task_kind: TaskKind
    input_shape: tuple[int, ...]
    ways: int | None
    invert: bool
    dataset: str
    fingerprint: str

    @property
    def metric(self) -> str:
        """The score of one task: ``accuracy`` (classification) or ``mse`` (regression)."""
        return "accuracy" if self.task_kind == "classification" else "mse"

    @property
    def mode(self) -> Mode:
        """Whether :attr:`metric` is better higher (``max``) or lower (``min``)."""
        return "max" if self.task_kind == "classification" else "min"

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable fields (the served model's spec holds them)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Problem:
        """The inverse of :meth:`to_json`."""
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


def own_direction(metric: str) -> Mode | None:
    """The direction in which a reported metric gets better, where it has one of its own:
    ``max`` for accuracy, ``min`` for errors, losses and costs (``cost/*``); None for the others
    (the confidence intervals' half-widths)."""
    if metric.endswith("accuracy"):
        return "max"
    if metric.startswith("cost/") or metric.endswith(("loss", "mse")):
        return "min"
    return None


def mode_of(metric: str, problem: Problem) -> Mode:
    """The direction of any reported metric: the problem's own for its score, else the metric's
    own (:func:`own_direction`), else ``max``."""
    if metric.rsplit("/", 1)[-1] == problem.metric:
        return problem.mode
    return own_direction(metric) or "max"
