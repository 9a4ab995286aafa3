"""From settings to a meta-learner: the one place that builds backbones and learners.

The training loop, the sweep's trials, the registry and the served model all build their learner
here, from a :class:`LearnerSpec` (plain values, saved in the model's JSON spec) and the
:class:`~metasweep.orchestrator.problem.Problem`. Which constructor arguments a learner takes comes
from its declared :class:`~metasweep.algorithms.Capabilities`, never from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metasweep.algorithms import MLP, Conv4, MetaLearner, ResNet12, learner_class
from metasweep.algorithms.functional import Strategy
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.problem import Problem


@dataclass(frozen=True)
class LearnerSpec:
    """The settings that make a learner, as the config gives them.

    Attributes:
        algorithm: a registered algorithm (:data:`metasweep.algorithms.ALGORITHMS`).
        backbone: ``mlp``, ``conv4`` or ``resnet12`` (:data:`BACKBONES`).
        hidden: MLP hidden widths.
        filters: Conv-4 filters per convolution.
        widths: ResNet-12 filters per block.
        inner_lr, inner_steps: the inner loop, for learners that have one.
        first_order: drop second-order terms, for learners that can take them.
        strategy: ``auto``, ``vmap`` or ``loop``.
        seed: seed of the initialisation.
    """

    algorithm: str
    backbone: str
    hidden: tuple[int, ...]
    filters: int
    inner_lr: float
    inner_steps: int
    first_order: bool
    strategy: Strategy
    seed: int
    widths: tuple[int, ...] = (64, 160, 320, 640)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LearnerSpec:
        """The inverse of :meth:`to_json`."""
        # Specs saved before ResNet-12 existed have no widths: the default is theirs.
        widths = {"widths": tuple(data["widths"])} if "widths" in data else {}
        return cls(**{**data, "hidden": tuple(data["hidden"]), **widths})


def _mlp(spec: LearnerSpec, problem: Problem, outputs: int | None) -> nn.Module:
    return MLP(problem.input_shape[0], spec.hidden, outputs or 1)


def _conv4(spec: LearnerSpec, problem: Problem, outputs: int | None) -> nn.Module:
    channels, size, _ = problem.input_shape
    return Conv4(channels, size, outputs, spec.filters)


def _resnet12(spec: LearnerSpec, problem: Problem, outputs: int | None) -> nn.Module:
    channels, height, width = problem.input_shape
    return ResNet12(channels, min(height, width), outputs, spec.widths)


BACKBONES: dict[str, Callable[[LearnerSpec, Problem, int | None], nn.Module]] = {
    "mlp": _mlp,
    "conv4": _conv4,
    "resnet12": _resnet12,
}
"""Backbone builders by config name: ``(spec, problem, outputs)``; ``outputs`` is the head's size
(``None``: no head, an embedding network)."""

BACKBONE_TASKS = {"mlp": "regression", "conv4": "classification", "resnet12": "classification"}
"""The task kind each backbone is built for."""


def _backbone(spec: LearnerSpec, problem: Problem) -> torch.nn.Module:
    """The backbone ``spec`` names, with an output head (one unit per way, or one for regression)
    only for learners that have one."""
    outputs = problem.ways if problem.task_kind == "classification" else 1
    head = learner_class(spec.algorithm).capabilities.head
    return BACKBONES[spec.backbone](spec, problem, outputs if head else None)


def build_learner(
    spec: LearnerSpec, problem: Problem, device: torch.device | None = None, checkpoint_inner: bool = False
) -> MetaLearner[Any]:
    """The backbone wrapped in the learner, initialised from ``spec.seed``, on ``device``.

    ``checkpoint_inner`` (training only, so not part of the spec a model is saved with) recomputes
    inner steps in the backward pass, for learners with second-order meta-gradients.

    Raises:
        ValueError: an unknown algorithm or backbone.
    """
    cls = learner_class(spec.algorithm)
    capabilities = cls.capabilities
    if spec.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {spec.backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    options: dict[str, Any] = {
        "loss_fn": F.mse_loss if problem.task_kind == "regression" else F.cross_entropy,
        "strategy": spec.strategy,
    }
    if capabilities.inner_loop:
        options |= {"inner_lr": spec.inner_lr, "inner_steps": spec.inner_steps}
    if capabilities.second_order:
        options |= {"first_order": spec.first_order, "checkpoint_inner": checkpoint_inner}
    # Initialisation is the one place that uses the global RNG (nn.Linear's init); fork it so that
    # callers' RNG streams are left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _backbone(spec, problem)
    # On its device before it is wrapped: Meta-SGD creates its learned rates beside the weights.
    return cls(model.to(device or torch.device("cpu")), **options)  # type: ignore[call-arg]


def check_input(spec: LearnerSpec, problem: Problem) -> None:
    """Refuse inputs the backbone cannot take (Conv-4 on images too small for its four poolings,
    a head sized for square images given others), by building it and pushing two blank inputs
    through it: whatever the backbone's limits are, they are found before any training starts.

    Raises:
        UserError: the backbone fails on inputs of the problem's shape.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            _backbone(spec, problem)(torch.zeros(2, *problem.input_shape))
    except (ValueError, RuntimeError) as exc:
        raise UserError(
            f"model.name={spec.backbone} cannot take inputs of shape {problem.input_shape} "
            f"(channels, height, width): {str(exc).splitlines()[0][:200]}; import the dataset with "
            "another --image-size or choose another model"
        ) from None
