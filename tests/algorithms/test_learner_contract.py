"""The MetaLearner contract (``metasweep.algorithms.testing``), run over every registered learner.

Each learner runs as shipped and, where it can take second-order terms, first order too. A learner
registered in ``ALGORITHMS`` without a contract class here fails the last test.
"""

from __future__ import annotations

from typing import Any, ClassVar

from metasweep.algorithms import ALGORITHMS, ANIL, MAML, MetaSGD, ProtoNet, Reptile
from metasweep.algorithms.testing import LearnerContract


class TestMAML(LearnerContract):
    learner_class = MAML


class TestFirstOrderMAML(LearnerContract):
    learner_class = MAML
    options: ClassVar[dict[str, Any]] = {"first_order": True}


class TestANIL(LearnerContract):
    learner_class = ANIL


class TestFirstOrderANIL(LearnerContract):
    learner_class = ANIL
    options: ClassVar[dict[str, Any]] = {"first_order": True}


class TestMetaSGD(LearnerContract):
    learner_class = MetaSGD


class TestFirstOrderMetaSGD(LearnerContract):
    learner_class = MetaSGD
    options: ClassVar[dict[str, Any]] = {"first_order": True}


class TestReptile(LearnerContract):
    learner_class = Reptile


class TestProtoNet(LearnerContract):
    learner_class = ProtoNet


CONTRACTS = [c for c in list(globals().values()) if isinstance(c, type) and issubclass(c, LearnerContract)]


def test_every_registered_learner_runs_the_contract_in_every_order_it_supports() -> None:
    covered = {
        (c.learner_class, bool(c.options.get("first_order"))) for c in CONTRACTS if c is not LearnerContract
    }
    for cls in ALGORITHMS.values():
        assert (cls, False) in covered, f"{cls.__name__} has no contract class in this module"
        if cls.capabilities.second_order:
            assert (cls, True) in covered, f"{cls.__name__} is not checked first order"
