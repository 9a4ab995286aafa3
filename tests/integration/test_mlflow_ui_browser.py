"""What a sweep tracked, as a person sees it: ``metasweep ui`` on 127.0.0.1, driven by Playwright in
a headless Debian Chromium (``/usr/bin/chromium``; Playwright's own browser download is not used).

Every page is saved as a screenshot under the test's tmp_path (the paths are printed) and, when
``METASWEEP_SCREENSHOTS`` names a folder, copied there too."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow.tracking import MlflowClient

from metasweep.orchestrator.cli.models import stop_group

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(
        f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs Playwright for Python (pip install playwright; no browser download)"
)

# Without the networking flags Chromium keeps calling Google's hosts, which a closed network refuses.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# A fresh profile opens MLflow 3.17's assistant panel over a third of the page on its first visit:
# the UI's own client-side behaviour, which no server setting turns off (a user closes it once).
# These are the keys its close button writes, so that the screenshots show the page beneath.
# Which view the UI shows (GenAI or model training) is not preset: that is left to the links the
# sweep and `metasweep ui` print, which is what the test is about.
UI_PREFERENCES = """
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
"""
WAIT_MS = 30_000  # the UI's first API calls are slow on a busy 2-core machine

EXPERIMENT = "browser-it"
SWEEP_NAME = "ui-sweep"
MODEL = "ui-sine"
SWEEP = f"""
name: {SWEEP_NAME}
algorithm: maml
model: {{name: mlp, hidden: [20, 20]}}
data: {{dataset: sinusoid, shots: 5, queries: 5}}
train: {{iterations: 60, meta_batch_size: 5, eval_every: 20}}
eval: {{inner_steps: 3, val_tasks: 20, test_tasks: 30, batch_size: 10}}
search:
  space:
    train.inner_lr: {{type: loguniform, low: 0.005, high: 0.05}}
  num_samples: 2
  max_concurrent: 1
  scheduler: fifo
tracking: {{experiment: {EXPERIMENT}, registered_model: {MODEL}}}
"""


@pytest.fixture
def swept_ui(
    free_port, run_cli, wait_for_port, migrated_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """``metasweep ui`` on 127.0.0.1 (its URL) on a SQLite store (its URI) that holds one finished
    sweep with two trials and a registered champion, and the links the sweep printed (by name:
    trials, sweep, plots, model), pointed at this UI's port.

    The UI starts once the sweep has ended, as a user starts it, so that what it prints names the
    sweep's experiment. The server's job runner (huey consumers for GenAI features no page here
    uses) stays off: it is eight more processes to start."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = f"sqlite:///{migrated_store(tmp_path)}"
    port = free_port()
    Path("sweep.yaml").write_text(SWEEP)
    result = run_cli("sweep", "sweep.yaml", "--set", f"tracking.uri={uri}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"registered {MODEL} v1 as @champion" in result.stderr
    # Then the UI, as a user starts it after a sweep: what it prints names the sweep's experiment.
    with (tmp_path / "ui.log").open("w") as said:
        ui = subprocess.Popen(
            [sys.executable, "-m", "metasweep", "ui", "--port", str(port), "--tracking-uri", uri],
            stdout=said, stderr=subprocess.STDOUT, start_new_session=True,
            env={
                **os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1",
            },
        )  # fmt: skip
    try:
        wait_for_port(port, ui, "metasweep ui", timeout=120)
        url = f"http://127.0.0.1:{port}"
        # uvicorn listens before its workers are up; /health answers once one serves requests.
        with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
            assert response.read() == b"OK"
        links = {
            name: link.replace("http://127.0.0.1:5000/", f"{url}/")
            for name, link in re.findall(r"^  (trials|sweep|plots|model): +(\S+)", result.stderr, re.M)
        }
        assert set(links) == {"trials", "sweep", "plots", "model"}, result.stderr[-3000:]
        # What `metasweep ui` says to open.
        said = (tmp_path / "ui.log").read_text()
        printed = re.search(r"MLflow UI for \S+ at (\S+) ", said)
        runs = re.search(rf"^  {EXPERIMENT}: (\S+)$", said, re.M)
        assert printed and runs, said[-2000:]
        links["ui"], links["ui-runs"] = printed.group(1), runs.group(1).replace(":5000/", f":{port}/")
        yield url, uri, links
    finally:
        stop_group(ui, grace_s=15)  # the CLI's own: MLflow's workers go with it


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh headless Chromium profile, 1600x1000."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1600, "height": 1000},
        )
        context.add_init_script(UI_PREFERENCES)
        context.set_default_timeout(WAIT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """Save the visible page as ``name``.png for a person to look at."""
    path = tmp_path / "screenshots" / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    if extra := os.environ.get("METASWEEP_SCREENSHOTS"):
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


def test_mlflow_ui_shows_the_sweep_its_trials_their_curves_and_the_champion(
    swept_ui: tuple[str, str, dict[str, str]], browser_page: Page, free_port, wait_for_port, tmp_path: Path
) -> None:
    """Then Optuna Dashboard shows the same sweep's study (one sweep for both keeps it short)."""
    ui_url, store_uri, links = swept_ui
    page = browser_page
    expect = sync_api.expect
    client = MlflowClient(store_uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    trials = sorted(c.info.run_name for c in children)
    assert len(trials) == 2 and parent.info.run_name == SWEEP_NAME
    best = next(c for c in children if c.info.run_name == parent.data.tags["metasweep.best_trial"])
    evaluations = len(client.get_metric_history(best.info.run_id, "val/mse"))
    assert evaluations == 3  # steps 20, 40, 60
    sweep_link = page.get_by_role("link", name=SWEEP_NAME, exact=True)
    trial_links = page.get_by_role("link", name=re.compile("^(" + "|".join(map(re.escape, trials)) + ")$"))
    try:
        # The first page of a fresh profile: the summary's link opens on the runs, the sweep one
        # top-level row; its trials appear under it only once it is expanded.
        assert links["trials"] == f"{ui_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        page.goto(links["trials"])
        expect(page.get_by_text(f"{1 + len(trials)} matching runs")).to_be_visible(timeout=WAIT_MS)
        expect(sweep_link).to_be_visible(timeout=WAIT_MS)
        expect(trial_links).to_have_count(0)
        screenshot(page, tmp_path, "1-runs-collapsed")

        # What `metasweep ui` prints: the list of experiments, and a link to each experiment's runs,
        # which opens the same runs. (A click on the experiment in MLflow 3.17's own list opened
        # its GenAI overview here, "Detect Issues in Your Traces", so ui prints the runs' links.)
        assert links["ui"] == f"{ui_url}/#/experiments?workflowType=machine_learning", links["ui"]
        page.goto(links["ui"])
        expect(page.get_by_test_id("experiment-list-item-link").filter(has_text=EXPERIMENT)).to_be_visible(
            timeout=WAIT_MS
        )
        screenshot(page, tmp_path, "2-experiments")
        assert links["ui-runs"] == links["trials"], links
        page.goto(links["ui-runs"])
        expect(page.get_by_text(f"{1 + len(trials)} matching runs")).to_be_visible(timeout=WAIT_MS)
        expect(sweep_link).to_be_visible(timeout=WAIT_MS)
        # From MLflow's own list, the experiment opens on its runs once the user has switched the
        # view to "Model training" (MLflow remembers it; before, it opened the GenAI overview here).
        page.goto(links["ui"])
        listed = page.get_by_test_id("experiment-list-item-link").filter(has_text=EXPERIMENT)
        listed.click()
        # The GenAI overview's "Detect Issues" guidance takes every click until it is dismissed.
        with contextlib.suppress(sync_api.TimeoutError):
            page.get_by_role("button", name="Got it").click(timeout=10_000)
        page.get_by_text("Model training", exact=True).click()
        expect(page.get_by_text(f"{1 + len(trials)} matching runs")).to_be_visible(timeout=WAIT_MS)
        page.goto(links["ui"])
        listed.click()
        expect(page.get_by_text(f"{1 + len(trials)} matching runs")).to_be_visible(timeout=WAIT_MS)
        screenshot(page, tmp_path, "2b-from-the-list-after-switching")
        sweep_row = page.get_by_role("row").filter(has=sweep_link)
        sweep_row.locator('[col-id="attributes.`Run Name`"] button').click()
        expect(trial_links).to_have_count(len(trials), timeout=WAIT_MS)
        for trial in trials:
            expect(page.get_by_role("link", name=trial, exact=True)).to_be_visible()
        screenshot(page, tmp_path, "3-runs-expanded")

        # The best trial's val/mse curve is drawn, one marker per evaluation.
        page.goto(f"{ui_url}/#/experiments/{experiment_id}/runs/{best.info.run_id}/model-metrics")
        # The cost/ and train/ charts come first; a user looks val/mse up as the page offers.
        page.get_by_role("searchbox", name="Search metric charts").fill("val/mse")
        chart = page.get_by_test_id("experiment-view-compare-runs-card").filter(
            has_text=f"{best.info.run_name} (val/mse)"
        )
        expect(chart).to_be_visible(timeout=WAIT_MS)
        expect(chart.locator(".js-plotly-plot .point")).to_have_count(evaluations, timeout=WAIT_MS)
        chart.scroll_into_view_if_needed()
        screenshot(page, tmp_path, "4-trial-model-metrics")

        # The sweep's own run, its plots and the registered model, each from its printed link.
        page.goto(links["sweep"])
        expect(page.get_by_role("heading", name=SWEEP_NAME)).to_be_visible(timeout=WAIT_MS)
        screenshot(page, tmp_path, "5-sweep-run")
        page.goto(links["plots"])
        page.get_by_text("plots", exact=True).first.click(timeout=WAIT_MS)
        page.get_by_text("learning_curves.png").first.click(timeout=WAIT_MS)
        expect(page.get_by_text("Select a file to preview")).to_have_count(0, timeout=WAIT_MS)
        screenshot(page, tmp_path, "6-sweep-plots")

        page.goto(links["model"])
        expect(page.get_by_role("heading", name=MODEL, exact=True)).to_be_visible(timeout=WAIT_MS)
        version_row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 1"))
        expect(version_row).to_contain_text("champion", timeout=WAIT_MS)
        screenshot(page, tmp_path, "7-registered-model")
    except Exception:
        screenshot(page, tmp_path, "failure")
        raise
    dashboard_shows_the_study(page, free_port(), wait_for_port, tmp_path)


def dashboard_shows_the_study(page: Page, port: int, wait_for_port, tmp_path: Path) -> None:
    """The sweep's study, kept in its folder, in ``metasweep dashboard``: the study's name in the
    list of studies, and its two trials on its page."""
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "dashboard", SWEEP_NAME, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, dashboard, "metasweep dashboard", timeout=60)
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        study = page.get_by_role("link", name=re.compile(rf"^\d+\. {SWEEP_NAME} Direction: MINIMIZE"))
        sync_api.expect(study).to_be_visible(timeout=WAIT_MS)
        screenshot(page, tmp_path, "8-optuna-dashboard-studies")
        study.click()
        sync_api.expect(page.get_by_text(re.compile(rf"^{SWEEP_NAME} \(id=\d+\)$"))).to_be_visible(
            timeout=WAIT_MS
        )
        sync_api.expect(page.get_by_role("heading", name="History")).to_be_visible(timeout=WAIT_MS)
        sync_api.expect(page.get_by_role("heading", name="Hyperparameter Importance")).to_be_visible()
        screenshot(page, tmp_path, "9-optuna-dashboard-study")
    except Exception:
        screenshot(page, tmp_path, "dashboard-failure")
        raise
    finally:
        stop_group(dashboard)
