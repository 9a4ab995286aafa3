"""Where MLflow keeps runs and models: the tracking URI, and a fast check that a server answers."""

from __future__ import annotations

import os
from pathlib import Path

from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.redact import redact, uri_scheme

DEFAULT_URI = "sqlite:///mlflow.db"
UI_PORT = 5000  # where `metasweep ui` serves a database store by default

# MLflow 3.17's UI shows every experiment as its kind of the moment, chosen by a global switch
# (GenAI by default) that a link can set with this query; the experiment's own kind tag is what
# earlier 3.x UIs read.
UI_VIEW = "workflowType=machine_learning"
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


# Stores MLflow 3.17 tracks and registers models in (a plain folder is refused since 3.13).
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


def tracking_uri(configured: str | None) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else a local SQLite file.

    Raises:
        UserError: a URI with no scheme MLflow stores runs and models in (``localhost:5000``,
            a folder path).
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    scheme = uri_scheme(uri)
    if scheme == "databricks" or uri in ("databricks", "databricks-uc") or scheme in SCHEMES:
        return uri
    if scheme == "file" or (not scheme and "://" not in uri and ("/" in uri or uri.startswith("."))):
        hint = "a plain folder cannot hold the registry (MLflow 3.13+); use sqlite:///PATH/mlflow.db"
    elif ":" in uri:
        hint = f"did you mean http://{uri}?"
    else:
        hint = "e.g. http://HOST:5000 or sqlite:///mlflow.db"
    raise UserError(
        f"tracking URI {redact(uri)!r} has no scheme MLflow can store runs in ({', '.join(SCHEMES)}); {hint}"
    )


def existing_store(uri: str) -> str:
    """``uri`` for a command that only reads (``models list``/``pull``, ``adapt``, ``ui``): a
    SQLite store must exist already, because MLflow would create an empty one and the command
    would show nothing, as if the sweep had never run.

    Raises:
        UserError: a ``sqlite:`` URI whose file does not exist.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(
                f"no MLflow store at {path.absolute()} ({uri}): nothing was tracked there. Run this "
                "from the folder you ran the sweep in, or point to the store with --tracking-uri or "
                "$MLFLOW_TRACKING_URI"
            )
    return uri


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast on a tracking server that does not answer or does not let us in (MLflow's own
    client retries for minutes before it gives up).

    Raises:
        UserError: an ``http(s)://`` URI whose ``/health`` does not answer within ``timeout``,
            or a server behind authentication that refuses the credentials in
            ``$MLFLOW_TRACKING_USERNAME``/``$MLFLOW_TRACKING_PASSWORD`` (or their absence).
    """
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.error
    import urllib.request

    base = uri.rstrip("/")
    try:
        urllib.request.urlopen(f"{base}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach the MLflow tracking server at {uri}: {reason}") from None
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {login}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and not (user and password):
            raise UserError(
                f"the MLflow tracking server at {uri} requires a login; set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD"
            ) from None
        if exc.code in (401, 403):
            raise UserError(
                f"the MLflow tracking server at {uri} refused the login of MLFLOW_TRACKING_USERNAME="
                f"{user!r} (HTTP {exc.code}); check the user name and password"
            ) from None
    except (urllib.error.URLError, OSError):
        pass  # /health answered; let the client report anything else in context


def ui_url(uri: str, page: str = "", port: int = UI_PORT) -> str:
    """The MLflow UI's link to ``page`` (``experiments/1/runs``, ``models/NAME``, or the start
    page) of the store ``uri``, open on the model-training view: a tracking server serves its own
    UI, a database store is served by ``metasweep ui`` on 127.0.0.1."""
    from urllib.parse import quote

    base = redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{base}/#/{quote(page)}?{UI_VIEW}"


def experiment_pages(uri: str, port: int = UI_PORT, limit: int = 10) -> list[tuple[str, str]]:
    """``(name, link)`` of the runs page of each experiment in the store ``uri`` (the most recently
    updated ``limit``; not MLflow's "Default", which metasweep never logs to), in the model-training
    view: the page that a click in MLflow 3.17's own list of experiments may not open (it showed
    the GenAI overview in tests/integration/test_mlflow_ui_browser.py)."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(uri).search_experiments(max_results=limit + 1, order_by=["last_update_time DESC"])
    pages = [
        (e.name, ui_url(uri, f"experiments/{e.experiment_id}/runs", port))
        for e in found
        if e.experiment_id != "0"
    ]
    return pages[:limit]


def use_store(uri: str) -> None:
    """Point MLflow's fluent API (runs, ``register_model``, ``models:/`` URIs) at ``uri`` for
    both tracking and registry: those calls read the process-wide URIs, not arguments, and a
    stale ``MLFLOW_REGISTRY_URI`` must not send a model elsewhere."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow search filter (``tags.x = 'value'``). MLflow's filter syntax
    has no escapes: the value goes in whichever quotes it does not contain.

    Raises:
        UserError: a value holding both kinds of quotes, which no MLflow filter can express.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"{value!r} holds both ' and \"; MLflow cannot search for it")
