"""What ``pip install metasweep`` installs, checked the way users meet it: the wheel is built, then
installed into a fresh virtual environment.

The fresh environment gets metasweep from the wheel alone; its dependencies (torch, Ray, MLflow,
... several GB) are lent from this test run's environment through ``PYTHONPATH``, which adds their
folder without running its ``.pth`` files, so the editable install of this checkout stays out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "algorithms", "orchestrator")


@pytest.fixture(scope="module")
def wheel(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built from a copy of its sources (nothing is written here)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = root / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # The build backend's own output (shown with -v): the newcomer issue saw setuptools deprecate
    # the project's license as a TOML table at every install.
    output = built.stdout + built.stderr
    assert "deprecat" not in output.lower(), output[-3000:]
    (wheel,) = out.glob("metasweep-*.whl")
    return wheel


@pytest.fixture(scope="module")
def fresh_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A new virtual environment with only the wheel installed in it."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    return {"python": python, "bin": venv / "bin", "site": site}


def run_in(env: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    lent = sysconfig.get_paths()["purelib"]  # this run's dependencies, without its .pth files
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=300,
        env={"PATH": f"{env['bin']}:/usr/bin:/bin", "PYTHONPATH": lent, "HOME": str(env["bin"].parent)},
    )  # fmt: skip


def test_the_wheel_holds_one_namespace_and_every_module_of_the_source(wheel: Path, root: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"metasweep", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "metasweep/__init__.py" not in names  # a namespace package of two portions
    assert "metasweep/__main__.py" in names
    expected = {
        f"metasweep/algorithms/{p.relative_to(root / 'algorithms')}"
        for p in (root / "algorithms").rglob("*.py")
    }
    expected |= {
        f"metasweep/orchestrator/{p.relative_to(root / 'orchestrator')}"
        for p in (root / "orchestrator").rglob("*.py")
        if "_namespace" not in p.parts
    }
    assert expected <= set(names), f"modules missing from the wheel: {sorted(expected - set(names))}"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_a_fresh_install_has_no_top_level_algorithms_or_orchestrator(fresh_env: dict[str, Path]) -> None:
    installed = {p.name for p in fresh_env["site"].iterdir()}
    assert "metasweep" in installed
    assert not installed & {"algorithms", "orchestrator"}
    probe = (
        "import importlib.util, metasweep.algorithms, metasweep.orchestrator.cli\n"
        "assert importlib.util.find_spec('algorithms') is None\n"
        "assert importlib.util.find_spec('orchestrator') is None\n"
        "print(metasweep.orchestrator.cli.__file__)\n"
        "from metasweep.algorithms import MAML, MLP\n"
        "print(type(MAML(MLP())).__name__)\n"
    )
    done = run_in(fresh_env, str(fresh_env["python"]), "-c", probe)
    assert done.returncode == 0, done.stderr
    module, learner = done.stdout.split()
    assert Path(module).is_relative_to(fresh_env["site"]) and learner == "MAML"


@pytest.mark.parametrize("command", [["metasweep", "--help"], ["python", "-m", "metasweep", "--help"]])
def test_the_installed_command_line_runs(fresh_env: dict[str, Path], command: list[str]) -> None:
    done = run_in(fresh_env, str(fresh_env["bin"] / command[0]), *command[1:])
    assert done.returncode == 0, done.stderr
    for name in ("train", "sweep", "submit", "adapt", "models", "data"):
        assert name in done.stdout


def test_the_editable_install_make_uses_imports_this_checkout(root: Path) -> None:
    import metasweep.algorithms
    import metasweep.orchestrator

    assert Path(metasweep.algorithms.__file__).parent == root / "algorithms"
    assert Path(metasweep.orchestrator.__file__).parent == root / "orchestrator"
    done = subprocess.run(
        [sys.executable, "-m", "metasweep", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "train" in done.stdout
