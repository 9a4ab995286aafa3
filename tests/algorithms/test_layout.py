"""Channels-last inputs for convolutional models run task by task on the CPU.

``task_layout`` changes only how the images are stored, so every learner must give the same
losses, predictions and meta-gradients as with the images as given (NCHW): the reference here is
the same learner with ``task_layout`` replaced by the identity, which is the per-task path as it was
before the layout change. Float64 compares to 1e-10; float32 compares to a tolerance relative to
the largest meta-gradient entry, since BatchNorm sums its statistics in another order channels-last.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metasweep.algorithms.functional
import metasweep.algorithms.learners
from metasweep.algorithms import ALGORITHMS, MLP, Conv4, Episode
from metasweep.algorithms.functional import task_layout

CHANNELS_LAST = torch.channels_last
WAYS = 5
HIDDEN = 8


def _learner(algorithm: str, model: nn.Module, **options: Any) -> nn.Module:
    cls = ALGORITHMS[algorithm]
    if algorithm == "protonet":
        return cls(model, strategy="loop")
    return cls(model, inner_lr=0.4, inner_steps=2, strategy="loop", **options)


CASES = [
    ("maml", {}),
    ("maml", {"first_order": True}),
    ("metasgd", {}),
    ("anil", {}),
    ("anil", {"first_order": True}),
    ("reptile", {}),
    ("protonet", {}),
]
IDS = [f"{a}{'-first-order' if o.get('first_order') else ''}" for a, o in CASES]


@pytest.fixture
def nchw(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """``nchw()`` turns the layout change off: the learners then see the images as given."""

    def turn_off() -> None:
        def identity(model: nn.Module, x: Tensor, strategy: str) -> Tensor:
            return x

        monkeypatch.setattr(metasweep.algorithms.functional, "task_layout", identity)
        monkeypatch.setattr(metasweep.algorithms.learners, "task_layout", identity)

    return turn_off


Outputs = tuple[Tensor, Tensor, dict[str, Tensor]]


def _outputs(learner: nn.Module, episode: Episode, grads) -> Outputs:
    predictions = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)
    loss, gradients = grads(learner, episode)
    return predictions.detach(), loss, gradients


def _channels_last_and_nchw(
    algorithm: str, options: dict[str, Any], model: nn.Module, episode: Episode, grads, nchw
) -> tuple[Outputs, Outputs]:
    """Predictions, loss and meta-gradients as shipped, then with the layout change turned off."""
    shipped = _outputs(_learner(algorithm, copy.deepcopy(model), **options), episode, grads)
    nchw()
    return shipped, _outputs(_learner(algorithm, copy.deepcopy(model), **options), episode, grads)


@pytest.mark.parametrize("channels", [1, 3])
def test_task_layout_keeps_the_values_and_stores_each_task_channels_last(channels: int) -> None:
    x = torch.randn(3, 4, channels, 6, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    laid_out = task_layout(Conv4(in_channels=channels, hidden=4), x, "loop")

    assert torch.equal(laid_out, x)
    for t in range(3):
        assert laid_out[t].is_contiguous(memory_format=CHANNELS_LAST)
        convolved = F.conv2d(laid_out[t], torch.randn(2, channels, 3, 3))
        assert convolved.is_contiguous(memory_format=CHANNELS_LAST)
    (laid_out * torch.arange(x.numel()).view_as(x)).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.arange(x.numel()).view_as(x).float())


def test_task_layout_leaves_other_inputs_alone() -> None:
    images = torch.randn(2, 3, 1, 8, 8)
    assert task_layout(Conv4(hidden=4), images, "vmap") is images
    assert task_layout(MLP(), images, "loop") is images
    features = torch.randn(2, 3, 10)
    assert task_layout(Conv4(hidden=4), features, "loop") is features


@pytest.mark.parametrize(("algorithm", "options"), CASES, ids=IDS)
def test_batchnorm_sees_channels_last_activations_task_by_task(
    algorithm: str, options: dict[str, Any], build, make_images
) -> None:
    """The speed-up holds only if the layout survives the first convolution (one channel)."""
    ways = None if algorithm == "protonet" else WAYS
    model = build(lambda: Conv4(ways=ways, hidden=HIDDEN), 0)
    seen: list[bool] = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(
                lambda _m, args, _out: seen.append(args[0].is_contiguous(memory_format=CHANNELS_LAST))
            )
    episode = make_images()
    _learner(algorithm, model, **options).meta_loss(
        episode.support_x, episode.support_y, episode.query_x, episode.query_y
    )
    assert seen and all(seen)


@pytest.mark.parametrize(("algorithm", "options"), CASES, ids=IDS)
def test_channels_last_gives_the_nchw_results_in_float64(
    algorithm: str, options: dict[str, Any], build, make_images, grads, nchw
) -> None:
    ways = None if algorithm == "protonet" else WAYS
    model = build(lambda: Conv4(ways=ways, hidden=HIDDEN), 0).double()
    episode = make_images(shots=2, seed=3, dtype=torch.float64)
    (predictions, loss, gradients), (expected_predictions, expected_loss, expected) = _channels_last_and_nchw(
        algorithm, options, model, episode, grads, nchw
    )

    tolerance = {"atol": 1e-10, "rtol": 1e-8}
    torch.testing.assert_close(predictions, expected_predictions, **tolerance)
    torch.testing.assert_close(loss, expected_loss, **tolerance)
    assert gradients.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(gradients[name], g, **tolerance, msg=name)


@pytest.mark.parametrize(("algorithm", "options"), CASES, ids=IDS)
def test_channels_last_gives_the_nchw_results_in_float32(
    algorithm: str, options: dict[str, Any], build, make_images, grads, nchw
) -> None:
    ways = None if algorithm == "protonet" else WAYS
    model = build(lambda: Conv4(ways=ways, hidden=16), 0)
    episode = make_images(shots=2, seed=3)
    (predictions, loss, gradients), (expected_predictions, expected_loss, expected) = _channels_last_and_nchw(
        algorithm, options, model, episode, grads, nchw
    )

    torch.testing.assert_close(predictions, expected_predictions, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, expected_loss, atol=0, rtol=1e-5)
    # Relative to the largest entry of all meta-gradients: the conv biases before BatchNorm have a
    # meta-gradient that is zero up to rounding, which no per-entry relative tolerance can match.
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, g in expected.items():
        torch.testing.assert_close(gradients[name], g, atol=1e-5 * scale, rtol=0, msg=name)
