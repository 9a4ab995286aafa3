"""The functional building blocks: strategy resolution, SGD updates, mapping over tasks and the
batched path of linear stacks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from metasweep.algorithms import ANIL, MAML, MLP, Conv4, MetaSGD, ProtoNet
from metasweep.algorithms.functional import (
    functorch_only,
    map_tasks,
    on_tasks,
    resolve_strategy,
    runs_on_tasks,
    sgd_update,
    tasks_forward,
)

CPU = torch.device("cpu")


def test_auto_runs_conv4_task_by_task_on_cpu() -> None:
    assert resolve_strategy("auto", Conv4(hidden=4), CPU) == "loop"


def test_auto_batches_the_mlp_with_vmap_on_cpu() -> None:
    assert resolve_strategy("auto", MLP(), CPU) == "vmap"


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("model", [MLP(), Conv4(hidden=4)], ids=["mlp", "conv4"])
def test_explicit_strategies_are_kept(strategy: str, model: torch.nn.Module) -> None:
    assert resolve_strategy(strategy, model, CPU) == strategy


def test_unknown_strategy_raises_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'batched'.*auto, vmap, loop"):
        resolve_strategy("batched", MLP(), CPU)  # type: ignore[arg-type]


@pytest.mark.parametrize("learner_cls", [MAML, ProtoNet])
def test_learners_reject_an_unknown_strategy_when_used(learner_cls: type, make_sinusoids) -> None:
    episode = make_sinusoids()
    learner = learner_cls(MLP(), strategy="threads")
    with pytest.raises(ValueError, match="unknown strategy"):
        learner.adapt(episode.support_x, episode.support_y)


def test_sgd_update_with_a_scalar_rate_returns_a_new_dict() -> None:
    params = {"w": torch.tensor([1.0, 2.0]), "frozen": torch.tensor([5.0])}
    updated = sgd_update(params, {"w": torch.tensor([0.5, -1.0])}, 0.1)

    torch.testing.assert_close(updated["w"], torch.tensor([0.95, 2.1]))
    assert updated["frozen"] is params["frozen"]
    assert torch.equal(params["w"], torch.tensor([1.0, 2.0])) and updated is not params


def test_sgd_update_with_per_entry_rates() -> None:
    params = {"w": torch.tensor([1.0, 2.0])}
    updated = sgd_update(params, {"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([0.1, 0.3])})
    torch.testing.assert_close(updated["w"], torch.tensor([0.9, 1.7]))


def test_map_tasks_gives_the_same_structured_outputs_under_vmap_and_loop() -> None:
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    params = {"scale": torch.tensor([1.0, 2.0, 3.0])}

    def per_task(p: dict[str, Tensor], xi: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return xi.sum(0) * p["scale"], {"norm": xi.norm()}

    vmapped, looped = map_tasks(per_task, "vmap", params, x), map_tasks(per_task, "loop", params, x)
    torch.testing.assert_close(vmapped, looped)
    assert looped[0].shape == (3, 2) and looped[1]["norm"].shape == (3,)
    torch.testing.assert_close(looped[0][2], x[2].sum(0) * 3.0)


def test_auto_avoids_vmap_for_second_order_through_plain_batchnorm_on_any_device() -> None:
    cuda = torch.device("cuda")
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert resolve_strategy("auto", plain, cuda, second_order=True) == "loop"
    assert resolve_strategy("auto", plain, cuda, second_order=False) == "vmap"
    with pytest.raises(ValueError, match="functorch#534"):
        resolve_strategy("vmap", plain, CPU, second_order=True)
    # Conv4's TaskBatchNorm2d is exact under vmap (tests/algorithms/test_batchnorm.py).
    assert resolve_strategy("auto", Conv4(hidden=4), cuda, second_order=True) == "vmap"
    assert resolve_strategy("vmap", Conv4(hidden=4), CPU, second_order=True) == "vmap"
    assert resolve_strategy("auto", Conv4(hidden=4), CPU, second_order=True) == "loop"  # CPU: convs
    assert resolve_strategy("auto", MLP(), cuda, second_order=True) == "vmap"


class _Chained(nn.Module):
    chain = ("first", "second")

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


class _Misdeclared(_Chained):
    chain = ("first",)  # forgets a child: not trusted


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (MLP(), True),
        (nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 1, bias=False)), True),
        (_Chained(), True),
        (_Misdeclared(), False),
        (nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.1)), False),  # random: vmap refuses it
        (Conv4(hidden=4), False),
    ],
    ids=["mlp", "sequential", "chain", "misdeclared-chain", "dropout", "conv4"],
)
def test_runs_on_tasks_accepts_linear_stacks_and_nothing_else(model: nn.Module, expected: bool) -> None:
    assert runs_on_tasks(model) is expected


@pytest.mark.parametrize(
    "model",
    [
        MLP(1, (5, 6), 2),
        nn.Sequential(nn.Linear(3, 4, bias=False), nn.LeakyReLU(), nn.Linear(4, 2)),
        _Chained(),
    ],
    ids=["mlp", "sequential", "chain"],
)
def test_tasks_forward_is_vmap_of_the_forward_with_per_task_and_shared_parameters(model: nn.Module) -> None:
    """Values and gradients (through a second derivative too) equal the functorch path's, in
    float64, with some parameters per task and the others shared."""
    torch.manual_seed(0)
    model = model.double()
    tasks = 3
    x = torch.randn(tasks, 5, next(model.parameters()).shape[-1], dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    per_task = {
        n: p.detach().expand(tasks, *p.shape).clone().requires_grad_()
        for n, p in model.named_parameters()
        if n != names[-1]
    }
    shared = {names[-1]: dict(model.named_parameters())[names[-1]]}

    def reference(fast: dict[str, Tensor], xi: Tensor) -> Tensor:
        out: Tensor = torch.func.functional_call(model, {**shared, **fast}, (xi,))
        return out

    expected = torch.func.vmap(reference)(per_task, x)
    got = tasks_forward(model, {**shared, **per_task}, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    leaves = [*per_task.values(), *shared.values()]

    def second_order(out: Tensor) -> list[Tensor]:
        first = torch.autograd.grad(out.pow(2).sum(), leaves, create_graph=True)
        return list(torch.autograd.grad(sum(g.pow(2).sum() for g in first), leaves))

    for a, b in zip(second_order(got), second_order(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("learner_cls", [MAML, MetaSGD, ANIL])
def test_the_linear_stack_path_and_functorch_give_the_same_meta_gradients(
    learner_cls: type, make_sinusoids
) -> None:
    """Second order, two inner steps, float64: ``tasks_forward`` against ``torch.func.vmap``
    (inside ``functorch_only``), on the sinusoid MLP, which ``auto`` runs batched."""
    episode = make_sinusoids()
    data = [t.double() for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y)]

    def meta_gradient() -> list[Tensor]:
        torch.manual_seed(3)
        learner = learner_cls(MLP(), inner_lr=0.05, inner_steps=2, loss_fn=torch.nn.functional.mse_loss)
        learner.double()
        learner.meta_loss(*data).backward()
        return [p.grad for p in learner.parameters()]

    assert on_tasks(MLP(), data[0], "vmap")
    native = meta_gradient()
    with functorch_only():
        assert not on_tasks(MLP(), data[0], "vmap")
        reference = meta_gradient()
    for a, b in zip(native, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("learner_cls", [MAML, MetaSGD])
def test_task_by_task_meta_loss_straight_from_the_inner_loop_equals_the_stacked_path(
    learner_cls: type, build, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conv-4, second order, two inner steps, float64: ``adapt_and_predict_tasks`` against
    ``predict_tasks(adapt_tasks(...))`` (the path with ``adapts_all`` false, as ANIL's)."""
    episode = make_images(queries=2, seed=1)
    data = [episode.support_x.double(), episode.support_y, episode.query_x.double(), episode.query_y]

    def meta_gradient(straight: bool) -> tuple[Tensor, list[Tensor]]:
        learner = learner_cls(
            build(lambda: Conv4(ways=5, hidden=4), 0).double(), inner_lr=0.3, inner_steps=2, strategy="loop"
        )
        monkeypatch.setattr(learner_cls, "adapts_all", straight)
        loss = learner.meta_loss(*data)
        loss.backward()
        return loss.detach(), [p.grad for p in learner.parameters()]

    straight_loss, straight = meta_gradient(True)
    stacked_loss, stacked = meta_gradient(False)
    torch.testing.assert_close(straight_loss, stacked_loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(straight, stacked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
