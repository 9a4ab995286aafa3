"""Where a command will write, checked before it does any work.

Every output option (``--out``, ``--preview``, ``output_dir``, a CSV path) is checked here when
the command starts: a missing parent folder, or a file where a folder is wanted (or the
reverse), fails with one message before any data is read or any run is made.
"""

from __future__ import annotations

from pathlib import Path

from metasweep.orchestrator.errors import UserError


def check_output(path: str | Path, what: str, *, folder: bool = False, empty: bool = False) -> None:
    """Refuse an output location that cannot be written as asked.

    Args:
        path: a local path; a URI (``s3://...``) passes (its store checks it when written).
        what: the option's name for messages, e.g. ``--out``.
        folder: the output is a folder (else a file).
        empty: a folder that exists must be empty.

    Raises:
        UserError: the parent folder is missing or is a file, or ``path`` is a folder where a
            file is wanted, a file where a folder is wanted, or a folder that is not empty.
    """
    if "://" in str(path):
        return
    target = Path(path)
    parent = target.absolute().parent
    if not parent.exists():
        raise UserError(
            f"{what} {str(target)!r}: the folder {str(parent)!r} does not exist; create it first "
            f"(mkdir -p {parent})"
        )
    if not parent.is_dir():
        raise UserError(f"{what} {str(target)!r}: {str(parent)!r} is a file, not a folder")
    if folder:
        if target.exists() and not target.is_dir():
            raise UserError(f"{what} {str(target)!r} is a file; give a folder")
        if empty and target.is_dir() and any(target.iterdir()):
            raise UserError(f"{what} {str(target)!r} is not empty; give a new or empty folder")
    elif target.is_dir():
        raise UserError(f"{what} {str(target)!r} is a folder; give a file name inside it")
