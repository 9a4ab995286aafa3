"""Shared episodes and builders for the meta-learning core's tests.

Everything here is seeded through its own ``torch.Generator`` or under ``torch.random.fork_rng``,
so a test never depends on, or leaves a mark on, the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from algorithms import Episode, SinusoidTasks

TASKS = 4
WAYS = 5
SHOTS = 1
QUERIES = 3
IMAGE_SIZE = 28


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a module with a fixed initialisation, without touching the caller's global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def image_episode(
    *,
    tasks: int = TASKS,
    ways: int = WAYS,
    shots: int = SHOTS,
    queries: int = QUERIES,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """Random ``ways``-way images; labels are shuffled per task so no code can rely on their order.

    Returns:
        support_x ``(tasks, ways*shots, 1, H, W)``, support_y ``(tasks, ways*shots)``, query_x
        ``(tasks, ways*queries, 1, H, W)``, query_y ``(tasks, ways*queries)``.
    """
    generator = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> Tensor:
        base = torch.arange(ways).repeat_interleave(per_class)
        return torch.stack([base[torch.randperm(base.numel(), generator=generator)] for _ in range(tasks)])

    support_y, query_y = labels(shots), labels(queries)
    support_x = torch.randn(tasks, ways * shots, 1, image_size, image_size, generator=generator, dtype=dtype)
    query_x = torch.randn(tasks, ways * queries, 1, image_size, image_size, generator=generator, dtype=dtype)
    return Episode(support_x, support_y, query_x, query_y)


def sinusoid_episode(
    *,
    tasks: int = TASKS,
    shots: int = 10,
    queries: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """A batch of MAML-paper sinusoid tasks, cast to ``dtype``."""
    episode = SinusoidTasks(shots=shots, queries=queries).sample(tasks, torch.Generator().manual_seed(seed))
    return Episode(
        *(t.to(dtype) for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y))
    )


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every parameter and buffer, to check that nothing was modified."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, Tensor]) -> None:
    """Every parameter and buffer is bit-identical to ``before`` and no gradient was accumulated."""
    after = module.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} was modified"
    for name, p in module.named_parameters():
        assert p.grad is None, f"{name} received a gradient"


def meta_grads(learner: nn.Module, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
    """``meta_loss`` on ``episode`` and the gradient it leaves on every parameter of ``learner``."""
    learner.zero_grad(set_to_none=True)
    loss = learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    loss.backward()
    grads = {}
    for name, p in learner.named_parameters():
        assert p.grad is not None, f"meta_loss().backward() left no gradient on {name}"
        grads[name] = p.grad.detach().clone()
    return loss.detach(), grads


# Helpers are handed out as fixtures (pytest's "factory as fixture" pattern) so the test modules
# never import from this file, whatever --import-mode is used.


@pytest.fixture
def build() -> Callable[..., nn.Module]:
    """:func:`seeded`: ``build(factory, seed=0)``."""
    return seeded


@pytest.fixture
def make_images() -> Callable[..., Episode]:
    """:func:`image_episode`: random few-shot image tasks."""
    return image_episode


@pytest.fixture
def make_sinusoids() -> Callable[..., Episode]:
    """:func:`sinusoid_episode`: seeded sinusoid regression tasks."""
    return sinusoid_episode


@pytest.fixture
def state() -> Callable[[nn.Module], dict[str, Tensor]]:
    """:func:`snapshot`: a detached copy of a module's parameters and buffers."""
    return snapshot


@pytest.fixture
def check_unchanged() -> Callable[[nn.Module, dict[str, Tensor]], None]:
    """:func:`assert_unchanged`: nothing modified, no gradient accumulated."""
    return assert_unchanged


@pytest.fixture
def grads() -> Callable[[nn.Module, Episode], tuple[Tensor, dict[str, Tensor]]]:
    """:func:`meta_grads`: the meta-loss and the gradient it leaves on every parameter."""
    return meta_grads


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each test on one intra-op thread, then restore the setting.

    These tensors are tiny, so extra threads only add synchronisation; on a busy two-core CPU,
    OpenMP workers spin-waiting for a core made this suite about fifteen times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
