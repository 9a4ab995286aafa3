"""The refusal check itself fails on what users should never see."""

from __future__ import annotations

import subprocess

import pytest

from tests.refusals import assert_refused


def done(code: int, stderr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["metasweep"], code, "", stderr)


def test_a_refusal_is_one_message_after_any_log_lines() -> None:
    said = assert_refused(
        done(2, "INFO starting\nmetasweep: error: ways=20 but\nsplit 'val' has 12\n"), "has 12"
    )
    assert said.startswith("metasweep: error: ways=20")
    assert_refused(
        done(2, "Usage: metasweep jobs status [OPTIONS] JOB_ID\n\nError: Missing argument 'JOB_ID'.\n")
    )


@pytest.mark.parametrize(
    ("code", "stderr", "says"),
    [
        (1, "metasweep: error: bad\n", ()),
        (2, "Traceback (most recent call last):\nmetasweep: error: bad\n", ()),
        (2, "metasweep: error: bad\nmetasweep: error: worse\n", ()),
        (2, "nothing said\n", ()),
        (2, "the store is ./mlflow.db\nmetasweep: error: bad\n", ("mlflow.db",)),  # said before the error
    ],
)
def test_what_users_should_not_see_fails_it(code: int, stderr: str, says: tuple[str, ...]) -> None:
    with pytest.raises(AssertionError):
        assert_refused(done(code, stderr), *says)
