"""The served model carries what it needs and nothing more: registered to a real SQLite store,
pulled, then loaded and asked for predictions in a process where the installed metasweep cannot be
imported, so only the code inside the model folder runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.requirements import Requirement

from metasweep.orchestrator.learner import build_learner
from metasweep.orchestrator.tracking.registry import REQUIREMENTS, Candidate, pull_model, register
from metasweep.orchestrator.tracking.runs import SweepTracker

pytestmark = [pytest.mark.slow]

IMPORT_NAMES = {"torch": "torch", "numpy": "numpy", "pillow": "PIL", "mlflow": "mlflow"}
LOAD_AND_PREDICT = """
import json, sys
import numpy as np
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
rng = np.random.default_rng(0)
support = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
labels = model.predict({"support_x": support, "support_y": np.arange(5), "query_x": support})
files = {m: getattr(sys.modules[m], "__file__", None) for m in sys.modules if m.startswith("metasweep")}
print(json.dumps({"modules": sorted(sys.modules), "files": files, "labels": labels.tolist()}))
"""


def register_and_pull(folder: Path, name: str, spec: Any, example: dict[str, Any], metric: str) -> Path:
    """Register an untrained learner of ``spec`` to a SQLite store in ``folder`` and pull it."""
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mode = "max" if metric == "test/accuracy" else "min"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        env.setenv("MLFLOW_REGISTRY_URI", uri)
        env.chdir(folder)
        tracker = SweepTracker(uri, "served", name)
        tracker.open(resume=False)
        register(
            tracker, name=name, spec=spec, weights=build_learner(spec.learner, spec.problem).state_dict(),
            input_example=example, candidate=Candidate(metric, 0.5, mode, spec.problem.fingerprint, "p"),
        )  # fmt: skip
        model = pull_model(uri, f"{name}@champion", folder / "model")
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return model


@pytest.fixture(scope="module")
def pulled(served_spec, five_images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    support, order = five_images()
    example = {"support_x": support, "support_y": np.arange(5), "query_x": support[order]}
    return register_and_pull(
        tmp_path_factory.mktemp("served"), "served", served_spec("protonet"), example, "test/accuracy"
    )


def test_the_served_model_runs_its_own_code_and_imports_no_sweep_or_cli(pulled: Path) -> None:
    lent = sysconfig.get_paths()["purelib"]  # the dependencies, without the editable install's .pth
    done = subprocess.run(
        [sys.executable, "-S", "-c", LOAD_AND_PREDICT, str(pulled)],
        capture_output=True, text=True, timeout=300, env={"PYTHONPATH": lent, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    tops = {m.split(".")[0] for m in loaded["modules"]}
    assert not tops & {"ray", "optuna", "rich", "typer"}, sorted(tops & {"ray", "optuna", "rich", "typer"})
    ours = {m: f for m, f in loaded["files"].items() if f}
    assert "metasweep.orchestrator.tracking.model" in ours
    assert all(Path(f).is_relative_to(pulled / "code") for f in ours.values()), ours
    assert not any(
        m.startswith(("metasweep.orchestrator.config", "metasweep.orchestrator.sweep")) for m in ours
    )
    assert loaded["labels"] == list(range(5))  # each query is its own support image: ProtoNet knows it
    for name in REQUIREMENTS:
        assert IMPORT_NAMES[name] in tops, f"{name} is a requirement the model never imports"


def test_its_requirements_are_exactly_what_its_code_imports(pulled: Path) -> None:
    declared = {Requirement(line).name for line in (pulled / "requirements.txt").read_text().split()}
    assert declared == set(REQUIREMENTS)
    imported = set()
    for path in (pulled / "code").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"metasweep", "__future__"}
    assert third_party == {IMPORT_NAMES[name] for name in REQUIREMENTS}


MARKER = "import pathlib; pathlib.Path({path!r}).write_text('model code ran')\n"


def tampered_copy(pulled: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the pulled model whose own code writes a marker file when anything imports it."""
    import shutil

    model = folder / "tampered"
    shutil.copytree(pulled, model, ignore=shutil.ignore_patterns("__pycache__"))
    marker = folder / "ran.txt"
    for code in (model / "model_code.py", model / "code/metasweep/orchestrator/tracking/model.py"):
        code.write_text(MARKER.format(path=str(marker)) + code.read_text())
    return model, marker


def test_adapt_rebuilds_the_model_with_the_installed_code_and_runs_none_of_the_folders(
    pulled: Path, run_cli, tmp_path: Path
) -> None:
    from PIL import Image

    model, marker = tampered_copy(pulled, tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for i, image in enumerate(images):
        (tmp_path / "support" / f"class{i}").mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "support" / f"class{i}" / "0.png")
        (tmp_path / "query").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / "query" / f"q{i}.png")
    result = run_cli(
        "adapt", str(model), "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = dict(line.split("\t") for line in result.stdout.strip().splitlines())
    assert predicted == {str(tmp_path / "query" / f"q{i}.png"): f"class{i}" for i in range(5)}
    assert not marker.exists(), "adapt ran code that came with the model"
    # What adapt avoids: MLflow's own loader runs the folder's code, as it does for every pyfunc.
    lent = sysconfig.get_paths()["purelib"]
    load = "import mlflow.pyfunc, sys; mlflow.pyfunc.load_model(sys.argv[1])"
    subprocess.run(
        [sys.executable, "-S", "-c", load, str(model)],
        capture_output=True, timeout=300, env={"PYTHONPATH": lent, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert marker.exists()


def test_a_folder_that_is_not_a_model_of_this_version_is_refused(pulled: Path, tmp_path: Path) -> None:
    import shutil

    from metasweep.orchestrator.errors import UserError
    from metasweep.orchestrator.tracking.registry import read_model

    with pytest.raises(UserError, match="no MLmodel file"):
        read_model(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(pulled, old)
    (old / "artifacts" / "spec.json").write_text(json.dumps({"config": {}, "task_kind": "classification"}))
    with pytest.raises(UserError, match="format 1, this metasweep reads format 2"):
        read_model(old)
    assert read_model(pulled).spec.problem.task_kind == "classification"


def test_a_regression_model_takes_numpys_default_float64_through_mlflow(served_spec, tmp_path: Path) -> None:
    """MLflow enforces the registered signature before the model's code sees the input: float64
    and int points must pass it (a float32 spec refused them with a dump of the arrays)."""
    import mlflow

    rng = np.random.default_rng(0)
    x, y, q = (rng.uniform(-5, 5, (5, 1)) for _ in range(3))
    points32 = {
        "support_x": x.astype(np.float32),
        "support_y": y.astype(np.float32),
        "query_x": q.astype(np.float32),
    }
    folder = register_and_pull(tmp_path, "sine", served_spec("sinusoid"), points32, "test/mse")
    model = mlflow.pyfunc.load_model(str(folder))
    want = model.predict(points32)
    np.testing.assert_array_equal(model.predict({"support_x": x, "support_y": y, "query_x": q}), want)
    ints = model.predict({"support_x": np.arange(5), "support_y": np.arange(5), "query_x": np.arange(5)})
    assert ints.shape == (5, 1) and ints.dtype == np.float32
    with pytest.raises(
        Exception, match=r"support_x must hold real numbers \(any int or float dtype\), got <U1"
    ):
        model.predict({"support_x": np.array(["1", "2"]), "support_y": y, "query_x": q})
