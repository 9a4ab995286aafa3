"""``train.memory`` and ``train.memory_budget_gb`` from the config to the training loop: the same
training whatever the chunks and checkpointing, the budget checked before a run folder exists,
and every impossible setting refused with one message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from metasweep.algorithms.memory import measure_footprint
from metasweep.orchestrator import training
from metasweep.orchestrator.config import load_config_dict
from tests.refusals import assert_refused

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "sinusoid_maml.yaml")
SWEEP = str(Path(__file__).resolve().parents[2] / "examples" / "sweep_sinusoid_maml.yaml")


def config(**train: object):
    return load_config_dict(
        {
            "name": "m",
            "data": {"shots": 5, "queries": 5},
            "train": {"iterations": 20, "meta_batch_size": 8, "inner_steps": 3, "eval_every": 20, **train},
            "eval": {"inner_steps": 3, "val_tasks": 10, "test_tasks": 10},
            "device": "cpu",
        },
        [],
    )


def trained(run_config) -> dict[str, torch.Tensor]:
    training.train(run_config, training.prepare(run_config), test=False)
    saved = torch.load(run_config.run_dir / training.CHECKPOINT, weights_only=True)
    return {k: v for k, v in saved["learner"].items()}


def test_chunks_and_checkpointing_train_the_same_model(tmp_path: Path) -> None:
    """20 meta-iterations of second-order MAML, plain and in chunks of 2 tasks with the inner
    loop checkpointed: the same weights (float32 rounding), and not the weights they started from."""
    start = training.new_state(config(), training.prepare(config()).problem, torch.device("cpu"))
    plain = trained(config(inner_lr=0.05).model_copy(update={"output_dir": str(tmp_path / "a")}))
    memory = {"checkpoint_inner": True, "task_chunk": 2}
    saving = trained(
        config(inner_lr=0.05, memory=memory).model_copy(update={"output_dir": str(tmp_path / "b")})
    )
    assert plain.keys() == saving.keys()
    for name in plain:
        torch.testing.assert_close(saving[name], plain[name], rtol=1e-5, atol=1e-6)
    moved = [n for n, v in start.learner.state_dict().items() if not torch.equal(v, plain[n])]
    assert moved, "20 meta-iterations changed no weight; the comparison tests nothing"


def test_auto_picks_the_largest_chunk_the_budget_holds(caplog: pytest.LogCaptureFixture) -> None:
    run_config = config(memory={"task_chunk": "auto"})
    inputs = training.prepare(run_config)
    device = torch.device("cpu")
    roomy = config(memory={"task_chunk": "auto"}, memory_budget_gb=1.0)
    with caplog.at_level(logging.INFO):
        assert training.task_chunk(roomy, inputs.problem, inputs.sources.train, device) == 8
    assert "chunks of 8 tasks" in caplog.text
    # The budget of three tasks: chunks of 2, the largest that divides 8 and fits.
    state = training.new_state(run_config, inputs.problem, device)
    sample = inputs.sources.train.sample(2, torch.Generator().manual_seed(0))
    footprint = measure_footprint(
        state.learner, sample.support_x, sample.support_y, sample.query_x, sample.query_y
    )
    tight = config(memory={"task_chunk": "auto"}, memory_budget_gb=footprint.chunk_bytes(3) / 2**30)
    assert training.task_chunk(tight, inputs.problem, inputs.sources.train, device) == 2


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["train.memory.task_chunk=3"], "memory.task_chunk=3 does not divide meta_batch_size=25"),
        (["train.memory.task_chunk=50"], "memory.task_chunk=50 does not divide meta_batch_size=25"),
        (["train.memory.task_chunk=0"], "task_chunk must be at least 1"),
        (["train.memory.task_chunk=auto", "device=cpu"], "auto on the CPU needs train.memory_budget_gb"),
        (["train.memory_budget_gb=0.000001"], "one task's meta-gradient needs about"),
        (["train.memory_budget_gb=0.00005"], "a pass of 25 tasks needs about"),
        (
            ["train.memory.task_chunk=auto", "train.memory_budget_gb=0.000001"],
            "one task's meta-gradient needs about",
        ),
        (["train.memory_budget_gb=-1"], "train.memory_budget_gb: Input should be greater than 0"),
        (
            ["algorithm=reptile", "train.memory.checkpoint_inner=true"],
            "checkpoint_inner does not apply to reptile",
        ),
    ],
)
def test_impossible_memory_settings_exit_2_before_a_run_folder_exists(
    cli, settings: list[str], expected: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = cli("train", EXAMPLE, "--set", "train.iterations=5", *args, "--no-progress")
    assert_refused(result, expected)
    assert not Path("runs").exists()


def test_a_budget_below_one_task_says_what_a_task_needs(cli) -> None:
    result = cli("train", EXAMPLE, "--set", "train.memory_budget_gb=0.000001", "--no-progress")
    need = float(assert_refused(result, "needs about ").split("needs about ")[1].split(" GiB")[0])
    assert 1e-6 < need < 1, result.stderr


def test_a_searched_meta_batch_must_hold_whole_chunks(cli) -> None:
    result = cli(
        "sweep", SWEEP,
        "--set", "train.memory.task_chunk=5",
        "--set", "search.initial_points=[]",
        "--set", "search.space={train.meta_batch_size: {type: int, low: 5, high: 25}}",
    )  # fmt: skip
    assert_refused(result, "meta_batch_size: 6 is not a multiple of 5 (train.memory.task_chunk=5)")
    assert not Path("mlflow.db").exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["train.memory_budget_gb=0.000001"], "one task's meta-gradient needs about"),
        (["train.memory.task_chunk=auto"], "auto on the CPU needs train.memory_budget_gb"),
    ],
)
def test_a_sweep_whose_trials_cannot_fit_is_refused_before_any_starts(
    cli, settings: list[str], expected: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = cli("sweep", SWEEP, *args)
    assert_refused(result, expected)
    assert not Path("mlflow.db").exists() and not Path("runs").exists()


def test_the_sweep_checks_the_trial_with_the_most_inner_steps(cli) -> None:
    """A budget that one inner step fits and five do not (the space reaches 5): refused."""
    run_config = config(inner_steps=5, meta_batch_size=25)
    inputs = training.prepare(run_config)
    state = training.new_state(run_config, inputs.problem, torch.device("cpu"))
    sample = inputs.sources.train.sample(2, torch.Generator().manual_seed(0))
    five = measure_footprint(
        state.learner, sample.support_x, sample.support_y, sample.query_x, sample.query_y
    )
    budget = five.chunk_bytes(1) * 0.8 / 2**30
    base = ["--set", "data.shots=5", "--set", "data.queries=5", "--set", "train.memory.task_chunk=auto"]
    one = cli(
        "train", EXAMPLE, *base, "--set", "train.iterations=0", "--set", f"train.memory_budget_gb={budget}"
    )
    assert one.returncode == 0, one.stderr
    swept = cli("sweep", SWEEP, *base, "--set", f"train.memory_budget_gb={budget}")
    assert_refused(swept, "one task's meta-gradient needs about")
