"""Backbones of the meta-learning literature.

Every backbone (:class:`MLP`, :class:`Conv4`, :class:`ResNet12`) is ``head(body(x))`` with
``body`` and ``head`` as attributes: ANIL adapts only ``head`` and Prototypical Networks use a
backbone whose head is the identity.

BatchNorm layers keep no running statistics (``track_running_stats=False``): they always
normalise with the statistics of the batch they see, which for a per-task forward means per-task
statistics at training and at test time, as in the MAML reference implementation. This also makes
the forward pure, so it runs under ``torch.func.vmap``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
from torch import Tensor, nn

_TASKS_BATCHED: ContextVar[bool] = ContextVar("tasks_batched", default=False)


@contextmanager
def tasks_batched() -> Iterator[None]:
    """Mark the forwards run inside as batched over tasks with ``torch.func.vmap``.

    :class:`TaskBatchNorm2d` then normalises with elementary operations. Thread- and
    task-safe (a context variable); the inner loop in :mod:`algorithms.functional` sets it.
    """
    token = _TASKS_BATCHED.set(True)
    try:
        yield
    finally:
        _TASKS_BATCHED.reset(token)


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with the statistics of the batch it sees, right to second order under vmap.

    PyTorch's batching rule for the fused BatchNorm backward is wrong when it is differentiated
    again (pytorch/functorch#534), so second-order MAML through ``nn.BatchNorm2d`` cannot run
    batched over tasks. Under :func:`tasks_batched` this module computes the same normalisation
    from means, a variance and ``rsqrt``, whose batching rules are exact; elsewhere it is the
    fused kernel, which is faster task by task. Same parameters, same ``state_dict``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x: (n, C, H, W)`` per channel over ``n, H, W``."""
        if not _TASKS_BATCHED.get():
            return super().forward(x)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centred = x - mean
        var = centred.square().mean(dim=(0, 2, 3), keepdim=True)  # biased, as BatchNorm uses
        shape = (1, -1, 1, 1)
        return centred * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class MLP(nn.Module):
    """The regression network of the MAML paper: ``1 → 40 → 40 → 1`` with ReLU.

    Args:
        in_features: input dimension (1 for sinusoids).
        hidden: widths of the hidden layers.
        out_features: output dimension.

    References:
        Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
        ICML 2017, Section 5.1.
    """

    chain: ClassVar[tuple[str, ...]] = ("body", "head")
    """The forward is these children applied in order, which lets
    :func:`algorithms.functional.tasks_forward` run it batched over tasks."""

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x: (n, in_features)`` to ``(n, out_features)``."""
        out: Tensor = self.head(self.body(x))
        return out


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        TaskBatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """The standard four-block convolutional backbone of few-shot image classification.

    Four blocks of ``3×3 conv (hidden filters) → BatchNorm → ReLU → 2×2 max-pool``, flattened,
    then a linear head with ``ways`` outputs. ``ways=None`` gives an embedding network (identity
    head), as Prototypical Networks use.

    Args:
        in_channels: image channels (1 for Omniglot).
        image_size: height and width of the square input (28 for Omniglot, 84 for
            miniImageNet).
        ways: classes per episode, the head's output size; ``None`` for no head.
        hidden: filters per convolution (64 in the papers).

    References:
        Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016; Finn et al.,
        ICML 2017, Section 5.2; Snell et al., "Prototypical Networks for Few-shot Learning",
        NeurIPS 2017.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, ways: int | None = 5, hidden: int = 64):
        super().__init__()
        blocks = [_conv_block(in_channels, hidden)] + [_conv_block(hidden, hidden) for _ in range(3)]
        self.body = nn.Sequential(*blocks, nn.Flatten())
        size = image_size
        for _ in range(4):
            size //= 2
        if size < 1:
            raise ValueError(f"image_size={image_size} is too small for four 2x2 poolings; use at least 16")
        self.embedding_dim = hidden * size * size
        self.head: nn.Module = nn.Identity() if ways is None else nn.Linear(self.embedding_dim, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x: (n, C, H, W)`` to logits ``(n, ways)`` (or embeddings without a head)."""
        out: Tensor = self.head(self.body(x))
        return out


class _ResidualBlock(nn.Module):
    """Three 3x3 convolutions with BatchNorm and leaky ReLU, a 1x1-convolution shortcut, 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            TaskBatchNorm2d(out_channels),
            nn.LeakyReLU(slope),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            TaskBatchNorm2d(out_channels),
            nn.LeakyReLU(slope),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            TaskBatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), TaskBatchNorm2d(out_channels)
        )
        self.out = nn.Sequential(nn.LeakyReLU(slope), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        """``(n, in_channels, H, W)`` to ``(n, out_channels, H/2, W/2)``."""
        out: Tensor = self.out(self.convs(x) + self.shortcut(x))
        return out


class ResNet12(nn.Module):
    """ResNet-12, the backbone of few-shot classification since TADAM and MetaOptNet.

    Four residual blocks (:class:`_ResidualBlock`) of 64, 160, 320 and 640 filters, each three
    3x3 convolutions with BatchNorm and leaky ReLU (slope 0.1), a 1x1-convolution shortcut and a
    2x2 max-pool; then global average pooling and a linear head with ``ways`` outputs
    (``ways=None``: an embedding network, as Prototypical Networks use). BatchNorm is
    :class:`TaskBatchNorm2d`, per task and exact to second order under ``vmap``. DropBlock, which
    MetaOptNet adds in training, is not included: the inner loop must be deterministic.

    Args:
        in_channels: image channels (3 for miniImageNet and CIFAR-FS).
        image_size: height and width of the square input (84 for miniImageNet).
        ways: classes per episode, the head's output size; ``None`` for no head.
        widths: filters of the four blocks.

    References:
        Oreshkin, Rodriguez & Lacoste, "TADAM: Task dependent adaptive metric for improved
        few-shot learning", NeurIPS 2018; Lee, Maji, Ravichandran & Soatto, "Meta-Learning with
        Differentiable Convex Optimization" (MetaOptNet), CVPR 2019.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 84,
        ways: int | None = 5,
        widths: tuple[int, ...] = (64, 160, 320, 640),
    ):
        super().__init__()
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"ResNet-12 takes four positive block widths, got {list(widths)}")
        if image_size < 16:
            raise ValueError(f"image_size={image_size} is too small for four 2x2 poolings; use at least 16")
        channels = (in_channels, *widths)
        blocks = [_ResidualBlock(a, b) for a, b in itertools.pairwise(channels)]
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding_dim = widths[-1]
        self.head: nn.Module = nn.Identity() if ways is None else nn.Linear(self.embedding_dim, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x: (n, C, H, W)`` to logits ``(n, ways)`` (or embeddings without a head)."""
        out: Tensor = self.head(self.body(x))
        return out


def head_parameter_names(model: nn.Module) -> tuple[str, ...]:
    """Names (as in ``named_parameters``) of the parameters under ``model.head``.

    Raises:
        ValueError: if the model has no ``head`` attribute with parameters.
    """
    head = getattr(model, "head", None)
    names = tuple(f"head.{n}" for n, _ in head.named_parameters()) if isinstance(head, nn.Module) else ()
    if not names:
        raise ValueError(f"{type(model).__name__} has no 'head' with parameters; ANIL needs one to adapt")
    return names


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def default_device() -> torch.device:
    """The first CUDA device when one is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
