"""``train.workers`` and ``search.workers_per_trial`` refused, with one message and exit code 2,
where a meta-batch cannot be shared evenly or NCCL ranks would share a GPU: before a run folder,
an MLflow store or Ray exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasweep.orchestrator.config import SweepConfig, load_config_dict
from tests.refusals import assert_refused

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "sinusoid_maml.yaml")
SWEEP = str(Path(__file__).resolve().parents[2] / "examples" / "sweep_sinusoid_maml.yaml")


@pytest.mark.parametrize(
    ("command", "settings", "expected"),
    [
        ("train", ["train.workers=2", "train.meta_batch_size=25"],
         "meta_batch_size=25 does not split evenly over 2 workers; use a multiple of 2"),
        ("train", ["train.workers=2", "train.meta_batch_size=12", "train.memory.task_chunk=4"],
         "memory.task_chunk=4 does not divide the 6 tasks of each of 2 workers (meta_batch_size=12)"),
        ("sweep", ["search.workers_per_trial=2", "train.meta_batch_size=25"],
         "meta_batch_size=25 does not split evenly over 2 workers"),
        ("sweep", ["search.workers_per_trial=2", "train.meta_batch_size=4", "search.gpus_per_trial=1"],
         "gives each of 2 workers 0.5 GPUs; a trial of several workers needs whole GPUs per worker"),
        ("sweep", ["train.workers=2", "train.meta_batch_size=4"],
         "train.workers=2: a sweep's trials take search.workers_per_trial"),
        ("sweep", ["search.workers_per_trial=2", "train.meta_batch_size=4", "search.initial_points=[]",
                   "search.space={train.meta_batch_size: {type: int, low: 4, high: 8}}"],
         "search.space.train.meta_batch_size: 5 is not a multiple of 2 (search.workers_per_trial=2)"),
    ],
)  # fmt: skip
def test_workers_that_cannot_share_the_meta_batch_exit_2_before_anything_exists(
    cli, command: str, settings: list[str], expected: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = cli(command, EXAMPLE if command == "train" else SWEEP, *args)
    assert_refused(result, expected)
    assert not Path("runs").exists() and not Path("mlflow.db").exists()


def test_a_trial_config_carries_the_sweeps_workers() -> None:
    sweep = load_config_dict(
        {"train": {"meta_batch_size": 6}, "search": {"workers_per_trial": 3}}, [], SweepConfig
    )
    run = sweep.run_config({})
    assert run.train.workers == 3 and run.train.worker_tasks == 2


@pytest.mark.parametrize(("workers", "reused"), [(1, True), (2, False)])
def test_only_trials_of_one_worker_reuse_the_process_of_an_ended_trial(workers: int, reused: bool) -> None:
    """Tune gives an ended trial's thread 2 s before reusing its process, and fails the next
    trial for good when it is late; a stopped Ray Train run is late on a busy machine."""
    from metasweep.orchestrator.sweep.driver import reuse_actors

    sweep = load_config_dict(
        {"train": {"meta_batch_size": 4}, "search": {"workers_per_trial": workers}}, [], SweepConfig
    )
    assert reuse_actors(sweep) is reused
