"""The episode sampler of this checkout against the one of an earlier commit, on the same machine
and dataset, alternating runs (a before/after check of a change to the sampler).

    git worktree add /tmp/before af34e0c         # a commit from before the metasweep namespace
    .venv/bin/python benchmarks/sampling_before_after.py --before /tmp/before --runs 2

The earlier checkout is imported from its folder (``orchestrator.datasets``, 0.1's layout); this
one is the installed ``metasweep``. Prints episodes per second for each case and run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sampling import THIS_SAMPLER, sampling_in_subprocess

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    from metasweep.orchestrator.data.importers import import_omniglot

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "omniglot.parquet"
        import_omniglot([OMNIGLOT / "images_background.npz", OMNIGLOT / "images_evaluation.npz"], str(data))
        before = (
            f"import sys; sys.path.insert(0, {str(args.before)!r})\n"
            "from orchestrator.datasets import EpisodeSampler, load_dataset\n"
        )
        for run in range(args.runs):
            for which, imports in (("before", before), ("after", THIS_SAMPLER)):
                rates = sampling_in_subprocess(data, args.seconds, imports)
                rates.pop("sampling_peak_mib")
                print(f"run {run + 1} {which}: {json.dumps({k: round(v) for k, v in rates.items()})}")


if __name__ == "__main__":
    main()
