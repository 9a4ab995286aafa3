"""A run directory holds one run: checkpoints are written whole or not at all, and one process at
a time owns the directory (issue 10, item 6)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from metasweep.orchestrator import training
from metasweep.orchestrator.config import RunConfig
from metasweep.orchestrator.errors import UserError


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    return RunConfig.model_validate({"name": "r", "output_dir": str(tmp_path / "run")})


def state_of(config: RunConfig) -> training.RunState:
    problem = config.problem(None)
    return training.new_state(config, problem, torch.device("cpu"))


def test_a_checkpoint_is_replaced_whole_and_a_failed_write_leaves_the_old_one(
    config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config.run_dir / training.CHECKPOINT
    state = state_of(config)
    training.save_checkpoint(state, config, path)
    before = path.read_bytes()

    def torn(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    state.iteration = 7
    with pytest.raises(OSError, match="disk full"):
        training.save_checkpoint(state, config, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in config.run_dir.iterdir()) == [training.CHECKPOINT]  # no temp left


def test_concurrent_writers_never_share_a_temporary_file(config: RunConfig) -> None:
    """Each write has a temporary file of its own (the old fixed `checkpoint.tmp` made two
    writers crash on each other's rename)."""
    path = config.run_dir / training.CHECKPOINT
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.starmap(_save_many, [(config.model_dump(mode="json"), str(path))] * 2)
    assert training.load_checkpoint(path)["iteration"] == 0
    assert sorted(p.name for p in config.run_dir.iterdir()) == [training.CHECKPOINT]


def _save_many(raw: dict, path: str) -> None:
    config = RunConfig.model_validate(raw)
    state = state_of(config)
    for _ in range(20):
        training.save_checkpoint(state, config, Path(path))


def test_the_lock_refuses_a_second_holder_and_is_released_after(config: RunConfig) -> None:
    with training.locked_run_dir(config.run_dir):
        child = multiprocessing.get_context("fork").Process(target=_try_lock, args=(str(config.run_dir),))
        child.start()
        child.join(30)
        assert child.exitcode == 3  # refused while held
    child = multiprocessing.get_context("fork").Process(target=_try_lock, args=(str(config.run_dir),))
    child.start()
    child.join(30)
    assert child.exitcode == 0  # free once released


def _try_lock(run_dir: str) -> None:
    try:
        with training.locked_run_dir(Path(run_dir)):
            pass
    except UserError:
        raise SystemExit(3) from None
    raise SystemExit(0)


def test_an_earlier_run_is_kept_unless_told(config: RunConfig) -> None:
    training.check_run_dir(config)  # nothing there yet
    config.run_dir.mkdir(parents=True)
    (config.run_dir / training.METRICS).write_text("{}\n")
    with pytest.raises(UserError, match="already exists"):
        training.check_run_dir(config)
    training.check_run_dir(config, resume=True)
    training.check_run_dir(config, overwrite=True)
    with pytest.raises(UserError, match="not both"):
        training.check_run_dir(config, resume=True, overwrite=True)
