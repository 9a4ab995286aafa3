"""ANIL adapts only the linear head, on body features computed once per task.

The reference computes each task's body features with a plain module call, then adapts a
hand-written linear head ``f @ W.T + b`` with ``torch.autograd.grad``; the meta-gradient reaches
the body through the support and query features. Float64 throughout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms import ANIL, MLP, Conv4, Episode

INNER_LR = 0.3
TOLERANCE = {"atol": 1e-11, "rtol": 1e-8}


def reference_anil(
    model: nn.Module,
    episode: Episode,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    steps: int,
    first_order: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean query loss after adapting a hand-written linear head per task, and its meta-gradient."""
    model = copy.deepcopy(model)
    weight, bias = model.head.weight, model.head.bias
    task_losses = []
    for t in range(episode.tasks):
        support_features = model.body(episode.support_x[t])
        query_features = model.body(episode.query_x[t])
        w, b = weight, bias
        for _ in range(steps):
            support_loss = loss_fn(support_features @ w.T + b, episode.support_y[t])
            gw, gb = torch.autograd.grad(support_loss, (w, b), create_graph=not first_order)
            w, b = w - INNER_LR * gw, b - INNER_LR * gb
        task_losses.append(loss_fn(query_features @ w.T + b, episode.query_y[t]))
    loss = torch.stack(task_losses).mean()
    names, params = zip(*model.named_parameters(), strict=True)
    return loss.detach(), dict(zip(names, torch.autograd.grad(loss, params), strict=True))


@pytest.fixture(params=["mlp", "conv4"])
def problem(request: pytest.FixtureRequest, build, make_sinusoids, make_images):
    """``(model, episode, loss_fn)`` in float64: sinusoid regression or 5-way images on Conv4."""
    if request.param == "mlp":
        return build(MLP, 0).double(), make_sinusoids(seed=4, dtype=torch.float64), F.mse_loss
    model = build(lambda: Conv4(ways=5, hidden=8), 0).double()
    return model, make_images(seed=4, dtype=torch.float64), F.cross_entropy


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("inner_steps", [1, 3])
def test_meta_gradient_matches_the_hand_written_head_reference(
    problem, grads, inner_steps: int, first_order: bool, strategy: str
) -> None:
    model, episode, loss_fn = problem
    expected_loss, expected = reference_anil(
        model, episode, loss_fn, steps=inner_steps, first_order=first_order
    )
    learner = ANIL(copy.deepcopy(model), INNER_LR, inner_steps, first_order, loss_fn, strategy)
    loss, actual = grads(learner, episode)

    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    for name, g in expected.items():
        torch.testing.assert_close(actual[f"model.{name}"], g, **TOLERANCE, msg=name)
    # The body is learned through the features: its meta-gradient must not vanish.
    assert any(actual[f"model.body.{n}"].abs().max() > 1e-6 for n, _ in model.body.named_parameters())


def test_adapt_returns_only_head_parameters_and_leaves_the_body_alone(
    problem, state, check_unchanged
) -> None:
    model, episode, loss_fn = problem
    learner = ANIL(model, INNER_LR, 2, loss_fn=loss_fn)
    before = state(learner)
    adapted = learner.adapt(episode.support_x, episode.support_y)

    head = dict(model.head.named_parameters())
    assert adapted.keys() == head.keys() == {"weight", "bias"}
    for name, p in head.items():
        assert adapted[name].shape == (episode.tasks, *p.shape)
        for t in range(episode.tasks):
            assert not torch.allclose(adapted[name][t], p), f"head.{name} was not adapted for task {t}"
    check_unchanged(learner, before)


def test_predictions_are_the_adapted_head_on_unadapted_body_features(problem) -> None:
    model, episode, loss_fn = problem
    learner = ANIL(model, INNER_LR, 2, loss_fn=loss_fn)
    adapted = learner.adapt(episode.support_x, episode.support_y)
    predictions = learner.predict(adapted, episode.query_x)

    for t in range(episode.tasks):
        expected = model.body(episode.query_x[t]) @ adapted["weight"][t].T + adapted["bias"][t]
        torch.testing.assert_close(predictions[t], expected, **TOLERANCE)


def test_a_model_without_a_head_is_rejected() -> None:
    with pytest.raises(ValueError, match="head"):
        ANIL(Conv4(ways=None, hidden=4))
