"""The sweep's plots: learning curves of every trial, Optuna's hyperparameter importance and
parallel coordinates, as PNG files for the parent run."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.sweep.space import distribution
from metasweep.orchestrator.sweep.trial import ITERATION, evaluations

log = logging.getLogger(__name__)


def sweep_plots(results: Any, config: SweepConfig, problem: Problem, folder: Path) -> list[Path]:
    """Draw the plots of a finished search (a Tune ``ResultGrid``) into ``folder``.

    Returns:
        The PNG files written: ``learning_curves.png`` always; ``param_importances.png`` and
        ``parallel_coordinate.png`` when at least two trials reported and the space varies.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, mode = config.objective(problem)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    finished = []
    for result in results:
        frame = evaluations(result.metrics_dataframe)
        if frame is None or metric not in frame or ITERATION not in frame:
            continue
        ax.plot(
            frame[ITERATION],
            frame[metric],
            marker="o",
            markersize=3,
            label=str(result.metrics.get("trial_id")),
        )
        finished.append(result)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"{config.name}: {metric} of every trial")
    if len(finished) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "learning_curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for result in finished:
        params = {k: v for k, v in (result.config or {}).items() if k in config.search.space}
        if not params or metric not in (result.metrics or {}):
            continue
        distributions = {k: distribution(config.search.space[k]) for k in params}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=result.metrics[metric]
            )
        )
    if len(study.trials) >= 2 and len(config.search.space) >= 1:
        from optuna.visualization import matplotlib as optuna_plots

        for name, draw in (
            ("param_importances.png", optuna_plots.plot_param_importances),
            ("parallel_coordinate.png", optuna_plots.plot_parallel_coordinate),
        ):
            try:
                with warnings.catch_warnings(), _without_scikit_learn():
                    # "experimental since v2.2": a plot, not a concern
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    draw(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importance needs varied parameters
                log.info("skipping %s: %s", name, exc)
                continue
            figure: Any = plt.gcf()
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            paths.append(folder / name)
            figure.savefig(paths[-1], dpi=120)
            plt.close(figure)
    return paths


def warm_up() -> None:
    """Import what :func:`sweep_plots` draws with (matplotlib and Optuna's plots, about 2 s), so
    that a driver can do it while its trials run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    with _without_scikit_learn():
        from optuna.visualization import matplotlib as optuna_plots  # noqa: F401


@contextlib.contextmanager
def _without_scikit_learn() -> Iterator[None]:
    """Keep scikit-learn unimported meanwhile, unless something imported it already.

    ``optuna.importance`` imports scikit-learn on its first use, for its fANOVA evaluator (2.8 s
    on a 2-core machine, a tenth of a small sweep's own overhead), although the importance plot
    uses PED-ANOVA, which needs none of it. Optuna's optional import then records fANOVA as
    unavailable in this process; metasweep never uses fANOVA.
    """
    if "sklearn" in sys.modules:
        yield
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
