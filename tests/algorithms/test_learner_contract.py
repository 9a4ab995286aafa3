"""The MetaLearner contract, run against every registered algorithm (optuna's storage-test pattern).

Cases are generated from ``algorithms.ALGORITHMS``, so a newly registered learner is tested without
editing this file: gradient-based learners (those taking ``inner_lr``) run on the MAML-paper MLP
with sinusoid regression and on Conv4 with 5-way images; every learner runs on Conv4 (an embedding
network for learners without an inner loop); learners whose ``first_order`` defaults to false also
run first order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from algorithms import ALGORITHMS, MLP, Conv4, Episode, MetaLearner

WAYS = 5
HIDDEN = 16


def _takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls).parameters


def _defaults_false(cls: type, name: str) -> bool:
    parameter = inspect.signature(cls).parameters.get(name)
    return parameter is not None and parameter.default is False


@dataclass(frozen=True)
class Case:
    """One learner configuration on one backbone."""

    algorithm: str
    backbone: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        suffix = "-first-order" if self.options.get("first_order") else ""
        return f"{self.algorithm}{suffix}-{self.backbone}"

    @property
    def gradient_based(self) -> bool:
        return _takes(ALGORITHMS[self.algorithm], "inner_lr")

    @property
    def second_order(self) -> bool:
        defaults_to_second_order = _defaults_false(ALGORITHMS[self.algorithm], "first_order")
        return self.gradient_based and defaults_to_second_order and not self.options.get("first_order")


def _cases() -> list[Case]:
    cases = []
    for name, cls in sorted(ALGORITHMS.items()):
        variants: list[dict[str, Any]] = [{}]
        if _defaults_false(cls, "first_order"):
            variants.append({"first_order": True})
        backbones = ("mlp", "conv4") if _takes(cls, "inner_lr") else ("conv4",)
        cases += [Case(name, backbone, options) for options in variants for backbone in backbones]
    return cases


CASES = _cases()
GRADIENT_CASES = [c for c in CASES if c.gradient_based]

# Second-order meta-gradients through the fused BatchNorm are wrong under torch.func.vmap
# (pytorch/functorch#534); Conv4's TaskBatchNorm2d normalises with elementary operations under
# vmap, so every case below compares vmap with the loop. The refusal for a plain nn.BatchNorm2d
# is tested in test_batchnorm.py.


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture(params=GRADIENT_CASES, ids=[c.id for c in GRADIENT_CASES])
def gradient_case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def make_learner(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``make_learner(case, strategy="auto", seed=0)``: the case's learner around a seeded backbone."""

    def make(case: Case, strategy: str = "auto", seed: int = 0) -> nn.Module:
        cls = ALGORITHMS[case.algorithm]
        kwargs: dict[str, Any] = {"strategy": strategy, **case.options}
        if case.backbone == "mlp":
            model = build(MLP, seed)
            kwargs["loss_fn"] = F.mse_loss
        else:
            ways = WAYS if case.gradient_based else None
            model = build(lambda: Conv4(ways=ways, hidden=HIDDEN), seed)
        if case.gradient_based:
            kwargs |= {"inner_lr": 0.01 if case.backbone == "mlp" else 0.1, "inner_steps": 2}
        return cls(model, **kwargs)

    return make


@pytest.fixture
def episode_for(make_images: Callable[..., Episode], make_sinusoids: Callable[..., Episode]):
    """``episode_for(case)``: sinusoid tasks for the MLP, 4 tasks 5-way 1-shot 3-query images for Conv4."""

    def make(case: Case, seed: int = 0) -> Episode:
        return make_sinusoids(seed=seed) if case.backbone == "mlp" else make_images(seed=seed)

    return make


def test_learner_has_the_metalearner_members(case: Case, make_learner) -> None:
    learner = make_learner(case)
    assert isinstance(learner, nn.Module)
    assert isinstance(learner.model, nn.Module)
    for method in ("meta_loss", "adapt", "predict"):
        assert callable(getattr(learner, method)), method


def test_learner_is_an_instance_of_the_runtime_checkable_protocol(case: Case, make_learner) -> None:
    assert isinstance(make_learner(case), MetaLearner)


def test_meta_loss_is_a_finite_scalar_with_a_gradient_on_every_meta_parameter(
    case: Case, make_learner, episode_for, grads
) -> None:
    learner, episode = make_learner(case), episode_for(case)
    loss, gradients = grads(learner, episode)

    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert gradients.keys() == {n for n, _ in learner.named_parameters()}
    for name, g in gradients.items():
        assert torch.isfinite(g).all(), f"non-finite meta-gradient on {name}"
    assert any(g.abs().sum() > 0 for g in gradients.values())


def test_meta_loss_is_the_query_loss_after_adapt_and_predict(case: Case, make_learner, episode_for) -> None:
    learner, episode = make_learner(case), episode_for(case)
    loss = learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    predictions = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)
    expected = torch.stack(
        [learner.loss_fn(predictions[t], episode.query_y[t]) for t in range(episode.tasks)]
    ).mean()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)


def test_adapt_and_predict_shapes(case: Case, make_learner, episode_for) -> None:
    learner, episode = make_learner(case), episode_for(case)
    predictions = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)

    tasks, queries = episode.query_x.shape[:2]
    outputs = 1 if case.backbone == "mlp" else WAYS
    assert predictions.shape == (tasks, queries, outputs)


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
def test_adapt_and_predict_leave_the_learner_unchanged(
    case: Case, grad_enabled: bool, make_learner, episode_for, state, check_unchanged
) -> None:
    learner, episode = make_learner(case), episode_for(case)
    before = state(learner)
    with torch.set_grad_enabled(grad_enabled):
        adapted = learner.adapt(episode.support_x, episode.support_y)
        learner.predict(adapted, episode.query_x)
    check_unchanged(learner, before)


def test_vmap_and_loop_give_the_same_loss_and_meta_gradients(
    case: Case, request: pytest.FixtureRequest, make_learner, episode_for, grads
) -> None:
    episode = episode_for(case)
    loss_vmap, grads_vmap = grads(make_learner(case, strategy="vmap"), episode)
    loss_loop, grads_loop = grads(make_learner(case, strategy="loop"), episode)

    torch.testing.assert_close(loss_vmap, loss_loop, atol=1e-5, rtol=1e-4)
    # Float32, with BatchNorm statistics summed in different orders (the loop runs Conv4
    # channels-last on the CPU): an absolute tolerance scaled to the largest meta-gradient entry.
    scale = max(1.0, *(float(g.abs().max()) for g in grads_loop.values()))
    for name in grads_loop:
        torch.testing.assert_close(grads_vmap[name], grads_loop[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_same_seed_gives_the_same_loss_and_gradients(case: Case, make_learner, episode_for, grads) -> None:
    loss_a, grads_a = grads(make_learner(case, seed=3), episode_for(case, seed=5))
    loss_b, grads_b = grads(make_learner(case, seed=3), episode_for(case, seed=5))
    loss_c, _ = grads(make_learner(case, seed=4), episode_for(case, seed=5))

    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert not torch.equal(loss_a, loss_c), "a different initialisation seed should change the loss"


def test_zero_inner_steps_predicts_with_the_meta_parameters(
    gradient_case: Case, make_learner, episode_for
) -> None:
    learner, episode = make_learner(gradient_case), episode_for(gradient_case)
    predictions = learner.predict(
        learner.adapt(episode.support_x, episode.support_y, inner_steps=0), episode.query_x
    )
    unadapted = torch.stack([learner.model(x) for x in episode.query_x])
    # 1e-5: float32 BatchNorm sums its statistics in another order channels-last (test_layout.py).
    torch.testing.assert_close(predictions, unadapted, atol=1e-5, rtol=1e-5)

    adapted = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)
    assert not torch.allclose(adapted, unadapted), "inner_steps=2 should move the predictions"
