"""What the CLI shows people: one stderr console, one progress bar, summary tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from metasweep.orchestrator.redact import redact

stderr = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def say(message: str) -> None:
    """A plain line on stderr (no rich markup or highlighting), with any login in a URI masked."""
    stderr.print(redact(message), markup=False, highlight=False)


def progress_bar(*fields: str, enabled: bool = True) -> Progress:
    """The one progress bar of every command: description, bar, count, the named fields (floats,
    four digits), elapsed and remaining time, on stderr."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]:.4f}}") for name in fields]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=stderr, disable=not enabled)


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while the progress bar counts them, out of ``total`` (an estimate: the bar
    ends at the count reached)."""
    with progress_bar(enabled=enabled) as progress:
        task = progress.add_task(description, total=total)
        done = 0
        for item in items:
            yield item
            done += 1
            progress.advance(task)
        progress.update(task, total=done)


@contextmanager
def training_bar(name: str, iterations: int, enabled: bool = True) -> Iterator[Callable[[int, float], None]]:
    """A progress bar over meta-iterations with the smoothed training loss; yields the
    ``on_step(iteration, loss)`` callback of :func:`metasweep.orchestrator.training.train`."""
    smoothed = math.nan
    with progress_bar("loss", enabled=enabled) as progress:
        task = progress.add_task(name, total=iterations, loss=math.nan)

        def on_step(iteration: int, loss: float) -> None:
            nonlocal smoothed
            if not math.isnan(loss):
                smoothed = loss if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * loss
            progress.update(task, completed=iteration, loss=smoothed)

        yield on_step


def metrics_table(title: str, metrics: dict[str, float], run_dir: Path | None = None) -> None:
    """The metrics of a run as a two-column table on stderr, and where the run lives."""
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    stderr.print(table)
    if run_dir is not None:
        say(f"run directory: {run_dir}")
