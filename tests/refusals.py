"""What a refused command looks like to its user: exit code 2, one readable message, no traceback."""

from __future__ import annotations

import subprocess

ERROR_STARTS = ("metasweep: error: ", "Error: ")
"""How the CLI's own refusals (``UserError``) and its usage errors (typer's) begin their line."""


def assert_refused(result: subprocess.CompletedProcess[str], *says: str) -> str:
    """Assert that ``result`` is a refusal as users should see one, saying each of ``says``.

    Exit code 2, no traceback, and exactly one error line on stderr (log lines and warnings
    before it are allowed); each of ``says`` is in the message, which runs from that line to the
    end of stderr (a message may span lines).

    Returns:
        The message, for checks of its own.
    """
    stderr = result.stderr
    assert result.returncode == 2, (result.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(ERROR_STARTS)]
    assert len(errors) == 1, stderr[-3000:]
    message = "\n".join(lines[errors[0] :])
    for text in says:
        assert text in message, (text, message[-3000:])
    return message


NOISE = {
    "ExperimentalWarning": "Optuna's warnings of multivariate TPE",
    "Token authentication is enabled": "Ray's notice of its own default",
    "TensorBoard": "Tune's hint to run TensorBoard",
    "tensorboard": "Tune's hint to run TensorBoard",
    "Add type hints": "MLflow's type-hint warning at a model's load",
    "\x1b[": "a raw terminal escape code in captured output",
    "DeprecationWarning": "a deprecation warning",
    "Downloading artifacts": "MLflow's bars, one per artifact, instead of the command's one",
}
"""What the newcomer issue found in a first hour's output, and what each was."""


def assert_quiet(output: str) -> None:
    """Assert that a command's ``output`` holds none of :data:`NOISE`."""
    found = [f"{what} ({text!r})" for text, what in NOISE.items() if text in output]
    assert not found, f"noise in the output: {found}\n{output[-3000:]}"
