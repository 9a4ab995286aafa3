"""``metasweep train`` and ``metasweep evaluate`` end to end, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.refusals import assert_refused

pytestmark = pytest.mark.cli

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "sinusoid_maml.yaml")
SHORT = [
    "--set", "train.eval_every=200",
    "--set", "eval.val_tasks=50",
    "--set", "eval.test_tasks=100",
    "--set", "eval.queries=50",
    "--no-progress",
]  # fmt: skip


def last_json(stdout: str) -> dict[str, float]:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_beats_the_untrained_model_resumes_exactly_and_rescores(run_cli) -> None:
    """One test for three properties, so the suite trains four runs instead of seven: training
    helps, a run stopped and resumed ends bit-for-bit where a straight run does (which needs
    training to be deterministic), and evaluate re-scores a run with other inner steps."""
    untrained = run_cli("train", EXAMPLE, "--set", "train.iterations=0", "--set", "name=zero", *SHORT)
    assert untrained.returncode == 0, untrained.stderr
    first = run_cli("train", EXAMPLE, "--set", "train.iterations=600", "--set", "name=a", *SHORT)
    assert first.returncode == 0, first.stderr
    before, after = last_json(untrained.stdout), last_json(first.stdout)
    # The untrained MLP predicts ~0 after 10 steps; meta-training must cut the MSE clearly.
    assert after["test/mse"] < 0.5 * before["test/mse"], (before, after)
    assert after["test/mse"] + after["test/mse_ci95"] < before["test/mse"] - before["test/mse_ci95"]

    run_dir = Path("runs/a")
    assert (run_dir / "checkpoint.pt").is_file()
    assert (run_dir / "config.yaml").is_file()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [200, 400, 600, 600]
    assert "test/mse" in history[-1]

    half = run_cli("train", EXAMPLE, "--set", "train.iterations=200", "--set", "name=r", *SHORT)
    assert half.returncode == 0, half.stderr
    rest = run_cli("train", EXAMPLE, "--set", "train.iterations=600", "--set", "name=r", "--resume", *SHORT)
    assert rest.returncode == 0, rest.stderr
    resumed = last_json(rest.stdout)
    for key in ("val/mse", "test/mse", "test/mse_ci95"):
        assert resumed[key] == after[key], key
    assert torch.load("runs/r/checkpoint.pt", weights_only=True)["iteration"] == 600

    ten = run_cli("evaluate", "runs/a")
    one = run_cli("evaluate", "runs/a", "--set", "eval.inner_steps=1")
    assert ten.returncode == 0 and one.returncode == 0, ten.stderr + one.stderr
    assert last_json(ten.stdout)["test/mse"] == pytest.approx(after["test/mse"], rel=1e-6)
    assert last_json(one.stdout)["test/mse"] != last_json(ten.stdout)["test/mse"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "absent.yaml"], "does not exist"),
        (["train", EXAMPLE, "--set", "algorithm=mamll"], "valid algorithms: maml, anil"),
        (["train", EXAMPLE, "--set", "model.name=resnet"], "valid models: mlp, conv4"),
        (["train", EXAMPLE, "--set", "train.inner_lrr=0.1"], "did you mean 'inner_lr'?"),
        (
            ["train", EXAMPLE, "--set", "train.inner_lr=-0.1"],
            "train.inner_lr: Input should be greater than 0",
        ),
        (["train", EXAMPLE, "--set", "data.shots=0"], "data.shots"),
        (["train", EXAMPLE, "--set", "train.inner_steps=-1"], "train.inner_steps"),
        (["train", EXAMPLE, "--set", "data.dataset=/no/such", "--set", "model.name=conv4"], "does not exist"),
        (["evaluate", "runs/none"], "no checkpoint"),
        (["evaluate", "runs/none", "--set", "train.inner_lr=1"], "only takes eval.* overrides"),
    ],
)
def test_bad_input_exits_2_with_one_message(cli, args: list[str], expected: str) -> None:
    result = cli(*args)
    assert_refused(result, expected)
    assert result.stderr.startswith("metasweep: error:")
    assert not Path("runs").exists(), "a failed command must leave no run directory behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_exits_2(cli) -> None:
    result = cli("train", EXAMPLE, "--set", "device=cuda")
    assert_refused(result, "no CUDA GPU is visible")
    assert not Path("runs").exists()


def test_help_lists_commands_and_options(run_cli) -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "train" in top.stdout and "evaluate" in top.stdout
    sub = run_cli("train", "--help")
    assert "--set" in sub.stdout and "KEY=VALUE" in sub.stdout and "--resume" in sub.stdout


def test_a_second_run_of_one_name_is_refused_unless_told_and_loses_nothing(cli, run_cli) -> None:
    quick = ["--set", "train.iterations=5", "--set", "train.eval_every=5", "--set", "name=same", *SHORT]
    first = run_cli("train", EXAMPLE, *quick)
    assert first.returncode == 0, first.stderr
    run_dir = Path("runs/same")
    kept = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    again = cli("train", EXAMPLE, *quick)
    assert_refused(again, "run 'same' already exists", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == kept  # untouched

    both = cli("train", EXAMPLE, *quick, "--resume", "--overwrite")
    assert_refused(both, "not both")

    over = run_cli("train", EXAMPLE, *quick, "--overwrite")
    assert over.returncode == 0, over.stderr
    history = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(history) == 2  # the one evaluation and the final line of this run only


def test_a_run_in_use_by_another_process_is_refused(cli) -> None:
    """The run directory is locked for the run's lifetime: a second process of the same name,
    even with --resume or --overwrite, stops at once instead of interleaving metrics.jsonl (the
    second runs in this process: a lock held by another process refuses it all the same)."""
    import subprocess
    import sys
    import time

    long = ["--set", "train.iterations=100000", "--set", "train.eval_every=100000", "--set", "name=busy"]
    running = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "train", EXAMPLE, *long, "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not Path("runs/busy/config.yaml").exists():
            assert running.poll() is None, running.stderr.read() if running.stderr else ""
            assert time.time() < deadline, "the first run never started"
            time.sleep(0.2)
        for flag in ("--resume", "--overwrite"):
            second = cli("train", EXAMPLE, *long, flag, "--no-progress")
            assert_refused(second, "is in use by another metasweep process", f"pid {running.pid}")
        assert running.poll() is None  # the first run was not disturbed
    finally:
        running.kill()
        running.wait()
