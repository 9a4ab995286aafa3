"""The one module that talks to MLflow: the sweep's parent run and one child run per trial.

Everything is logged from the sweep's driver, never from Ray workers: on a cluster the workers may
not reach the tracking server, while the driver already receives every trial's metrics from Tune.
A trial that is retried after a failure continues its own child run (found again by its trial id
tag), so the UI never shows duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
SWEEP_TAG = "metasweep.sweep"
TRIAL_TAG = "metasweep.trial_id"
PARENT_TAG = "mlflow.parentRunId"
RETRY_S = 5.0  # how often a sweep's driver retries an unreachable tracking server
_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def tracking_uri(configured: str | None) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else a local SQLite file."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    """The project's git commit, or ``unknown`` outside a checkout."""
    try:
        here = Path(__file__).resolve().parent
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast on a tracking server that does not answer or does not let us in (MLflow's own
    client retries for minutes before it gives up).

    Raises:
        UserError: an ``http(s)://`` URI whose ``/health`` does not answer within ``timeout``,
            or a server behind authentication that refuses the credentials in
            ``$MLFLOW_TRACKING_USERNAME``/``$MLFLOW_TRACKING_PASSWORD`` (or their absence).
    """
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.error
    import urllib.request

    base = uri.rstrip("/")
    try:
        urllib.request.urlopen(f"{base}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach the MLflow tracking server at {uri}: {reason}") from None
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {login}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and not (user and password):
            raise UserError(
                f"the MLflow tracking server at {uri} requires a login; set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD"
            ) from None
        if exc.code in (401, 403):
            raise UserError(
                f"the MLflow tracking server at {uri} refused the login of MLFLOW_TRACKING_USERNAME="
                f"{user!r} (HTTP {exc.code}); check the user name and password"
            ) from None
    except (urllib.error.URLError, OSError):
        pass  # /health answered; let the client report anything else in context


class SweepTracker:
    """The MLflow side of one sweep: a parent run and a child run per trial.

    Not thread-safe: call it from the driver's thread (Tune callbacks run there).

    Args:
        uri: tracking URI.
        experiment: experiment name (created if missing).
        sweep: the sweep's name; a parent run with this name tag is continued on resume.
        resume: the sweep will be resumed, so its parent run must exist.

    Nothing is written until :meth:`open`, so a sweep refused before it starts leaves no run.

    Raises:
        UserError: the tracking store cannot be reached, or ``resume`` without a parent run.
    """

    def __init__(self, uri: str, experiment: str, sweep: str, resume: bool = False):
        self.uri = uri
        # MLflow's client retries a dead server for minutes by default, which would stall Tune's
        # loop; fail fast instead and let flush() retry the queued records.
        for key, value in _HTTP_RETRIES.items():
            os.environ.setdefault(key, value)
        check_reachable(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # never a stale global registry
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found is not None else self.client.create_experiment(experiment)
            )
            existing = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'"
            )
        except MlflowException as exc:
            raise UserError(f"cannot use the MLflow tracking store {uri}: {exc.message}") from None
        except Exception as exc:  # connection errors surface as many types
            raise UserError(f"cannot reach the MLflow tracking store {uri}: {exc}") from None
        self._parents = [r.info.run_id for r in existing if PARENT_TAG not in r.data.tags]
        self.children: dict[str, str] = {
            r.data.tags[TRIAL_TAG]: r.info.run_id for r in existing if TRIAL_TAG in r.data.tags
        }
        self.sweep = sweep
        self.experiment = experiment
        self.parent_id = ""
        self._pending: deque[tuple[str, Callable[[], Any]]] = deque()
        self._started: set[str] = set()
        self._unsure: set[str] = set()
        self._down_since: float | None = None
        self._tried = 0.0
        if resume and not self._parents:
            raise UserError(f"no MLflow parent run for sweep {sweep!r} in experiment {experiment!r}")

    def open(self, resume: bool) -> str:
        """Start the sweep's parent run, or continue it with ``resume``; returns its id."""
        if resume:
            self.parent_id = self._parents[0]
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=self.sweep, tags={SWEEP_TAG: self.sweep}
            )
            self.parent_id = run.info.run_id
        return self.parent_id

    # --- parent run -------------------------------------------------------------------------

    def log_sweep(self, params: dict[str, Any], config_yaml: str) -> None:
        """Search space, searcher and scheduler settings, and the resolved config as an artifact."""
        for key, value in params.items():
            self.client.log_param(self.parent_id, key, str(value)[:6000])
        self.client.log_text(self.parent_id, config_yaml, "config.yaml")
        self.client.set_tag(self.parent_id, "metasweep.git_commit", git_commit())

    def log_best(self, trial_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """The best trial's hyperparameters and metrics on the parent run."""
        self.client.set_tag(self.parent_id, "metasweep.best_trial", trial_id)
        for key, value in params.items():
            self.client.log_param(self.parent_id, f"best.{key}", value)
        self._log_metrics(self.parent_id, metrics, step=0)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Attach a file (plot, HTML) to the parent run."""
        self.client.log_artifact(self.parent_id, str(path), folder)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the parent run (``FINISHED``, ``FAILED`` or ``KILLED``), with the error if any."""
        if error:
            self.client.set_tag(self.parent_id, "metasweep.error", error[:5000])
        self.client.set_terminated(self.parent_id, status=status)

    # --- child runs -------------------------------------------------------------------------

    def start_trial(self, trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        """The child run of ``trial_id``: created once, continued when the trial is retried."""

        def start() -> None:
            if trial_id in self.children:
                self.client.update_run(self.children[trial_id], status="RUNNING")
                return
            if trial_id in self._unsure:  # an earlier attempt may have created it before failing
                query = f"tags.`{SWEEP_TAG}` = '{self.sweep}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
                found = self.client.search_runs([self.experiment_id], filter_string=query)
                if found:
                    self.children[trial_id] = found[0].info.run_id
                    return
            self._unsure.add(trial_id)
            run = self.client.create_run(
                self.experiment_id,
                run_name=trial_id,
                tags={PARENT_TAG: self.parent_id, SWEEP_TAG: self.sweep, TRIAL_TAG: trial_id, **tags},
            )
            self.children[trial_id] = run.info.run_id
            self._unsure.discard(trial_id)

        def log_params() -> None:
            batch = [Param(key, str(value)[:6000]) for key, value in params.items()]
            self.client.log_batch(self.children[trial_id], params=batch)

        self._send(trial_id, start)
        if trial_id not in self._started:
            self._started.add(trial_id)
            self._send(trial_id, log_params)

    def log_trial_metrics(
        self, trial_id: str, metrics: dict[str, float], step: int, timestamp: float | None = None
    ) -> None:
        """Metrics named ``split/name`` at meta-iteration ``step``, sent when the server takes them.

        Args:
            timestamp: when the trial measured them (seconds since the epoch; default now).
        """
        batch = _metrics(metrics, step, timestamp)
        if batch:
            self._send(trial_id, lambda: self.client.log_batch(self.children[trial_id], metrics=batch))

    def tag_trial(self, trial_id: str, tags: dict[str, str]) -> None:
        """Set tags on a trial's child run."""
        batch = [RunTag(key, value) for key, value in tags.items()]
        self._send(trial_id, lambda: self.client.log_batch(self.children[trial_id], tags=batch))

    def end_trial(self, trial_id: str, status: str) -> None:
        """End a child run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._send(trial_id, lambda: self.client.set_terminated(self.children[trial_id], status=status))

    # --- riding out a tracking-server outage ------------------------------------------------

    def _send(self, trial_id: str, record: Callable[[], Any]) -> None:
        self._pending.append((trial_id, record))
        self.flush()

    @property
    def pending(self) -> int:
        """Trial records waiting for the tracking server."""
        return len(self._pending)

    def flush(self, wait: bool = False) -> bool:
        """Send queued trial records, in order; returns whether all went through.

        While the server is unreachable, records stay queued (in memory, on the driver) and are
        retried at most every ``RETRY_S`` seconds, so Tune's loop and the trials keep going.
        """
        if self._down_since is not None and not wait and time.monotonic() - self._tried < RETRY_S:
            return False
        while self._pending:
            trial_id, record = self._pending[0]
            self._tried = time.monotonic()
            try:
                record()
            except Exception as exc:
                if not _transient(exc):
                    log.warning("MLflow refused a record of trial %s; dropped it: %s", trial_id, exc)
                    self._pending.popleft()
                    continue
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning(
                        "MLflow tracking server %s unreachable (%s); keeping trial records until it is back",
                        self.uri,
                        str(exc)[:200],
                    )
                return False
            self._pending.popleft()
        if self._down_since is not None:
            log.warning(
                "MLflow tracking server %s is back after %.0f s; buffered trial records sent",
                self.uri,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return True

    def drain(self, timeout: float = 600.0) -> None:
        """Wait until every queued trial record reached the server.

        Raises:
            UserError: the server stayed unreachable for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.flush(wait=True):
            if time.monotonic() > deadline:
                raise UserError(
                    f"the MLflow tracking server {self.uri} has been unreachable for {timeout:.0f} s; "
                    f"{self.pending} trial records could not be logged"
                )
            time.sleep(RETRY_S)

    def _log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        batch = _metrics(metrics, step)
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def ui_hint(self) -> str:
        """How to open this sweep in the MLflow UI."""
        return f"mlflow ui --backend-store-uri {self.uri}  (then open http://127.0.0.1:5000)"


def _metrics(metrics: dict[str, float], step: int, timestamp: float | None = None) -> list[Metric]:
    """The ``split/name`` entries of a Tune result as MLflow metrics at ``step``."""
    now = int((time.time() if timestamp is None else timestamp) * 1000)
    return [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if "/" in key and isinstance(value, int | float) and math.isfinite(value)
    ]


# Error codes with which MLflow answers a request that cannot succeed whatever the wait.
_PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "BAD_REQUEST",
}


def _transient(exc: Exception) -> bool:
    """Whether a failed MLflow request may succeed later (server down, restarting, overloaded)."""
    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT
    return True


# --------------------------------------------------------------------------------------------
# Model registry
# --------------------------------------------------------------------------------------------

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Registration:
    """Where a sweep's best model went in the registry, and why."""

    name: str
    version: str
    alias: str
    reason: str


def log_and_register(
    tracker: SweepTracker,
    *,
    name: str,
    weights: dict[str, Any],
    spec: dict[str, Any],
    input_example: dict[str, np.ndarray],
    metric: str,
    value: float,
    mode: str,
    fingerprint: str,
    protocol: str,
) -> Registration:
    """Log the best model as a pyfunc on the parent run, register it, and move the aliases.

    ``champion`` moves to the new version only if its meta-test ``metric`` beats the current
    champion's on the same dataset fingerprint and protocol; otherwise the version gets
    ``challenger``.

    Args:
        tracker: the sweep's tracker (its parent run receives the model).
        name: registered model name.
        weights: the learner's ``state_dict``.
        spec: JSON-serialisable description (config, task kind, image shape, preprocessing).
        input_example: a real support/query example for the signature.
        metric, value, mode: the meta-test metric, its value, ``max`` or ``min``.
        fingerprint, protocol: what makes two models comparable.
    """
    import mlflow

    from orchestrator import pyfunc_model

    with tempfile.TemporaryDirectory() as tmp:
        weights_path = Path(tmp) / "weights.pt"
        spec_path = Path(tmp) / "spec.json"
        torch.save(weights, weights_path)
        spec_path.write_text(json.dumps(spec, sort_keys=True))
        root = Path(pyfunc_model.__file__).resolve().parents[1]
        use_store(tracker.uri)
        with mlflow.start_run(run_id=tracker.parent_id):
            predictions = pyfunc_model.predict_with(_rebuild(spec, weights), spec, input_example)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(pyfunc_model.__file__)),
                artifacts={pyfunc_model.WEIGHTS: str(weights_path), pyfunc_model.SPEC: str(spec_path)},
                code_paths=[str(root / "algorithms"), str(root / "orchestrator")],
                signature=_signature(input_example, predictions, spec["task_kind"]),
                input_example=input_example,
                pip_requirements=_requirements(),
            )
    version = mlflow.register_model(info.model_uri, name, tags={
        "metasweep.metric": metric, "metasweep.test_value": repr(value),
        "metasweep.fingerprint": fingerprint, "metasweep.protocol": protocol,
        "metasweep.sweep": tracker.sweep,
    }).version  # fmt: skip
    client = tracker.client
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        alias, reason = CHAMPION, "first registered version"
    else:
        tags = champion.tags
        if tags.get("metasweep.fingerprint") != fingerprint or tags.get("metasweep.protocol") != protocol:
            alias, reason = (
                CHALLENGER,
                f"champion v{champion.version} was scored on another dataset or protocol",
            )
        else:
            old = float(tags.get("metasweep.test_value", "nan"))
            better = value > old if mode == "max" else value < old
            alias = CHAMPION if better or math.isnan(old) else CHALLENGER
            verdict = "beats" if alias == CHAMPION else "does not beat"
            reason = f"{metric} {value:.4f} {verdict} champion v{champion.version}'s {old:.4f}"
    client.set_registered_model_alias(name, alias, str(version))
    return Registration(name, str(version), alias, reason)


def _signature(example: dict[str, np.ndarray], predictions: np.ndarray, task_kind: str) -> Any:
    """Inputs of any count and image size (the model resizes), in the example's dtypes; for
    classification, ``support_y`` and the predictions are labels of any integer or string dtype.

    A TensorSpec holds one dtype and MLflow casts nothing, so an ``int64`` ``support_y`` would
    refuse string labels (and ``int32`` ones). Labels are declared ``object`` ``(-1,)`` instead,
    the one tensor spec MLflow's enforcement passes through unchanged (an int64, ``<U`` or object
    array alike, and JSON lists when served); ``pyfunc_model.encode_labels`` then checks them.
    Images are declared the same way, because one tensor spec has one rank and a user may hand a
    grayscale model RGB images or the reverse; ``pyfunc_model.preprocess_images`` checks them.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    classification = task_kind == "classification"

    def spec(name: str, array: np.ndarray) -> TensorSpec:
        if classification:
            # Labels of any kind, and images of either rank, (n, H, W) or (n, H, W, C), as PIL
            # gives them whatever the model's channel count: checked by the model itself.
            return TensorSpec(np.dtype(object), (-1,), name)
        return TensorSpec(array.dtype, (-1, *([-1] * (array.ndim - 1))), name)

    inputs = Schema([spec(name, np.asarray(array)) for name, array in example.items()])
    if classification:
        output = TensorSpec(np.dtype(object), (-1,))
    else:
        output = TensorSpec(predictions.dtype, (-1, *predictions.shape[1:]))
    return ModelSignature(inputs=inputs, outputs=Schema([output]))


def _rebuild(spec: dict[str, Any], weights: dict[str, Any]) -> torch.nn.Module:
    from orchestrator.pyfunc_model import build_from_spec

    learner = build_from_spec(spec)
    learner.load_state_dict(weights)
    return learner


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}" for p in ("torch", "numpy", "pydantic", "pyyaml", "pillow", "rich", "mlflow")
    ]


def use_store(uri: str) -> None:
    """Point MLflow's fluent API (runs, ``register_model``, ``models:/`` URIs) at ``uri`` for
    both tracking and registry: those calls read the process-wide URIs, not arguments, and a
    stale ``MLFLOW_REGISTRY_URI`` must not send a model elsewhere."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


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
            for found in client.search_model_versions(f"name = '{model}'"):
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


def pull_model(uri: str, reference: str, out: Path) -> Path:
    """Download a registered model into ``out``: a directory ``mlflow.pyfunc.load_model`` loads
    with no tracking server.

    Raises:
        UserError: unknown model, alias or version; ``out`` exists and is not empty.
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


def load_model(uri: str, reference: str) -> Any:
    """A pyfunc model from a pulled directory or a registry reference.

    Raises:
        UserError: nothing at that path or reference.
    """
    import mlflow

    path = Path(reference)
    target = str(path) if path.is_dir() else model_uri(reference)
    if not path.is_dir():
        check_reachable(uri)
        use_store(uri)
    try:
        return mlflow.pyfunc.load_model(target)
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load model {reference!r}: {getattr(exc, 'message', exc)}") from None
