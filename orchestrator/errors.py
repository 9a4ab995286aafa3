"""The one exception type that reaches users as a message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a wrong config, a missing file, an impossible request.

    The CLI prints ``str(error)`` and exits with code 2. The message must say what was wrong
    and what to do about it.
    """


class TrainingDiverged(UserError):
    """The meta-training loss became NaN or infinite: these hyperparameters do not train.

    Deterministic for a given config and seed, so a sweep records the trial as diverged rather
    than retrying it.
    """
