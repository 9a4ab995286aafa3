"""The search space, translated once into Optuna's distributions, and the samplers."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from metasweep.orchestrator.config import ParamSpec, SearchConfig, applies


def distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution of one searched field."""
    if spec.type == "categorical":
        return CategoricalDistribution(list(spec.values or ()))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high))
    return FloatDistribution(spec.low, spec.high, log=spec.type == "loguniform")


def distributions(space: Mapping[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """Every searched field's distribution, by dotted name."""
    return {key: distribution(spec) for key, spec in space.items()}


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    """Ask ``trial`` for a value of ``key`` from ``dist``."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))  # type: ignore[arg-type]
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    raise TypeError(f"no suggestion for {type(dist).__name__}")


@dataclass(frozen=True)
class OptunaSpace:
    """A define-by-run Optuna space: each field is sampled only for algorithms that use it.

    A plain class (not a closure) because Tune pickles the searcher with its space to resume.

    Attributes:
        algorithm: the config's algorithm, used when ``algorithm`` is not searched.
        space: the distributions by dotted name (:func:`distributions`).
    """

    algorithm: str
    space: dict[str, BaseDistribution]

    def __call__(self, trial: optuna.Trial) -> None:
        algorithm = self.algorithm
        if "algorithm" in self.space:
            algorithm = suggest(trial, "algorithm", self.space["algorithm"])
        for key, dist in self.space.items():
            if key != "algorithm" and applies(key, algorithm):
                suggest(trial, key, dist)


def make_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """The configured, seeded Optuna sampler (each of them takes one objective or several, but
    CMA-ES, which the config refuses with several)."""
    startup: dict[str, Any] = {}  # Optuna's own default (10) unless the sweep says
    if search.startup_trials is not None:
        startup["n_startup_trials"] = search.startup_trials
    if search.sampler == "tpe":
        # multivariate and group are "experimental" since Optuna 2.2/2.8 and what makes TPE model
        # the inner-loop parameters jointly; the warning says nothing a user can act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=search.seed,
                multivariate=True,
                group=True,
                constant_liar=search.constant_liar,
                **startup,
            )
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed, **startup)
    if search.sampler == "nsga2":
        # Its default generation of 50 would leave a sweep of a few dozen trials random; a
        # generation of two rounds of concurrent trials (at least 8) lets it evolve.
        return optuna.samplers.NSGAIISampler(
            population_size=max(8, 2 * search.max_concurrent), seed=search.seed
        )
    return optuna.samplers.QMCSampler(seed=search.seed)
