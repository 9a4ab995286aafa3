"""The suite's own leak check (``conftest.py``) fails a session whose tests leave a file in the
system's temporary folder, in one process and under pytest-xdist, where each worker finds its own
leaks and only the controller sets the exit status the user sees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

PROBE = """
import os
from pathlib import Path

def test_probe():
    name = os.environ["LEAK_NAME"]
    if name:
        Path(os.environ["LEAK_TO"], name).write_text("left behind")
"""


@pytest.mark.parametrize(
    ("processes", "leak"),
    [("0", True), ("1", True), ("2", True), ("2", False)],
    ids=["leaks-in-one-process", "leaks-under-xdist-1", "leaks-under-xdist-2", "clean-under-xdist-2"],
)
def test_a_session_that_leaves_a_file_in_tmp_fails(tmp_path: Path, processes: str, leak: bool) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_probe.py").write_text(PROBE)
    # The inner session's "system" temporary folder is this session's private one.
    system = Path(tempfile.gettempdir())
    name = f"leak-probe-{os.getpid()}-{processes}" if leak else ""
    env = {**os.environ, "LEAK_TO": str(system), "LEAK_NAME": name}
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", processes, str(suite)],
            cwd=suite,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        if name:
            (system / name).unlink(missing_ok=True)
    assert "1 passed" in run.stdout, run.stdout + run.stderr
    if leak:
        assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
        assert "the tests left behind:" in run.stdout
        assert run.stdout.count(str(system / name)) == 1, run.stdout
    else:
        assert run.returncode == 0, run.stdout + run.stderr
        assert "left behind" not in run.stdout
