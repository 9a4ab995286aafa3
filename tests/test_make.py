"""The Makefile's demo targets, as a user reruns them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.cli
@pytest.mark.slow
def test_make_train_demo_twice_keeps_the_first_demo(tmp_path: Path) -> None:
    """A rerun trains into a new runs/demo-DATE-TIME; the first demo's files stay as they were."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    make = [
        "make", "-f", str(ROOT / "Makefile"), "-o", "install", "train-demo",
        f"VENV={Path(sys.executable).parent.parent}", "DEMO_ITERATIONS=10",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.run(make, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (demo,) = (tmp_path / "runs").iterdir()
    kept = {p.name: p.read_bytes() for p in demo.iterdir()}
    time.sleep(1.1)  # the name has a resolution of one second
    second = subprocess.run(make, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    demos = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(demos) == 2 and all(name.startswith("demo-") for name in demos), demos
    assert {p.name: p.read_bytes() for p in demo.iterdir()} == kept
