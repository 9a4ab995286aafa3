"""The house's rules hold and would catch a break: the import-linter contracts in pyproject.toml pass
on this checkout, fail on a copy with a deliberate violation, and name every dependency the core
must not import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    tomllib = pytest.importorskip("tomli")

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def pyproject(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def lint_imports(root: Path, packages: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts, over ``packages`` (a folder holding a
    ``metasweep`` namespace) or over the installed checkout."""
    env = None
    if packages is not None:
        import os

        env = {**os.environ, "PYTHONPATH": f"{packages}:{root}"}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_the_contracts_hold(root: Path) -> None:
    done = lint_imports(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


VIOLATIONS = {
    "algorithms imports MLflow": ("algorithms/tasks.py", "import mlflow", "algorithms is the PyTorch core"),
    "algorithms imports the orchestrator": (
        "algorithms/models.py", "import metasweep.orchestrator.config", "algorithms is the PyTorch core",
    ),
    "training reaches up into the sweep": (
        "orchestrator/training.py", "import metasweep.orchestrator.sweep.driver", "data flows one way",
    ),
    "tracking imports Optuna": (
        "orchestrator/tracking/runs.py", "import optuna", "only the sweep imports Optuna",
    ),
    "the Jobs client imports Ray Tune": (
        "orchestrator/jobs/client.py", "from ray import tune", "only the sweep imports Ray Tune",
    ),
    "data imports MLflow": ("orchestrator/data/sampler.py", "import mlflow", "only tracking imports MLflow"),
    "training draws a progress bar": (
        "orchestrator/training.py", "import rich", "only the CLI imports typer",
    ),
    "the CLI reads Parquet": ("orchestrator/cli/run.py", "import pyarrow", "only data imports pyarrow"),
}  # fmt: skip


@pytest.mark.parametrize("violation", list(VIOLATIONS), ids=list(VIOLATIONS))
def test_a_deliberate_violation_breaks_its_contract(root: Path, tmp_path: Path, violation: str) -> None:
    file, line, contract = VIOLATIONS[violation]
    packages = tmp_path / "packages"
    for folder in ("algorithms", "orchestrator"):
        shutil.copytree(
            root / folder, packages / "metasweep" / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    target = packages / "metasweep" / file
    target.write_text(target.read_text() + f"\n{line}\n")
    done = lint_imports(root, packages)
    assert done.returncode != 0, done.stdout
    broken = done.stdout.split("Broken contracts")[-1]
    assert contract in broken, done.stdout


def test_the_core_is_forbidden_every_dependency_but_torch_and_numpy(root: Path) -> None:
    """A dependency added to pyproject without a line in the core's contract fails here."""
    project = pyproject(root)
    declared = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["server"]]
    modules_of: dict[str, set[str]] = {}
    for module, distributions in packages_distributions().items():
        for distribution in distributions:
            modules_of.setdefault(_normal(distribution), set()).add(module)
    modules_of["mlflow"] = modules_of.get("mlflow", set()) | {"mlflow"}  # its code ships in mlflow-skinny
    (core,) = [
        c
        for c in project["tool"]["importlinter"]["contracts"]
        if c.get("source_modules") == ["metasweep.algorithms"]
    ]
    forbidden = set(core["forbidden_modules"])
    for text in declared:
        name = _normal(Requirement(text).name)
        if name in ("torch", "numpy"):
            continue
        modules = modules_of.get(name, set())
        assert modules, f"{name} is declared but not installed"
        assert modules & forbidden, (
            f"the core's contract does not forbid {name} (import names {sorted(modules)})"
        )


def _normal(distribution: str) -> str:
    return distribution.lower().replace("_", "-")


def test_every_third_party_import_is_a_declared_dependency(root: Path) -> None:
    """What metasweep's own modules import from outside the standard library is declared in
    pyproject (matplotlib and requests once were not)."""
    import ast

    project = pyproject(root)
    declared = {Requirement(t).name.lower() for t in project["project"]["dependencies"]}
    distributions = packages_distributions()
    imported = set()
    for folder in ("algorithms", "orchestrator"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported - set(sys.stdlib_module_names) if m not in ("metasweep", "__future__")}
    for module in sorted(third_party):
        owners = {d.lower() for d in distributions.get(module, [])}
        assert owners & declared, f"{module} is imported but its distribution ({owners}) is not declared"
