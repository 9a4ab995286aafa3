"""The sweep's persistent Optuna study: where it lives, what it holds, how it is found."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.sweep.space import OptunaSpace, distributions, make_sampler
from metasweep.orchestrator.sweep.study import (
    STUDY_FILE,
    Plan,
    StudySearch,
    check_new_study,
    discard_if_alone,
    fail_lost_trials,
    open_storage,
    plan,
    record_plan,
    study_storage,
    study_tags,
    trial_numbers,
)

SPACE = {"train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}
MSE, STEPS = ("val/mse", "min"), ("cost/inner_steps", "min")


def sweep(**search: object) -> SweepConfig:
    return SweepConfig.model_validate({"name": "s", "search": {"space": SPACE, **search}})


def test_the_study_lives_beside_the_tracking_store_or_the_sweep() -> None:
    chosen = sweep().search.study_storage
    postgres = "postgresql://mlflow@db:5432/mlflow"
    assert study_storage(chosen, postgres, "/runs/sweeps/s") == f"{postgres}?options=-csearch_path%3Doptuna"
    assert study_storage(chosen, f"{postgres}?sslmode=require", "/x").endswith(
        "?sslmode=require&options=-csearch_path%3Doptuna"
    )
    assert (
        study_storage(chosen, "http://mlflow:5000", "/runs/sweeps/s")
        == f"sqlite:////runs/sweeps/s/{STUDY_FILE}"
    )
    assert study_storage(chosen, "sqlite:///mlflow.db", "s3://b/sweeps/s") is None  # no SQLite there
    mysql = sweep(study_storage="mysql://u@h/optuna").search.study_storage
    assert study_storage(mysql, postgres, "s3://bucket/sweeps/s") == "mysql://u@h/optuna"
    assert study_tags("s", None) == {"metasweep.optuna_study": "s (in memory only)"}
    assert study_tags("s", "postgresql://u:pw@h/db")["metasweep.optuna_storage"] == "postgresql://***@h/db"


def test_a_study_storage_that_is_no_database_is_refused() -> None:
    with pytest.raises(Exception, match="is not a database URL"):
        sweep(study_storage="s3://bucket/study")


def test_the_study_holds_evaluations_at_their_meta_iteration_and_names_its_tune_trials(
    tmp_path: Path,
) -> None:
    config = sweep()
    url = f"sqlite:///{tmp_path / 'sub' / STUDY_FILE}"
    search = StudySearch(
        space=OptunaSpace(config.algorithm, distributions(config.search.space)),
        metric="val/mse",
        mode="min",
        sampler=make_sampler(config.search),
        study_name="s",
        storage=open_storage(url),
    )
    assert 0.001 <= search.suggest("trial_a")["train.inner_lr"] <= 0.1
    search.suggest("trial_b")
    search.on_trial_result("trial_a", {"val/mse": 2.0, "iteration": 5, "training_iteration": 1})
    search.on_trial_result(
        "trial_a", {"val/mse": 1.5, "iteration": 10, "evaluated_at": 10, "training_iteration": 2}
    )
    search.on_trial_result("trial_a", {"val/mse": 1.5, "iteration": 15, "training_iteration": 3})
    search.on_trial_complete("trial_a", {"val/mse": 1.2, "iteration": 20, "evaluated_at": 20})

    study = optuna.load_study(study_name="s", storage=url)  # another process would see the same
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == 1.2
    assert first.intermediate_values == {10: 1.5}  # the progress reports at 5 and 15 are not in it
    assert trial_numbers(open_storage(url), "s") == {"trial_a": 0, "trial_b": 1}
    with pytest.raises(UserError, match="already holds a study named 's'"):
        check_new_study(open_storage(url), "s", url)
    check_new_study(open_storage(url), "another", url)


def test_an_unreachable_study_storage_is_one_clear_error() -> None:
    with pytest.raises(
        UserError, match=r"cannot open the Optuna study storage postgresql://\*\*\*@127.0.0.1:1/x"
    ):
        open_storage("postgresql://u:secret@127.0.0.1:1/x?options=-csearch_path%3Doptuna")


def test_a_sweep_folder_holding_only_its_study_is_removed(tmp_path: Path) -> None:
    alone, busy = tmp_path / "alone", tmp_path / "busy"
    for folder in (alone, busy):
        folder.mkdir()
        (folder / STUDY_FILE).write_text("")
    (busy / "tuner.pkl").write_text("")
    discard_if_alone(str(alone))
    discard_if_alone(str(busy))
    assert not alone.exists() and (busy / STUDY_FILE).exists()


def test_trials_still_running_once_tune_has_ended_all_its_own_are_failed(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / STUDY_FILE}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    study.ask()  # asked by a driver that died before Tune's next snapshot
    study.ask()
    assert fail_lost_trials(storage, "s") == [1, 2]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert fail_lost_trials(storage, "s") == []


def test_a_sweep_is_started_continued_or_extended_as_its_study_records(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / STUDY_FILE}")
    config = sweep(num_samples=2)
    assert plan(config, resume=False, storage=None) == Plan((), None, "s", 2)
    assert plan(config, resume=True, storage=None) == Plan((), "s", None, 0, kept=False)  # as Tune left it
    # No study by this name: 0.2.0's sweep, or a storage of another sweep's.
    assert plan(config, resume=True, storage=storage) == Plan((), "s", None, 0, kept=False)

    study = optuna.create_study(study_name="s", storage=storage)
    record_plan(storage, config, plan(config, resume=False, storage=None), "val/mse")
    first = study.ask()
    assert plan(config, resume=True, storage=storage) == Plan((), "s", None, 0)  # continue it
    with pytest.raises(UserError, match="have not ended"):
        plan(sweep(num_samples=3), resume=True, storage=storage)
    study.tell(first, 1.0)
    study.tell(study.ask(), 2.0)
    with pytest.raises(UserError, match=r"has 2 trials planned; search\.num_samples=1 would lower"):
        plan(sweep(num_samples=1), resume=True, storage=storage)
    other = SweepConfig.model_validate(
        {
            "name": "s",
            "search": {
                "num_samples": 5,
                "space": {**SPACE, "train.inner_steps": {"type": "int", "low": 1, "high": 3}},
            },
        }
    )
    with pytest.raises(UserError, match="keeps its search space"):
        plan(other, resume=True, storage=storage)

    extension = plan(sweep(num_samples=5), resume=True, storage=storage)
    assert extension == Plan(("s",), None, "s/extend-1", 3) and extension.extends
    record_plan(storage, sweep(num_samples=5), extension, "val/mse")
    assert plan(sweep(num_samples=5), resume=True, storage=storage) == Plan(("s",), "s/extend-1", None, 0)

    optuna.create_study(study_name="foreign", storage=storage)
    with pytest.raises(UserError, match="is not a metasweep sweep's"):
        plan(SweepConfig.model_validate({"name": "foreign", "search": {"space": SPACE}}), True, storage)


def old_sweep(
    storage_dir: Path, name: str, trials: list[tuple[dict, float | list[float]]], **attrs: object
) -> None:
    """A finished sweep's study where a sweep keeps it (``<storage>/<name>/optuna.db``), as
    record_plan leaves it, holding ``trials`` (settings, val/mse or a value per objective) and
    one trial still running."""
    url = f"sqlite:///{storage_dir / name / STUDY_FILE}"
    storage = open_storage(url)
    old = sweep(num_samples=max(len(trials), 1)).model_copy(update={"name": name})
    study = optuna.create_study(
        study_name=name, storage=storage, directions=attrs.pop("directions", ["minimize"])
    )
    record_plan(storage, old, plan(old, resume=False, storage=None), str(attrs.pop("metric", "val/mse")))
    for params, value in trials:
        dists = {k: optuna.distributions.FloatDistribution(1e-6, 10.0, log=True) if "lr" in k
                 else optuna.distributions.IntDistribution(0, 100) for k in params}  # fmt: skip
        values = value if isinstance(value, list) else [value]
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values))
    study.ask()  # a trial that never ended is not read


def test_a_warm_start_evaluates_the_best_settings_that_fit_first_and_gives_the_sampler_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from metasweep.orchestrator.sweep.study import WARMED_FROM, warm_start

    old_sweep(
        tmp_path,
        "old",
        [
            ({"train.inner_lr": 0.01}, 0.5),
            ({"train.inner_lr": 0.05}, 0.2),  # the best
            ({"train.inner_lr": 0.02}, 0.3),
            ({"train.inner_lr": 0.5}, 0.1),  # better still, but outside this sweep's space
            ({"train.inner_lr": 0.03, "train.inner_steps": 2}, 0.05),  # searched another field
        ],
    )
    config = sweep(warm_start={"sweep": "old", "top": 2})
    with caplog.at_level("WARNING"):
        warm = warm_start(config, "sqlite:///mlflow.db", str(tmp_path), [MSE])
    assert warm is not None
    assert warm.points == ({"train.inner_lr": 0.05}, {"train.inner_lr": 0.02})
    assert [t.value for t in warm.trials] == [0.2, 0.3, 0.5]
    assert all(t.user_attrs[WARMED_FROM] == "old" for t in warm.trials)
    assert "2 of 5 earlier trials skipped" in caplog.text
    assert warm.provenance == {
        "metasweep.warm_start": "old",
        "metasweep.warm_start_trials": "3 of 5 earlier trials, best 2 evaluated first",
    }
    # The new sweep's sampler gets them as finished trials, before any trial is asked.
    new_storage = open_storage(f"sqlite:///{tmp_path / 'new.db'}")
    search = StudySearch(
        space=OptunaSpace("maml", distributions(config.search.space)), metric="val/mse", mode="min",
        sampler=make_sampler(config.search), study_name="s", storage=new_storage,
    )  # fmt: skip
    search.add_observations(warm.trials)
    study = optuna.load_study(study_name="s", storage=new_storage)
    assert [t.value for t in study.trials] == [0.2, 0.3, 0.5] and study.best_trial.params == warm.points[0]
    assert trial_numbers(new_storage, "s") == {}  # none of them is a Tune trial of this sweep
    assert warm_start(sweep(), "sqlite:///mlflow.db", str(tmp_path), [MSE]) is None


def test_warm_starts_that_cannot_work_are_refused(tmp_path: Path) -> None:
    from metasweep.orchestrator.sweep.study import warm_start

    old_sweep(tmp_path, "old", [({"train.inner_lr": 0.01}, 0.5)])
    old_sweep(
        tmp_path, "acc", [({"train.inner_lr": 0.01}, 0.5)], metric="val/accuracy", directions=["maximize"]
    )
    old_sweep(tmp_path, "empty", [])
    cases = {
        "missing": "no Optuna study of sweep 'missing'",
        "acc": "sweep 'acc' optimised val/accuracy (max); this sweep optimises val/mse (min)",
        "empty": "sweep 'empty' has no finished trial to start from",
        "s": "sweep 's' is this sweep",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=re.escape(message)):
            warm_start(
                sweep(warm_start={"sweep": ["old", name]}),
                "sqlite:///mlflow.db",
                str(tmp_path),
                [MSE],
            )
    assert not (tmp_path / "missing").exists(), "looking for a study creates none"


def test_a_multi_objective_warm_start_runs_the_front_first_and_reads_only_the_same_objectives(
    tmp_path: Path,
) -> None:
    from metasweep.orchestrator.sweep.study import warm_start

    two = {"metric": "val/mse, cost/inner_steps", "directions": ["minimize", "minimize"]}
    old_sweep(
        tmp_path,
        "mo",
        [
            ({"train.inner_lr": 0.01}, [0.5, 2.0]),  # front 1: (0.4, 2) dominates it
            ({"train.inner_lr": 0.02}, [0.2, 6.0]),  # front 0, the lowest error
            ({"train.inner_lr": 0.03}, [0.4, 2.0]),  # front 0
            ({"train.inner_lr": 0.04}, [0.3, 7.0]),  # front 1: (0.2, 6) dominates it
            ({"train.inner_lr": 0.05}, [0.9, 1.0]),  # front 0, the fewest steps
        ],
        **two,
    )
    config = sweep(
        warm_start={"sweep": "mo", "top": 4},
        objectives=[{"metric": "val/mse"}, {"metric": "cost/inner_steps"}],
    )
    warm = warm_start(config, "sqlite:///mlflow.db", str(tmp_path), [MSE, STEPS])
    assert warm is not None
    assert [p["train.inner_lr"] for p in warm.points] == [0.02, 0.03, 0.05, 0.04]
    assert [t.values for t in warm.trials][:3] == [[0.2, 6.0], [0.4, 2.0], [0.9, 1.0]]
    # The new sweep's two-objective study takes them as finished trials.
    new_storage = open_storage(f"sqlite:///{tmp_path / 'new.db'}")
    search = StudySearch(
        space=OptunaSpace("maml", distributions(config.search.space)),
        metric=["val/mse", "cost/inner_steps"], mode=["min", "min"],
        sampler=make_sampler(config.search), study_name="s", storage=new_storage,
    )  # fmt: skip
    search.add_observations(warm.trials)
    study = optuna.load_study(study_name="s", storage=new_storage)
    assert sorted(t.params["train.inner_lr"] for t in study.best_trials) == [0.02, 0.03, 0.05]

    # Other objectives, another order of them, other directions, or one objective: refused.
    old_sweep(tmp_path, "single", [({"train.inner_lr": 0.01}, 0.5)])
    refused = {
        (MSE, ("cost/adapt_ms", "min")): "sweep 'mo' optimised val/mse, cost/inner_steps (min, min); "
        "this sweep optimises val/mse, cost/adapt_ms (min, min)",
        (STEPS, MSE): "this sweep optimises cost/inner_steps, val/mse (min, min)",
        (MSE, ("cost/inner_steps", "max")): "this sweep optimises val/mse, cost/inner_steps (min, max)",
    }
    for objectives, message in refused.items():
        with pytest.raises(UserError, match=re.escape(message)):
            warm_start(config, "sqlite:///mlflow.db", str(tmp_path), list(objectives))
    with pytest.raises(UserError, match=re.escape("sweep 'mo' optimised val/mse, cost/inner_steps")):
        warm_start(sweep(warm_start={"sweep": "mo"}), "sqlite:///mlflow.db", str(tmp_path), [MSE])
    with pytest.raises(UserError, match=re.escape("sweep 'single' optimised val/mse (min); this sweep")):
        warm_start(
            sweep(warm_start={"sweep": "single"}, objectives=config.search.objectives),
            "sqlite:///mlflow.db", str(tmp_path), [MSE, STEPS],
        )  # fmt: skip


def test_tpe_searches_at_random_for_its_startup_trials_then_models() -> None:
    def settings(sampler: optuna.samplers.BaseSampler, n: int) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", -3.0, 3.0) - 1.0) ** 2, n_trials=n)
        return [t.params["x"] for t in study.trials]

    random = settings(optuna.samplers.RandomSampler(seed=3), 6)
    assert settings(make_sampler(sweep(seed=3).search), 6) == random  # Optuna's 10 by default
    mine = settings(make_sampler(sweep(seed=3, startup_trials=3).search), 6)
    assert mine[:3] == random[:3] and mine[3:] != random[3:]
    with pytest.raises(ValueError, match="startup_trials applies to the tpe and gp samplers, not sampler="):
        sweep(sampler="random", startup_trials=3)


def test_tpe_lies_about_running_trials_unless_told_and_nsga2_evolves_within_a_sweep() -> None:
    # Optuna keeps both settings private; they are what a sweep's samplers are built with.
    assert make_sampler(sweep().search)._constant_liar is True  # type: ignore[attr-defined]
    assert make_sampler(sweep(constant_liar=False).search)._constant_liar is False  # type: ignore[attr-defined]
    # A generation of two rounds of concurrent trials, at least 8, not Optuna's 50.
    assert make_sampler(sweep(sampler="nsga2").search)._population_size == 8  # type: ignore[attr-defined]
    nsga = make_sampler(sweep(sampler="nsga2", max_concurrent=6).search)
    assert nsga._population_size == 12  # type: ignore[attr-defined]
