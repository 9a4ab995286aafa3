"""The sweep's MLflow runs: a parent run per sweep and a child run per trial.

Everything is logged from the sweep's driver, never from Ray workers: on a cluster the workers may
not reach the tracking server, while the driver already receives every trial's metrics from Tune.
A trial that is retried after a failure continues its own child run (found again by its trial id
tag), so the UI never shows duplicates. Trial records go through an :class:`Outbox`, which keeps
them, in order, while the tracking server is unreachable.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.redact import redact
from metasweep.orchestrator.tracking.store import KIND_TAG, MODEL_TRAINING, check_reachable, filter_value

log = logging.getLogger(__name__)
T = TypeVar("T")

SWEEP_TAG = "metasweep.sweep"
TRIAL_TAG = "metasweep.trial_id"
PARENT_TAG = "mlflow.parentRunId"
NODES_TAG = "metasweep.nodes"  # the Ray nodes a trial ran on, in order
LOST = "lost with its driver: started after Tune's last snapshot, so not resumed"
SEARCH_PAGE = 1000  # the most runs MLflow's search_runs returns at once
RETRY_S = 5.0  # how often a sweep's driver retries an unreachable tracking server
WAIT_S = 600.0  # how long the sweep's own writes wait for an unavailable tracking store
_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


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


def transient(exc: Exception) -> bool:
    """Whether a failed MLflow request may succeed later (server down, restarting, overloaded)."""
    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT
    return True


def param_value(value: Any) -> str:
    """A value as an MLflow parameter: text, with any login in a URI masked, at most 6,000
    characters (MLflow's limit)."""
    return redact(str(value))[:6000]


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list[Any]:
    """Every run of ``experiment_id`` that ``query`` matches: ``search_runs`` answers at most
    1,000 runs a page, newest first, so a sweep of 1,000 trials or more needs every page."""
    runs: list[Any] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=query, max_results=SEARCH_PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class Outbox:
    """Records for the tracking server, sent in order, kept while the server is unreachable.

    A record is a function that makes one request. :meth:`send` queues it and sends what it can;
    while the server is down, records stay queued (in memory, on the driver) and sending is tried
    again at most every ``retry_s`` seconds, so the caller (Tune's loop) keeps going. A record
    that fails permanently (:func:`transient` is false) is logged and dropped; it would fail again.

    Not thread-safe: one owner, the sweep's driver thread.

    Args:
        uri: the tracking URI, for messages.
        retry_s: the shortest time between two attempts while the server is down.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, uri: str, retry_s: float = RETRY_S, clock: Callable[[], float] = time.monotonic):
        self.uri = uri
        self.retry_s = retry_s
        self._clock = clock
        self._queue: deque[tuple[str, Callable[[], Any]]] = deque()
        self._down_since: float | None = None
        self._tried = 0.0

    @property
    def pending(self) -> int:
        """Records waiting for the tracking server."""
        return len(self._queue)

    @property
    def down(self) -> bool:
        """Whether the last attempt found the server unreachable."""
        return self._down_since is not None

    def send(self, about: str, record: Callable[[], Any]) -> None:
        """Queue ``record`` (``about`` names its trial in messages) and send what can be sent."""
        self._queue.append((about, record))
        self.flush()

    def flush(self, wait: bool = False) -> bool:
        """Send queued records, in order; returns whether all went through.

        Args:
            wait: try now even if the last failed attempt is less than ``retry_s`` ago.
        """
        if self.down and not wait and self._clock() - self._tried < self.retry_s:
            return False
        while self._queue:
            about, record = self._queue[0]
            self._tried = self._clock()
            try:
                record()
            except Exception as exc:
                if not transient(exc):
                    log.warning("MLflow refused a record of trial %s; dropped it: %s", about, exc)
                    self._queue.popleft()
                    continue
                if self._down_since is None:
                    self._down_since = self._clock()
                    log.warning(
                        "MLflow tracking server %s unreachable (%s); keeping trial records until it is back",
                        self.uri,
                        str(exc)[:200],
                    )
                return False
            self._queue.popleft()
        if self._down_since is not None:
            log.warning(
                "MLflow tracking server %s is back after %.0f s; buffered trial records sent",
                self.uri,
                self._clock() - self._down_since,
            )
            self._down_since = None
        return True

    def drain(self, timeout: float = 600.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Wait until every queued record reached the server.

        Raises:
            UserError: the server stayed unreachable for ``timeout`` seconds.
        """
        deadline = self._clock() + timeout
        while not self.flush(wait=True):
            if self._clock() > deadline:
                raise UserError(
                    f"the MLflow tracking server {self.uri} has been unreachable for {timeout:.0f} s; "
                    f"{self.pending} trial records could not be logged"
                )
            sleep(self.retry_s)


class SweepTracker:
    """The MLflow side of one sweep: a parent run and a child run per trial.

    Not thread-safe: call it from the driver's thread (Tune callbacks run there). Nothing is
    written until :meth:`open`, so a sweep refused before it starts leaves no run.

    Args:
        uri: tracking URI.
        experiment: experiment name (created if missing).
        sweep: the sweep's name; a parent run with this name tag is continued on resume.
        resume: the sweep will be resumed, so its parent run must exist.
        retry_s: how often trial records are retried while the server is unreachable.
        wait_s: how long the sweep's own writes (:meth:`write`) wait for the store.

    Raises:
        UserError: the tracking store cannot be reached, or ``resume`` without a parent run.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        sweep: str,
        resume: bool = False,
        retry_s: float = RETRY_S,
        wait_s: float = WAIT_S,
    ):
        self.uri = uri
        self.wait_s = wait_s
        # MLflow's client retries a dead server for minutes by default, which would stall Tune's
        # loop; fail fast instead and let the outbox retry the queued records.
        for key, value in _HTTP_RETRIES.items():
            os.environ.setdefault(key, value)
        check_reachable(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # never a stale global registry
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found is not None else self.client.create_experiment(experiment)
            )
            self._kindless = found is None or KIND_TAG not in found.tags
            of_sweep = f"tags.`{SWEEP_TAG}` = {filter_value(sweep)}"
            # The parent by its own query (it is named after the sweep), so the newest-first
            # pages of thousands of child runs never hide it; then every child, page by page.
            parents = search_all(
                self.client, self.experiment_id, f"{of_sweep} and attributes.run_name = {filter_value(sweep)}"
            )
            existing = search_all(self.client, self.experiment_id, f"{of_sweep} and tags.`{TRIAL_TAG}` != ''")
        except MlflowException as exc:
            raise UserError(f"cannot use the MLflow tracking store {uri}: {exc.message}") from None
        except Exception as exc:  # connection errors surface as many types
            raise UserError(f"cannot reach the MLflow tracking store {uri}: {exc}") from None
        self._parents = [r.info.run_id for r in parents if PARENT_TAG not in r.data.tags]
        self.children: dict[str, str] = {
            r.data.tags[TRIAL_TAG]: r.info.run_id for r in existing if TRIAL_TAG in r.data.tags
        }
        # Each child run's tags as the store holds them: a tag set again to its value is not sent.
        self._trial_tags: dict[str, dict[str, str]] = {
            r.data.tags[TRIAL_TAG]: dict(r.data.tags) for r in existing if TRIAL_TAG in r.data.tags
        }
        # Trials whose run an earlier driver left running: continued if Tune restores them.
        self._left_running = {
            r.data.tags[TRIAL_TAG]
            for r in existing
            if TRIAL_TAG in r.data.tags and r.info.status == "RUNNING"
        }
        # The nodes each trial ran on before this driver, so a trial the resumed driver moves
        # to another node adds to its record instead of restarting it.
        self._nodes: dict[str, list[str]] = {
            r.data.tags[TRIAL_TAG]: r.data.tags[NODES_TAG].split(",")
            for r in existing
            if TRIAL_TAG in r.data.tags and r.data.tags.get(NODES_TAG)
        }
        self.sweep = sweep
        self.experiment = experiment
        self.parent_id = ""
        self.outbox = Outbox(uri, retry_s)
        self._started: set[str] = set()
        self._unsure: set[str] = set()
        if resume and not self._parents:
            raise UserError(f"no MLflow parent run for sweep {sweep!r} in experiment {experiment!r}")

    def open(self, resume: bool) -> str:
        """Start the sweep's parent run, or continue it with ``resume``; returns its id."""
        if self._kindless:  # the UI opens it on runs and models, not on GenAI traces
            self.write(
                "the experiment's kind",
                lambda: self.client.set_experiment_tag(self.experiment_id, KIND_TAG, MODEL_TRAINING),
            )
        if resume:
            self.parent_id = self._parents[0]
            self.write("the sweep's run", lambda: self.client.update_run(self.parent_id, status="RUNNING"))
        else:
            run = self.write(
                "the sweep's run",
                lambda: self.client.create_run(
                    self.experiment_id, run_name=self.sweep, tags={SWEEP_TAG: self.sweep}
                ),
            )
            self.parent_id = run.info.run_id
        return self.parent_id

    # --- parent run -------------------------------------------------------------------------

    def planned_samples(self) -> int | None:
        """The trials the sweep planned, as its parent run records them (``None``: no parent)."""
        if not self._parents:
            return None
        run = self.write("the sweep's run", lambda: self.client.get_run(self._parents[0]))
        value = run.data.tags.get("metasweep.num_samples") or run.data.params.get("search.num_samples")
        return None if value is None else int(value)

    def log_sweep(self, params: Mapping[str, Any], config_yaml: str) -> None:
        """Search space, searcher and scheduler settings, and the resolved config as an artifact."""
        batch = [Param(key, param_value(value)) for key, value in params.items()]
        tags = [RunTag("metasweep.git_commit", git_commit())]
        self.write(
            "the sweep's settings", lambda: self.client.log_batch(self.parent_id, params=batch, tags=tags)
        )
        self.write(
            "config.yaml", lambda: self.client.log_text(self.parent_id, redact(config_yaml), "config.yaml")
        )

    def tag_sweep(self, tags: Mapping[str, str]) -> None:
        """Set tags on the sweep's parent run."""
        batch = [RunTag(key, redact(value)) for key, value in tags.items()]
        self.write("the sweep's tags", lambda: self.client.log_batch(self.parent_id, tags=batch))

    def log_best(self, trial_id: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The best trial's hyperparameters (tags ``best.<field>``) and metrics on the parent run.

        Tags, not params: MLflow never changes a param, and an extended sweep can find a new
        champion."""
        best = [RunTag(f"best.{key}", param_value(value)) for key, value in params.items()]
        tags = [RunTag("metasweep.best_trial", trial_id), *best]
        batch = metric_batch(metrics, step=0)
        self.write("the best trial", lambda: self.client.log_batch(self.parent_id, metrics=batch, tags=tags))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Attach a file (plot, HTML) to the parent run."""
        self.write(path.name, lambda: self.client.log_artifact(self.parent_id, str(path), folder))

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the parent run (``FINISHED``, ``FAILED`` or ``KILLED``), with the error if any."""
        if error:
            message = redact(error)[:5000]
            self.write("the error", lambda: self.client.set_tag(self.parent_id, "metasweep.error", message))
        self.write("the sweep's end", lambda: self.client.set_terminated(self.parent_id, status=status))

    def write(self, what: str, call: Callable[[], T]) -> T:
        """One write of the sweep's own (its parent run, its model): sent after the queued trial
        records, and retried like them while the store is unreachable or locked by another
        process (two sweeps sharing a SQLite file), for up to ``wait_s`` seconds.

        Raises:
            UserError: the store did not take it within ``wait_s``.
            MlflowException: the store refused it for good (:func:`transient` is false).
        """
        self.outbox.drain(self.wait_s)
        deadline = time.monotonic() + self.wait_s
        warned = False
        while True:
            try:
                return call()
            except Exception as exc:
                if not transient(exc):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(
                        f"the MLflow tracking store {self.uri} did not take {what} in {self.wait_s:.0f} s: "
                        f"{str(exc)[:300]}"
                    ) from None
                if not warned:
                    log.warning(
                        "MLflow tracking store %s is unavailable (%s); retrying %s",
                        self.uri,
                        str(exc)[:200],
                        what,
                    )
                    warned = True
                time.sleep(max(self.outbox.retry_s, 0.2))

    # --- child runs, through the outbox -----------------------------------------------------

    def start_trial(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """The child run of ``trial_id``: created once, continued when the trial is retried."""

        def start() -> None:
            if trial_id in self.children:
                self.client.update_run(self.children[trial_id], status="RUNNING")
                return
            if trial_id in self._unsure:  # an earlier attempt may have created it before failing
                query = (
                    f"tags.`{SWEEP_TAG}` = {filter_value(self.sweep)} "
                    f"and tags.`{TRIAL_TAG}` = {filter_value(trial_id)}"
                )
                found = search_all(self.client, self.experiment_id, query)
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
            batch = [Param(key, param_value(value)) for key, value in params.items()]
            self.client.log_batch(self.children[trial_id], params=batch)

        self.outbox.send(trial_id, start)
        if trial_id not in self._started:
            self._started.add(trial_id)
            self.outbox.send(trial_id, log_params)

    def end_lost_trials(self, known: set[str]) -> list[str]:
        """End as ``KILLED`` the child runs an earlier driver left running whose trials are not in
        ``known`` (every trial Tune ran, once it has ended them all): trials that driver started
        after Tune's last snapshot of the sweep, which no resumed driver runs. Returns their ids."""
        lost = sorted(self._left_running - known - self._started)
        for trial_id in lost:
            self.tag_trial(trial_id, {"metasweep.status": LOST})
            self.end_trial(trial_id, "KILLED")
        return lost

    def trial_nodes(self, trial_id: str) -> list[str]:
        """The Ray nodes ``trial_id`` ran on under earlier drivers of the sweep, in order."""
        return list(self._nodes.get(trial_id, []))

    def log_trial_metrics(
        self, trial_id: str, metrics: Mapping[str, Any], step: int, timestamp: float | None = None
    ) -> None:
        """Metrics named ``split/name`` at meta-iteration ``step``, sent when the server takes them.

        Args:
            timestamp: when the trial measured them (seconds since the epoch; default now).
        """
        batch = metric_batch(metrics, step, timestamp)
        if batch:
            self.outbox.send(trial_id, lambda: self.client.log_batch(self.children[trial_id], metrics=batch))

    def tag_trial(self, trial_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on a trial's child run; those it holds with the same value already are not
        sent again (a sweep's end tags every trial, and an extended sweep's trials are mostly
        tagged as they were)."""
        held = self._trial_tags.setdefault(trial_id, {})
        wanted = {key: redact(value) for key, value in tags.items()}
        batch = [RunTag(key, value) for key, value in wanted.items() if held.get(key) != value]
        if not batch:
            return
        held.update((tag.key, tag.value) for tag in batch)
        self.outbox.send(trial_id, lambda: self.client.log_batch(self.children[trial_id], tags=batch))

    def end_trial(self, trial_id: str, status: str) -> None:
        """End a child run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.outbox.send(trial_id, lambda: self.client.set_terminated(self.children[trial_id], status=status))


def metric_batch(metrics: Mapping[str, Any], step: int, timestamp: float | None = None) -> list[Metric]:
    """The finite ``split/name`` entries of a result as MLflow metrics at ``step``."""
    now = int((time.time() if timestamp is None else timestamp) * 1000)
    return [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if "/" in key and isinstance(value, int | float) and math.isfinite(value)
    ]
