"""The model registry: the best trial's model logged and registered, the champion policy, and
listing and pulling registered models.

A registered version carries the facts that make two versions comparable (meta-test metric and
value, dataset fingerprint, evaluation protocol) as tags. ``champion`` moves to a new version only
if it beats the current champion on the same fingerprint and protocol (:func:`choose_alias`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import metasweep.algorithms as core
from metasweep.algorithms import MetaLearner
from metasweep.orchestrator.config import DataConfig, EvalConfig
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.tracking import model as served
from metasweep.orchestrator.tracking.runs import SweepTracker
from metasweep.orchestrator.tracking.store import check_reachable, filter_value, use_store

CHAMPION = "champion"
CHALLENGER = "challenger"
REQUIREMENTS = ("torch", "numpy", "pillow", "mlflow")
"""The served model's pip requirements: the distributions its code imports (checked by
tests/orchestrator/test_served_model.py)."""
SERVED_CODE = (
    "orchestrator/__init__.py",
    "orchestrator/errors.py",
    "orchestrator/problem.py",
    "orchestrator/learner.py",
    "orchestrator/data/__init__.py",
    "orchestrator/data/images.py",
    "orchestrator/tracking/__init__.py",
    "orchestrator/tracking/model.py",
)
"""The orchestrator's files the served model runs (with all of ``algorithms/``), relative to the
``metasweep`` namespace folder they are shipped in."""


@dataclass(frozen=True)
class Registration:
    """Where a sweep's best model went in the registry, and why."""

    name: str
    version: str
    alias: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    """A model offered to the registry and the facts it is judged by.

    Attributes:
        metric: the meta-test metric, e.g. ``test/accuracy``.
        value: its value.
        mode: ``max`` or ``min``: which way is better.
        fingerprint: the dataset's fingerprint (:attr:`Problem.fingerprint`).
        protocol: how it was scored (ways, shots, queries, test tasks, evaluation seed).
    """

    metric: str
    value: float
    mode: str
    fingerprint: str
    protocol: str

    def tags(self, sweep: str) -> dict[str, str]:
        """The version tags that record these facts."""
        return {
            "metasweep.metric": self.metric, "metasweep.test_value": repr(self.value),
            "metasweep.fingerprint": self.fingerprint, "metasweep.protocol": self.protocol,
            "metasweep.sweep": sweep,
        }  # fmt: skip


def scoring_protocol(problem: Problem, data: DataConfig, evaluation: EvalConfig) -> str:
    """How a model was scored, as ``key=value`` words; ways and rotations only where they apply
    (classification)."""
    facts = {"shots": data.shots, "queries": evaluation.queries or data.queries}
    if problem.task_kind == "classification":
        facts = {"ways": data.ways, **facts, "rotations": data.rotations}
    facts |= {"test_tasks": evaluation.test_tasks, "eval_seed": evaluation.seed}
    return " ".join(f"{key}={value}" for key, value in facts.items())


def same_protocol(champion: str, candidate: str) -> bool:
    """Whether two versions were scored the same way. A champion registered before regression
    protocols left out ways and rotations still compares equal on the rest."""

    def facts(text: str) -> dict[str, str]:
        return dict(word.partition("=")[::2] for word in text.split())

    old, new = facts(champion), facts(candidate)
    legacy = {"ways", "rotations"} - new.keys()
    return {k: v for k, v in old.items() if k not in legacy} == new


def choose_alias(
    candidate: Candidate, champion: Mapping[str, str] | None, champion_version: str = ""
) -> tuple[str, str]:
    """``(alias, reason)`` for a new version: ``champion`` if there is none yet, or if it beats the
    current champion (given by its version tags) on the same fingerprint and protocol; otherwise
    ``challenger``."""
    if champion is None:
        return CHAMPION, "first registered version"
    if champion.get("metasweep.fingerprint") != candidate.fingerprint or not same_protocol(
        champion.get("metasweep.protocol", ""), candidate.protocol
    ):
        return CHALLENGER, f"champion v{champion_version} was scored on another dataset or protocol"
    old = float(champion.get("metasweep.test_value", "nan"))
    value = candidate.value
    better = value > old if candidate.mode == "max" else value < old
    alias = CHAMPION if better or math.isnan(old) else CHALLENGER
    verdict = "beats" if alias == CHAMPION else "does not beat"
    return alias, f"{candidate.metric} {value:.4f} {verdict} champion v{champion_version}'s {old:.4f}"


def warm_up() -> None:
    """Do ahead what :func:`register` would first do slowly (seconds), so that a driver can do it
    while its trials run: import MLflow's pyfunc flavour, and map the installed distributions to
    their modules, as MLflow does once a process to check the model's pip requirements."""
    import mlflow.pyfunc  # noqa: F401
    from mlflow.utils import requirements_utils

    init = getattr(requirements_utils, "_init_packages_to_modules_map", None)  # private: may go
    if init is not None:
        init()


def register(
    tracker: SweepTracker,
    *,
    name: str,
    spec: served.ModelSpec,
    weights: dict[str, Any],
    input_example: dict[str, np.ndarray],
    candidate: Candidate,
) -> Registration:
    """Log the model as a pyfunc on the sweep's parent run, register it, and move the aliases.

    Args:
        tracker: the sweep's tracker (its parent run receives the model).
        name: registered model name.
        spec: what rebuilds the learner.
        weights: the learner's ``state_dict``.
        input_example: a real support/query example (the signature and MLflow's example).
        candidate: the facts the registry judges it by.
    """
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        weights_path = Path(tmp) / "weights.pt"
        spec_path = Path(tmp) / "spec.json"
        torch.save(weights, weights_path)
        spec_path.write_text(json.dumps(spec.to_json(), sort_keys=True))
        predictions = served.predict_with(served.rebuild(spec, weights), spec, input_example)
        use_store(tracker.uri)
        code = _stage_code(Path(tmp) / "code")
        signature = _signature(input_example, predictions, spec.problem.task_kind)

        def log_model() -> Any:
            with mlflow.start_run(run_id=tracker.parent_id):
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(served.__file__).with_name("model_code.py")),
                    artifacts={served.WEIGHTS: str(weights_path), served.SPEC: str(spec_path)},
                    code_paths=[str(code)],
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=[f"{p}=={installed_version(p)}" for p in REQUIREMENTS],
                )

        info = tracker.write("the model", log_model)
    tags = candidate.tags(tracker.sweep)
    version = tracker.write(
        "the model version", lambda: mlflow.register_model(info.model_uri, name, tags=tags)
    ).version
    client = tracker.client
    try:
        current = tracker.write("the champion", lambda: client.get_model_version_by_alias(name, CHAMPION))
    except MlflowException:
        current = None
    alias, reason = choose_alias(
        candidate, None if current is None else current.tags, "" if current is None else str(current.version)
    )
    tracker.write("the alias", lambda: client.set_registered_model_alias(name, alias, str(version)))
    return Registration(name, str(version), alias, reason)


def _stage_code(folder: Path) -> Path:
    """``folder/metasweep``: the core and the orchestrator files the served model runs, laid out
    as the installed namespace (the model's ``code/`` folder)."""
    algorithms = Path(core.__file__).resolve().parent
    orchestrator = Path(served.__file__).resolve().parents[1]
    root = folder / "metasweep"
    shutil.copytree(algorithms, root / "algorithms", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for relative in SERVED_CODE:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(orchestrator / relative.removeprefix("orchestrator/"), target)
    return root


def _signature(example: dict[str, np.ndarray], predictions: np.ndarray, task_kind: str) -> Any:
    """Every input declared ``object`` ``(-1,)``, which MLflow's enforcement passes through
    unchanged (any dtype and rank, and JSON lists when served); the model's code checks them.

    A TensorSpec holds one dtype and one rank, and MLflow casts nothing: an ``int64``
    ``support_y`` would refuse string labels, an image spec would refuse RGB images for a
    grayscale model (``data.images.model_images`` converts them), and a float32 regression spec
    would refuse NumPy's default float64 with a dump of the arrays (``model.real_points`` casts
    any real dtype). Predictions: labels (``object``) or float32 ``(n, 1)``.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(object), (-1,), name) for name in example])
    if task_kind == "classification":
        output = TensorSpec(np.dtype(object), (-1,))
    else:
        output = TensorSpec(predictions.dtype, (-1, *predictions.shape[1:]))
    return ModelSignature(inputs=inputs, outputs=Schema([output]))


def list_models(uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions (all models, or one), newest first, with aliases and test metrics.

    Raises:
        UserError: unreachable store or unknown model name.
    """
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        names = [name] if name else [m.name for m in client.search_registered_models()]
        rows = []
        for model in names:
            for found in client.search_model_versions(f"name = {filter_value(model)}"):
                v = client.get_model_version(model, found.version)  # search results omit aliases
                rows.append({
                    "name": model, "version": int(v.version), "aliases": ",".join(v.aliases),
                    "metric": v.tags.get("metasweep.metric", ""),
                    "value": v.tags.get("metasweep.test_value", ""),
                    "protocol": v.tags.get("metasweep.protocol", ""),
                })  # fmt: skip
    except MlflowException as exc:
        raise UserError(f"cannot list models in {uri}: {exc.message}") from None
    if name and not rows:
        raise UserError(f"no registered model {name!r} in {uri}")
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


def model_uri(reference: str) -> str:
    """``NAME``, ``NAME@alias`` or ``NAME/version`` (or a ``models:/`` URI) as a ``models:/`` URI."""
    if reference.startswith("models:/"):
        return reference
    if "@" in reference:
        return f"models:/{reference}"
    if "/" in reference:
        return f"models:/{reference}"
    return f"models:/{reference}@{CHAMPION}"


@dataclass(frozen=True)
class Loaded:
    """A registered model rebuilt by the installed metasweep: its spec and its learner."""

    spec: served.ModelSpec
    learner: MetaLearner[Any]

    def predict(self, model_input: dict[str, Any]) -> np.ndarray:
        """As the served model predicts (:func:`~metasweep.orchestrator.tracking.model.predict_with`)."""
        return served.predict_with(self.learner, self.spec, model_input)


def read_model(folder: Path) -> Loaded:
    """Rebuild a pulled model from its JSON spec and its tensors (``torch.load(weights_only=True)``)
    with the installed metasweep code. Nothing in the folder is imported or run: not its
    ``model_code.py``, not its ``code/``, not a pickle.

    Raises:
        UserError: not a metasweep model folder, a spec of another format, or unreadable weights.
    """
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise UserError(
            f"{folder} is not a model folder (no MLmodel file); pull one with `metasweep models pull`"
        )
    try:
        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
        artifacts = {
            name: folder / flavor["artifacts"][name]["path"] for name in (served.SPEC, served.WEIGHTS)
        }
    except (yaml.YAMLError, KeyError, TypeError, AttributeError):
        raise UserError(f"{folder} is not a metasweep model: its MLmodel names no spec and weights") from None
    root = folder.resolve()
    if not all(path.resolve().is_relative_to(root) and path.is_file() for path in artifacts.values()):
        raise UserError(f"{folder}: the spec and weights its MLmodel names are not files inside it")
    try:
        spec = served.ModelSpec.from_json(json.loads(artifacts[served.SPEC].read_text()))
        weights = torch.load(artifacts[served.WEIGHTS], map_location="cpu", weights_only=True)
        return Loaded(spec, served.rebuild(spec, weights))
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        raise UserError(f"{folder} holds no model this metasweep can rebuild: {exc}") from None


def pull_model(uri: str, reference: str, out: Path) -> Path:
    """Download a registered model into ``out``: a directory ``metasweep adapt`` (and
    ``mlflow.pyfunc.load_model``) loads with no tracking server. The download is checked with
    :func:`read_model` first; nothing is left at ``out`` when it fails.

    Raises:
        UserError: unknown model, alias or version; ``out`` exists and is not empty; a model this
            metasweep cannot rebuild.
    """
    import mlflow

    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    target = model_uri(reference)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    check_reachable(uri)
    use_store(uri)
    try:
        mlflow.artifacts.download_artifacts(target, dst_path=str(tmp))
        read_model(tmp)  # a model this metasweep rebuilds, checked without running its code
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except MlflowException as exc:
        raise UserError(f"cannot pull {target} from {uri}: {exc.message}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_model(uri: str, reference: str) -> Loaded:
    """A registered model, from a pulled folder or a registry reference, rebuilt by
    :func:`read_model`: the installed metasweep's code runs, never the model's.

    Raises:
        UserError: nothing at that path or reference, or a model this metasweep cannot rebuild.
    """
    import mlflow

    path = Path(reference)
    if path.is_dir():
        return read_model(path)
    check_reachable(uri)
    use_store(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mlflow.artifacts.download_artifacts(model_uri(reference), dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise UserError(f"cannot load model {reference!r}: {getattr(exc, 'message', exc)}") from None
        return read_model(Path(tmp))
