"""The functional inner loop shared by every gradient-based meta-learner.

Adapted parameters are plain ``dict[str, Tensor]`` passed to :func:`torch.func.functional_call`,
so the same per-task code runs batched over tasks under :func:`torch.func.vmap` or task by task
in a Python loop. Nothing here mutates a module: the model's own parameters are the meta-parameters
and are only ever read.

References:
    Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
    ICML 2017 (the update rule). Arnold et al., "learn2learn: A Library for Meta-Learning
    Research", 2020 (``maml_update`` as a small function under a thin class).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.func import functional_call, grad, vmap

from metasweep.algorithms.models import TaskBatchNorm2d, tasks_batched

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Strategy = Literal["auto", "vmap", "loop"]
STRATEGIES: tuple[str, ...] = ("auto", "vmap", "loop")


def sgd_update(params: Params, grads: Mapping[str, Tensor], lr: float | Mapping[str, Tensor]) -> Params:
    """One plain or per-parameter SGD step, ``θ' = θ − α ⊙ g``.

    Args:
        params: the parameters to update; entries without a gradient are passed through.
        grads: gradients for a subset of ``params``.
        lr: a scalar step size, or one tensor per parameter (Meta-SGD) broadcastable to it.

    Returns:
        A new dict; ``params`` is not modified.
    """
    updated = dict(params)
    for name, g in grads.items():
        step = lr[name] if isinstance(lr, Mapping) else lr
        updated[name] = params[name] - step * g
    return updated


def adapt_task(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: Tensor,
    support_y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    adapt_names: tuple[str, ...],
    first_order: bool,
    batched: bool = True,
) -> Params:
    """Adapt ``params`` to one task with ``steps`` SGD steps on its support set.

    When ``first_order`` is false the inner gradients stay in the graph, so an outer
    ``loss.backward()`` gives the full second-order meta-gradient.

    Args:
        model: the module whose forward is called functionally; it is never mutated.
        params: every parameter of ``model`` by name (the starting point, usually the
            meta-parameters).
        buffers: the module's buffers by name (none for the shipped backbones).
        support_x: ``(n, *input_shape)`` support inputs of one task.
        support_y: ``(n, ...)`` support targets of one task.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.
        steps: inner SGD steps; 0 returns ``params`` unchanged.
        lr: scalar inner learning rate or per-parameter tensors (Meta-SGD).
        adapt_names: names of the parameters the inner loop updates (all for MAML, the head for
            ANIL); the others are held at their meta value.
        first_order: drop second-order terms by detaching the inner gradients.
        batched: take inner gradients with :func:`torch.func.grad`, which composes with
            ``vmap``; false uses :func:`torch.autograd.grad`, which dispatches less per
            operation and is the faster choice task by task (same gradients).

    Returns:
        The adapted parameters, a dict with the same keys as ``params``.
    """
    frozen = {k: v for k, v in params.items() if k not in adapt_names}

    def support_loss(adaptable: Params) -> Tensor:
        out = functional_call(model, ({**frozen, **adaptable}, buffers), (support_x,))
        return loss_fn(out, support_y)

    fast = dict(params)
    for _ in range(steps):
        adaptable = {k: fast[k] for k in adapt_names}
        grads = (
            grad(support_loss)(adaptable)
            if batched
            else _autograd_grads(support_loss, adaptable, first_order)
        )
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = sgd_update(fast, grads, lr)
    return fast


def _autograd_grads(loss_of: Callable[[Params], Tensor], params: Params, first_order: bool) -> Params:
    # Outside a graph (evaluation under no_grad, where a view of a parameter says it requires
    # grad but has no history, or after a first-order step) the parameters are made leaves so
    # that the inner gradient still exists.
    graph = torch.is_grad_enabled()
    create_graph = graph and not first_order
    with torch.enable_grad():
        leaves = {
            k: v if graph and v.requires_grad else v.detach().requires_grad_() for k, v in params.items()
        }
        values = torch.autograd.grad(loss_of(leaves), list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves, values, strict=True))


def _stack(outputs: list[object]) -> object:
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.stack(outputs)  # type: ignore[arg-type]
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outputs]) for k in first}  # type: ignore[index]
    if isinstance(first, tuple):
        return tuple(_stack([o[i] for o in outputs]) for i in range(len(first)))  # type: ignore[index]
    raise TypeError(f"cannot stack per-task outputs of type {type(first).__name__}")


def resolve_strategy(
    strategy: Strategy, model: nn.Module, device: torch.device, second_order: bool = False
) -> Literal["vmap", "loop"]:
    """Pick the way to run the inner loop over tasks: the faster one that is correct.

    ``auto`` batches with ``vmap`` except

    * for convolutional models on the CPU: ``vmap`` turns a convolution over tasks into a grouped
      convolution, which on CPU runs at about 0.4x a per-task loop, while for small MLPs batching
      removes most of the per-operation overhead (``benchmarks/throughput.py`` measures both;
      a stack of linear layers "batched" runs through :func:`tasks_forward`, not ``vmap``);
    * for second-order meta-gradients through ``nn.BatchNorm``: PyTorch's batching rule for the
      BatchNorm backward is wrong when it is differentiated again (pytorch/functorch#534), so
      ``vmap`` would give wrong meta-gradients. The shipped backbones use
      :class:`~algorithms.models.TaskBatchNorm2d`, which is exact under ``vmap``.

    Args:
        strategy: ``auto``, ``vmap`` or ``loop``.
        model: the backbone that will be called per task.
        device: where the computation runs.
        second_order: whether the meta-gradient differentiates through inner gradients.

    Returns:
        ``"vmap"`` or ``"loop"``.

    Raises:
        ValueError: an unknown strategy name, or ``vmap`` asked for where it would give wrong
            meta-gradients.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    unsafe = second_order and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, TaskBatchNorm2d)
        for m in model.modules()
    )
    if strategy == "vmap" and unsafe:
        raise ValueError(
            "strategy='vmap' gives wrong second-order meta-gradients through nn.BatchNorm "
            "(pytorch/functorch#534); use algorithms.models.TaskBatchNorm2d, strategy='loop' or "
            "'auto', or first_order=True"
        )
    if strategy != "auto":
        return strategy
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    if unsafe or (device.type == "cpu" and has_conv):
        return "loop"
    return "vmap"


def task_layout(model: nn.Module, x: Tensor, strategy: Literal["vmap", "loop"]) -> Tensor:
    """``x`` stored the way ``model`` runs fastest over its tasks: the same values, other strides.

    Run task by task on the CPU, a model with 2-D convolutions gets its images channels-last
    (NHWC). PyTorch's max-pooling and BatchNorm kernels and oneDNN's convolutions are vectorised
    over channels in that layout, and every later activation keeps it: on a 2-core Xeon with
    torch 2.13, 2x2 max-pooling of a ``(80, 64, 28, 28)`` activation takes 1.4 ms channels-last
    against 21 ms, BatchNorm's forward 2.6 ms against 6.9 ms. Under ``vmap`` or on CUDA ``x`` is
    returned as it is (not measured to help there).

    Args:
        model: the module that will see each task's inputs.
        x: ``(tasks, n, C, H, W)`` images; a task batch of any other rank is returned as it is.
        strategy: how the tasks will be run.

    Returns:
        ``x``, or a channels-last copy of it (each ``x[t]`` is channels-last); differentiable.
    """
    if strategy != "loop" or x.device.type != "cpu" or x.dim() != 5:
        return x
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return x
    nhwc = x.movedim(2, -1).contiguous()
    channels, width = x.shape[2], x.shape[4]
    # Explicit strides, not movedim back: with one channel NCHW and NHWC are the same bytes, and
    # PyTorch would keep NCHW strides, which the first convolution would follow.
    return nhwc.as_strided(x.shape, (*nhwc.stride()[:2], 1, width * channels, channels))


def _index(tree: Tensor | Params, i: int) -> Tensor | Params:
    if isinstance(tree, Tensor):
        return tree[i]
    return {k: v[i] for k, v in tree.items()}


def map_tasks(
    fn: Callable[..., object], strategy: Literal["vmap", "loop"], *batched: Tensor | Params
) -> object:
    """Apply a per-task function over the leading task dimension of its arguments.

    ``vmap`` runs all tasks as one batched computation; ``loop`` calls ``fn`` task by task and
    stacks the results. Both return the same tensors with a leading task dimension, and give the
    same values and gradients up to float rounding.

    Args:
        fn: a function of one task's tensors returning a tensor or a dict/tuple of tensors.
        strategy: ``"vmap"`` or ``"loop"`` (resolve ``"auto"`` first with
            :func:`resolve_strategy`).
        *batched: tensors of shape ``(tasks, ...)`` or dicts of them.

    Returns:
        ``fn``'s output with a leading ``tasks`` dimension on every tensor.
    """
    if strategy == "vmap":
        # randomness="error": the inner loop must be deterministic given its inputs.
        with tasks_batched():
            return vmap(fn, randomness="error")(*batched)
    first = batched[0]
    tasks = first.shape[0] if isinstance(first, Tensor) else next(iter(first.values())).shape[0]
    return _stack([fn(*(_index(t, i) for t in batched)) for i in range(tasks)])


def adapt_tasks(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    adapt_names: tuple[str, ...],
    first_order: bool,
    strategy: Literal["vmap", "loop"],
    checkpoint: bool = False,
) -> Params:
    """Adapt ``model``'s parameters to a batch of tasks, one set of fast weights per task.

    Args:
        model: the module adapted; its parameters are the starting point and receive the
            meta-gradient when the result is used in a loss.
        support_x: ``(tasks, n, *input_shape)``.
        support_y: ``(tasks, n, ...)``.
        loss_fn, steps, lr, adapt_names, first_order: as in :func:`adapt_task`.
        strategy: ``"vmap"`` or ``"loop"``.
        checkpoint: keep only each inner step's input fast weights for the backward pass, which
            recomputes the step from them (:func:`checkpointed`): memory that grows with
            ``steps`` by the size of the fast weights, not of the activations, for one extra
            forward of every step; the gradients are the same. It applies to second-order
            meta-gradients only: without a graph through the inner loop there is nothing to save.

    Returns:
        The adapted parameters named in ``adapt_names``, each ``(tasks, *param_shape)``; the
        others stay the model's own.
    """
    params: Params = dict(model.named_parameters())
    buffers: Params = dict(model.named_buffers())
    if checkpoint and steps > 0 and not first_order and torch.is_grad_enabled():
        return _adapt_checkpointed(
            model, params, buffers, support_x, support_y, loss_fn, steps, lr, adapt_names, strategy
        )
    if on_tasks(model, support_x, strategy):
        return _adapt_on_tasks(
            model, params, support_x, support_y, loss_fn, steps, lr, adapt_names, first_order
        )

    def one_task(sx: Tensor, sy: Tensor) -> Params:
        fast = adapt_task(
            model,
            params,
            buffers,
            sx,
            sy,
            loss_fn=loss_fn,
            steps=steps,
            lr=lr,
            adapt_names=adapt_names,
            first_order=first_order,
            batched=strategy == "vmap",
        )
        return {k: fast[k] for k in adapt_names}

    return map_tasks(one_task, strategy, task_layout(model, support_x, strategy), support_y)  # type: ignore[return-value]


ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity,
)  # fmt: skip
"""Stateless modules that act on each entry: the same on a batch of tasks as on one."""


def runs_on_tasks(model: nn.Module) -> bool:
    """Whether :func:`tasks_forward` runs ``model`` batched over tasks without ``vmap``: a model
    of ``nn.Linear`` layers and :data:`ELEMENTWISE` activations, in ``nn.Sequential`` or in a
    module that declares its forward a ``chain`` of its children (:class:`~algorithms.models.MLP`)."""
    if isinstance(model, (nn.Linear, *ELEMENTWISE)):
        return True
    if list(model.named_buffers(recurse=False)) or list(model.named_parameters(recurse=False)):
        return False
    if isinstance(model, nn.Sequential):
        return all(runs_on_tasks(m) for m in model)
    chain = getattr(type(model), "chain", None)
    if chain is None or set(chain) != {name for name, _ in model.named_children()}:
        return False
    return all(runs_on_tasks(getattr(model, name)) for name in chain)


_TASKS_FORWARD: ContextVar[bool] = ContextVar("tasks_forward", default=True)


@contextmanager
def functorch_only() -> Iterator[None]:
    """Inside, every batched run goes through ``torch.func.vmap``, stacks of linear layers too
    (as they did before :func:`tasks_forward`): the same-run reference of
    ``benchmarks/throughput.py``'s ``functorch`` rows, and a way to rule that path out."""
    token = _TASKS_FORWARD.set(False)
    try:
        yield
    finally:
        _TASKS_FORWARD.reset(token)


def on_tasks(model: nn.Module, x: Tensor, strategy: Literal["vmap", "loop"]) -> bool:
    """Whether a batched (``vmap``) run of ``model`` on ``x: (tasks, n, features)`` goes through
    :func:`tasks_forward` rather than ``torch.func.vmap`` (outside :func:`functorch_only`)."""
    return strategy == "vmap" and x.dim() == 3 and _TASKS_FORWARD.get() and runs_on_tasks(model)


def tasks_forward(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, prefix: str = "") -> Tensor:
    """``model``'s forward on every task at once, each task with its own parameters.

    For a model :func:`runs_on_tasks` accepts, this is ``vmap`` of ``functional_call`` computed
    with batched matrix products instead: the same values and gradients (any order), without
    functorch's per-operation dispatch, which on small MLPs costs more than the arithmetic.

    Args:
        model: a module :func:`runs_on_tasks` accepts; it is only read.
        params: every parameter of ``model`` by name, each ``(tasks, *shape)`` (one set per
            task) or ``shape`` (shared by all tasks).
        x: ``(tasks, n, in_features)``.
        prefix: the names' prefix (for the recursion into children).

    Returns:
        ``(tasks, n, out_features)``.
    """
    if isinstance(model, nn.Linear):
        weight, bias = params[f"{prefix}weight"], params.get(f"{prefix}bias")
        if weight.dim() == 2:  # shared by the tasks
            return torch.nn.functional.linear(x, weight, bias)
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        shift = bias.unsqueeze(1) if bias.dim() == 2 else bias.expand(x.shape[0], 1, -1)
        return torch.baddbmm(shift, x, weight.transpose(1, 2))
    if isinstance(model, ELEMENTWISE):
        return model(x)  # type: ignore[no-any-return]
    names: tuple[str, ...] = (
        tuple(name for name, _ in model.named_children())
        if isinstance(model, nn.Sequential)
        else type(model).chain  # type: ignore[attr-defined]
    )
    for name in names:
        x = tasks_forward(getattr(model, name), params, x, f"{prefix}{name}.")
    return x


def _adapt_on_tasks(
    model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
    steps: int, lr: float | Mapping[str, Tensor], adapt_names: tuple[str, ...], first_order: bool,
) -> Params:  # fmt: skip
    """:func:`adapt_tasks` through :func:`tasks_forward`: every task's fast weights as one
    tensor with a task dimension, their inner gradients from plain autograd.

    The tasks' support losses do not depend on each other's weights, so the gradient of their
    sum with respect to the batched fast weights holds each task's own gradient in its row,
    second-order terms included. With equal support sets and a mean-reduced loss that sum is
    ``tasks`` times the loss of the flattened batch (as :func:`_task_mean_loss` relies on).
    """
    tasks = support_x.shape[0]
    fast = {k: params[k].expand(tasks, *params[k].shape) for k in adapt_names}
    frozen = {k: v for k, v in params.items() if k not in adapt_names}

    def support_loss(adaptable: Params) -> Tensor:
        out = tasks_forward(model, {**frozen, **adaptable}, support_x)
        return loss_fn(out.flatten(0, 1), support_y.flatten(0, 1)) * tasks

    for _ in range(steps):
        grads = _autograd_grads(support_loss, fast, first_order)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = sgd_update(fast, grads, lr)
    return fast


def adapt_and_predict_tasks(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool,
) -> Tensor:
    """``predict_tasks(model, adapt_tasks(model, ...), query_x, "loop")`` for a model whose every
    parameter adapts, task by task, without stacking the fast weights in between.

    Stacked, every task's fast weights become one slice of a ``(tasks, ...)`` tensor, which the
    backward pass turns back into per-task gradients by writing each slice into a zero tensor of
    the full stack: on Conv-4 at meta-batch 32 that is 32 zero-filled copies of all the tasks'
    weights per meta-iteration. Here each task's fast weights go straight from its inner loop to
    its query forward. Same values and gradients.

    Args:
        model, support_x, support_y, loss_fn, steps, lr, first_order: as in :func:`adapt_tasks`
            (every parameter of ``model`` is adapted).
        query_x: ``(tasks, q, *input_shape)``.

    Returns:
        ``(tasks, q, *output_shape)``.
    """
    params: Params = dict(model.named_parameters())
    buffers: Params = dict(model.named_buffers())
    names = tuple(params)
    sx, qx = task_layout(model, support_x, "loop"), task_layout(model, query_x, "loop")
    outputs = []
    for i in range(support_x.shape[0]):
        fast = adapt_task(
            model, params, buffers, sx[i], support_y[i],
            loss_fn=loss_fn, steps=steps, lr=lr, adapt_names=names, first_order=first_order, batched=False,
        )  # fmt: skip
        outputs.append(functional_call(model, (fast, buffers), (qx[i],)))
    return torch.stack(outputs)


def predict_tasks(model: nn.Module, adapted: Params, x: Tensor, strategy: Literal["vmap", "loop"]) -> Tensor:
    """Run ``model`` on each task's inputs with that task's adapted parameters.

    Args:
        model: the module whose forward is used.
        adapted: per-task parameters ``(tasks, *param_shape)`` for some of the model's
            parameters; the rest are the model's own.
        x: ``(tasks, n, *input_shape)``.
        strategy: ``"vmap"`` or ``"loop"``.

    Returns:
        ``(tasks, n, *output_shape)``.
    """
    shared: Params = dict(model.named_parameters())
    buffers: Params = dict(model.named_buffers())
    if on_tasks(model, x, strategy):
        return tasks_forward(model, {**shared, **adapted}, x)

    def one_task(fast: Params, xi: Tensor) -> Tensor:
        out: Tensor = functional_call(model, ({**shared, **fast}, buffers), (xi,))
        return out

    return map_tasks(one_task, strategy, adapted, task_layout(model, x, strategy))  # type: ignore[return-value]


def checkpointed(fn: Callable[..., tuple[Tensor, ...]], *inputs: Tensor) -> tuple[Tensor, ...]:
    """``fn(*inputs)`` without its graph: the backward pass recomputes it from ``inputs``.

    :func:`torch.utils.checkpoint.checkpoint` cannot do this for the inner loop: its
    non-reentrant form relies on saved-tensor hooks, which :func:`torch.func.grad` refuses (the
    ``vmap`` path), and its reentrant form refuses :func:`torch.autograd.grad` inside the
    checkpointed function (the ``loop`` path). Here the forward runs without a graph (the inner
    gradients are still taken, as under ``torch.no_grad()`` evaluation), and the backward
    recomputes ``fn`` with a graph, second-order terms included, and differentiates it once. The
    result is not differentiable twice, which a meta-gradient never needs.

    Args:
        fn: a deterministic function of ``inputs`` alone (a tensor it closes over receives no
            gradient) returning a tuple of tensors.
        *inputs: its tensor arguments.

    Returns:
        ``fn(*inputs)``, connected to ``inputs`` for the backward pass.
    """
    return _Recomputed.apply(fn, *inputs)  # type: ignore[no-untyped-call,no-any-return]


class _Recomputed(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, fn: Callable[..., tuple[Tensor, ...]], *inputs: Tensor
    ) -> tuple[Tensor, ...]:
        ctx.fn = fn  # type: ignore[attr-defined]
        ctx.save_for_backward(*inputs)
        # Detached: the step runs as in evaluation, on inputs that are nobody's view.
        return tuple(t.detach() for t in fn(*(t.detach() for t in inputs)))

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]  # type: ignore[attr-defined]
        with torch.enable_grad():
            outputs = ctx.fn(*inputs)  # type: ignore[attr-defined]
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
        return (None, *(next(found) if t.requires_grad else None for t in inputs))


def _adapt_checkpointed(
    model: nn.Module, params: Params, buffers: Params, support_x: Tensor, support_y: Tensor,
    loss_fn: LossFn, steps: int, lr: float | Mapping[str, Tensor], adapt_names: tuple[str, ...],
    strategy: Literal["vmap", "loop"],
) -> Params:  # fmt: skip
    """:func:`adapt_tasks` one inner step at a time over all tasks, each step checkpointed.

    Every tensor a step depends on enters :func:`checkpointed` as an argument (fast weights, the
    frozen parameters, Meta-SGD's rates, the support set, which for ANIL carries the body's
    graph), so the recomputation reaches every meta-parameter.
    """
    frozen_names = tuple(k for k in params if k not in adapt_names)
    rate_names = tuple(lr) if isinstance(lr, Mapping) else ()
    tasks = support_x.shape[0]
    sx = task_layout(model, support_x, strategy)

    def step(*tensors: Tensor) -> tuple[Tensor, ...]:
        values = iter(tensors)
        fast = {k: next(values) for k in adapt_names}
        frozen = {k: next(values) for k in frozen_names}
        rates: float | Mapping[str, Tensor] = {k: next(values) for k in rate_names} if rate_names else lr
        x, y = next(values), next(values)

        def one_task(task_fast: Params, xi: Tensor, yi: Tensor) -> tuple[Tensor, ...]:
            updated = adapt_task(
                model, {**frozen, **task_fast}, buffers, xi, yi,
                loss_fn=loss_fn, steps=1, lr=rates, adapt_names=adapt_names,
                first_order=False, batched=strategy == "vmap",
            )  # fmt: skip
            return tuple(updated[k] for k in adapt_names)

        return map_tasks(one_task, strategy, fast, x, y)  # type: ignore[return-value]

    # The starting point of every task is the meta-parameters: a view, free until the first step.
    fast = tuple(params[k].expand(tasks, *params[k].shape) for k in adapt_names)
    rates = tuple(lr[k] for k in rate_names) if isinstance(lr, Mapping) else ()
    shared = (*(params[k] for k in frozen_names), *rates, sx, support_y)
    for _ in range(steps):
        fast = checkpointed(step, *fast, *shared)
    return dict(zip(adapt_names, fast, strict=True))
