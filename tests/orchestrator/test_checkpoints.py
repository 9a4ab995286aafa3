"""A resumed Tune experiment whose snapshot names a checkpoint that a later one replaced: healed,
the trial restarts from the later one (the first later one, when the trial wrote another the
driver never accepted); not healed, Tune cannot restore it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TUNE_RUN = """
import json, shutil, sys, tempfile
from pathlib import Path
import ray
from ray import tune
from metasweep.orchestrator.sweep.checkpoints import heal
from metasweep.orchestrator.sweep.workers import start_local_ray

storage = Path(sys.argv[1])
failed_once = storage / "failed-once"


def counting(config):
    start = 0
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as folder:
            start = json.loads(Path(folder, "step.json").read_text())
    for step in range(start + 1, 5):
        if step == 3 and not failed_once.exists():
            failed_once.touch()
            raise RuntimeError("the first run stops after two checkpoints")
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "step.json").write_text(json.dumps(step))
            tune.report({"step": step, "start": start}, checkpoint=tune.Checkpoint.from_directory(folder))


def run_config(name):
    keep = tune.CheckpointConfig(num_to_keep=1)  # as a sweep's trials keep theirs
    return tune.RunConfig(name=name, storage_path=str(storage), verbose=0, checkpoint_config=keep)


start_local_ray()
try:
    tune.Tuner(counting, run_config=run_config("healed")).fit()
    (trial,) = [p for p in (storage / "healed").iterdir() if p.name.startswith("counting_")]
    assert [p.name for p in trial.glob("checkpoint_*")] == ["checkpoint_000001"]  # step 2's
    # The driver's death as it happens: step 3's checkpoint came, step 2's went, and the snapshot
    # on storage still names step 2's.
    later = trial / "checkpoint_000001"
    (later / "step.json").write_text("3")
    later.rename(trial / "checkpoint_000002")
    shutil.copytree(storage / "healed", storage / "unhealed")
    # Or a moment later: the trial has written step 4's too, which the driver never accepted.
    shutil.copytree(storage / "healed", storage / "two-later")
    unaccepted = storage / "two-later" / trial.name / "checkpoint_000003"
    unaccepted.mkdir()
    (unaccepted / "step.json").write_text("4")
    names = ("healed", "unhealed", "two-later")
    lines = {name: [] if name == "unhealed" else heal(str(storage / name)) for name in names}
    ends = {}
    for name in lines:
        restored = tune.Tuner.restore(str(storage / name), trainable=counting, resume_errored=True)
        (end,) = restored.fit()
        ends[name] = {"metrics": end.metrics, "error": str(end.error)}
finally:
    ray.shutdown()
print(json.dumps({"lines": lines, "ends": ends}))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_a_trial_whose_named_checkpoint_was_replaced_restarts_from_the_later_one(tmp_path) -> None:
    script = tmp_path / "tune_run.py"
    script.write_text(TUNE_RUN)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tune")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("healed", "two-later"):
        (line,) = report["lines"][name]
        assert "restarts from its last checkpoint, checkpoint_000002 (renamed checkpoint_000001" in line
        # From step 3's checkpoint, the one the driver had accepted, not the later step 4's.
        end = report["ends"][name]
        assert end["metrics"]["step"] == 4 and end["metrics"]["start"] == 3, end
        assert end["error"] == "None"
    assert "checkpoint_000003, never accepted, deleted" in report["lines"]["two-later"][0]
    assert "does not exist on storage anymore" in report["ends"]["unhealed"]["error"]
