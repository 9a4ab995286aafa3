"""The sweep's Optuna study, kept in a database so that it outlives the driver.

Ray Tune keeps an ``OptunaSearch``'s study inside its own pickled state, in memory; here the study
lives in an Optuna RDB storage (:func:`study_storage`), named after the sweep, and the Tune trial
id of each of its trials is a user attribute of it (``tune_trial_id``), so that the study can be
opened on its own (Optuna Dashboard, ``optuna.load_study``) and found from the MLflow runs, whose
tags name it (:func:`study_tags`).

Where it lives, unless ``search.study_storage`` says:

- a PostgreSQL tracking store: the same server and database, in a schema of its own, ``optuna``
  (Optuna's and MLflow's tables would collide: both keep an ``alembic_version``);
- otherwise, a local Tune storage: an SQLite file in the sweep's folder, ``optuna.db``;
- otherwise (object storage, which SQLite cannot use): nowhere, the study stays in Tune's memory
  as before, with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from metasweep.orchestrator.config import SweepConfig, applies
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.redact import redact, uri_scheme
from metasweep.orchestrator.sweep.moasha import pareto_fronts, signs
from metasweep.orchestrator.sweep.space import distributions
from metasweep.orchestrator.sweep.trial import EVALUATED

log = logging.getLogger(__name__)
STUDY_FILE = "optuna.db"
SCHEMA = "optuna"
TUNE_TRIAL_ID = "tune_trial_id"
# The study's own record of the sweep (user attributes): trials planned, the Tune experiments
# that ran them (folders under the sweep's storage, oldest first), and the search space.
PLANNED, EXPERIMENTS, SPACE = "metasweep.num_samples", "metasweep.experiments", "metasweep.space"
METRIC = "metasweep.metric"
WARMED_FROM = "metasweep.warm_start_from"  # on a trial: the earlier sweep it was copied from


def study_storage(chosen: str | None, tracking: str, sweep_dir: str) -> str | None:
    """The Optuna storage URL of a sweep's study, or ``None`` where it can only stay in memory.

    Args:
        chosen: the config's ``search.study_storage``, which wins when set.
        tracking: the resolved MLflow tracking URI.
        sweep_dir: the sweep's folder in Tune's storage (a local path or an object-storage URI).
    """
    if chosen:
        return chosen
    if uri_scheme(tracking) == "postgresql":
        joiner = "&" if "?" in tracking else "?"
        return f"{tracking}{joiner}options=-csearch_path%3D{SCHEMA}"
    if "://" not in sweep_dir or sweep_dir.startswith("file://"):
        return f"sqlite:///{Path(sweep_dir.removeprefix('file://')) / STUDY_FILE}"
    return None


def find_study(name: str, tracking: str, sweep_dir: str, chosen: str | None = None) -> str:
    """The storage URL holding the study of sweep ``name``, where :func:`study_storage` put it.

    Raises:
        UserError: no study of that name there (nothing is created looking for it).
    """
    url = study_storage(chosen, tracking, sweep_dir)
    if (
        url is not None
        and study_exists(url)
        and name in optuna.study.get_all_study_names(open_storage(url, create=False))
    ):
        return url
    where = f"in {redact(url)}" if url else f"for a sweep whose storage is {sweep_dir.rsplit('/', 1)[0]}"
    raise UserError(
        f"no Optuna study of sweep {name!r} {where}; a sweep kept its study in memory only if it "
        "ran before studies were kept (0.2.0) or on object storage without search.study_storage. Point to "
        "the sweep with --storage and --tracking-uri, or to its study with --study-storage"
    )


def study_exists(url: str) -> bool:
    """Whether the storage at ``url`` may hold studies already: any database but an SQLite file
    that does not exist yet, or a PostgreSQL database without the study schema yet (opening
    either without creating it would fail, or create it)."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).exists()
    return not _in_study_schema(url) or _schema_exists(url)


def _in_study_schema(url: str) -> bool:
    """Whether ``url`` is a PostgreSQL storage in the study schema (:func:`study_storage`'s)."""
    return url.startswith("postgresql") and f"search_path%3D{SCHEMA}" in url


def _schema_exists(url: str) -> bool:
    """Whether the PostgreSQL database at ``url`` has the study schema; True where it cannot
    tell (an unreachable database: opening it then says why)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                sqlalchemy.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :name"),
                {"name": SCHEMA},
            )
            return found.first() is not None
    except Exception:  # sqlalchemy's errors of an unreachable or refusing database
        return True
    finally:
        engine.dispose()


def open_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url``, creating its tables (and, on PostgreSQL, its schema) first
    unless ``create`` is false.

    Raises:
        UserError: the database cannot be reached or refuses the login.
    """
    try:
        if create and url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        elif create and _in_study_schema(url):
            import sqlalchemy

            engine = sqlalchemy.create_engine(url)
            try:
                with engine.begin() as connection:
                    connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            finally:
                engine.dispose()
        return optuna.storages.RDBStorage(url)
    except UserError:
        raise
    except Exception as exc:  # sqlalchemy's errors of an unreachable or refusing database
        raise UserError(f"cannot open the Optuna study storage {redact(url)}: {exc}") from None


def serve_dashboard(url: str, name: str, port: int, tell: Callable[[str], None] = log.info) -> None:
    """Serve Optuna Dashboard for the study in ``url`` on 127.0.0.1:``port`` until interrupted,
    opening on the study of sweep ``name``. The storage travels as an object, never on a command
    line (``ps`` shows those to every user)."""
    import optuna_dashboard

    storage = open_storage(url, create=False)
    page = f"http://127.0.0.1:{port}/dashboard/studies/{storage.get_study_id_from_name(name)}"
    tell(f"Optuna Dashboard for sweep {name} at {page} (Ctrl-C to stop)")
    optuna_dashboard.run_server(storage, host="127.0.0.1", port=port)


def check_new_study(storage: optuna.storages.RDBStorage, name: str, url: str) -> None:
    """Refuse a new sweep whose name a study in ``storage`` already has (another sweep's)."""
    if name in optuna.study.get_all_study_names(storage):
        raise UserError(
            f"the Optuna study storage {redact(url)} already holds a study named {name!r}, from "
            "another sweep; give this sweep a new name with --set name=..., or delete that study "
            f"(optuna delete-study --study-name {name} --storage URL)"
        )


def discard_if_alone(sweep_dir: str) -> None:
    """Remove a local sweep folder that holds nothing but its study file: a sweep that failed
    before Tune wrote its state, which ``--resume`` could not continue."""
    if "://" in sweep_dir:
        return
    folder = Path(sweep_dir)
    if folder.is_dir() and [p.name for p in folder.iterdir()] == [STUDY_FILE]:
        (folder / STUDY_FILE).unlink()
        folder.rmdir()


def study_tags(name: str, url: str | None) -> dict[str, str]:
    """The parent run's tags that lead from MLflow to the study (the URL's login masked)."""
    if url is None:
        return {"metasweep.optuna_study": f"{name} (in memory only)"}
    return {"metasweep.optuna_study": name, "metasweep.optuna_storage": redact(url)}


def trial_numbers(storage: optuna.storages.BaseStorage, name: str) -> dict[str, int]:
    """The Optuna trial number of each Tune trial id of the study ``name``."""
    study = optuna.load_study(study_name=name, storage=storage)
    return {
        str(t.user_attrs[TUNE_TRIAL_ID]): t.number
        for t in study.get_trials(deepcopy=False)
        if TUNE_TRIAL_ID in t.user_attrs
    }


def fail_lost_trials(storage: optuna.storages.BaseStorage, name: str) -> list[int]:
    """Mark as failed the trials of the study ``name`` still running once Tune has ended every
    trial it knows, and return their numbers: the ones a driver killed after asking for them and
    before Tune's next snapshot of the sweep, which no resumed driver runs. Left running, they
    would hide nothing from the sampler but would refuse every later extension."""
    study_id = storage.get_study_id_from_name(name)
    lost = [t.number for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))]
    for number in lost:
        storage.set_trial_state_values(
            storage.get_trial_id_from_study_id_trial_number(study_id, number), TrialState.FAIL
        )
    return lost


@dataclass(frozen=True)
class WarmStart:
    """What earlier sweeps give a new one (:func:`warm_start`).

    Attributes:
        sweeps: the earlier sweeps' names, comma-separated.
        points: their best settings that fit the new sweep, best first, to evaluate first.
        trials: their finished trials that fit the new space, for the new study's sampler.
        read: how many finished trials they had.
    """

    sweeps: str
    points: tuple[dict[str, Any], ...]
    trials: tuple[optuna.trial.FrozenTrial, ...]
    read: int

    @property
    def summary(self) -> str:
        """What the new sweep took from them, in a line."""
        return f"{len(self.trials)} of {self.read} earlier trials, best {len(self.points)} evaluated first"

    @property
    def provenance(self) -> dict[str, str]:
        """Where they came from, as the parent run's tags."""
        return {"metasweep.warm_start": self.sweeps, "metasweep.warm_start_trials": self.summary}


def warm_start(
    config: SweepConfig, tracking: str, storage: str, objectives: Sequence[tuple[str, str]]
) -> WarmStart | None:
    """Read the sweeps ``search.warm_start`` names, where their studies are kept.

    A trial fits the new sweep when it searched the same fields (for its algorithm), each value
    lies in the new space, and its settings make a valid run of the new config; the others are
    skipped, with a warning that says how many. Trials an earlier sweep was itself warmed with
    are not read again. With several objectives, the best settings are those of the first
    non-dominated front, then the next front's, each front best on the first objective first.

    Args:
        config: the new sweep.
        tracking: the resolved MLflow tracking URI (a PostgreSQL store holds the studies).
        storage: the sweeps' Tune storage, where SQLite studies are kept.
        objectives: ``(metric, mode)`` of what the new sweep optimises, as the earlier sweeps
            must have.

    Returns:
        ``None`` without ``search.warm_start.sweep``.

    Raises:
        UserError: a sweep without a kept study, a study that is not a sweep's, one that
            optimised other metrics or in other directions, or one without a finished trial.
    """
    settings = config.search.warm_start
    if not settings.sweep:
        return None
    space = distributions(config.search.space)
    wanted, modes = ", ".join(m for m, _ in objectives), [mode for _, mode in objectives]
    fitting: list[tuple[optuna.trial.FrozenTrial, str]] = []
    skipped = read = 0
    for name in settings.sweep:
        if name == config.name:
            raise UserError(f"search.warm_start: sweep {name!r} is this sweep; name an earlier one")
        url = find_study(
            name, tracking, f"{storage}/{name}", settings.study_storage or config.search.study_storage
        )
        study = optuna.load_study(study_name=name, storage=open_storage(url, create=False))
        attrs = study.user_attrs
        if PLANNED not in attrs:
            raise UserError(f"search.warm_start: the Optuna study {name!r} is not a metasweep sweep's")
        directions = [d.name.lower()[:3] for d in study.directions]
        if attrs.get(METRIC, wanted) != wanted or directions != modes:
            what = attrs.get(METRIC, "its metrics")
            raise UserError(
                f"search.warm_start: sweep {name!r} optimised {what} ({', '.join(directions)}); this "
                f"sweep optimises {wanted} ({', '.join(modes)}): their results do not compare"
            )
        own = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if WARMED_FROM not in t.user_attrs and t.values is not None
        ]
        if not own:
            raise UserError(f"search.warm_start: sweep {name!r} has no finished trial to start from")
        read += len(own)
        for t in own:
            if _fits(config, space, t.params):
                fitting.append((t, name))
            else:
                skipped += 1
    if skipped:
        log.warning(
            "search.warm_start: %d of %d earlier trials skipped: they searched other fields, or "
            "values outside this sweep's space or run schema",
            skipped, read,
        )  # fmt: skip
    if fitting:  # best first: by front, then on the first objective
        signed = np.array([signs(modes) * np.array(t.values, dtype=float) for t, _ in fitting])
        fronts = pareto_fronts(signed)  # with one objective, the ranks: the order is the same
        order = sorted(range(len(fitting)), key=lambda i: (int(fronts[i]), float(signed[i, 0])))
        fitting = [fitting[i] for i in order]
    points: list[dict[str, Any]] = []
    for t, _ in fitting:
        if len(points) < settings.top and t.params not in points:
            points.append(dict(t.params))
    trials = tuple(
        optuna.trial.create_trial(
            params=t.params,
            distributions={k: space[k] for k in t.params},
            values=list(t.values),
            user_attrs={WARMED_FROM: name},
        )
        for t, name in fitting
    )
    return WarmStart(", ".join(settings.sweep), tuple(points), trials, read)


def _fits(config: SweepConfig, space: dict[str, BaseDistribution], params: dict[str, Any]) -> bool:
    algorithm = str(params.get("algorithm", config.algorithm))
    searched = {k for k in space if k == "algorithm" or applies(k, algorithm)}
    if set(params) != searched:
        return False
    try:
        if not all(space[k]._contains(space[k].to_internal_repr(v)) for k, v in params.items()):
            return False
        config.run_config(params)
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return False
    return True


class StudySearch(OptunaSearch):
    """Tune's ``OptunaSearch``, with a study that holds what a trial evaluated, and only that.

    A trial's progress reports between evaluations (no ``evaluated_at``) repeat its last score and
    are not given to the study; an evaluation is reported at its meta-iteration (``evaluated_at``),
    not at Tune's count of reports. Each Optuna trial records the id of the Tune trial it became.
    """

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and TUNE_TRIAL_ID not in ot_trial.user_attrs:
            ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if EVALUATED not in result:
            return
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: int(result[EVALUATED])})

    def add_observations(self, trials: tuple[optuna.trial.FrozenTrial, ...]) -> None:
        """Give the sampler finished trials from elsewhere (a warm start), before any is asked."""
        study: optuna.Study = self._ot_study  # type: ignore[assignment]
        study.add_trials(trials)


@dataclass(frozen=True)
class Plan:
    """What a run of ``metasweep sweep`` does with the sweep's Tune experiments.

    Attributes:
        earlier: experiments whose trials have all ended, shown in the summary beside this run's.
        restore: the experiment to continue with ``Tuner.restore`` (a driver that died), or None.
        start: the experiment to start, or None.
        samples: trials ``start`` runs.
        kept: whether the study storage holds this sweep's study; without it a sweep can only be
            continued as Tune left it, not extended.
    """

    earlier: tuple[str, ...]
    restore: str | None
    start: str | None
    samples: int
    kept: bool = True

    @property
    def extends(self) -> bool:
        """Whether this run adds trials to a sweep that had finished."""
        return self.start is not None and bool(self.earlier)


def plan(config: SweepConfig, resume: bool, storage: optuna.storages.BaseStorage | None) -> Plan:
    """How to run ``config``: a new sweep, a sweep to continue, or a finished one to extend to
    ``search.num_samples`` trials. A sweep without a kept study (started by 0.2.0, or on object
    storage without ``search.study_storage``) can only be continued as Tune left it.

    Raises:
        UserError: fewer trials than the sweep has planned, an extension of a sweep with trials
            that have not ended (its driver runs, or died: ``--resume`` finishes them first), a
            changed search space, or a study of that name that is not a sweep's.
    """
    name, wanted = config.name, config.search.num_samples
    if not resume:
        return Plan((), None, name, wanted)
    # Kept in memory by 0.2.0, or the storage named is another sweep's.
    if storage is None or name not in optuna.study.get_all_study_names(storage):
        return Plan((), name, None, 0, kept=False)
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs
    if PLANNED not in attrs:  # a study written by something else than a sweep
        raise UserError(f"the Optuna study {name!r} in the study storage is not a metasweep sweep's")
    planned, experiments = int(attrs[PLANNED]), tuple(attrs[EXPERIMENTS])
    if wanted < planned:
        raise UserError(
            f"sweep {name!r} has {planned} trials planned; search.num_samples={wanted} would lower "
            f"that: pass --set search.num_samples={planned} to continue it, or more to extend it"
        )
    if wanted == planned:
        return Plan(experiments[:-1], experiments[-1], None, 0)
    trials = study.get_trials(deepcopy=False)
    unfinished = [t.number for t in trials if not t.state.is_finished()]
    if unfinished or len(trials) < planned:
        raise UserError(
            f"sweep {name!r} has trials that have not ended (its driver is running, or died): "
            f"`--resume {name} --set search.num_samples={planned}` finishes them; extend it after"
        )
    if json.loads(attrs[SPACE]) != json.loads(json.dumps(space_record(config))):
        raise UserError(
            f"extending sweep {name!r} keeps its search space; the config's search.space differs "
            "from the one its trials were sampled from: start a new sweep for another space"
        )
    return Plan(experiments, None, f"{name}/extend-{len(experiments)}", wanted - planned)


def space_record(config: SweepConfig) -> dict[str, Any]:
    """The search space as the study records it (plain JSON values, by dotted name)."""
    space = {key: spec.model_dump(exclude_none=True) for key, spec in config.search.space.items()}
    return {"algorithm": config.algorithm, "space": space}


def record_plan(storage: optuna.storages.BaseStorage, config: SweepConfig, plan: Plan, metric: str) -> None:
    """Write the sweep's planned trials, experiments, space and metric into its study (before Tune
    runs, so that a driver dying meanwhile leaves a study that --resume continues)."""
    study = optuna.load_study(study_name=config.name, storage=storage)
    earlier = list(study.user_attrs.get(EXPERIMENTS, []))
    study.set_user_attr(PLANNED, config.search.num_samples)
    study.set_user_attr(EXPERIMENTS, [*earlier, plan.start] if plan.start else earlier)
    study.set_user_attr(SPACE, json.dumps(space_record(config)))
    study.set_user_attr(METRIC, metric)
