"""One sweep on a real multi-node Ray cluster on this machine, submitted as a Ray job.

Starts ``cluster/local`` (a head and ``--workers`` worker nodes of one CPU each, an MLflow server
with basic auth and a PostgreSQL backend store), submits ``examples/sweep_sinusoid_maml.yaml``
with ``metasweep submit --wait``, and reports nodes, trials per node, wall time and the champion.

    .venv/bin/python benchmarks/cluster_sweep.py --workers 2 --trials 8 --iterations 2000
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "cluster" / "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (one CPU each)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="metasweep-cluster-"))
    dashboard, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "CLUSTER_DIR": str(folder),
        "PYTHON_BIN": str(Path(sys.executable).parent),
        "RAY_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(dashboard),
        "RAY_CLIENT_PORT": str(free_port()),
        "MLFLOW_PORT": str(mlflow_port),
        "PG_PORT": str(free_port()),
        "RAY_WORKERS": str(args.workers),
        "MLFLOW_BACKEND": args.backend,
        "MLFLOW_AUTH": "1",
    }
    tracking = f"http://127.0.0.1:{mlflow_port}"
    try:
        t0 = time.monotonic()
        subprocess.run([str(SCRIPTS / "start.sh")], env=env, check=True, cwd=folder)
        started = time.monotonic() - t0
        env["MLFLOW_TRACKING_USERNAME"] = "admin"
        env["MLFLOW_TRACKING_PASSWORD"] = (folder / "mlflow" / "admin_password").read_text().strip()
        env["MLFLOW_TRACKING_URI"] = tracking
        name = f"cluster-{time.strftime('%H%M%S')}"
        t0 = time.monotonic()
        done = subprocess.run(
            [
                sys.executable, "-m", "metasweep", "submit",
                str(ROOT / "examples" / "sweep_sinusoid_maml.yaml"),
                "--address", f"http://127.0.0.1:{dashboard}", "--wait",
                "--set", f"name={name}",
                "--set", f"search.num_samples={args.trials}",
                "--set", f"search.max_concurrent={args.workers}",
                "--set", f"train.iterations={args.iterations}",
                "--set", f"search.grace_period={args.iterations // 4}",
                "--set", f"train.eval_every={args.iterations // 8}",
            ],
            env=env, cwd=folder, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.monotonic() - t0
        if done.returncode != 0:
            sys.exit(f"the sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

        os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("sinusoid")
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`metasweep.sweep` = '{name}'"
        )
        trials = [r for r in runs if "metasweep.trial_id" in r.data.tags]
        per_node = collections.Counter(r.data.tags.get("metasweep.node_id", "?")[:8] for r in trials)
        statuses = collections.Counter(r.data.tags.get("metasweep.status", "?") for r in trials)
        champion = client.get_model_version_by_alias("sinusoid-10shot", "champion")
        print(f"machine: {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}")
        print(f"cluster: head (0 CPUs) + {args.workers} worker nodes x 1 CPU, started in {started:.0f} s")
        print(f"MLflow: {args.backend} backend store, basic auth, {tracking}")
        print(f"sweep: {len(trials)} trials x {args.iterations} meta-iterations, wall time {wall:.0f} s")
        print(f"trials per node: {dict(per_node)}")
        print(f"trial outcomes: {dict(statuses)}")
        metric, value = champion.tags.get("metasweep.metric"), champion.tags.get("metasweep.test_value")
        print(f"champion: sinusoid-10shot v{champion.version}, {metric} {float(value or 'nan'):.3f}")
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh")], env=env, capture_output=True)


if __name__ == "__main__":
    main()
