"""The docs cannot drift from the code: README and docs/ snippets are run or checked here.

Every ``bash`` and ``python`` block carries a marker on the line before it:

- ``<!-- snippet: run -->``: executed (bash with ``-e``, python as a script) in a fresh folder that
  sees the repository's ``examples/`` and ``../shared`` as the repository root does;
- ``<!-- snippet: run, needs Omniglot -->``: the same, skipped, saying why, without the data;
- ``<!-- snippet: run, scaled -->`` (optionally ``, needs Omniglot``): the same, with every
  ``metasweep train`` and ``sweep`` line given ``--set`` overrides that shrink its training to
  seconds (:data:`SCALED`): the commands and their order are the reader's, the budget is not;
- ``<!-- snippet: pytest -->``: a test file, run with pytest, which must pass;
- ``<!-- snippet: not run: REASON -->``: not executed, and the reason is required.

A ``console`` block is a transcript: each ``$ metasweep ...`` line is run and must print the
lines shown after it. A command in a block of no language fails the suite.

Whatever the marker, every ``metasweep`` command line in a bash block is parsed by the CLI's own
parser (an unknown option or a missing argument fails), every example config it names validates
with its ``--set`` overrides, every python block compiles and every yaml block parses. The
configuration reference must be what the schema generates.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml
from typer.main import get_command

from metasweep.orchestrator.cli import app
from metasweep.orchestrator.config import SweepConfig, load_config, reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- snippet: (run(?:, scaled)?(?:, needs Omniglot)?|pytest|not run: .+) -->\s*$")
_SHORT_TRAINING = ["train.iterations=20", "train.eval_every=10", "eval.val_tasks=5", "eval.test_tasks=10"]
SCALED = {
    "train": _SHORT_TRAINING,
    "sweep": [*_SHORT_TRAINING, "search.num_samples=2", "search.grace_period=10"],
}
"""The overrides a ``scaled`` snippet's ``metasweep COMMAND`` lines get, after the reader's own."""


@dataclass(frozen=True)
class Snippet:
    """One fenced block of a Markdown page."""

    page: Path
    line: int
    language: str
    marker: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for page in DOCS:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if not opening:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            marker = MARKER.match(lines[i - 1]) if i else None
            found.append(
                Snippet(
                    page,
                    i + 1,
                    opening.group(1),
                    marker.group(1) if marker else "",
                    "\n".join(lines[i + 1 : end]),
                )
            )
            i = end + 1
    return found


SNIPPETS = snippets()
CODE = [s for s in SNIPPETS if s.language in ("bash", "python")]
RUN = [s for s in CODE if not s.marker.startswith("not run")]


def test_every_code_snippet_says_whether_it_runs() -> None:
    unmarked = [s.id for s in CODE if not s.marker]
    assert not unmarked, f"add <!-- snippet: run --> or <!-- snippet: not run: REASON --> before {unmarked}"
    assert RUN, "no snippet runs at all"
    # A command shown in a block of no language would escape every check here.
    hidden = [
        s.id
        for s in SNIPPETS
        if s.language in ("", "text", "sh", "shell") and re.search(r"^\$? ?metasweep ", s.text, re.M)
    ]
    assert not hidden, f"show commands in a bash block, or as a console transcript: {hidden}"


CONSOLE = [s for s in SNIPPETS if s.language == "console"]


def transcript(text: str) -> list[tuple[list[str], list[str]]]:
    """A console block's ``$ metasweep ...`` commands, each with the output lines shown after it."""
    found: list[tuple[list[str], list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            words = shlex.split(line[2:])
            assert words[:1] == ["metasweep"], f"a console transcript shows metasweep commands only: {line}"
            found.append((words[1:], []))
        else:
            assert found, f"output before any command: {line}"
            found[-1][1].append(line)
    return found


@pytest.mark.parametrize("snippet", CONSOLE, ids=[s.id for s in CONSOLE])
def test_console_transcripts_show_what_the_command_prints(snippet: Snippet, cli, tmp_path: Path) -> None:
    """Each command of a console block, run in a fresh folder that sees examples/, prints every
    output line shown (``(...)`` stands for the rest of a line cut short), and exits 2 where the
    output is an error. Transcripts show commands that end before any work (refusals, help)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for words, shown in transcript(snippet.text):
        result = cli(*words)
        printed = (result.stdout + result.stderr).splitlines()
        for line in filter(None, shown):
            pattern = re.escape(line).replace(re.escape("(...)"), ".*")
            assert any(re.fullmatch(pattern, p) for p in printed), f"{snippet.id}: {line!r} not in {printed}"
        error = any(line.startswith("metasweep: error:") for line in shown)
        assert result.returncode == (2 if error else 0), (snippet.id, result.returncode)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def scaled(text: str) -> str:
    """``text`` with :data:`SCALED`'s overrides appended to its ``metasweep train``/``sweep`` lines
    (continuations joined, comments dropped); every other line as it is."""
    lines = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["metasweep"] and len(words) > 1 and words[1] in SCALED:
            line = shlex.join([*words, *(a for o in SCALED[words[1]] for a in ("--set", o))])
        lines.append(line)
    return "\n".join(lines)


def test_scaling_a_snippet_appends_the_overrides_to_training_commands_only() -> None:
    text = (
        "mkdir -p data   # a folder\n"
        "metasweep train a.yaml \\\n    --set seed=3  # one run\n"
        "metasweep models list\n"
    )
    lines = scaled(text).splitlines()
    assert lines[0] == "mkdir -p data   # a folder" and lines[2] == "metasweep models list"
    assert lines[1].startswith("metasweep train a.yaml --set seed=3 --set train.iterations=20 --set")
    assert shlex.split(lines[1])[-1] == "eval.test_tasks=10"


def commands(text: str) -> list[list[str]]:
    """The ``metasweep`` command lines of a bash block, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "metasweep":
            found.append(words[1:])
    return found


BASH = [s for s in SNIPPETS if s.language == "bash" and commands(s.text)]


@pytest.mark.parametrize("snippet", BASH, ids=[s.id for s in BASH])
def test_documented_command_lines_parse_and_their_example_configs_validate(snippet: Snippet) -> None:
    group = get_command(app)
    for words in commands(snippet.text):
        context = click.Context(group, info_name="metasweep")
        name, command, rest = group.resolve_command(context, words)
        while isinstance(command, click.Group):
            context = click.Context(command, info_name=name, parent=context)
            name, command, rest = command.resolve_command(context, rest)
        assert command is not None, words
        parsed = command.make_context(name, list(rest), parent=context)  # raises on a bad option
        config = parsed.params.get("config")
        if config is not None and str(config).startswith("examples/"):
            overrides = [o for o in parsed.params.get("set_") or [] if not o.startswith("data.dataset=s3:")]
            schema = SweepConfig if name in ("sweep", "submit") else None
            if schema is None:
                load_config(ROOT / config, overrides)
            else:
                load_config(ROOT / config, overrides, schema)


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.language == "python"], ids=lambda s: s.id)
def test_python_snippets_compile(snippet: Snippet) -> None:
    compile(snippet.text, snippet.id, "exec")


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.language == "yaml"], ids=lambda s: s.id)
def test_yaml_snippets_parse(snippet: Snippet) -> None:
    assert isinstance(yaml.safe_load(snippet.text), dict)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", RUN, ids=[s.id for s in RUN])
def test_runnable_snippets_run(snippet: Snippet, migrated_store, tmp_path: Path) -> None:
    if "needs Omniglot" in snippet.marker and not (ROOT.parent / "shared" / "data" / "omniglot").is_dir():
        pytest.skip("Omniglot data not found at ../shared/data/omniglot")
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    # README's tour makes its ./mlflow.db as a new user's first sweep does; the other pages'
    # sweeps start from a migrated empty one, which saves each 4 s of migrations.
    if snippet.page.name != "README.md" and any(words[:1] == ["sweep"] for words in commands(snippet.text)):
        migrated_store(work)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    if snippet.marker == "pytest":
        (work / "test_snippet.py").write_text(snippet.text)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_snippet.py"]
    elif snippet.language == "python":
        argv = [sys.executable, "-c", snippet.text]
    else:
        argv = ["bash", "-e", "-c", scaled(snippet.text) if "scaled" in snippet.marker else snippet.text]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{snippet.id} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_configuration_reference_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == reference() + "\n", "run `make docs`"


def test_the_links_between_pages_lead_somewhere() -> None:
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"
