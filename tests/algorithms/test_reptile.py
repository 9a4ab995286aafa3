"""Reptile's meta-gradient is ``theta - mean_t(phi_t)``; an SGD step with lr ``eps`` is the Reptile update.

The reference adapts a deep copy of the model per task with plain, in-place SGD driven by
``torch.autograd.grad``: the way Reptile is written in the paper (Nichol et al., 2018, Algorithm 2).
Float64 throughout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms import MLP, Conv4, Episode, Reptile

INNER_LR = 0.05
INNER_STEPS = 3
TOLERANCE = {"atol": 1e-12, "rtol": 1e-9}


def reference_reptile(
    model: nn.Module, episode: Episode, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> tuple[dict[str, Tensor], Tensor]:
    """Mean adapted weights ``mean_t(phi_t)`` by name, and the mean query loss of the adapted models."""
    adapted, query_losses = [], []
    for t in range(episode.tasks):
        clone = copy.deepcopy(model)
        for _ in range(INNER_STEPS):
            loss = loss_fn(clone(episode.support_x[t]), episode.support_y[t])
            step = torch.autograd.grad(loss, list(clone.parameters()))
            with torch.no_grad():
                for p, g in zip(clone.parameters(), step, strict=True):
                    p -= INNER_LR * g
        with torch.no_grad():
            query_losses.append(loss_fn(clone(episode.query_x[t]), episode.query_y[t]))
        adapted.append({n: p.detach() for n, p in clone.named_parameters()})
    mean_phi = {n: torch.stack([a[n] for a in adapted]).mean(0) for n in adapted[0]}
    return mean_phi, torch.stack(query_losses).mean()


@pytest.fixture(params=["mlp", "conv4"])
def problem(request: pytest.FixtureRequest, build, make_sinusoids, make_images):
    """``(model, episode, loss_fn)`` in float64: sinusoid regression or 5-way images on Conv4."""
    if request.param == "mlp":
        return build(MLP, 0).double(), make_sinusoids(seed=8, dtype=torch.float64), F.mse_loss
    model = build(lambda: Conv4(ways=5, hidden=8), 0).double()
    return model, make_images(seed=8, dtype=torch.float64), F.cross_entropy


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_gradient_is_theta_minus_the_mean_adapted_weights(problem, grads, strategy: str) -> None:
    model, episode, loss_fn = problem
    mean_phi, expected_loss = reference_reptile(model, episode, loss_fn)
    learner = Reptile(copy.deepcopy(model), INNER_LR, INNER_STEPS, loss_fn=loss_fn, strategy=strategy)
    loss, actual = grads(learner, episode)

    # The value reported for logging is the query loss of the adapted weights.
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    for name, theta in model.named_parameters():
        torch.testing.assert_close(
            actual[f"model.{name}"], theta.detach() - mean_phi[name], **TOLERANCE, msg=name
        )
    assert any(g.abs().max() > 1e-6 for g in actual.values())


def test_an_sgd_step_is_the_reptile_update(problem) -> None:
    model, episode, loss_fn = problem
    epsilon = 0.7
    mean_phi, _ = reference_reptile(model, episode, loss_fn)
    learner = Reptile(copy.deepcopy(model), INNER_LR, INNER_STEPS, loss_fn=loss_fn)
    optimizer = torch.optim.SGD(learner.parameters(), lr=epsilon)

    optimizer.zero_grad()
    learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y).backward()
    optimizer.step()

    for name, theta in model.named_parameters():
        expected = theta.detach() + epsilon * (mean_phi[name] - theta.detach())
        torch.testing.assert_close(
            learner.model.get_parameter(name).detach(), expected, **TOLERANCE, msg=name
        )


def test_reptile_is_first_order_by_construction_and_takes_no_first_order() -> None:
    assert not Reptile.capabilities.second_order
    with pytest.raises(TypeError, match="first_order"):
        Reptile(MLP(), first_order=False)  # type: ignore[call-arg]
