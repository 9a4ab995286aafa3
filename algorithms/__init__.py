"""metasweep's meta-learning core: PyTorch only, usable on its own.

>>> from metasweep.algorithms import MAML, MLP
>>> learner = MAML(MLP(), inner_lr=0.01, inner_steps=1)
>>> learner.capabilities.inner_loop
True

Learners say what they support (:class:`Capabilities`); :func:`learner_class` maps a config name
to its class. :mod:`metasweep.algorithms.testing` is the contract every learner passes, ready to
run over a learner of your own.
"""

from __future__ import annotations

from typing import Any

from metasweep.algorithms.evaluation import evaluate
from metasweep.algorithms.learners import (
    ANIL,
    MAML,
    Capabilities,
    InnerLoopLearner,
    MetaLearner,
    MetaSGD,
    ProtoNet,
    Reptile,
)
from metasweep.algorithms.models import MLP, Conv4, ResNet12
from metasweep.algorithms.tasks import Episode, SinusoidTasks, TaskSource, fixed_episodes

ALGORITHMS: dict[str, type[MetaLearner[Any]]] = {
    "maml": MAML,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "reptile": Reptile,
    "protonet": ProtoNet,
}
"""Registered meta-learners by config name; first-order MAML is ``maml`` with ``first_order``."""


def learner_class(name: str) -> type[MetaLearner[Any]]:
    """The learner registered as ``name`` (a key of :data:`ALGORITHMS`).

    Raises:
        ValueError: an unknown name; the message lists the registered ones.
    """
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}") from None


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "MAML",
    "MLP",
    "Capabilities",
    "Conv4",
    "Episode",
    "InnerLoopLearner",
    "MetaLearner",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "ResNet12",
    "SinusoidTasks",
    "TaskSource",
    "evaluate",
    "fixed_episodes",
    "learner_class",
]
