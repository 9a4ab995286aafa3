"""The Ray Jobs API client: reach a cluster's dashboard, authenticate, submit and manage jobs.

Ray's token authentication is on by default for clusters started with ``ray start`` (Ray 2.59+):
the token comes from ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``, and is sent as a bearer header on every request.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from metasweep.orchestrator.errors import UserError

DASHBOARD_PORT = 8265
SWEEP_METADATA = "metasweep.sweep"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def dashboard_url(address: str) -> str:
    """``HOST``, ``HOST:PORT`` or ``http(s)://HOST:PORT`` as the dashboard's URL."""
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(
            f"--address {address!r} is not a Ray dashboard address; give http://HEAD:{DASHBOARD_PORT}"
        )
    port = parsed.port or DASHBOARD_PORT
    return f"{parsed.scheme}://{parsed.hostname}:{port}"


def auth_token() -> str | None:
    """Ray's token: ``$RAY_AUTH_TOKEN``, else ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidate = Path(path) if path else Path.home() / ".ray" / "auth_token"
    try:
        token = candidate.read_text().strip()
    except OSError:
        if path:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read") from None
        return None
    return token or None


def use_token_auth() -> None:
    """Make a Ray driver send the token to a cluster that wants one.

    Ray sends it only with ``RAY_AUTH_MODE=token``, read when ``ray`` is first imported, so
    this must run before that; it sets the mode when a token is available and none is chosen.
    """
    if "RAY_AUTH_MODE" not in os.environ and auth_token():
        os.environ["RAY_AUTH_MODE"] = "token"


class Cluster:
    """A Ray cluster's Jobs API, reached through its dashboard.

    Every method raises :class:`UserError` with a readable message for what a user can fix: no
    cluster at the address, a missing or wrong token, a job id that does not exist.
    """

    def __init__(self, address: str, timeout: float = 5.0):
        self.url = dashboard_url(address)
        _probe(self.url, timeout)
        from ray.job_submission import JobSubmissionClient

        token = auth_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        with self._errors():
            self.client = JobSubmissionClient(self.url, headers=headers, verify=True)
        self._headers = headers or {}

    @contextmanager
    def _errors(self, job_id: str | None = None) -> Iterator[None]:
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as exc:
            if "invalid" in str(exc).lower() or "forbidden" in str(exc).lower():
                raise UserError(
                    f"the Ray cluster at {self.url} refused the authentication token; use the head "
                    "node's token (`ray get-auth-token` there) in RAY_AUTH_TOKEN or ~/.ray/auth_token"
                ) from None
            raise UserError(
                f"the Ray cluster at {self.url} requires an authentication token and none was found; "
                "set RAY_AUTH_TOKEN or copy the head node's ~/.ray/auth_token to this machine"
            ) from None
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray Jobs API at {self.url}: {exc}") from None
        except RuntimeError as exc:
            if job_id is not None and ("does not exist" in str(exc) or "404" in str(exc)):
                raise UserError(
                    f"no job {job_id!r} on the Ray cluster at {self.url}; `metasweep jobs list` shows them"
                ) from None
            raise UserError(f"the Ray Jobs API at {self.url} answered: {exc}") from None

    def nodes(self) -> list[dict[str, Any]]:
        """The alive nodes (``node_ip``, ``is_head_node``, ``resources_total``), from Ray's state API
        with this client's token (benchmarks/node_list.py measured it against a raw REST call)."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, NodeState, StateResource

        options = ListApiOptions(limit=10000, timeout=10, filters=[("state", "=", "ALIVE")])
        with self._errors():
            try:
                listed = StateApiClient(self.url, headers=self._headers or None).list(
                    StateResource.NODES, options, raise_on_missing_output=False
                )
            except Exception as exc:  # the state API raises its own and requests' types
                raise UserError(f"the Ray dashboard at {self.url} did not list its nodes: {exc}") from None
        return [
            {"node_ip": n.node_ip, "is_head_node": n.is_head_node, "resources_total": dict(n.resources_total)}
            for n in listed
            if isinstance(n, NodeState)
        ]

    def probe_http(self, url: str, what: str, timeout: float = 120) -> None:
        """Raise unless the cluster's head can open ``url``; runs (then deletes) a tiny job."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try: urllib.request.urlopen(sys.argv[1], timeout=10)\n"
            "except urllib.error.HTTPError: pass\n"
            "except Exception as e: sys.exit(f'unreachable: {e}')\n"
        )
        with self._errors():
            job_id = _until_an_agent_answers(
                lambda: self.client.submit_job(
                    entrypoint=f"python -c {shlex.quote(code)} {shlex.quote(url)}", entrypoint_num_cpus=0
                )
            )
        try:
            info = self.wait(job_id, timeout)
        finally:
            with suppress(Exception):
                self.client.delete_job(job_id)
        if str(info.status) != "SUCCEEDED":
            raise UserError(
                f"{what} at {url.rsplit('/', 1)[0]} is not reachable from this machine "
                f"nor from the Ray cluster at {self.url}"
            )

    def submit(self, entrypoint: str, runtime_env: dict[str, Any], job_id: str, sweep: str) -> str:
        with self._errors():
            return str(
                _until_an_agent_answers(
                    lambda: self.client.submit_job(
                        entrypoint=entrypoint,
                        runtime_env=runtime_env,
                        submission_id=job_id,
                        metadata={SWEEP_METADATA: sweep},
                        entrypoint_num_cpus=0,
                    )
                )
            )

    def list(self) -> list[Any]:
        with self._errors():
            return sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0)

    def info(self, job_id: str) -> Any:
        with self._errors(job_id):
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return str(self.client.get_job_logs(job_id))

    def follow(self, job_id: str) -> Iterator[str]:
        """The job's log as it is written, until the job ends."""
        import asyncio

        self.info(job_id)
        stream = self.client.tail_job_logs(job_id)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    with self._errors(job_id):
                        chunk = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            loop.close()

    def stop(self, job_id: str) -> bool:
        with self._errors(job_id):
            self.info(job_id)
            return bool(self.client.stop_job(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job ends; returns its final info."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info(job_id)
            if str(info.status) in TERMINAL:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(f"job {job_id} did not finish within {timeout:g} s")
            time.sleep(1.0)


NO_AGENT = "No available agent to submit job"


def _until_an_agent_answers(submit: Callable[[], str], patience: float = 30, pause: float = 2) -> str:
    """``submit()``, again while the head answers that no job agent is available.

    Ray's job head hands a submission to the head node's job agent, and answers 500 "No available
    agent to submit job, please try again later" while it finds none: for a few seconds after the
    head starts, until the agent registers; for good when the agent could not bind its port
    (Ray's default, 52365, is taken by any other Ray on the machine), since Ray then keeps the
    agent up with its HTTP service off. Nothing was created, so the same submission id is tried
    again for up to ``patience`` seconds, and then the answer is given with what to look at; any
    other answer is the caller's.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            return submit()
        except RuntimeError as exc:
            if NO_AGENT not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise RuntimeError(
                    f"{exc} (for {patience:.0f} s): the head's job agent is not serving; its log is "
                    "dashboard_agent.log on the head. If its port was taken by another Ray on the "
                    "machine, restart the head with another --dashboard-agent-listen-port "
                    "(RAY_AGENT_PORT for cluster/local)"
                ) from exc
            time.sleep(pause)


def _probe(url: str, timeout: float) -> None:
    """Fail fast, with a message, when nothing listens at ``url`` (the client would hang or retry)."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or DASHBOARD_PORT), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"no Ray cluster answers at {url} ({exc.strerror or exc}); start one "
            "(cluster/local/start-ray.sh on this machine) or check --address"
        ) from None
