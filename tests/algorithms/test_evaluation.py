"""evaluate(): per-task scores, their mean and 95% interval, and a learner left untouched."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from metasweep.algorithms import (
    MAML,
    MLP,
    Conv4,
    Episode,
    MetaSGD,
    ProtoNet,
    SinusoidTasks,
    evaluate,
    fixed_episodes,
)


@pytest.fixture
def sinusoid_learner(build) -> MAML:
    return MAML(build(MLP, 0), inner_lr=0.01, inner_steps=5, loss_fn=F.mse_loss)


@pytest.fixture
def held_out() -> list[Episode]:
    """Ten sinusoid tasks in batches of 4, 4 and 2 (a partial last batch)."""
    return fixed_episodes(SinusoidTasks(shots=10, queries=15), tasks=10, batch_size=4, seed=0)


def test_regression_mean_and_ci95_from_per_task_mse(sinusoid_learner: MAML, held_out: list[Episode]) -> None:
    per_task = []
    for episode in held_out:
        predictions = sinusoid_learner.predict(
            sinusoid_learner.adapt(episode.support_x, episode.support_y), episode.query_x
        )
        for t in range(episode.tasks):
            per_task.append(((predictions[t] - episode.query_y[t]) ** 2).mean().item())

    result = evaluate(sinusoid_learner, held_out, task_kind="regression")

    assert set(result) == {"test/mse", "test/mse_ci95", "test/loss"}
    assert len(per_task) == 10
    assert result["test/mse"] == pytest.approx(statistics.fmean(per_task), rel=1e-5)
    assert result["test/mse_ci95"] == pytest.approx(
        1.96 * statistics.stdev(per_task) / math.sqrt(10), rel=1e-5
    )
    # Equal query sets: the mean query MSE over all tasks is the mean of the per-task MSEs.
    assert result["test/loss"] == pytest.approx(statistics.fmean(per_task), rel=1e-5)


def test_classification_accuracy_and_ci95_from_per_task_accuracy(build, make_images) -> None:
    learner = MAML(build(lambda: Conv4(ways=5, hidden=8), 0), inner_lr=0.4, inner_steps=1)
    episodes = [make_images(queries=2, seed=s) for s in (0, 1)]
    accuracies, losses = [], []
    for episode in episodes:
        with torch.no_grad():
            logits = learner.predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)
        for t in range(episode.tasks):
            correct = sum(int(logits[t, i].argmax() == episode.query_y[t, i]) for i in range(logits.shape[1]))
            accuracies.append(correct / logits.shape[1])
            losses.append(F.cross_entropy(logits[t], episode.query_y[t]).item())

    result = evaluate(learner, episodes, task_kind="classification", split="val")

    assert set(result) == {"val/accuracy", "val/accuracy_ci95", "val/loss"}
    assert 0.0 <= result["val/accuracy"] <= 1.0
    assert result["val/accuracy"] == pytest.approx(statistics.fmean(accuracies), rel=1e-6)
    assert result["val/accuracy_ci95"] == pytest.approx(
        1.96 * statistics.stdev(accuracies) / math.sqrt(len(accuracies)), rel=1e-6
    )
    assert result["val/loss"] == pytest.approx(statistics.fmean(losses), rel=1e-5)


def test_a_single_task_has_a_zero_interval(sinusoid_learner: MAML) -> None:
    one = fixed_episodes(SinusoidTasks(), tasks=1, batch_size=1, seed=0)
    assert evaluate(sinusoid_learner, one, task_kind="regression")["test/mse_ci95"] == 0.0


def test_inner_steps_override_changes_the_score(sinusoid_learner: MAML, held_out: list[Episode]) -> None:
    unadapted = evaluate(sinusoid_learner, held_out, task_kind="regression", inner_steps=0)["test/mse"]
    adapted = evaluate(sinusoid_learner, held_out, task_kind="regression", inner_steps=10)["test/mse"]

    by_hand = statistics.fmean(
        ((sinusoid_learner.model(e.query_x[t]) - e.query_y[t]) ** 2).mean().item()
        for e in held_out
        for t in range(e.tasks)
    )
    assert unadapted == pytest.approx(by_hand, rel=1e-5)
    assert abs(adapted - unadapted) > 1e-3 * unadapted


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "protonet"])
def test_evaluation_leaves_the_learner_unchanged(
    algorithm: str, build, make_images, state, check_unchanged
) -> None:
    if algorithm == "protonet":
        learner = ProtoNet(build(lambda: Conv4(ways=None, hidden=8), 0))
        episodes, kind, steps = [make_images(seed=0)], "classification", None
    else:
        cls = MAML if algorithm == "maml" else MetaSGD
        learner = cls(build(MLP, 0), inner_lr=0.01, inner_steps=3, loss_fn=F.mse_loss)
        episodes, kind, steps = (
            fixed_episodes(SinusoidTasks(), tasks=6, batch_size=3, seed=0),
            "regression",
            5,
        )
    before = state(learner)
    evaluate(learner, episodes, task_kind=kind, inner_steps=steps)
    check_unchanged(learner, before)


def test_inner_steps_for_a_learner_without_an_inner_loop_are_refused(build, make_images) -> None:
    learner = ProtoNet(build(lambda: Conv4(ways=None, hidden=8), 0))
    with pytest.raises(ValueError, match="ProtoNet has no inner loop"):
        evaluate(learner, [make_images(seed=0)], task_kind="classification", inner_steps=5)


def test_evaluation_under_no_grad_still_adapts(sinusoid_learner: MAML, held_out: list[Episode]) -> None:
    expected = evaluate(copy.deepcopy(sinusoid_learner), held_out, task_kind="regression", inner_steps=10)
    with torch.no_grad():
        inside = evaluate(sinusoid_learner, held_out, task_kind="regression", inner_steps=10)
        unadapted = evaluate(sinusoid_learner, held_out, task_kind="regression", inner_steps=0)

    assert inside == pytest.approx(expected, rel=1e-6)
    assert inside["test/mse"] != pytest.approx(unadapted["test/mse"], rel=1e-3)
