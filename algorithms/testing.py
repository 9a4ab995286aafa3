"""The contract every meta-learner passes, ready to run over a learner of your own.

Subclass :class:`LearnerContract` in a test module, say which learner it tests, and pytest runs
every check of the contract over it (as ``optuna.testing`` does for storages)::

    from metasweep.algorithms.testing import LearnerContract

    class TestMyLearner(LearnerContract):
        learner_class = MyLearner            # declares its capabilities, takes (model, ...)
        options = {"first_order": True}      # extra constructor arguments, if any

The checks run the learner on the MAML-paper MLP with sinusoid regression (when its capabilities
include regression) and on a small Conv-4 with 5-way image tasks: a head of ``ways`` outputs, or an
embedding network for learners without one (``capabilities.head``). A learner whose constructor
takes other arguments than metasweep's learners do overrides :meth:`LearnerContract.build`.

Plain ``assert`` and :mod:`torch.testing` only, no pytest import: pytest collects the ``test_*``
methods of a ``Test*`` subclass. Every tensor is seeded through its own ``torch.Generator`` or under
``torch.random.fork_rng``, so a check never depends on, or leaves a mark on, the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms.functional import Strategy
from metasweep.algorithms.learners import InnerLoopLearner, MetaLearner
from metasweep.algorithms.models import MLP, Conv4
from metasweep.algorithms.tasks import Episode, SinusoidTasks

WAYS = 5
HIDDEN = 16
TASKS = 4


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a module with a fixed initialisation, without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def image_episode(
    *,
    tasks: int = TASKS,
    ways: int = WAYS,
    shots: int = 1,
    queries: int = 3,
    image_size: int = 28,
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


def meta_grads(learner: MetaLearner[Any], episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
    """``meta_loss`` on ``episode`` and the gradient it leaves on every parameter of ``learner``."""
    module = _module(learner)
    module.zero_grad(set_to_none=True)
    loss = learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    loss.backward()  # type: ignore[no-untyped-call]
    grads = {}
    for name, p in module.named_parameters():
        assert p.grad is not None, f"meta_loss().backward() left no gradient on {name}"
        grads[name] = p.grad.detach().clone()
    return loss.detach(), grads


def _module(learner: MetaLearner[Any]) -> nn.Module:
    assert isinstance(learner, nn.Module), f"{type(learner).__name__} is not an nn.Module"
    return learner


class LearnerContract:
    """The checks every :class:`~metasweep.algorithms.MetaLearner` passes; subclass to run them.

    Attributes:
        learner_class: the learner under test.
        options: extra constructor arguments (e.g. ``{"first_order": True}``).
    """

    learner_class: ClassVar[type[MetaLearner[Any]]]
    options: ClassVar[dict[str, Any]] = {}

    # --- what the checks run on -------------------------------------------------------------

    def backbones(self) -> tuple[str, ...]:
        """``mlp`` (sinusoid regression) where the learner does regression, and ``conv4``."""
        kinds = self.learner_class.capabilities.task_kinds
        return ("mlp", "conv4") if "regression" in kinds else ("conv4",)

    def backbone(self, name: str, seed: int = 0) -> nn.Module:
        """A seeded MLP, or a Conv-4 with a ``WAYS``-way head or none (``capabilities.head``)."""
        if name == "mlp":
            return seeded(MLP, seed)
        ways = WAYS if self.learner_class.capabilities.head else None
        return seeded(lambda: Conv4(ways=ways, hidden=HIDDEN), seed)

    def build(self, model: nn.Module, backbone: str, strategy: Strategy) -> MetaLearner[Any]:
        """The learner under test around ``model``, with two inner steps if it has an inner loop."""
        kwargs: dict[str, Any] = {"strategy": strategy, **self.options}
        if backbone == "mlp":
            kwargs["loss_fn"] = F.mse_loss
        if self.learner_class.capabilities.inner_loop:
            kwargs |= {"inner_lr": 0.01 if backbone == "mlp" else 0.1, "inner_steps": 2}
        return self.learner_class(model, **kwargs)  # type: ignore[call-arg]

    def learner(self, backbone: str, strategy: Strategy = "auto", seed: int = 0) -> MetaLearner[Any]:
        """The learner on a seeded ``backbone``."""
        return self.build(self.backbone(backbone, seed), backbone, strategy)

    def episode(self, backbone: str, seed: int = 0) -> Episode:
        """Sinusoid tasks for the MLP; 4 tasks of 5-way 1-shot 3-query images for Conv-4."""
        return sinusoid_episode(seed=seed) if backbone == "mlp" else image_episode(seed=seed)

    # --- the contract -----------------------------------------------------------------------

    def test_learner_is_a_module_with_the_metalearner_members(self) -> None:
        for backbone in self.backbones():
            learner = self.learner(backbone)
            assert isinstance(learner, nn.Module)
            assert isinstance(learner.model, nn.Module)
            assert isinstance(learner, MetaLearner)
            if self.learner_class.capabilities.inner_loop:
                assert isinstance(learner, InnerLoopLearner)

    def test_meta_loss_is_a_finite_scalar_with_a_gradient_on_every_meta_parameter(self) -> None:
        for backbone in self.backbones():
            learner = self.learner(backbone)
            loss, gradients = meta_grads(learner, self.episode(backbone))
            assert loss.shape == ()
            assert torch.isfinite(loss)
            assert gradients.keys() == {n for n, _ in _module(learner).named_parameters()}
            for name, g in gradients.items():
                assert torch.isfinite(g).all(), f"non-finite meta-gradient on {name} ({backbone})"
            assert any(g.abs().sum() > 0 for g in gradients.values())

    def test_meta_loss_is_the_query_loss_after_adapt_and_predict(self) -> None:
        for backbone in self.backbones():
            learner, episode = self.learner(backbone), self.episode(backbone)
            loss = learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y)
            predictions = learner.predict(
                learner.adapt(episode.support_x, episode.support_y), episode.query_x
            )
            expected = torch.stack(
                [learner.loss_fn(predictions[t], episode.query_y[t]) for t in range(episode.tasks)]
            ).mean()
            torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)

    def test_adapt_and_predict_shapes(self) -> None:
        for backbone in self.backbones():
            learner, episode = self.learner(backbone), self.episode(backbone)
            predictions = learner.predict(
                learner.adapt(episode.support_x, episode.support_y), episode.query_x
            )
            tasks, queries = episode.query_x.shape[:2]
            outputs = 1 if backbone == "mlp" else WAYS
            assert predictions.shape == (tasks, queries, outputs)

    def test_adapt_and_predict_leave_the_learner_unchanged(self) -> None:
        for backbone in self.backbones():
            for grad_enabled in (True, False):
                learner, episode = self.learner(backbone), self.episode(backbone)
                module = _module(learner)
                before = snapshot(module)
                with torch.set_grad_enabled(grad_enabled):
                    adapted = learner.adapt(episode.support_x, episode.support_y)
                    learner.predict(adapted, episode.query_x)
                assert_unchanged(module, before)

    def test_vmap_and_loop_give_the_same_loss_and_meta_gradients(self) -> None:
        for backbone in self.backbones():
            episode = self.episode(backbone)
            loss_vmap, grads_vmap = meta_grads(self.learner(backbone, "vmap"), episode)
            loss_loop, grads_loop = meta_grads(self.learner(backbone, "loop"), episode)
            torch.testing.assert_close(loss_vmap, loss_loop, atol=1e-5, rtol=1e-4)
            # Float32, with BatchNorm statistics summed in different orders (the loop runs Conv4
            # channels-last on the CPU): an absolute tolerance scaled to the largest entry.
            scale = max(1.0, *(float(g.abs().max()) for g in grads_loop.values()))
            for name in grads_loop:
                torch.testing.assert_close(
                    grads_vmap[name],
                    grads_loop[name],
                    atol=1e-5 * scale,
                    rtol=1e-4,
                    msg=f"{name} ({backbone})",
                )

    def test_same_seed_gives_the_same_loss_and_gradients(self) -> None:
        for backbone in self.backbones():
            loss_a, grads_a = meta_grads(self.learner(backbone, seed=3), self.episode(backbone, seed=5))
            loss_b, grads_b = meta_grads(self.learner(backbone, seed=3), self.episode(backbone, seed=5))
            loss_c, _ = meta_grads(self.learner(backbone, seed=4), self.episode(backbone, seed=5))
            assert torch.equal(loss_a, loss_b)
            for name in grads_a:
                assert torch.equal(grads_a[name], grads_b[name]), name
            assert not torch.equal(loss_a, loss_c), "a different initialisation seed should change the loss"

    def test_zero_inner_steps_predicts_with_the_meta_parameters(self) -> None:
        if not self.learner_class.capabilities.inner_loop:
            return
        for backbone in self.backbones():
            learner, episode = self.learner(backbone), self.episode(backbone)
            inner: InnerLoopLearner[Any] = learner  # type: ignore[assignment]
            predictions = learner.predict(
                inner.adapt(episode.support_x, episode.support_y, inner_steps=0), episode.query_x
            )
            model: nn.Module = learner.model  # type: ignore[attr-defined]
            unadapted = torch.stack([model(x) for x in episode.query_x])
            # 1e-5: float32 BatchNorm sums its statistics in another order channels-last.
            torch.testing.assert_close(predictions, unadapted, atol=1e-5, rtol=1e-5)
            adapted = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)
            assert not torch.allclose(adapted, unadapted), "inner_steps=2 should move the predictions"

    def test_capabilities_match_the_constructor(self) -> None:
        """A learner takes exactly the settings its capabilities declare: no argument it ignores."""
        import inspect

        capabilities = self.learner_class.capabilities
        parameters = inspect.signature(self.learner_class).parameters
        assert ("inner_lr" in parameters) == capabilities.inner_loop
        assert ("inner_steps" in parameters) == capabilities.inner_loop
        assert ("first_order" in parameters) == capabilities.second_order
        adapt = inspect.signature(self.learner_class.adapt).parameters
        assert ("inner_steps" in adapt) == capabilities.inner_loop
