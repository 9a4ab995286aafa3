"""The random Omniglot-shaped episodes the Conv-4 microbenchmarks time on."""

from __future__ import annotations

import torch


def omniglot_episode(tasks: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(support_x, support_y, query_x, query_y)`` of ``tasks`` 5-way 1-shot 15-query tasks of
    1x28x28 random images: what a meta-iteration of Omniglot costs, without the data."""
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.rand(tasks, 5, 1, 28, 28, generator=generator)
    support_y = torch.arange(5).repeat(tasks, 1)
    query_x = torch.rand(tasks, 75, 1, 28, 28, generator=generator)
    query_y = torch.arange(5).repeat_interleave(15).repeat(tasks, 1)
    return support_x, support_y, query_x, query_y
