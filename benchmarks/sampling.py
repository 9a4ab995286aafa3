"""Dataset benchmark: import time of the full Omniglot, episode sampling rate, peak memory.

Run from the repository root (needs ../shared/data/omniglot):

    .venv/bin/python benchmarks/sampling.py [--seconds 5] [--json out.json]

Measures, on one core (``torch.set_num_threads(1)``):

* the import of both npz files (1,623 characters x 20 drawings) to 28x28 Parquet, in a fresh
  subprocess, with its wall time and peak RSS;
* episodes per second drawn by ``EpisodeSampler`` for 5-way 1-shot 15-query and 20-way 5-shot
  15-query (28x28, rotations on), one episode per call and 32 per call (a meta-batch);
* peak RSS of a process holding the full dataset with rotations and sampling from it.

Targets from the issue tracker: import < 60 s; >= 2,000 episodes/s (5w1s) and >= 200 (20w5s);
peak memory < 1 GiB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


def import_in_subprocess(out: Path) -> dict[str, float]:
    """Import the full Omniglot in a fresh process; its wall time and peak RSS."""
    code = (
        "import resource, time, sys\n"
        "from pathlib import Path\n"
        "from metasweep.orchestrator.data.importers import import_omniglot\n"
        "t = time.perf_counter()\n"
        f"import_omniglot([Path({str(OMNIGLOT / 'images_background.npz')!r}), "
        f"Path({str(OMNIGLOT / 'images_evaluation.npz')!r})], {str(out)!r})\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    seconds, rss_kb = done.stdout.split()
    return {"import_seconds": float(seconds), "import_peak_mib": int(rss_kb) / 1024}


THIS_SAMPLER = (
    "from metasweep.orchestrator.data.format import load_dataset\n"
    "from metasweep.orchestrator.data.sampler import EpisodeSampler\n"
)


def sampling_in_subprocess(dataset: Path, seconds: float, imports: str = THIS_SAMPLER) -> dict[str, float]:
    """Sampling rates and the peak RSS of a process that holds the dataset with rotations.

    Args:
        imports: the lines that import ``load_dataset`` and ``EpisodeSampler`` (another version's
            sampler, for a before/after comparison).
    """
    code = f"""
import json, resource, time, torch
torch.set_num_threads(1)
{imports}
ds = load_dataset({str(dataset)!r})
out = {{}}
for ways, shots in ((5, 1), (20, 5)):
    sampler = EpisodeSampler(ds, "train", ways, shots, 15, rotations=True)
    for per_call in (1, 32):
        g = torch.Generator().manual_seed(0)
        sampler.sample(per_call, g)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < {seconds}:
            sampler.sample(per_call, g)
            n += per_call
        out[f"{{ways}}w{{shots}}s15q_per_call{{per_call}}"] = n / (time.perf_counter() - start)
out["sampling_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per sampling case")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (OMNIGLOT / "images_background.npz").is_file():
        sys.exit(f"Omniglot not found at {OMNIGLOT}; see shared/data/omniglot/README.md")

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"date: {datetime.date.today().isoformat()}, command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "omniglot.parquet"
        results = import_in_subprocess(out)
        results["file_mib"] = out.stat().st_size / 2**20
        results.update(sampling_in_subprocess(out, args.seconds))
    results["benchmark_peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    def rate(key: str) -> str:
        return f"{results[key]:,.0f} episodes/s"

    rows = [
        ("import, full Omniglot (1,623 x 20, to 28x28)", f"{results['import_seconds']:.1f} s", "< 60 s",
         results["import_seconds"] < 60),
        ("Parquet file size", f"{results['file_mib']:.1f} MiB", "", None),
        ("5-way 1-shot 15-query, 1 episode per call", rate("5w1s15q_per_call1"), ">= 2,000",
         results["5w1s15q_per_call1"] >= 2000),
        ("5-way 1-shot 15-query, 32 per call", rate("5w1s15q_per_call32"), ">= 2,000",
         results["5w1s15q_per_call32"] >= 2000),
        ("20-way 5-shot 15-query, 1 episode per call", rate("20w5s15q_per_call1"), ">= 200",
         results["20w5s15q_per_call1"] >= 200),
        ("20-way 5-shot 15-query, 32 per call", rate("20w5s15q_per_call32"), ">= 200",
         results["20w5s15q_per_call32"] >= 200),
        ("peak memory, import", f"{results['import_peak_mib']:.0f} MiB", "< 1024",
         results["import_peak_mib"] < 1024),
        ("peak memory, sampling with rotations", f"{results['sampling_peak_mib']:.0f} MiB", "< 1024",
         results["sampling_peak_mib"] < 1024),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{name:<{width}}  {value:>22}  {target:>9}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
