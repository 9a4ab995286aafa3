"""Data-parallel scaling of one run: tasks/s of N Ray Train workers on the local multi-node cluster.

Starts ``cluster/local``'s Ray (a head of no CPUs and ``--nodes`` worker nodes of one CPU each),
and trains the same run on N = 1, 2, ... workers of one CPU each through the code a sweep's trial
of ``search.workers_per_trial: N`` runs (:func:`metasweep.orchestrator.sweep.workers.train_on_workers`).
Tasks/s is measured in the steady state, between the run's first and last meta-validation as
the driver hears of them, so the workers' start is not counted; efficiency is tasks/s at N over
N times tasks/s at 1, in the same run of this script.

    .venv/bin/python benchmarks/scaling.py --nodes 2 --workload conv4 --workload sinusoid
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "cluster" / "local"

WORKLOADS = {
    # Second-order MAML, the settings of the papers' sinusoid and Omniglot 5-way 1-shot runs.
    "sinusoid": {
        "algorithm": "maml",
        "data": {"dataset": "sinusoid", "shots": 10, "queries": 10},
        "train": {"meta_batch_size": 32, "inner_steps": 1, "inner_lr": 0.01},
    },
    "conv4": {
        "algorithm": "maml",
        "model": {"name": "conv4", "filters": 64},
        "data": {"ways": 5, "shots": 1, "queries": 15},
        "train": {"meta_batch_size": 8, "inner_steps": 1, "inner_lr": 0.4},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_images(folder: Path) -> Path:
    """A 28x28 grey-scale Parquet dataset of 30 classes (throughput does not depend on pixels)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(30):
        (folder / "images" / f"c{c:02d}").mkdir(parents=True)
        for j in range(20):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / "images" / f"c{c:02d}" / f"{j}.png")
    out = folder / "images.parquet"
    subprocess.run(
        [sys.executable, "-m", "metasweep", "data", "import", str(folder / "images"), "--out", str(out),
         "--split-ratios", "0.6,0.2,0.2", "--no-progress"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def measure(
    workload: str, workers: int, iterations: int, every: int, dataset: Path | None
) -> dict[str, float]:
    import ray

    from metasweep.orchestrator.config import RunConfig, load_config_dict
    from metasweep.orchestrator.data.format import load_dataset
    from metasweep.orchestrator.sweep.workers import Placement, Replicas, train_on_workers

    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in WORKLOADS[workload].items()}
    settings["train"] = {
        **settings["train"],
        "iterations": iterations,
        "eval_every": every,
        "workers": workers,
    }
    settings["eval"] = {"val_tasks": 4, "test_tasks": 4, "batch_size": 4, "inner_steps": 1}
    settings["device"] = "cpu"
    if dataset is not None:
        settings["data"] = {**settings["data"], "dataset": str(dataset)}
    config = load_config_dict(settings, [], RunConfig)
    data = load_dataset(str(dataset)) if dataset is not None else None
    problem = config.problem(data.metadata if data is not None else None)
    heard: list[tuple[float, int]] = []
    replicas = Replicas(
        config, problem, None if data is None else [ray.put(data)], lead_dir=None, resume=False,
        overwrite=False, test=False, every_s=3600.0,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="metasweep-scaling-") as storage:
        started = time.monotonic()
        train_on_workers(
            replicas,
            Placement(1.0, 0.0),
            storage=storage,
            name=f"{workload}-{workers}",
            on_eval=lambda i, m, c: heard.append((time.monotonic(), i)),
        )
        wall = time.monotonic() - started
    (t0, i0), (t1, i1) = heard[0], heard[-1]
    per_s = (i1 - i0) / (t1 - t0)
    return {"it_per_s": per_s, "tasks_per_s": per_s * config.train.meta_batch_size, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of one CPU each")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="(repeatable)")
    parser.add_argument(
        "--iterations", type=int, default=None, help="meta-iterations a run (default per workload)"
    )
    args = parser.parse_args()
    workloads = args.workload or ["sinusoid", "conv4"]
    folder = Path(tempfile.mkdtemp(prefix="metasweep-scaling-"))
    env = {
        **os.environ,
        "CLUSTER_DIR": str(folder / "cluster"),
        "PYTHON_BIN": str(Path(sys.executable).parent),
        "RAY_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(free_port()),
        "RAY_CLIENT_PORT": str(free_port()),
        "RAY_WORKERS": str(args.nodes),
    }
    dataset = synthetic_images(folder) if "conv4" in workloads else None
    rows = []
    try:
        subprocess.run([str(SCRIPTS / "start-ray.sh")], env=env, check=True, capture_output=True)
        os.environ["RAY_AUTH_MODE"] = "token"  # as cluster/local's clients (env.sh)
        import ray

        ray.init(address=f"127.0.0.1:{env['RAY_PORT']}", log_to_driver=False)
        for workload in workloads:
            iterations = args.iterations or (3000 if workload == "sinusoid" else 150)
            base = None
            for n in range(1, args.nodes + 1):
                got = measure(
                    workload, n, iterations, iterations // 5, dataset if workload == "conv4" else None
                )
                base = base or got["tasks_per_s"]
                got["efficiency"] = got["tasks_per_s"] / (n * base)
                rows.append((workload, n, got))
                print(
                    f"{workload} N={n}: {got['tasks_per_s']:.1f} tasks/s, efficiency "
                    f"{got['efficiency']:.2f}, {got['wall_s']:.0f} s with the workers' start",
                    flush=True,
                )
        ray.shutdown()
    finally:
        subprocess.run([str(SCRIPTS / "stop-ray.sh")], env=env, capture_output=True)
    machine = platform.processor() or platform.machine()
    lines = [
        f"# benchmarks/scaling.py --nodes {args.nodes} " + " ".join(f"--workload {w}" for w in workloads),
        f"# {time.strftime('%Y-%m-%d')}, {platform.node()}: {os.cpu_count()} CPUs, {machine}",
        "# cluster/local: a head of 0 CPUs and worker nodes of 1 CPU each; workers of 1 CPU, gloo",
        "workload  workers  tasks/s  efficiency  wall_s",
    ]
    for w, n, g in rows:
        lines.append(
            f"{w:<9} {n:>7}  {g['tasks_per_s']:>7.1f}  {g['efficiency']:>10.2f}  {g['wall_s']:>6.0f}"
        )
    save("scaling", lines)


if __name__ == "__main__":
    main()
