"""Prototypical Networks: class-mean prototypes and negative squared Euclidean distance logits.

Embeddings, prototypes and distances are recomputed here per task with plain loops over classes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms import MLP, Conv4, Episode, ProtoNet

WAYS = 5
TOLERANCE = {"atol": 1e-10, "rtol": 1e-8}


def hand_prototypes(model: nn.Module, support_x: Tensor, support_y: Tensor) -> Tensor:
    """``(ways, dim)``: the mean embedding of each class's support examples, one task."""
    embeddings = model(support_x).flatten(1)
    return torch.stack([embeddings[support_y == c].mean(0) for c in range(WAYS)])


def hand_logits(model: nn.Module, prototypes: Tensor, query_x: Tensor) -> Tensor:
    """``(q, ways)``: minus the squared Euclidean distance from each query to each prototype."""
    queries = model(query_x).flatten(1)
    return torch.stack([torch.stack([-((q - p) ** 2).sum() for p in prototypes]) for q in queries])


@pytest.fixture
def conv4(build) -> Conv4:
    return build(lambda: Conv4(ways=None, hidden=8), 0).double()


@pytest.fixture
def tasks(make_images) -> Episode:
    """Five-way two-shot tasks: prototypes average two embeddings, with shuffled labels."""
    return make_images(shots=2, queries=2, seed=9, dtype=torch.float64)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_prototypes_are_the_class_means_of_the_embeddings(
    conv4: Conv4, tasks: Episode, strategy: str
) -> None:
    prototypes = ProtoNet(conv4, strategy=strategy).adapt(tasks.support_x, tasks.support_y)
    assert prototypes.shape == (tasks.tasks, WAYS, conv4.embedding_dim)
    for t in range(tasks.tasks):
        torch.testing.assert_close(
            prototypes[t], hand_prototypes(conv4, tasks.support_x[t], tasks.support_y[t]), **TOLERANCE
        )


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_logits_are_negative_squared_distances_and_the_loss_is_their_cross_entropy(
    conv4: Conv4, tasks: Episode, grads, strategy: str
) -> None:
    learner = ProtoNet(copy.deepcopy(conv4), strategy=strategy)
    logits = learner.predict(learner.adapt(tasks.support_x, tasks.support_y), tasks.query_x)

    expected = torch.stack(
        [
            hand_logits(
                conv4, hand_prototypes(conv4, tasks.support_x[t], tasks.support_y[t]), tasks.query_x[t]
            )
            for t in range(tasks.tasks)
        ]
    )
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    assert (logits <= 0).all()

    expected_loss = torch.stack(
        [F.cross_entropy(expected[t], tasks.query_y[t]) for t in range(tasks.tasks)]
    ).mean()
    expected_loss.backward()
    loss, actual = grads(learner, tasks)
    torch.testing.assert_close(loss, expected_loss.detach(), **TOLERANCE)
    for name, p in conv4.named_parameters():
        torch.testing.assert_close(actual[f"model.{name}"], p.grad, **TOLERANCE, msg=name)


def test_a_query_equal_to_a_support_example_takes_its_class(build, make_images) -> None:
    # An MLP embedding has no batch statistics: a query identical to a support image embeds to
    # its class's (1-shot) prototype, at distance zero up to float rounding.
    model = build(
        lambda: nn.Sequential(nn.Flatten(), MLP(in_features=28 * 28, hidden=(32,), out_features=16)), 0
    )
    episode = make_images(shots=1, seed=10)
    learner = ProtoNet(model)
    for c in range(WAYS):
        index = (episode.support_y == c).nonzero()[:, 1]  # one position per task
        query_x = episode.support_x[torch.arange(episode.tasks), index].unsqueeze(1)
        logits = learner.predict(learner.adapt(episode.support_x, episode.support_y), query_x)
        assert (logits.argmax(-1) == c).all()
        torch.testing.assert_close(logits[..., c], torch.zeros_like(logits[..., c]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_queries_equal_to_the_support_set_take_their_classes_with_batchnorm(
    conv4: Conv4, make_images, strategy: str
) -> None:
    # With per-task BatchNorm a query's embedding depends on the other queries; a query set that
    # is the support set reordered has the same statistics, so every query lands on its prototype.
    episode = make_images(shots=1, seed=11, dtype=torch.float64)
    order = torch.tensor([3, 0, 4, 1, 2])
    learner = ProtoNet(conv4, strategy=strategy)
    logits = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.support_x[:, order])

    assert torch.equal(logits.argmax(-1), episode.support_y[:, order])
    own = logits.gather(-1, episode.support_y[:, order].unsqueeze(-1))
    torch.testing.assert_close(own, torch.zeros_like(own), atol=1e-9, rtol=0)


def test_there_are_no_inner_steps_to_pass(conv4: Conv4, tasks: Episode) -> None:
    learner = ProtoNet(conv4)
    assert not learner.capabilities.inner_loop
    with pytest.raises(TypeError, match="inner_steps"):
        learner.adapt(tasks.support_x, tasks.support_y, inner_steps=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="inner_steps"):
        ProtoNet(conv4, inner_steps=5)  # type: ignore[call-arg]


def test_a_task_missing_a_label_is_refused_not_nan() -> None:
    learner = ProtoNet(MLP(1, (8,), 4))
    support_x = torch.randn(2, 5, 1)
    support_y = torch.tensor([[0, 1, 2, 3, 3], [0, 1, 2, 3, 4]])
    with pytest.raises(ValueError, match="must hold every label"):
        learner.adapt(support_x, support_y)
