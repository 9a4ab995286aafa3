"""Shared helpers of the whole suite, handed out as fixtures (test modules never import each other).

- ``run_cli(*args)``: the ``metasweep`` command line as a user runs it (``python -m metasweep``);
- ``cli(*args)``: the same entry point called in this process, for commands that end before any
  work (refusals), without the 3 s of a fresh interpreter importing PyTorch;
- ``free_port()`` and ``wait_for_port(port, server, what, timeout)``: servers on 127.0.0.1;
- ``make_folder(root, ...)``: an image folder of class subfolders;
- ``omniglot``: the real Omniglot folder; tests marked ``data`` are skipped, saying why, when it
  is absent;
- ``edit_config(path, old, new)``: a config edit that fails when the text it replaces is not there.

Every temporary file of the suite and of the processes it starts (Ray's session folders, trial
folders, PostgreSQL's and MLflow's locks) goes to one private folder that the end of the session
removes; a process still running there then, or anything new in the system's temporary folder
beside it, fails the session.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"
OMNIGLOT_MISSING = f"Omniglot data not found at {OMNIGLOT} (see shared/data/omniglot/README.md)"


_SYSTEM_TMP = pytest.StashKey[tuple[Path, set[str]]]()
_SUITE_TMP = pytest.StashKey[Path]()
_SHM = Path("/dev/shm")
_SHM_BEFORE = pytest.StashKey[set[str]]()
_WORKER_LEAKS = pytest.StashKey[list[str]]()


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests to pytest-xdist's workers and runs none itself: each
    worker keeps and checks its own private folder, and a worker still running is no leak."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _xdist_controller(config):
        return
    system = Path(tempfile.gettempdir())
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(system))  # tmp_path stays pytest's own
    # Short: Ray's socket paths live under it, and Unix socket paths end at 107 bytes.
    private = Path(tempfile.mkdtemp(prefix="mst-", dir=system))
    private.chmod(0o1777)  # PostgreSQL runs as its own user
    config.stash[_SYSTEM_TMP] = system, set(os.listdir(system))
    config.stash[_SUITE_TMP] = private
    config.stash[_SHM_BEFORE] = set(os.listdir(_SHM)) if _SHM.is_dir() else set()
    os.environ["TMPDIR"] = str(private)  # Ray honours it too
    tempfile.tempdir = None


def _still_running(private: Path, grace: float = 15) -> list[psutil.Process]:
    """Processes other than this one whose TMPDIR is the suite's, after up to ``grace`` seconds."""
    deadline = time.time() + grace
    while True:
        found = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get("TMPDIR") == str(private):
                    found.append(process)
            except (psutil.Error, OSError):
                continue
        if not found or time.time() > deadline:
            return found
        time.sleep(1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a session whose tests left a process running or a file in the system's temp folder.
    Under pytest-xdist each worker checks its own and hands what it found to the controller
    (``workeroutput``), which reports it and sets the exit status: a worker's own exit status and
    terminal never reach the user."""
    config = session.config
    if _xdist_controller(config):
        leaks = sorted(set(config.stash.get(_WORKER_LEAKS, [])))  # the workers share /tmp
    else:
        leaks = _leaks(config)
        if hasattr(config, "workerinput"):
            config.workeroutput["leaks"] = leaks  # type: ignore[attr-defined]
            return
    if leaks:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("the tests left behind:\n  " + "\n  ".join(leaks), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker's leaks, gathered on the controller (the hook exists only with xdist)."""
    leaks = getattr(node, "workeroutput", {}).get("leaks", [])
    node.config.stash[_WORKER_LEAKS] = node.config.stash.get(_WORKER_LEAKS, []) + list(leaks)


def _leaks(config: pytest.Config) -> list[str]:
    """What this process's tests left: processes still running with the suite's TMPDIR (killed
    now), new entries in the system's temp folder and MLflow job queues in /dev/shm."""
    private = config.stash[_SUITE_TMP]
    system, before = config.stash[_SYSTEM_TMP]
    leaks = []
    for process in _still_running(private):
        with contextlib.suppress(psutil.Error):
            leaks.append(f"process {process.pid}: {' '.join(process.cmdline())[:160]}")
    for process in psutil.Process().children(recursive=True) + _still_running(private, grace=0):
        with contextlib.suppress(psutil.Error):
            process.kill()
    shutil.rmtree(private, ignore_errors=True)
    new = set(os.listdir(system)) - before - {private.name}
    leaks += [f"{system / name}" for name in sorted(new) if not name.startswith(("pytest-of-", "mst-"))]
    return leaks + _mlflow_job_queues(config.stash[_SHM_BEFORE])


def _mlflow_job_queues(before: set[str]) -> list[str]:
    """The folders new in /dev/shm since ``before`` that an MLflow server's GenAI job runner made
    (its queue's SQLite files, which it never removes): a server started without
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false. Only MLflow's: other entries there (PostgreSQL's
    shared memory) come and go with their owners, those of the other test process included."""
    new = set(os.listdir(_SHM)) - before if _SHM.is_dir() else set()
    return [f"{_SHM / n}" for n in sorted(new) if list((_SHM / n).glob("*.mlflow-huey-store"))]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("data") and not (OMNIGLOT / "images_background_small1.zip").is_file():
        pytest.skip(OMNIGLOT_MISSING)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory, so runs/ and mlflow.db never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository's root folder."""
    return ROOT


@pytest.fixture(scope="session")
def omniglot() -> Path:
    """The real Omniglot folder (``../shared/data/omniglot``); mark the test ``data``."""
    return OMNIGLOT


def _run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "metasweep", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, timeout=300)``: ``python -m metasweep ARGS`` in the test's directory."""
    return _run_cli


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    from metasweep.orchestrator.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    environ, factory, level = dict(os.environ), logging.getLogRecordFactory(), logging.root.level
    argv, sys.argv = sys.argv, ["metasweep", *args]
    code: int = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except Exception:  # what a user would see as a traceback
                traceback.print_exc()
                code = 1
    finally:  # what the command set for its own process
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        logging.setLogRecordFactory(factory)
        logging.root.setLevel(level)
    return subprocess.CompletedProcess(["metasweep", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args)``: ``metasweep ARGS`` through its entry point in this process, with what it
    printed and its exit code as ``run_cli`` returns them (a traceback on stderr, exit code 1, for
    an exception that escapes it). For commands that end before any work: a command that works
    would start its Ray, servers or training inside the test process. Name a store by an absolute
    URI: MLflow keeps one database engine per URI string in a process, so ``sqlite:///mlflow.db``
    would reach the store of the first test that opened it."""
    return _cli


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates it
    return path


@pytest.fixture
def migrated_store(_migrated_store: Path) -> Callable[..., Path]:
    """``migrated_store(folder=Path("."))``: an empty MLflow SQLite store at ``folder/mlflow.db``,
    already migrated: a copy of one made once a session. A new store's migrations take 4 s here,
    and every sweep into a new ``mlflow.db`` pays them; tests about something else than creating
    the store start from the copy (creating it is tested on its own, in test_tracking.py)."""

    def copy(folder: Path = Path(".")) -> Path:
        target = folder / "mlflow.db"
        shutil.copyfile(_migrated_store, target)
        return target

    return copy


def _port_slice() -> list[int]:
    """This pytest process's ports: above the kernel's ephemeral range, from which every random
    bind (a Ray node's many ports) and every outgoing connection draws, so nothing else takes
    one between ``free_port()`` and the server's start; one slice per xdist process. (Drawn from
    the ephemeral range, a cluster's port was once taken by the other process's Ray.)"""
    try:
        ephemeral_top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return []
    low, high = ephemeral_top + 1, 65535
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (high - low + 1) // max(count, 1)
    if size < 100:
        return []
    return list(range(low + index * size, low + (index + 1) * size))


_PORTS = _port_slice()
_next_port = [0]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port[0] % len(_PORTS)]
        _next_port[0] += 1
        if _bindable(port):
            return port
    with socket.socket() as s:  # no room above the ephemeral range: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port on 127.0.0.1 that nothing listens on right now, and that no
    other test process of this suite hands out."""
    return _free_port


def _wait_for_port(
    port: int, server: subprocess.Popen[bytes] | subprocess.Popen[str], what: str, timeout: float
) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"{what} did not start on 127.0.0.1:{port}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def wait_for_port() -> Callable[..., None]:
    """``wait_for_port(port, server, what, timeout)``: wait until ``server`` accepts connections on
    127.0.0.1:``port``; fail the test if it dies or does not listen within ``timeout`` seconds."""
    return _wait_for_port


def _make_folder(root: Path, classes: int = 6, per_class: int = 5, size: int = 12, mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for j in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"{j}.png")
    return root


@pytest.fixture(scope="session")
def make_folder() -> Callable[..., Path]:
    """``make_folder(root, classes=6, per_class=5, size=12, mode="L")``: ``root/class_i/j.png`` with
    distinct, reproducible pixels per image."""
    return _make_folder


def _edit_config(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, f"{path.name} does not contain {old!r}: the edit would change nothing"
    path.write_text(text.replace(old, new))
    return path


@pytest.fixture(scope="session")
def edit_config() -> Callable[[Path, str, str], Path]:
    """``edit_config(path, old, new)``: replace ``old`` by ``new`` in a file, failing loudly when
    ``old`` is not in it (a test must not silently run the unedited config)."""
    return _edit_config


def _served_spec(algorithm: str, ways: int = 5) -> Any:
    from metasweep.orchestrator.config import RunConfig
    from metasweep.orchestrator.tracking.model import ModelSpec

    if algorithm == "sinusoid":
        config = RunConfig.model_validate({"eval": {"inner_steps": 2}})
        return ModelSpec(config.problem(None), config.learner_spec(), config.eval_inner_steps)
    settings: dict[str, Any] = {
        "algorithm": algorithm, "model": {"name": "conv4", "filters": 8},
        "data": {"dataset": "images.parquet", "ways": ways, "shots": 1},
    }  # fmt: skip
    if algorithm != "protonet":
        settings |= {"train": {"inner_lr": 0.4}, "eval": {"inner_steps": 2}}
    config = RunConfig.model_validate(settings)
    problem = config.problem({"image_shape": [28, 28, 1], "invert": False, "name": "synthetic"})
    return ModelSpec(problem, config.learner_spec(), config.eval_inner_steps)


@pytest.fixture(scope="session")
def served_spec() -> Callable[..., Any]:
    """``served_spec(algorithm, ways=5)``: the ``ModelSpec`` a sweep records for a small Conv-4 on
    28x28 grayscale images (``algorithm="sinusoid"``: the default MAML sinusoid regressor)."""
    return _served_spec


def _five_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    support = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    return support, rng.permutation(5)


@pytest.fixture(scope="session")
def five_images() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``five_images(seed=0)``: five random uint8 28x28 images (one per class) and a shuffled
    order to query them in."""
    return _five_images
