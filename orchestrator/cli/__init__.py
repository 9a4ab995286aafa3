"""The ``metasweep`` command line (typer, rich): the one room that talks to the terminal.

``app`` holds the commands, registered by the modules below in the order ``--help`` lists them:
``run`` (train, evaluate, sweep), ``jobs`` (submit, jobs), ``models`` (models, adapt, ui) and
``data``. ``console`` is what they show: one progress bar, summary tables.
"""

from __future__ import annotations

# The import order is the order of the commands in --help.
from metasweep.orchestrator.cli import run, jobs, models, data
from metasweep.orchestrator.cli.app import app, entry, main

__all__ = ["app", "data", "entry", "jobs", "main", "models", "run"]
