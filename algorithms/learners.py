"""Meta-learners: MAML, first-order MAML, ANIL, Meta-SGD, Reptile and Prototypical Networks.

Every learner is an ``nn.Module`` that owns the backbone (``learner.model``) and any extra
meta-parameters (Meta-SGD's learning rates), so ``torch.optim.Adam(learner.parameters())`` is the
meta-optimiser. They share one small interface, :class:`MetaLearner`.

Tensors carry a leading task dimension: ``support_x: (tasks, ways*shots, C, H, W)`` for images,
``(tasks, shots, 1)`` for sinusoid regression.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms.functional import (
    LossFn,
    Params,
    Strategy,
    adapt_and_predict_tasks,
    adapt_tasks,
    map_tasks,
    on_tasks,
    predict_tasks,
    resolve_strategy,
    task_layout,
    tasks_forward,
)
from metasweep.algorithms.models import head_parameter_names


@dataclass(frozen=True)
class Capabilities:
    """What a learner supports, declared by the learner so that nobody guesses it from its name.

    Attributes:
        inner_loop: adapts by gradient steps on the support set; takes ``inner_lr`` and
            ``inner_steps``, and ``adapt`` takes ``inner_steps``.
        second_order: can differentiate through its inner loop; takes ``first_order``.
        learned_rates: learns its inner-loop rates as meta-parameters (Meta-SGD).
        head: needs a backbone with a classification head of ``ways`` outputs; without one it
            takes an embedding network and any number of classes per task (ProtoNet).
        task_kinds: the task kinds it applies to, ``regression`` and/or ``classification``.
    """

    inner_loop: bool
    second_order: bool
    learned_rates: bool = False
    head: bool = True
    task_kinds: frozenset[str] = frozenset({"regression", "classification"})


Adapted = TypeVar("Adapted")
_Self = TypeVar("_Self")


@runtime_checkable
class MetaLearner(Protocol[Adapted]):
    """What the training loop, evaluation and the model registry rely on.

    ``Adapted`` is the task-specific state ``adapt`` returns: fast weights (``Params``) for the
    gradient-based learners, class prototypes (``Tensor``) for ProtoNet. Every learner also has
    ``model``, the backbone (not declared here: Python 3.12's runtime protocol check cannot see
    ``nn.Module`` sub-modules).

    Invariants: ``meta_loss`` is the mean query loss over the tasks of the batch and its
    ``backward()`` leaves the meta-gradient in ``parameters()``; ``adapt`` and ``predict`` never
    modify the learner (the learner owns its state, callers own the adapted state they get
    back); for the same inputs the result is the same, whatever ``strategy`` was chosen, up to
    float rounding. Learners are not thread-safe: one learner per trial. A learner whose
    ``capabilities.inner_loop`` is true also takes ``inner_steps`` in ``adapt``
    (:class:`InnerLoopLearner`).
    """

    capabilities: ClassVar[Capabilities]
    """What the learner supports (see :class:`Capabilities`)."""

    loss_fn: LossFn
    """``loss_fn(predictions, targets)``, mean-reduced: the inner and the query loss."""

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean query loss after adaptation to each task's support set (scalar)."""
        ...

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Adapted:
        """Task-specific state (fast weights or prototypes) for a batch of tasks."""
        ...

    def predict(self, adapted: Adapted, query_x: Tensor) -> Tensor:
        """Predictions ``(tasks, queries, ...)`` for the query inputs of the adapted tasks."""
        ...

    # The nn.Module members that the training loop and the registry use.
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The meta-parameters (backbone and learned rates)."""
        ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Every meta-parameter by name, as ``nn.Module.state_dict``."""
        ...

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Restore :meth:`state_dict`'s tensors, as ``nn.Module.load_state_dict``."""
        ...

    def eval(self: _Self) -> _Self:
        """Evaluation mode, as ``nn.Module.eval`` (the shipped backbones behave the same in both)."""
        ...


@runtime_checkable
class InnerLoopLearner(MetaLearner[Adapted], Protocol[Adapted]):
    """A learner with a gradient inner loop: the number of adaptation steps can be chosen."""

    def adapt(self, support_x: Tensor, support_y: Tensor, inner_steps: int | None = None) -> Adapted:
        """As :meth:`MetaLearner.adapt`, with ``inner_steps`` instead of the learner's own."""
        ...


def _task_mean_loss(loss_fn: LossFn, predictions: Tensor, targets: Tensor) -> Tensor:
    # Equal query sets per task: the mean over the flattened batch is the mean of task means.
    return loss_fn(predictions.flatten(0, 1), targets.flatten(0, 1))


class MAML(nn.Module):
    """Model-Agnostic Meta-Learning, second order by default, first order on request.

    The inner loop takes ``inner_steps`` SGD steps of size ``inner_lr`` on each task's support
    set; the meta-loss is the query loss of the adapted weights. With ``first_order=False`` the
    meta-gradient flows through the inner updates (Hessian-vector products); with
    ``first_order=True`` the inner gradients are treated as constants (FOMAML).

    Args:
        model: the backbone; its parameters are the meta-parameters.
        inner_lr: inner-loop SGD step size α.
        inner_steps: inner-loop steps during meta-training (``adapt`` may override).
        first_order: drop the second-order terms.
        loss_fn: ``loss_fn(predictions, targets)`` with mean reduction; cross-entropy by default,
            ``F.mse_loss`` for regression.
        strategy: ``"vmap"`` (batched over tasks), ``"loop"`` (task by task) or ``"auto"``
            (see :func:`algorithms.functional.resolve_strategy`).
        checkpoint_inner: recompute each inner step in the backward pass instead of keeping its
            activations (:func:`algorithms.functional.adapt_tasks`): the same second-order
            meta-gradient in memory that barely grows with ``inner_steps``.

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks", ICML 2017 (Table 1 Omniglot, Figure 2 sinusoid regression).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(inner_loop=True, second_order=True)
    adapts_all: ClassVar[bool] = True
    """Every backbone parameter adapts in the inner loop (not ANIL's), so that task by task
    ``meta_loss`` can go from each task's inner loop to its query forward directly."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn = F.cross_entropy,
        strategy: Strategy = "auto",
        checkpoint_inner: bool = False,
    ):
        super().__init__()
        _check_inner(inner_lr, inner_steps)
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.loss_fn = loss_fn
        self.strategy = strategy
        self.checkpoint_inner = checkpoint_inner

    def _strategy(self, x: Tensor) -> Literal["vmap", "loop"]:
        second_order = not self.first_order and torch.is_grad_enabled()
        return resolve_strategy(self.strategy, self.model, x.device, second_order)

    def _lr(self) -> float | dict[str, Tensor]:
        return self.inner_lr

    def _drops_second_order(self) -> bool:
        # Evaluation under no_grad keeps no graph to the meta-parameters either.
        return self.first_order or not torch.is_grad_enabled()

    def adapt(self, support_x: Tensor, support_y: Tensor, inner_steps: int | None = None) -> Params:
        """Fast weights for each task.

        Under ``torch.no_grad()`` (evaluation) the inner gradients are still computed, but no
        graph to the meta-parameters is kept.

        Args:
            support_x: ``(tasks, n, *input_shape)``.
            support_y: ``(tasks, n, ...)``.
            inner_steps: steps to take instead of ``self.inner_steps`` (e.g. more at test time).

        Returns:
            Every parameter of ``model`` by name, each ``(tasks, *param_shape)``.
        """
        steps = self.inner_steps if inner_steps is None else inner_steps
        names = tuple(n for n, _ in self.model.named_parameters())
        return adapt_tasks(
            self.model, support_x, support_y,
            loss_fn=self.loss_fn, steps=steps, lr=self._lr(), adapt_names=names,
            first_order=self._drops_second_order(),
            strategy=self._strategy(support_x), checkpoint=self.checkpoint_inner,
        )  # fmt: skip

    def predict(self, adapted: Params, query_x: Tensor) -> Tensor:
        """Model outputs ``(tasks, q, ...)`` for ``query_x: (tasks, q, *input_shape)``."""
        return predict_tasks(self.model, adapted, query_x, self._strategy(query_x))

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean query loss over tasks after adaptation; ``backward()`` gives the meta-gradient."""
        if self.adapts_all and self._strategy(support_x) == "loop" and not self.checkpoint_inner:
            predictions = adapt_and_predict_tasks(
                self.model, support_x, support_y, query_x,
                loss_fn=self.loss_fn, steps=self.inner_steps, lr=self._lr(),
                first_order=self._drops_second_order(),
            )  # fmt: skip
        else:
            predictions = self.predict(self.adapt(support_x, support_y), query_x)
        return _task_mean_loss(self.loss_fn, predictions, query_y)


class MetaSGD(MAML):
    """Meta-SGD: MAML with a learned learning rate for every parameter entry.

    The inner update is ``θ' = θ − α ⊙ ∇L`` where ``α`` has the shape of ``θ`` and is a
    meta-parameter (initialised to ``inner_lr``), learned with the same meta-gradient as ``θ``.

    Args:
        model, inner_lr, inner_steps, first_order, loss_fn, strategy, checkpoint_inner: as in
            :class:`MAML`; ``inner_lr`` is the initial value of every learned rate.

    References:
        Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
        arXiv:1707.09835, 2017 (Table 1 sinusoid regression).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        inner_loop=True, second_order=True, learned_rates=True
    )

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn = F.cross_entropy,
        strategy: Strategy = "auto",
        checkpoint_inner: bool = False,
    ):
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn, strategy, checkpoint_inner)
        # ParameterDict keys may not contain dots.
        self.inner_lrs = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(p, inner_lr)) for n, p in model.named_parameters()}
        )

    def _lr(self) -> dict[str, Tensor]:
        return {n: self.inner_lrs[_key(n)] for n, _ in self.model.named_parameters()}


def _key(name: str) -> str:
    return name.replace(".", "__")


class ANIL(MAML):
    """Almost No Inner Loop: MAML whose inner loop adapts only the head.

    The body's features are computed once per task (the body is not adapted), then the inner
    loop runs on the linear head alone; the meta-gradient reaches the body through the query and
    support features.

    Args:
        model: a backbone with ``body`` and ``head`` submodules (``head(body(x))``).
        inner_lr, inner_steps, first_order, loss_fn, strategy, checkpoint_inner: as in
            :class:`MAML`.

    References:
        Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding
        the Effectiveness of MAML", ICLR 2020 (Table 2).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(inner_loop=True, second_order=True)
    adapts_all: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn = F.cross_entropy,
        strategy: Strategy = "auto",
        checkpoint_inner: bool = False,
    ):
        head_parameter_names(model)  # fail early on a model without a head
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn, strategy, checkpoint_inner)

    def _strategy(self, x: Tensor) -> Literal["vmap", "loop"]:
        # The body is not adapted: no second-order term passes through its BatchNorm.
        return resolve_strategy(self.strategy, self.model, x.device)

    def _features(self, x: Tensor) -> Tensor:
        body = cast(nn.Module, self.model.body)
        strategy = self._strategy(x)
        if on_tasks(body, x, strategy):
            return tasks_forward(body, dict(body.named_parameters()), x)
        return map_tasks(body, strategy, task_layout(body, x, strategy))  # type: ignore[return-value]

    def adapt(self, support_x: Tensor, support_y: Tensor, inner_steps: int | None = None) -> Params:
        """Adapted head parameters (names relative to ``model.head``), each ``(tasks, ...)``."""
        steps = self.inner_steps if inner_steps is None else inner_steps
        head = cast(nn.Module, self.model.head)
        return adapt_tasks(
            head, self._features(support_x), support_y,
            loss_fn=self.loss_fn, steps=steps, lr=self.inner_lr,
            adapt_names=tuple(n for n, _ in head.named_parameters()),
            first_order=self._drops_second_order(),
            # The head is linear: batching it is always cheaper than a loop.
            strategy="vmap", checkpoint=self.checkpoint_inner,
        )  # fmt: skip

    def predict(self, adapted: Params, query_x: Tensor) -> Tensor:
        """Head outputs ``(tasks, q, ...)`` on the body's features of ``query_x``."""
        return predict_tasks(cast(nn.Module, self.model.head), adapted, self._features(query_x), "vmap")


class Reptile(MAML):
    """Reptile: inner SGD on each task, outer step toward the mean of the adapted weights.

    ``meta_loss`` returns the query loss of the adapted weights as its value, but its gradient
    is the Reptile direction ``θ − mean_t φ_t``: an SGD meta-optimiser with learning rate ``ε``
    then performs exactly ``θ ← θ + ε (mean_t φ_t − θ)``, the batched Reptile update (Adam
    rescales it, as in the paper's implementation). The inner loop is first order by
    construction, so there is no ``first_order`` to choose.

    Args:
        model, inner_lr, inner_steps, loss_fn, strategy: as in :class:`MAML`.

    References:
        Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms",
        arXiv:1803.02999, 2018 (Algorithm 2, Table 1 Omniglot).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(inner_loop=True, second_order=False)

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        loss_fn: LossFn = F.cross_entropy,
        strategy: Strategy = "auto",
    ):
        super().__init__(model, inner_lr, inner_steps, True, loss_fn, strategy)

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Query loss as the value, the Reptile direction as the gradient."""
        # No graph is needed through the inner loop: the gradient is built from the result.
        with torch.no_grad():
            adapted = self.adapt(support_x, support_y)
            query_loss = _task_mean_loss(self.loss_fn, self.predict(adapted, query_x), query_y)
        surrogate = sum(
            (p * (p.detach() - adapted[n].mean(0))).sum() for n, p in self.model.named_parameters()
        )
        assert isinstance(surrogate, Tensor)
        return query_loss + (surrogate - surrogate.detach())


class ProtoNet(nn.Module):
    """Prototypical Networks: classify queries by distance to class-mean embeddings.

    No inner loop: ``adapt`` embeds the support set and averages it per class; ``predict``
    returns negative squared Euclidean distances as logits. Labels must be ``0..ways-1``.

    Args:
        model: the embedding network (e.g. ``Conv4(ways=None)``).
        loss_fn: loss on the distance logits; cross-entropy as in the paper.
        strategy: how the embedding runs over tasks (BatchNorm sees one task at a time).

    References:
        Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017
        (Table 1 Omniglot).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        inner_loop=False, second_order=False, head=False, task_kinds=frozenset({"classification"})
    )

    def __init__(self, model: nn.Module, loss_fn: LossFn = F.cross_entropy, strategy: Strategy = "auto"):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.strategy = strategy

    def _embed(self, x: Tensor) -> Tensor:
        embed: Callable[[Tensor], Tensor] = self.model
        strategy = resolve_strategy(self.strategy, self.model, x.device)
        return cast(Tensor, map_tasks(embed, strategy, task_layout(self.model, x, strategy))).flatten(2)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        """Class prototypes ``(tasks, ways, dim)``: the mean embedding of each class."""
        embeddings = self._embed(support_x)
        ways = int(support_y.max()) + 1
        onehot = F.one_hot(support_y, ways).to(embeddings.dtype)  # (tasks, n, ways)
        counts = onehot.sum(1).unsqueeze(-1)  # (tasks, ways, 1)
        if bool((counts == 0).any()):
            raise ValueError(
                f"every task's support set must hold every label 0..{ways - 1}; "
                "relabel each task's classes as 0..ways-1"
            )
        return onehot.transpose(1, 2) @ embeddings / counts

    def predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        """Logits ``(tasks, q, ways)``: negative squared distances to the prototypes."""
        queries = self._embed(query_x)  # (tasks, q, dim)
        # Explicit differences: cdist's gradient is undefined at distance zero.
        return -(queries.unsqueeze(2) - adapted.unsqueeze(1)).pow(2).sum(-1)

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean query cross-entropy over tasks."""
        logits = self.predict(self.adapt(support_x, support_y), query_x)
        return _task_mean_loss(self.loss_fn, logits, query_y)


def _check_inner(inner_lr: float, inner_steps: int) -> None:
    if inner_lr <= 0:
        raise ValueError(f"inner_lr must be positive, got {inner_lr}")
    if inner_steps < 0:
        raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
