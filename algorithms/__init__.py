"""metasweep's meta-learning core: PyTorch only, usable on its own.

>>> from algorithms import MAML
>>> learner = MAML(model, inner_lr=0.01, inner_steps=1)
>>> learner.meta_loss(support_x, support_y, query_x, query_y).backward()
"""

from __future__ import annotations

from algorithms.evaluation import evaluate
from algorithms.learners import ANIL, MAML, MetaLearner, MetaSGD, ProtoNet, Reptile
from algorithms.models import MLP, Conv4
from algorithms.tasks import Episode, SinusoidTasks, TaskSource, fixed_episodes

ALGORITHMS: dict[str, type] = {
    "maml": MAML,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "reptile": Reptile,
    "protonet": ProtoNet,
}
"""Registered meta-learners by config name; first-order MAML is ``maml`` with ``first_order``."""

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "MAML",
    "MLP",
    "Conv4",
    "Episode",
    "MetaLearner",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "SinusoidTasks",
    "TaskSource",
    "evaluate",
    "fixed_episodes",
]
