"""Shared episodes and builders for the meta-learning core's tests, as fixtures.

They are the helpers of the public contract suite (``metasweep.algorithms.testing``): seeded
through their own ``torch.Generator`` or under ``torch.random.fork_rng``, so a test never depends
on, or leaves a mark on, the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from metasweep.algorithms import Episode
from metasweep.algorithms.testing import (
    assert_unchanged,
    image_episode,
    meta_grads,
    seeded,
    sinusoid_episode,
    snapshot,
)

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
