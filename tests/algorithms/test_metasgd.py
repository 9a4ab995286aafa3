"""Meta-SGD: per-entry learned inner learning rates, meta-learned with the model.

The reference is the hand-written MLP of the MAML tests with one rate tensor per weight,
``w' = w - alpha * grad``, differentiated with ``torch.autograd.grad`` with respect to both the
weights and the rates.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metasweep.algorithms import MAML, MLP, Episode, MetaSGD, SinusoidTasks, evaluate, fixed_episodes

INNER_LR = 0.05
TOLERANCE = {"atol": 1e-12, "rtol": 1e-9}


def mlp_forward(x: Tensor, weights: list[Tensor]) -> Tensor:
    """The 1-40-40-1 ReLU network of Finn et al. (2017), ``(n, 1) -> (n, 1)``."""
    w1, b1, w2, b2, w3, b3 = weights
    return torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3


def reference_metasgd(
    model: MLP, rates: list[Tensor], episode: Episode, *, steps: int
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Second-order Meta-SGD: the meta-loss and its gradients w.r.t. the weights and the rates."""
    meta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    alphas = [r.detach().clone().requires_grad_() for r in rates]
    task_losses = []
    for t in range(episode.tasks):
        fast = meta
        for _ in range(steps):
            support_loss = (mlp_forward(episode.support_x[t], fast) - episode.support_y[t]).pow(2).mean()
            inner = torch.autograd.grad(support_loss, fast, create_graph=True)
            fast = [w - a * g for w, a, g in zip(fast, alphas, inner, strict=True)]
        task_losses.append((mlp_forward(episode.query_x[t], fast) - episode.query_y[t]).pow(2).mean())
    loss = torch.stack(task_losses).mean()
    gradients = torch.autograd.grad(loss, meta + alphas)
    return loss.detach(), list(gradients[: len(meta)]), list(gradients[len(meta) :])


@pytest.fixture
def mlp(build) -> MLP:
    return build(MLP, 0).double()


@pytest.fixture
def tasks(make_sinusoids) -> Episode:
    return make_sinusoids(seed=6, dtype=torch.float64)


def rate_names(model: MLP) -> list[str]:
    return [f"inner_lrs.{n.replace('.', '__')}" for n, _ in model.named_parameters()]


def test_rates_are_meta_parameters_initialised_to_inner_lr(mlp: MLP) -> None:
    learner = MetaSGD(mlp, inner_lr=INNER_LR, loss_fn=F.mse_loss)
    params = dict(learner.named_parameters())
    for name, p in zip(rate_names(mlp), mlp.parameters(), strict=True):
        assert params[name].shape == p.shape
        assert torch.all(params[name] == INNER_LR)
    assert len(params) == 2 * len(list(mlp.parameters()))


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_meta_gradient_matches_the_reference_for_learned_rates(
    mlp: MLP, tasks: Episode, grads, inner_steps: int, strategy: str
) -> None:
    learner = MetaSGD(copy.deepcopy(mlp), INNER_LR, inner_steps, loss_fn=F.mse_loss, strategy=strategy)
    # Distinct rates per entry, so a rate applied to the wrong entry or parameter shows.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rate in learner.inner_lrs.values():
            rate.copy_(0.01 + 0.1 * torch.rand(rate.shape, generator=generator, dtype=rate.dtype))
    rates = [learner.inner_lrs[n.split(".", 1)[1]] for n in rate_names(mlp)]

    expected_loss, expected_weights, expected_rates = reference_metasgd(mlp, rates, tasks, steps=inner_steps)
    loss, actual = grads(learner, tasks)

    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    for (name, _), g in zip(mlp.named_parameters(), expected_weights, strict=True):
        torch.testing.assert_close(actual[f"model.{name}"], g, **TOLERANCE, msg=name)
    for name, g in zip(rate_names(mlp), expected_rates, strict=True):
        torch.testing.assert_close(actual[name], g, **TOLERANCE, msg=name)
        assert g.abs().max() > 0, f"{name} got no gradient signal"


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_equal_untrained_rates_give_the_maml_meta_gradient(
    mlp: MLP, tasks: Episode, grads, strategy: str
) -> None:
    loss_sgd, grads_sgd = grads(MetaSGD(copy.deepcopy(mlp), INNER_LR, 2, False, F.mse_loss, strategy), tasks)
    loss_maml, grads_maml = grads(MAML(copy.deepcopy(mlp), INNER_LR, 2, False, F.mse_loss, strategy), tasks)

    torch.testing.assert_close(loss_sgd, loss_maml, **TOLERANCE)
    for name, g in grads_maml.items():
        torch.testing.assert_close(grads_sgd[name], g, **TOLERANCE, msg=name)
    for name in rate_names(mlp):
        assert torch.isfinite(grads_sgd[name]).all()
        assert grads_sgd[name].abs().sum() > 0


def test_meta_training_moves_the_rates_and_lowers_the_loss(build) -> None:
    source = SinusoidTasks(shots=10, queries=10)
    validation = fixed_episodes(source, tasks=40, batch_size=40, seed=123)
    learner = MetaSGD(build(MLP, 0), inner_lr=0.01, inner_steps=1, loss_fn=F.mse_loss)
    initial_rates = {n: r.detach().clone() for n, r in learner.inner_lrs.items()}
    before = evaluate(learner, validation, task_kind="regression", split="val")["val/mse"]

    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(7)
    for _ in range(250):
        episode = source.sample(8, generator)
        optimizer.zero_grad()
        learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y).backward()
        optimizer.step()

    after = evaluate(learner, validation, task_kind="regression", split="val")["val/mse"]
    moved = torch.cat([(r.detach() - initial_rates[n]).abs().flatten() for n, r in learner.inner_lrs.items()])
    assert after < 0.7 * before, f"val/mse went from {before:.3f} to {after:.3f}"
    assert moved.mean() > 1e-3, f"the rates barely moved from 0.01 (mean change {moved.mean():.2e})"
