"""metasweep's orchestrator: meta-training runs, sweeps, tracking, datasets and the CLI.

A room per outside system, each a sub-package: ``sweep`` (Ray Tune, Optuna), ``tracking``
(MLflow: runs, the registry, the served model), ``data`` (pyarrow, PIL), ``jobs`` (the Ray Jobs
client) and ``cli`` (typer, rich). Between them pass plain values: the validated config
(``config``), what problem it is (``problem``), metrics as dicts of floats. The rules are
import-linter contracts in ``pyproject.toml``.
"""
