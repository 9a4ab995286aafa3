"""The middle of tracking, fast, against a real SQLite MLflow store: the outage outbox, the Tune
callback's duplicate-step suppression and trial-status mapping, and the registry's champion policy.

An outage is the store going away for real: the SQLite file is moved aside, so MLflow's requests
fail as they do when a server is down, and moved back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from metasweep.orchestrator.config import DataConfig, EvalConfig
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.sweep.callback import RUN_STATUS, TrackingCallback, outcome, tracking_to
from metasweep.orchestrator.sweep.trial import DIVERGED, EVALUATED, ITERATION, NODE
from metasweep.orchestrator.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    Candidate,
    choose_alias,
    same_protocol,
    scoring_protocol,
)
from metasweep.orchestrator.tracking.runs import LOST, Outbox, SweepTracker


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mlflow.db"


@pytest.fixture
def tracker(store: Path) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{store}", "experiment", "sweep", retry_s=0.0)
    tracker.open(resume=False)
    return tracker


@pytest.fixture
def outage(store: Path) -> Callable[[], Iterator[None]]:
    """``with outage(): ...``: the store's file is away for the duration."""
    from contextlib import contextmanager

    @contextmanager
    def away() -> Iterator[None]:
        os.rename(store, store.with_suffix(".away"))
        try:
            yield
        finally:
            os.replace(store.with_suffix(".away"), store)

    return away


def history(tracker: SweepTracker, trial_id: str, key: str = "val/mse") -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=tracker.uri)
    return [(m.step, m.value) for m in client.get_metric_history(tracker.children[trial_id], key)]


# ---- the outbox --------------------------------------------------------------------------------


def test_records_wait_out_an_outage_in_order_and_keep_their_timestamps(tracker: SweepTracker, outage) -> None:
    tracker.start_trial("t1", {"train.inner_lr": 0.1}, {"metasweep.status": "running"})
    tracker.log_trial_metrics("t1", {"val/mse": 3.0}, step=10, timestamp=1_000.0)
    with outage():
        tracker.log_trial_metrics("t1", {"val/mse": 2.0, "iteration": 20}, step=20, timestamp=2_000.0)
        tracker.log_trial_metrics("t1", {"val/mse": 1.0}, step=30, timestamp=3_000.0)
        tracker.tag_trial("t1", {"metasweep.status": "finished"})
        assert tracker.outbox.down and tracker.outbox.pending == 3
    tracker.outbox.drain(timeout=5)
    assert tracker.outbox.pending == 0 and not tracker.outbox.down
    assert history(tracker, "t1") == [(10, 3.0), (20, 2.0), (30, 1.0)]
    client = MlflowClient(tracking_uri=tracker.uri)
    metrics = client.get_metric_history(tracker.children["t1"], "val/mse")
    assert [m.timestamp for m in metrics] == [1_000_000, 2_000_000, 3_000_000]  # measured, not sent
    run = client.get_run(tracker.children["t1"])
    assert run.data.tags["metasweep.status"] == "finished"
    assert "iteration" not in run.data.metrics  # only split/name keys are metrics


def test_a_trial_that_starts_during_an_outage_gets_its_run_afterwards(tracker: SweepTracker, outage) -> None:
    with outage():
        tracker.start_trial("t2", {"seed": 1}, {})
        tracker.log_trial_metrics("t2", {"val/mse": 5.0}, step=1)
        assert "t2" not in tracker.children
    assert tracker.outbox.flush(wait=True)
    assert history(tracker, "t2") == [(1, 5.0)]
    assert MlflowClient(tracking_uri=tracker.uri).get_run(tracker.children["t2"]).data.params == {"seed": "1"}


def test_retries_are_paced_while_the_store_is_down() -> None:
    now = [0.0]
    attempts: list[float] = []

    def down() -> None:
        attempts.append(now[0])
        raise MlflowException("connection refused")  # no error code: transient

    outbox = Outbox("http://nowhere", retry_s=5.0, clock=lambda: now[0])
    outbox.send("t", down)
    for t in (1.0, 4.9, 5.1, 6.0, 10.2):
        now[0] = t
        outbox.flush()
    assert attempts == [0.0, 5.1, 10.2]
    outbox.flush(wait=True)  # an explicit wait tries at once
    assert attempts[-1] == 10.2 and len(attempts) == 4


def test_a_record_the_store_refuses_for_good_is_dropped_and_the_next_ones_go(tracker: SweepTracker) -> None:
    tracker.start_trial("t3", {}, {})
    client = tracker.client
    tracker.outbox.send("t3", lambda: client.log_param("no-such-run", "x", "1"))
    tracker.log_trial_metrics("t3", {"val/mse": 0.5}, step=1)
    assert tracker.outbox.pending == 0
    assert history(tracker, "t3") == [(1, 0.5)]


def test_drain_gives_up_after_its_timeout_with_the_count_it_could_not_send() -> None:
    now = [0.0]

    def down() -> None:
        raise ConnectionError("refused")

    outbox = Outbox("http://nowhere", retry_s=1.0, clock=lambda: now[0])
    outbox.send("t", down)
    outbox.send("t", down)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(UserError, match=r"unreachable for 3 s; 2 trial records could not be logged"):
        outbox.drain(timeout=3.0, sleep=sleep)


def test_a_resumed_tracker_continues_the_sweep_and_its_trials(tracker: SweepTracker, store: Path) -> None:
    tracker.start_trial("t4", {"x": 1}, {})
    tracker.log_trial_metrics("t4", {"val/mse": 1.0}, step=1)
    resumed = SweepTracker(f"sqlite:///{store}", "experiment", "sweep", resume=True, retry_s=0.0)
    assert resumed.open(resume=True) == tracker.parent_id
    resumed.start_trial("t4", {"x": 1}, {})
    resumed.log_trial_metrics("t4", {"val/mse": 0.5}, step=2)
    assert resumed.children["t4"] == tracker.children["t4"]
    assert history(resumed, "t4") == [(1, 1.0), (2, 0.5)]
    with pytest.raises(UserError, match="no MLflow parent run for sweep 'other'"):
        SweepTracker(f"sqlite:///{store}", "experiment", "other", resume=True)


def test_an_extended_sweep_that_finds_a_new_champion_records_it(tracker: SweepTracker, store: Path) -> None:
    tracker.log_best("t1", {"train.inner_lr": 0.1}, {"val/mse": 0.5})
    extended = SweepTracker(f"sqlite:///{store}", "experiment", "sweep", resume=True, retry_s=0.0)
    extended.open(resume=True)
    extended.log_best("t7", {"train.inner_lr": 0.02}, {"val/mse": 0.25})
    run = MlflowClient(extended.uri).get_run(extended.parent_id)
    assert run.data.tags["metasweep.best_trial"] == "t7" and run.data.tags["best.train.inner_lr"] == "0.02"
    assert run.data.metrics["val/mse"] == 0.25


def test_a_tag_a_trial_holds_already_is_not_sent_again(tracker: SweepTracker, store: Path) -> None:
    for trial_id in ("t1", "t2"):
        tracker.start_trial(trial_id, {"x": 1}, {})
        tracker.tag_trial(trial_id, {"metasweep.pareto_front": "true"})
    resumed = SweepTracker(f"sqlite:///{store}", "experiment", "sweep", resume=True, retry_s=0.0)
    resumed.open(resume=True)
    sent: list[tuple[str, list[str]]] = []
    log_batch = resumed.client.log_batch

    def counted(run_id: str, **kwargs: Any) -> None:
        sent.append((run_id, [tag.key for tag in kwargs.get("tags", ())]))
        log_batch(run_id, **kwargs)

    resumed.client.log_batch = counted  # type: ignore[method-assign]
    resumed.tag_trial("t1", {"metasweep.pareto_front": "true"})  # as the store holds it
    resumed.tag_trial("t2", {"metasweep.pareto_front": "false", "metasweep.optuna_trial": "1"})
    resumed.tag_trial("t2", {"metasweep.pareto_front": "false"})
    resumed.outbox.flush(wait=True)
    assert sent == [(resumed.children["t2"], ["metasweep.pareto_front", "metasweep.optuna_trial"])]
    tags = MlflowClient(resumed.uri).get_run(resumed.children["t2"]).data.tags
    assert tags["metasweep.pareto_front"] == "false" and tags["metasweep.optuna_trial"] == "1"


def test_runs_an_earlier_driver_left_running_that_tune_no_longer_knows_end_as_lost(
    tracker: SweepTracker, store: Path
) -> None:
    for trial_id in ("t7", "t8", "t9"):
        tracker.start_trial(trial_id, {"x": 1}, {})
    tracker.end_trial("t9", "FINISHED")
    tracker.outbox.drain(10)
    resumed = SweepTracker(f"sqlite:///{store}", "experiment", "sweep", resume=True, retry_s=0.0)
    resumed.open(resume=True)
    resumed.start_trial("t10", {"x": 2}, {})  # new under this driver
    assert resumed.end_lost_trials(known={"t8", "t9", "t10"}) == ["t7"]  # Tune restored t8
    resumed.outbox.drain(10)
    run = MlflowClient(tracking_uri=resumed.uri).get_run(resumed.children["t7"])
    assert run.info.status == "KILLED" and run.data.tags["metasweep.status"] == LOST
    assert MlflowClient(tracking_uri=resumed.uri).get_run(resumed.children["t8"]).info.status == "RUNNING"


# ---- the Tune callback: duplicate steps and trial status -------------------------------------


@dataclass
class Trial:
    """What the callback reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)


def report(callback: TrackingCallback, trial: Trial, step: int, value: float, node: str = "n1") -> None:
    result = {ITERATION: step, "val/mse": value, NODE: node, "node_ip": "127.0.0.1", EVALUATED: step}
    trial.last_result = result
    callback.on_trial_result(0, [], trial, result)


def test_a_trial_restarted_from_an_older_checkpoint_logs_each_step_once(tracker: SweepTracker) -> None:
    callback = TrackingCallback(iterations=60, seed=0)
    trial = Trial("t5", {"train.inner_lr": 0.1})
    with tracking_to(tracker):
        callback.on_trial_start(0, [], trial)
        report(callback, trial, 20, 3.0)
        # A progress report between evaluations repeats the last score: not a measurement.
        callback.on_trial_result(0, [], trial, {ITERATION: 31, "val/mse": 3.0, "train/loss": 2.5, NODE: "n1"})
        report(callback, trial, 40, 2.0)
        callback.on_trial_recover(0, [], trial)
        callback.on_trial_restore(0, [], trial)
        report(callback, trial, 20, 9.0, node="n2")  # the restart repeats step 20: logged already
        report(callback, trial, 40, 9.0, node="n2")
        report(callback, trial, 60, 1.0, node="n2")
        callback.on_trial_complete(0, [], trial)
    assert history(tracker, "t5") == [(20, 3.0), (40, 2.0), (60, 1.0)]
    assert [step for step, _ in history(tracker, "t5", "train/loss")] == []
    run = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.children["t5"])
    assert run.info.status == "FINISHED" and run.data.tags["metasweep.status"] == "finished"
    assert run.data.tags["metasweep.nodes"] == "n1,n2"  # it moved to another node


def test_a_trial_moved_by_a_resumed_driver_keeps_the_nodes_it_ran_on_before(
    tracker: SweepTracker, store: Path
) -> None:
    """The driver that started a trial on n1 was stopped; the resumed driver (a new tracker and
    a new callback, which has seen none of it) runs the trial on, on n2."""
    trial = Trial("t6", {"train.inner_lr": 0.1})
    with tracking_to(tracker):
        TrackingCallback(iterations=60, seed=0).on_trial_start(0, [], trial)
        report(TrackingCallback(iterations=60, seed=0), trial, 20, 3.0, node="n1")
    tracker.outbox.drain(10)
    resumed = SweepTracker(f"sqlite:///{store}", "experiment", "sweep", resume=True, retry_s=0.0)
    resumed.open(resume=True)
    callback = TrackingCallback(iterations=60, seed=0)
    with tracking_to(resumed):
        callback.on_trial_restore(0, [], trial)
        report(callback, trial, 40, 2.0, node="n2")
        report(callback, trial, 60, 1.0, node="n2")
    resumed.outbox.drain(10)
    run = MlflowClient(tracking_uri=resumed.uri).get_run(resumed.children["t6"])
    assert run.data.tags["metasweep.nodes"] == "n1,n2"
    assert run.data.tags["metasweep.node_id"] == "n2"


@pytest.mark.parametrize(
    ("last", "status", "tag"),
    [
        ({ITERATION: 60}, "FINISHED", "finished"),
        ({ITERATION: 20}, "KILLED", "stopped early"),
        ({ITERATION: 60, DIVERGED: "meta-training diverged at iteration 7"}, "FAILED", "diverged"),
    ],
)
def test_a_trial_ends_with_the_status_its_last_result_gives(
    tracker: SweepTracker, last: dict[str, Any], status: str, tag: str
) -> None:
    callback = TrackingCallback(iterations=60, seed=0)
    trial = Trial("t6")
    with tracking_to(tracker):
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, last)
        # A callback restored from Tune's pickled state may not have seen the last result; the
        # trial's own record of it decides.
        trial.last_result = last
        TrackingCallback(iterations=60, seed=0).on_trial_complete(0, [], trial)
    run = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.children["t6"])
    assert (run.info.status, run.data.tags["metasweep.status"]) == (status, tag)
    if DIVERGED in last:
        assert run.data.tags["metasweep.error"].startswith("meta-training diverged")
    assert RUN_STATUS[outcome(last, 60)] == status


def test_an_errored_trial_is_failed(tracker: SweepTracker) -> None:
    callback = TrackingCallback(iterations=60, seed=3)
    trial = Trial("t7", {})
    with tracking_to(tracker):
        callback.on_trial_start(0, [], trial)
        callback.on_trial_error(0, [], trial)
    run = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.children["t7"])
    assert run.info.status == "FAILED" and run.data.tags["metasweep.seed"] == "3"


def test_the_callback_needs_a_search_to_track() -> None:
    with pytest.raises(RuntimeError, match="outside tracking_to"):
        TrackingCallback(iterations=1, seed=0).on_trial_start(0, [], Trial("t"))


# ---- the registry's champion policy ------------------------------------------------------------


def champion(value: float, fingerprint: str = "f", protocol: str = "p") -> dict[str, str]:
    return {
        "metasweep.test_value": repr(value),
        "metasweep.fingerprint": fingerprint,
        "metasweep.protocol": protocol,
    }


@pytest.mark.parametrize(
    ("mode", "value", "current", "alias", "reason"),
    [
        ("max", 0.9, None, CHAMPION, "first registered version"),
        ("max", 0.9, champion(0.8), CHAMPION, "test/x 0.9000 beats champion v3's 0.8000"),
        ("max", 0.7, champion(0.8), CHALLENGER, "does not beat champion v3's 0.8000"),
        ("min", 0.7, champion(0.8), CHAMPION, "beats"),
        ("min", 0.9, champion(0.8), CHALLENGER, "does not beat"),
        ("max", 0.9, champion(0.8, fingerprint="other"), CHALLENGER, "another dataset or protocol"),
        ("max", 0.9, champion(0.8, protocol="ways=20"), CHALLENGER, "another dataset or protocol"),
        ("max", 0.1, champion(float("nan")), CHAMPION, "beats"),
    ],
)
def test_champion_moves_only_to_a_better_model_on_the_same_data_and_protocol(
    mode: str, value: float, current: dict[str, str] | None, alias: str, reason: str
) -> None:
    candidate = Candidate("test/x", value, mode, "f", "p")
    chosen, why = choose_alias(candidate, current, "3")
    assert chosen == alias and reason in why


SINE = Problem("regression", (1,), None, False, "sinusoid", "sinusoid")
IMAGES = Problem("classification", (1, 28, 28), 5, True, "o.parquet", "f")


def test_a_protocol_names_only_what_applies_to_its_task() -> None:
    data, evaluation = DataConfig(shots=5, queries=7), EvalConfig(test_tasks=30, seed=4)
    assert scoring_protocol(SINE, data, evaluation) == "shots=5 queries=7 test_tasks=30 eval_seed=4"
    assert scoring_protocol(IMAGES, data, evaluation) == (
        "ways=5 shots=5 queries=7 rotations=False test_tasks=30 eval_seed=4"
    )


def test_a_regression_champion_of_the_old_protocol_is_still_compared_on_the_rest() -> None:
    old = "ways=5 shots=5 queries=7 rotations=False test_tasks=30 eval_seed=4"
    assert same_protocol(old, "shots=5 queries=7 test_tasks=30 eval_seed=4")
    assert not same_protocol(old, "shots=10 queries=7 test_tasks=30 eval_seed=4")
    assert not same_protocol(old, "ways=20 shots=5 queries=7 rotations=False test_tasks=30 eval_seed=4")
    assert not same_protocol("shots=5 queries=7 test_tasks=30 eval_seed=4", old)
    candidate = Candidate("test/mse", 0.1, "min", "f", "shots=5 queries=7 test_tasks=30 eval_seed=4")
    assert choose_alias(candidate, champion(0.2, protocol=old), "1")[0] == CHAMPION


def test_the_experiment_opens_in_the_ui_as_model_training(tracker: SweepTracker, store: Path) -> None:
    client = MlflowClient(f"sqlite:///{store}")
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    # An experiment whose kind someone chose keeps it.
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    SweepTracker(f"sqlite:///{store}", "chosen", "other", retry_s=0.0).open(resume=False)
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_filter_values_with_quotes_search_instead_of_breaking_the_query(tracker: SweepTracker) -> None:
    from metasweep.orchestrator.tracking.registry import list_models
    from metasweep.orchestrator.tracking.store import filter_value

    assert filter_value("plain") == "'plain'"
    assert filter_value("it's") == '"it\'s"'
    with pytest.raises(UserError, match="holds both"):
        filter_value('it\'s "quoted"')
    with pytest.raises(UserError, match='no registered model "it\'s"'):
        list_models(tracker.uri, "it's")


def add_child_runs(tracker: SweepTracker, count: int) -> None:
    """``count`` child runs of the tracker's sweep, written straight into its SQLite store with
    MLflow's own ORM (as create_run would write them, at a fraction of the time)."""
    import time
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifacts = Path(tracker.uri.removeprefix("sqlite:///")).parent / "artifacts"
    store = SqlAlchemyStore(tracker.uri, str(artifacts))
    now = int(time.time() * 1000)
    with store.ManagedSessionMaker(read_only=False) as session:
        for i in range(count):
            run_id = uuid.uuid4().hex
            session.add(
                SqlRun(
                    run_uuid=run_id,
                    name=f"trial_{i:05d}",
                    experiment_id=int(tracker.experiment_id),
                    status="FINISHED",
                    start_time=now + 1 + i,  # newer than the parent, as trials are
                    lifecycle_stage="active",
                    artifact_uri=f"file:///tmp/{run_id}",
                    source_type="LOCAL",
                    user_id="test",
                    tags=[
                        SqlTag(key="mlflow.parentRunId", value=tracker.parent_id),
                        SqlTag(key="metasweep.sweep", value=tracker.sweep),
                        SqlTag(key="metasweep.trial_id", value=f"trial_{i:05d}"),
                    ],
                )
            )


def test_a_sweep_of_1500_trials_is_resumed_with_its_parent_and_every_child(tracker: SweepTracker) -> None:
    """search_runs answers 1,000 runs a page, newest first: without paging, the parent (the
    oldest run) and 500 children were invisible, and resuming made duplicate child runs."""
    add_child_runs(tracker, 1500)
    client = MlflowClient(tracker.uri)
    assert len(client.search_runs([tracker.experiment_id])) == 1000  # what one page holds

    resumed = SweepTracker(tracker.uri, "experiment", "sweep", resume=True, retry_s=0.0)
    assert resumed.open(resume=True) == tracker.parent_id
    assert len(resumed.children) == 1500
    resumed.start_trial("trial_00000", {"train.inner_lr": 0.1}, {})  # the oldest trial, retried
    resumed.start_trial("trial_01500", {"train.inner_lr": 0.1}, {})  # a new one
    assert resumed.outbox.flush(wait=True)
    assert len(client.search_runs([tracker.experiment_id], max_results=5000)) == 1 + 1501


def test_the_sweeps_own_writes_wait_out_a_sqlite_store_locked_by_another_process(
    tracker: SweepTracker, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process (a second sweep on the same file) holds SQLite's write lock for longer
    than the 20 s MLflow lets SQLite wait by itself: the parent run's writes wait and go through,
    none is lost."""
    import sqlite3
    import threading
    import time

    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(store, timeout=30)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        db.rollback()
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(30)
    threading.Timer(23.0, release.set).start()
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        tracker.log_sweep({"search.num_samples": 4}, "name: sweep\n")
        tracker.log_best("t1", {"train.inner_lr": 0.1}, {"val/mse": 0.5})
        tracker.finish("FINISHED")
    holder.join()
    assert time.monotonic() - started >= 22, "the store was never locked; the test tested nothing"
    assert "unavailable" in caplog.text
    run = MlflowClient(tracker.uri).get_run(tracker.parent_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["search.num_samples"] == "4" and run.data.metrics["val/mse"] == 0.5
    assert run.data.tags["metasweep.best_trial"] == "t1"


def test_a_write_the_store_never_takes_fails_with_a_clear_message(tracker: SweepTracker) -> None:
    tracker.wait_s = 0.5
    calls = []

    def locked() -> None:
        calls.append(1)
        raise MlflowException("database is locked")  # what MLflow raises for a busy SQLite

    with pytest.raises(UserError, match="did not take the error in 0 s: database is locked"):
        tracker.write("the error", locked)
    assert len(calls) >= 2  # retried before giving up

    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    def refused() -> None:
        raise MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="no such run"):  # permanent: not retried
        tracker.write("the run", refused)
