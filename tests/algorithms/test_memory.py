"""Bounded-memory meta-gradients: checkpointed inner loops and chunked meta-batches give the
meta-gradient of the plain computation, in float64, for every algorithm that has one; the
measured footprint grows with the tasks of a chunk and is what the chunk picker works from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms import ANIL, MAML, MLP, Conv4, Episode, MetaSGD, ProtoNet, Reptile
from metasweep.algorithms.functional import checkpointed
from metasweep.algorithms.memory import Footprint, largest_chunk, measure_footprint, meta_backward

TOLERANCE = {"rtol": 1e-9, "atol": 1e-11}


def problem(kind: str, build, make_sinusoids, make_images) -> tuple[nn.Module, Episode, Callable[..., Any]]:
    """A float64 backbone, 6 tasks and the loss: sinusoids (MLP) or images (Conv-4)."""
    if kind == "mlp":
        return build(MLP, 0).double(), make_sinusoids(tasks=6, seed=3, dtype=torch.float64), F.mse_loss
    model = build(lambda: Conv4(ways=5, hidden=8), 0).double()
    return model, make_images(tasks=6, seed=3, dtype=torch.float64), F.cross_entropy


def parts(episode: Episode) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return episode.support_x, episode.support_y, episode.query_x, episode.query_y


def gradients(learner: Any, episode: Episode, chunk: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    learner.zero_grad(set_to_none=True)
    loss = meta_backward(learner, *parts(episode), task_chunk=chunk)
    return loss, {n: p.grad.detach().clone() for n, p in learner.named_parameters()}


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOLERANCE, msg=f"gradient of {name} differs")


LEARNERS = {
    "maml": lambda m, loss, **kw: MAML(m, inner_lr=0.1, loss_fn=loss, **kw),
    "metasgd": lambda m, loss, **kw: MetaSGD(m, inner_lr=0.1, loss_fn=loss, **kw),
    "anil": lambda m, loss, **kw: ANIL(m, inner_lr=0.1, loss_fn=loss, **kw),
}


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("algorithm", list(LEARNERS))
def test_a_checkpointed_inner_loop_gives_the_same_second_order_meta_gradient(
    algorithm: str, kind: str, strategy: str, build, make_sinusoids, make_images
) -> None:
    model, episode, loss = problem(kind, build, make_sinusoids, make_images)
    plain = LEARNERS[algorithm](model, loss, inner_steps=3, strategy=strategy)
    saving = LEARNERS[algorithm](model, loss, inner_steps=3, strategy=strategy, checkpoint_inner=True)
    if algorithm == "metasgd":  # the same learned rates in both, away from their common start
        with torch.no_grad():
            for rate in plain.inner_lrs.values():
                rate.uniform_(0.05, 0.15, generator=torch.Generator().manual_seed(1))
        saving.inner_lrs.load_state_dict(plain.inner_lrs.state_dict())
    loss_plain, expected = gradients(plain, episode)
    loss_saving, got = gradients(saving, episode)
    torch.testing.assert_close(loss_plain, loss_saving, **TOLERANCE)
    assert_same(expected, got)
    assert any(g.abs().sum() > 0 for g in got.values())


def test_the_checkpointed_gradient_is_second_order(build, make_sinusoids) -> None:
    """Not the first-order one: the two differ here, and the checkpointed one matches the full."""
    model, episode, loss = problem("mlp", build, make_sinusoids, None)
    options = {"inner_lr": 0.1, "inner_steps": 3, "loss_fn": loss}
    _, full = gradients(MAML(model, **options), episode)
    _, first = gradients(MAML(model, first_order=True, **options), episode)
    _, saved = gradients(MAML(model, checkpoint_inner=True, **options), episode)
    assert_same(full, saved)
    assert max((full[n] - first[n]).abs().max().item() for n in full) > 1e-4


def test_a_checkpointed_step_keeps_only_its_inputs_for_the_backward_pass() -> None:
    """What makes the memory bounded: the forward keeps no graph of the step, only its inputs,
    and the backward pass recomputes it (here: twice the calls of the step's function)."""
    calls = []
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64)

    def step(w: Tensor, xi: Tensor) -> tuple[Tensor, ...]:
        calls.append(torch.is_grad_enabled())
        return (torch.tanh(xi @ w).sin(),)

    (out,) = checkpointed(step, weight, x)
    assert out.grad_fn is not None and calls == [False]
    out.sum().backward()
    assert calls == [False, True]
    expected = torch.autograd.grad(torch.tanh(x @ weight).sin().sum(), weight)[0]
    torch.testing.assert_close(weight.grad, expected, **TOLERANCE)


ALL = {
    **LEARNERS,
    "reptile": lambda m, loss, **kw: Reptile(m, inner_lr=0.1, loss_fn=loss, **kw),
    "protonet": lambda m, loss, **kw: ProtoNet(m, loss_fn=loss, **kw),
}


@pytest.mark.parametrize("chunk", [2, 4])
@pytest.mark.parametrize("algorithm", list(ALL))
def test_a_chunked_meta_batch_gives_the_gradient_of_the_whole_batch(
    algorithm: str, chunk: int, build, make_images
) -> None:
    """Chunks that divide the batch (2 of 6) and one that leaves a remainder (4 of 6): the same
    loss and gradient."""
    model = build(lambda: Conv4(ways=None if algorithm == "protonet" else 5, hidden=8), 0).double()
    episode = make_images(tasks=6, seed=3, dtype=torch.float64)
    options = {} if algorithm == "protonet" else {"inner_steps": 2}
    learner = ALL[algorithm](model, F.cross_entropy, **options)
    whole_loss, whole = gradients(learner, episode)
    loss, chunked = gradients(learner, episode, chunk)
    torch.testing.assert_close(loss, whole_loss, **TOLERANCE)
    assert_same(whole, chunked)


def test_chunks_with_a_checkpointed_inner_loop_still_give_the_plain_gradient(build, make_images) -> None:
    model, episode, loss = problem("conv4", build, None, make_images)
    _, plain = gradients(MAML(model, inner_lr=0.1, inner_steps=3, loss_fn=loss), episode)
    both = MAML(model, inner_lr=0.1, inner_steps=3, loss_fn=loss, checkpoint_inner=True)
    assert_same(plain, gradients(both, episode, 2)[1])


def test_the_footprint_grows_with_the_tasks_and_shrinks_with_checkpointing(build, make_images) -> None:
    """Measured from the allocator: a task of 5 inner steps costs several times what it costs
    checkpointed, and the measurement leaves the learner's gradients alone."""
    model = build(lambda: Conv4(ways=5, hidden=16), 0)
    episode = make_images(tasks=4, seed=3)
    plain = MAML(model, inner_lr=0.1, inner_steps=5)
    saving = MAML(model, inner_lr=0.1, inner_steps=5, checkpoint_inner=True)
    full = measure_footprint(plain, *parts(episode))
    bounded = measure_footprint(saving, *parts(episode))
    assert all(p.grad is None for p in model.parameters())
    # One task holds at least its 5 steps' activations: 16 filters x 28x28 floats x 5 steps.
    assert full.task_bytes > 5 * 16 * 28 * 28 * 4
    assert bounded.task_bytes < full.task_bytes / 2, (bounded, full)


def test_the_largest_chunk_that_fits_divides_the_meta_batch() -> None:
    footprint = Footprint(task_bytes=100, fixed_bytes=50)
    assert largest_chunk(footprint, 32, budget_bytes=50 + 32 * 100) == 32
    assert largest_chunk(footprint, 32, budget_bytes=50 + 31 * 100) == 16
    assert largest_chunk(footprint, 30, budget_bytes=50 + 14 * 100) == 10
    assert largest_chunk(footprint, 7, budget_bytes=50 + 6 * 100) == 1
    with pytest.raises(ValueError, match=r"one task's meta-gradient needs about"):
        largest_chunk(footprint, 32, budget_bytes=149)


def test_a_chunk_below_one_task_is_refused(build, make_sinusoids) -> None:
    learner = MAML(build(MLP, 0), loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="task_chunk must be at least 1"):
        meta_backward(learner, *parts(make_sinusoids()), task_chunk=0)
