"""Sinusoid regression tasks and fixed evaluation episodes: seeded, in range, well shaped."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from metasweep.algorithms import Episode, SinusoidTasks, fixed_episodes


def fit_sinusoid(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares fit of ``y = A sin(x - phase)`` per task, through ``a sin x + b cos x``.

    Args:
        x, y: ``(tasks, n, 1)``.

    Returns:
        Amplitude ``(tasks,)``, phase ``(tasks,)`` and the largest absolute residual ``(tasks,)``.
    """
    x, y = x.double().squeeze(-1), y.double().squeeze(-1)
    design = torch.stack([torch.sin(x), torch.cos(x)], -1)  # (tasks, n, 2)
    coefficients = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    a, b = coefficients.unbind(-1)  # a = A cos(phase), b = -A sin(phase)
    residual = (design @ coefficients.unsqueeze(-1)).squeeze(-1) - y
    return torch.hypot(a, b), torch.atan2(-b, a), residual.abs().amax(-1)


def episode_tensors(episode: Episode) -> tuple[Tensor, ...]:
    return episode.support_x, episode.support_y, episode.query_x, episode.query_y


def test_shapes() -> None:
    episode = SinusoidTasks(shots=5, queries=7).sample(3, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == episode.support_y.shape == (3, 5, 1)
    assert episode.query_x.shape == episode.query_y.shape == (3, 7, 1)
    assert episode.tasks == 3
    overridden = SinusoidTasks(shots=5, queries=7).sample(2, torch.Generator(), queries=11)
    assert overridden.query_x.shape == (2, 11, 1)


def test_same_seed_same_tasks_and_different_seed_different_tasks() -> None:
    source = SinusoidTasks()
    first = episode_tensors(source.sample(4, torch.Generator().manual_seed(0)))
    again = episode_tensors(source.sample(4, torch.Generator().manual_seed(0)))
    other = episode_tensors(source.sample(4, torch.Generator().manual_seed(1)))
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_sampling_advances_the_generator_and_leaves_the_global_rng_alone() -> None:
    source = SinusoidTasks()
    generator = torch.Generator().manual_seed(0)
    global_state = torch.get_rng_state()
    first, second = source.sample(2, generator), source.sample(2, generator)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert not torch.equal(first.support_x, second.support_x)


def test_ranges_of_the_maml_paper() -> None:
    episode = SinusoidTasks(shots=10, queries=40).sample(200, torch.Generator().manual_seed(3))
    x = torch.cat([episode.support_x, episode.query_x], 1)
    y = torch.cat([episode.support_y, episode.query_y], 1)
    amplitude, phase, residual = fit_sinusoid(x, y)

    assert x.min() >= -5.0 and x.max() <= 5.0
    assert x.min() < -4.5 and x.max() > 4.5, "inputs should cover the range"
    # Support and query points of a task lie on one sinusoid, whose parameters are in range.
    assert residual.max() < 1e-4
    assert amplitude.min() >= 0.1 - 1e-4 and amplitude.max() <= 5.0 + 1e-4
    assert phase.min() >= -1e-4 and phase.max() <= math.pi + 1e-4
    assert amplitude.std() > 1.0 and phase.std() > 0.5, "parameters should vary between tasks"


def test_configured_ranges_are_respected() -> None:
    source = SinusoidTasks(shots=20, queries=0, amplitude=(2.0, 3.0), phase=(0.5, 1.0), x_range=(0.0, 1.0))
    episode = source.sample(50, torch.Generator().manual_seed(4))
    amplitude, phase, _ = fit_sinusoid(episode.support_x, episode.support_y)

    assert episode.support_x.min() >= 0.0 and episode.support_x.max() <= 1.0
    assert amplitude.min() >= 2.0 - 1e-4 and amplitude.max() <= 3.0 + 1e-4
    assert phase.min() >= 0.5 - 1e-4 and phase.max() <= 1.0 + 1e-4


@pytest.mark.parametrize(("tasks", "batch_size"), [(10, 4), (8, 8), (3, 5)])
def test_fixed_episodes_hold_the_requested_tasks(tasks: int, batch_size: int) -> None:
    episodes = fixed_episodes(SinusoidTasks(), tasks=tasks, batch_size=batch_size, seed=0)
    assert sum(e.tasks for e in episodes) == tasks
    assert all(e.tasks <= batch_size for e in episodes)
    assert len(episodes) == math.ceil(tasks / batch_size)


def test_fixed_episodes_are_seeded_and_ignore_the_global_rng() -> None:
    source = SinusoidTasks()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first = fixed_episodes(source, tasks=6, batch_size=4, seed=5, queries=3)
        torch.manual_seed(1)
        again = fixed_episodes(source, tasks=6, batch_size=4, seed=5, queries=3)
    other = fixed_episodes(source, tasks=6, batch_size=4, seed=6, queries=3)

    assert first[0].query_x.shape == (4, 3, 1)
    for a, b, c in zip(first, again, other, strict=True):
        for ta, tb, tc in zip(episode_tensors(a), episode_tensors(b), episode_tensors(c), strict=True):
            assert torch.equal(ta, tb)
            assert not torch.equal(ta, tc)


def test_episode_to_moves_every_tensor() -> None:
    episode = SinusoidTasks().sample(2, torch.Generator().manual_seed(0))
    moved = episode.to(torch.device("meta"))
    for a, b in zip(episode_tensors(episode), episode_tensors(moved), strict=True):
        assert b.device.type == "meta"
        assert b.shape == a.shape
    assert moved.tasks == episode.tasks
