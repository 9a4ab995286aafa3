"""The functional building blocks: strategy resolution, SGD updates and mapping over tasks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from metasweep.algorithms import MAML, MLP, Conv4, ProtoNet
from metasweep.algorithms.functional import map_tasks, resolve_strategy, sgd_update

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
