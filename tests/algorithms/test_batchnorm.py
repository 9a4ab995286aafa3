"""Conv4's BatchNorm under MAML: statistics are computed per task, never across the task batch.

The reference loops over tasks, deep-copies the model for each (learn2learn's ``clone``) and takes
the inner SGD steps by hand with ``torch.autograd.grad`` and ``functional_call`` on that one task,
so its BatchNorm sees exactly one task's support set, then one task's query set. Float64 throughout.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metasweep.algorithms import MAML, Conv4, Episode
from metasweep.algorithms.models import TaskBatchNorm2d, tasks_batched

INNER_LR = 0.4
INNER_STEPS = 2
HIDDEN = 8
TOLERANCE = {"atol": 1e-10, "rtol": 1e-8}


def reference_maml(
    model: Conv4, episode: Episode, *, first_order: bool
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-task clone-and-step MAML.

    Returns:
        Query logits ``(tasks, q, ways)``, the mean query cross-entropy, and its gradient with
        respect to each meta-parameter (summed over the per-task clones).
    """
    clones, logits = [], []
    for t in range(episode.tasks):
        clone = copy.deepcopy(model)
        fast = dict(clone.named_parameters())
        for _ in range(INNER_STEPS):
            support_loss = F.cross_entropy(
                functional_call(clone, fast, (episode.support_x[t],)), episode.support_y[t]
            )
            inner = torch.autograd.grad(support_loss, list(fast.values()), create_graph=not first_order)
            fast = {name: w - INNER_LR * g for (name, w), g in zip(fast.items(), inner, strict=True)}
        logits.append(functional_call(clone, fast, (episode.query_x[t],)))
        clones.append(clone)
    query_logits = torch.stack(logits)
    loss = torch.stack(
        [F.cross_entropy(query_logits[t], episode.query_y[t]) for t in range(episode.tasks)]
    ).mean()
    loss.backward()
    meta_grads = {
        name: torch.stack([dict(c.named_parameters())[name].grad for c in clones]).sum(0)
        for name, _ in model.named_parameters()
    }
    return query_logits.detach(), loss.detach(), meta_grads


@pytest.fixture
def conv4(build) -> Conv4:
    return build(lambda: Conv4(ways=5, hidden=HIDDEN), 0).double()


@pytest.fixture
def tasks(make_images) -> Episode:
    """Four tasks whose images have very different scales and offsets, so pooled statistics would differ."""
    episode = make_images(seed=2, dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 3.0, 8.0], dtype=torch.float64).view(-1, 1, 1, 1, 1)
    shift = torch.tensor([-2.0, 0.0, 1.0, 5.0], dtype=torch.float64).view(-1, 1, 1, 1, 1)
    return Episode(
        episode.support_x * scale + shift, episode.support_y, episode.query_x * scale + shift, episode.query_y
    )


def maml(model: Conv4, strategy: str, first_order: bool = False) -> MAML:
    return MAML(copy.deepcopy(model), INNER_LR, INNER_STEPS, first_order=first_order, strategy=strategy)


def adapted_logits(learner: MAML, episode: Episode) -> Tensor:
    return learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x).detach()


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_predictions_match_the_per_task_reference(conv4: Conv4, tasks: Episode, strategy: str) -> None:
    expected, _, _ = reference_maml(conv4, tasks, first_order=True)
    # Predictions do not depend on the order of the meta-gradient: first order runs under vmap too.
    torch.testing.assert_close(adapted_logits(maml(conv4, strategy, True), tasks), expected, **TOLERANCE)


@pytest.mark.parametrize(
    ("strategy", "first_order"),
    [
        ("loop", False),
        ("loop", True),
        ("vmap", True),
        ("vmap", False),
        ("auto", False),
    ],
    ids=[
        "loop-second-order",
        "loop-first-order",
        "vmap-first-order",
        "vmap-second-order",
        "auto-second-order",
    ],
)
def test_meta_gradient_matches_the_per_task_reference(
    conv4: Conv4, tasks: Episode, grads, strategy: str, first_order: bool
) -> None:
    _, expected_loss, expected = reference_maml(conv4, tasks, first_order=first_order)
    loss, actual = grads(maml(conv4, strategy, first_order), tasks)

    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    for name, g in expected.items():
        torch.testing.assert_close(actual[f"model.{name}"], g, **TOLERANCE, msg=name)


@pytest.mark.parametrize(
    "strategy",
    ["loop", "auto"],
)
def test_convolution_biases_before_batchnorm_get_no_meta_gradient(
    conv4: Conv4, tasks: Episode, grads, strategy: str
) -> None:
    """Per-task BatchNorm subtracts the per-channel mean, so a bias just before it cancels exactly.

    A check that needs no reference: any non-zero meta-gradient on these biases is an error.
    """
    _, actual = grads(maml(conv4, strategy), tasks)
    for block in range(4):
        assert actual[f"model.body.{block}.0.bias"].abs().max() < 1e-12
        assert actual[f"model.body.{block}.0.weight"].abs().max() > 1e-6


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_permuting_the_tasks_permutes_the_predictions(conv4: Conv4, tasks: Episode, strategy: str) -> None:
    learner = maml(conv4, strategy, True)
    order = torch.tensor([2, 0, 3, 1])
    permuted = Episode(
        tasks.support_x[order], tasks.support_y[order], tasks.query_x[order], tasks.query_y[order]
    )
    torch.testing.assert_close(
        adapted_logits(learner, permuted), adapted_logits(learner, tasks)[order], **TOLERANCE
    )


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_a_task_is_unaffected_by_the_other_tasks_of_its_batch(
    conv4: Conv4, tasks: Episode, strategy: str
) -> None:
    # Permutation alone cannot tell per-task from pooled statistics (the pool is the same set);
    # changing the other tasks, or removing them, can.
    learner = maml(conv4, strategy, True)
    baseline = adapted_logits(learner, tasks)

    others = torch.arange(1, tasks.tasks)
    changed = Episode(
        tasks.support_x.index_copy(0, others, tasks.support_x[others] * 4 + 3),
        tasks.support_y,
        tasks.query_x.index_copy(0, others, tasks.query_x[others] * 4 + 3),
        tasks.query_y,
    )
    alone = Episode(tasks.support_x[:1], tasks.support_y[:1], tasks.query_x[:1], tasks.query_y[:1])

    torch.testing.assert_close(adapted_logits(learner, changed)[0], baseline[0], **TOLERANCE)
    torch.testing.assert_close(adapted_logits(learner, alone)[0], baseline[0], **TOLERANCE)
    assert not torch.allclose(adapted_logits(learner, changed)[1:], baseline[1:])


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_statistics_are_not_pooled_across_tasks(conv4: Conv4, tasks: Episode, strategy: str) -> None:
    learner = maml(conv4, strategy, True)
    logits = learner.predict(learner.adapt(tasks.support_x, tasks.support_y, inner_steps=0), tasks.query_x)

    per_task = torch.stack([conv4(x) for x in tasks.query_x])
    pooled = conv4(tasks.query_x.flatten(0, 1)).view_as(per_task)
    torch.testing.assert_close(logits, per_task, **TOLERANCE)
    assert (logits - pooled).abs().max() > 1e-3


def test_vmap_is_refused_for_second_order_through_plain_batchnorm(
    conv4: Conv4, tasks: Episode, grads
) -> None:
    """vmap's second-order gradient through the fused BatchNorm is wrong upstream
    (pytorch/functorch#534): a model with ``nn.BatchNorm2d`` must be refused, not given wrong
    meta-gradients. (Conv4's TaskBatchNorm2d is exact under vmap: see the reference test above.)"""
    plain = copy.deepcopy(conv4)
    for block in plain.body[:4]:
        fused = nn.BatchNorm2d(HIDDEN, track_running_stats=False).double()
        fused.load_state_dict(block[1].state_dict())
        block[1] = fused
    with pytest.raises(ValueError, match="functorch#534"):
        grads(maml(plain, "vmap", False), tasks)
    _, expected_loss, _ = reference_maml(conv4, tasks, first_order=False)
    loss, _ = grads(maml(plain, "auto", False), tasks)  # auto runs it task by task instead
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)


def test_task_batchnorm_is_batchnorm(make_images) -> None:
    """Outside vmap the fused kernel runs; under tasks_batched() the elementary formula gives the
    same values and gradients as nn.BatchNorm2d with batch statistics."""
    x = make_images(seed=5, dtype=torch.float64).support_x[0].expand(-1, 3, -1, -1).contiguous()
    x = x * torch.arange(1.0, 4.0, dtype=torch.float64).view(1, 3, 1, 1) + 2.0
    reference = nn.BatchNorm2d(3, track_running_stats=False).double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    task_bn = TaskBatchNorm2d(3).double()
    task_bn.load_state_dict(reference.state_dict())
    expected = reference(x)
    torch.testing.assert_close(task_bn(x), expected, **TOLERANCE)
    with tasks_batched():
        elementary = task_bn(x)
    torch.testing.assert_close(elementary, expected, **TOLERANCE)
    (g_ref,) = torch.autograd.grad(expected.square().sum(), reference.weight)
    (g_task,) = torch.autograd.grad(elementary.square().sum(), task_bn.weight)
    torch.testing.assert_close(g_task, g_ref, **TOLERANCE)
