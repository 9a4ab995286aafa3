"""Credentials kept out of everything metasweep prints, logs or stores.

A URI may carry a login in its userinfo part (``postgresql://user:password@host/db``,
``https://token@mlflow.example.com``). :func:`redact` replaces that part with ``***`` wherever
such a URI appears in a text; the CLI applies it to every message and log record, the tracker to
every config, parameter and error it writes to MLflow. :func:`uri_scheme` is the one reading of
what kind of store a URI names.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
# scheme://userinfo@ — the userinfo runs to the last "@" before the host's end, so a password
# holding an unescaped "@" is masked whole.
_LOGIN = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#'\"<>\[\]]*@")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URI in it replaced by ``***``."""
    return _LOGIN.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def has_login(uri: str) -> bool:
    """Whether ``uri`` carries a user name or password in its userinfo part."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    return "@" in parts.netloc


def uri_scheme(uri: str) -> str:
    """The scheme of ``uri``, lower-case and without its driver (``postgresql+psycopg2://...`` is
    ``postgresql``); ``""`` for a plain path."""
    head, separator, _ = uri.partition("://")
    return head.split("+")[0].lower() if separator else ""


def redact_log_records() -> None:
    """Make every log record of this process redacted as it is created, whichever library logs
    it and whichever handler prints it. Idempotent."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
