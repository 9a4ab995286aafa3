"""Does this checkout train exactly as an earlier commit does? Both train the same configs with the
same seeds, each in its own process, and their metrics are compared value for value.

    git worktree add /tmp/before af34e0c         # 0.1, before the metasweep namespace
    .venv/bin/python benchmarks/same_numbers.py --before /tmp/before

The earlier checkout runs as ``python -m orchestrator.cli`` from its folder (0.1's layout), this one
as ``python -m metasweep``. Prints each config's metrics from both and whether they are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"
RUNS = {
    "sinusoid-maml": ["examples/sinusoid_maml.yaml", "train.iterations=300", "train.eval_every=100"],
    "sinusoid-metasgd": ["examples/sinusoid_metasgd.yaml", "train.iterations=300", "train.eval_every=100"],
    "omniglot-fomaml": [
        "examples/omniglot_fomaml_5w1s.yaml", "train.iterations=20", "train.eval_every=10",
        "train.meta_batch_size=2", "eval.val_tasks=20", "eval.test_tasks=20", "model.filters=16",
    ],
    "omniglot-protonet": [
        "examples/omniglot_protonet_5w1s.yaml", "train.iterations=20", "train.eval_every=10",
        "eval.val_tasks=20", "eval.test_tasks=20", "model.filters=16",
    ],
}  # fmt: skip


def train(command: list[str], config: str, overrides: list[str], work: Path, env: dict[str, str]) -> dict:
    argv = [*command, "train", str(ROOT / config), "--no-progress"]
    for item in [*overrides, f"output_dir={work}"]:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=work.parent, check=True)
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    metrics.pop("time/seconds")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    args = parser.parse_args()
    from metasweep.orchestrator.data.importers import import_omniglot

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "omniglot.parquet"
        import_omniglot([OMNIGLOT / "images_background.npz", OMNIGLOT / "images_evaluation.npz"], str(data))
        for name, (config, *overrides) in RUNS.items():
            if name.startswith("omniglot"):
                overrides = [*overrides, f"data.dataset={data}"]
            before = train(
                [sys.executable, "-m", "orchestrator.cli"], config, overrides, Path(tmp) / f"{name}-before",
                {**env, "PYTHONPATH": str(args.before)},
            )  # fmt: skip
            after = train(
                [sys.executable, "-m", "metasweep"], config, overrides, Path(tmp) / f"{name}-after", env
            )
            same = before == after
            identical &= same
            print(f"{name}: {'identical' if same else 'DIFFERENT'}\n  before {before}\n  after  {after}")
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
