"""Every ``--help`` page reads whole at 80 columns, as a newcomer sees it.

The pages are found by walking the command tree, so a new command is checked without being listed
here; they are rendered in this process. :func:`test_the_checks_catch_what_they_are_for` runs the
same checks over an app written the way typer's defaults go wrong, so none of them passes by
checking nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from metasweep.orchestrator.cli import app

TERMINAL = 80
# Click formats help two columns narrower than the terminal, and never wider than 78 columns:
# what every terminal of 80 columns or more shows. (CliRunner alone would format at 80.)
WIDTH = TERMINAL - 2
# What click or typer appends to a parameter's help: "[default: 5; 1<=x<=9; required]".
EXTRAS = re.compile(r"\s*\[((?:default|env var|required|[-\d.]+<|x<)[^\[\]]*)\]$")
ABBREVIATION = re.compile(r"\b(e\.g|i\.e|etc|incl|cf|vs|approx)\.$", re.IGNORECASE)
TYPER_METAVAR = re.compile(r"<[^<>\s]*>|\{[^{}\s]*\}")


def command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The words that reach every command and group under ``command``, ``()`` for itself."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            yield from command_paths(sub, (*path, name))


def render(cli: typer.Typer, path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="metasweep", terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output


def sections(page: str) -> dict[str, list[str]]:
    """A page's lines by section: "Usage" (with its wrapped lines), "" for the description,
    then "Arguments", "Options", "Commands"."""
    found: dict[str, list[str]] = {"Usage": [], "": []}
    current = "Usage"
    for line in page.splitlines():
        header = re.fullmatch(r"(\w[\w ]*):", line)
        if header:
            current = header.group(1)
            found[current] = []
        elif current == "Usage" and found["Usage"] and not line.startswith(" "):
            current = ""
            found[current].append(line)
        else:
            found[current].append(line)
    return found


def rows(lines: list[str]) -> list[tuple[str, str]]:
    """The ``(term, text)`` rows of a definition list, wrapped lines joined."""
    found: list[tuple[str, list[str]]] = []
    for line in lines:
        if re.match(r"  \S", line):
            term, _, text = line.strip().partition("  ")  # two spaces end the term
            found.append((term, [text.strip()] if text.strip() else []))
        elif line.strip():
            found[-1][1].append(line.strip())
    return [(term, " ".join(text)) for term, text in found]


def problems(page: str, path: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(kind, what)`` for everything on a help page a newcomer would trip over."""
    found = []
    for line in page.splitlines():
        if len(line) > TERMINAL:
            found.append(("width", f"{len(line)} columns: {line!r}"))
    if "list[" in page:
        found.append(("metavar", "a Python type 'list[...]' on the page"))
    parts = sections(page)
    usage = " ".join(line.strip() for line in parts["Usage"])
    words = usage.removeprefix(" ".join(["Usage: metasweep", *path])).split()
    for word in words:
        if TYPER_METAVAR.search(word) or word != word.upper():
            found.append(("metavar", f"usage shows {word!r}, not a metavar like CONFIG or [NAME]"))
    for section in ("Arguments", "Options"):
        for term, text in rows(parts.get(section, [])):
            for word in term.replace(",", " ").split():
                if (
                    word != "/"
                    and not word.startswith("-")
                    and (TYPER_METAVAR.search(word) or word != word.upper())
                ):
                    found.append(("metavar", f"{term!r} shows {word!r}, not a metavar like N or PATH"))
            extras = EXTRAS.search(text)
            prose = text[: extras.start()] if extras else text
            if not prose.strip():
                found.append(("no help", f"{term!r} has no help text"))
            shown = re.search(r"\bdefault: ([^;]*)", extras.group(1)) if extras else None
            if shown and re.search(r"\bdefault\b", prose, re.IGNORECASE):
                found.append(
                    ("default", f"{term!r} says a default in its help and shows [default: {shown.group(1)}]")
                )
    for name, text in rows(parts.get("Commands", [])):
        whole = (
            text.endswith(".")
            and not text.endswith("...")
            and not ABBREVIATION.search(text)
            and text.count("(") == text.count(")")
            and text.count("`") % 2 == 0
        )
        if not whole:
            found.append(("short help", f"{name}: {text!r} is cut short"))
    return found


PATHS = list(command_paths(get_command(app)))


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(["metasweep", *path]))
def test_help_reads_whole_at_80_columns(path: tuple[str, ...]) -> None:
    page = render(app, path)
    assert problems(page, path) == [], page


def test_every_command_is_checked() -> None:
    assert ("train",) in PATHS and ("data", "import") in PATHS and ("jobs", "stop") in PATHS


def _typer_defaults() -> typer.Typer:
    """An app the way typer renders it unless told otherwise."""
    bad = typer.Typer(rich_markup_mode=None, add_completion=False)

    @bad.command()
    def load(
        sources: list[Path],
        image_size: Annotated[int, typer.Option(help="Resize images. Default: 28 for Omniglot.")] = -1,
        seed: int = 0,
    ) -> None:
        """Re-score a trained run on its meta-test tasks (e.g. with other inner_steps).

        \b
        A paragraph click does not rewrap, so it runs past the edge of an 80-column terminal.
        """

    @bad.command()
    def other() -> None:
        """Convert Omniglot or a folder of class subfolders into one Parquet dataset."""

    return bad


def test_the_checks_catch_what_they_are_for() -> None:
    bad = _typer_defaults()
    found = {kind for path in [(), ("load",)] for kind, _ in problems(render(bad, path), path)}
    assert found == {"width", "metavar", "no help", "default", "short help"}
