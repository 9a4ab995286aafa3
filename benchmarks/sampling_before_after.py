"""The episode sampler of this checkout against the one of an earlier commit, on the same machine
and dataset, alternating runs (a before/after check of a change to the sampler).

    git worktree add /tmp/before af34e0c         # a commit from before the metasweep namespace
    .venv/bin/python benchmarks/sampling_before_after.py --before /tmp/before --runs 2

The earlier checkout is imported from its folder (``orchestrator.datasets``, 0.1's layout); this
one is the installed ``metasweep``. Prints episodes per second for each case and run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
MEASURE = """
import json, sys, time, torch
torch.set_num_threads(1)
which, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if which == "before":
    sys.path.insert(0, sys.argv[4])
    from orchestrator.datasets import EpisodeSampler, load_dataset
else:
    from metasweep.orchestrator.data.format import load_dataset
    from metasweep.orchestrator.data.sampler import EpisodeSampler
dataset = load_dataset(path)
out = {}
for ways, shots in ((5, 1), (20, 5)):
    sampler = EpisodeSampler(dataset, "train", ways, shots, 15, rotations=True)
    for per_call in (1, 32):
        generator = torch.Generator().manual_seed(0)
        sampler.sample(per_call, generator)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sampler.sample(per_call, generator)
            n += per_call
        out[f"{ways}w{shots}s15q_per_call{per_call}"] = round(n / (time.perf_counter() - start))
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    from metasweep.orchestrator.data.importers import import_omniglot

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "omniglot.parquet"
        import_omniglot([OMNIGLOT / "images_background.npz", OMNIGLOT / "images_evaluation.npz"], str(data))
        for run in range(args.runs):
            for which in ("before", "after"):
                argv = [sys.executable, "-c", MEASURE, which, str(data), str(args.seconds), str(args.before)]
                done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
                print(f"run {run + 1} {which}: {done.stdout.strip()}")


if __name__ == "__main__":
    main()
