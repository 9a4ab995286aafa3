"""The one exception type that reaches users as a message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a wrong config, a missing file, an impossible request.

    The CLI prints ``str(error)`` and exits with code 2. The message must say what was wrong
    and what to do about it.
    """
