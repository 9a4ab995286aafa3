"""ResNet-12 under every learner: per-task BatchNorm exact to second order under vmap (float64
against the per-task loop, which differentiates PyTorch's fused BatchNorm), its shapes, and the
images it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from metasweep.algorithms import ANIL, MAML, Episode, MetaSGD, ProtoNet, Reptile
from metasweep.algorithms.models import ResNet12, TaskBatchNorm2d
from metasweep.algorithms.testing import image_episode

WIDTHS = (3, 4, 5, 6)  # the standard 64-160-320-640 is too slow for a CPU test in float64
TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}


def rgb(tasks: int = 3, size: int = 16, seed: int = 0) -> Episode:
    """RGB tasks whose images differ in scale and offset per task, so pooled statistics would differ."""
    grey = image_episode(tasks=tasks, shots=2, queries=2, image_size=size, seed=seed, dtype=torch.float64)
    scale = torch.linspace(0.5, 4.0, tasks, dtype=torch.float64).view(-1, 1, 1, 1, 1)

    def colour(x: Tensor) -> Tensor:
        return torch.cat([x, x.flip(-1), x.transpose(-1, -2)], dim=2) * scale + scale

    return Episode(colour(grey.support_x), grey.support_y, colour(grey.query_x), grey.query_y)


def model(ways: int | None = 5) -> ResNet12:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ResNet12(3, 16, ways, WIDTHS).double()


def gradients(learner, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
    learner.zero_grad(set_to_none=True)
    loss = learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in learner.named_parameters()}


@pytest.mark.parametrize("algorithm", [MAML, MetaSGD, ANIL])
def test_vmap_gives_the_per_task_second_order_meta_gradient(algorithm: type) -> None:
    """The loop runs each task through PyTorch's fused BatchNorm; vmap through TaskBatchNorm2d's
    elementary operations (PyTorch's batching rule for the fused one is wrong to second order)."""
    episode = rgb()
    shared = model()
    results = [
        gradients(algorithm(shared, inner_lr=0.3, inner_steps=2, strategy=strategy), episode)
        for strategy in ("loop", "vmap")
    ]
    (loss_loop, loop), (loss_vmap, vmapped) = results
    torch.testing.assert_close(loss_vmap, loss_loop, **TOLERANCE)
    for name, g in loop.items():
        torch.testing.assert_close(vmapped[name], g, **TOLERANCE, msg=name)
    assert any(g.abs().max() > 1e-6 for g in loop.values())


@pytest.mark.parametrize("algorithm", [Reptile, ProtoNet])
def test_the_first_order_and_metric_learners_run_on_it(algorithm: type) -> None:
    backbone = model(ways=None if algorithm is ProtoNet else 5)
    learner = (
        algorithm(backbone) if algorithm is ProtoNet else algorithm(backbone, inner_lr=0.3, inner_steps=2)
    )
    loss, grads = gradients(learner, rgb())
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())


def test_shapes_widths_and_batchnorm() -> None:
    net = ResNet12(3, 84, 5)
    assert [b.convs[0].out_channels for b in net.body[:4]] == [64, 160, 320, 640]
    assert net.embedding_dim == 640
    assert net(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    assert ResNet12(3, 84, None, WIDTHS)(torch.zeros(2, 3, 84, 84)).shape == (2, WIDTHS[-1])
    assert all(isinstance(m, TaskBatchNorm2d) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 16  # 12 + 4 shortcuts


def test_images_too_small_and_bad_widths_are_refused() -> None:
    with pytest.raises(ValueError, match="too small for four 2x2 poolings"):
        ResNet12(3, 12, 5)
    with pytest.raises(ValueError, match="four positive block widths"):
        ResNet12(3, 84, 5, (64, 160, 320))
