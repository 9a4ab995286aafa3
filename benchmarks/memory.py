"""Peak memory and speed of second-order MAML with a checkpointed inner loop and task chunks.

The workload of issue 13: Conv-4 (64 filters) on Omniglot-shaped episodes (1x28x28 random
pixels), 5-way 1-shot 15-query, meta-batch 32, second-order MAML, one meta-iteration being
``meta_backward`` plus Adam's step. Each row is one setting of ``train.memory`` at 1, 5 and 10
inner steps:

* ``plain``: the whole meta-batch in one pass, every inner step's activations kept;
* ``checkpoint``: ``checkpoint_inner``, each inner step recomputed in the backward pass;
* ``chunk 8``: ``task_chunk=8``, four passes of 8 tasks, gradients accumulated;
* ``both``: the two together.

Each row runs in a fresh subprocess. ``peak MiB`` is what a meta-iteration adds to the process:
on the CPU its resident high-water mark (``VmHWM``) less the resident size before the first
meta-iteration (model, optimiser and episode made); on CUDA ``torch.cuda.max_memory_allocated``
less what was allocated before. ``estimate MiB`` is what ``task_chunk: auto`` works from:
``measure_footprint``'s allocator measurement of one task and of two, extrapolated to the row's
chunk. Speed is tasks per second of the timed meta-iterations (median) after a warm-up one;
``time x plain`` is against ``plain`` at the same inner steps, ``x 1 step`` against ``plain``
at one inner step, all from the same run.

Usage::

    python benchmarks/memory.py                 # the full table, about 15 min on 2 idle cores
    python benchmarks/memory.py --quick         # smoke run: meta-batch 4, 16 filters, 1-2 steps
    python benchmarks/memory.py --json results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from metasweep.algorithms import MAML, Conv4
from metasweep.algorithms.memory import measure_footprint, meta_backward, peak_bytes
from metasweep.algorithms.testing import image_episode

SETTINGS = {
    "plain": (False, None),
    "checkpoint": (True, None),
    "chunk 8": (False, 8),
    "both": (True, 8),
}


@dataclass(frozen=True)
class Row:
    """One setting at one number of inner steps."""

    setting: str
    inner_steps: int
    peak_mib: float
    estimate_mib: float
    rss_mib: float
    tasks_per_s: float


def measure(setting: str, steps: int, tasks: int, filters: int, timed: int, device: torch.device) -> Row:
    """One row, in this process."""
    torch.manual_seed(0)
    checkpoint, chunk = SETTINGS[setting]
    chunk = min(chunk, tasks) if chunk else None
    learner = MAML(Conv4(1, 28, 5, filters), inner_lr=0.4, inner_steps=steps, checkpoint_inner=checkpoint)
    learner.to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    episode = image_episode(tasks=tasks, ways=5, shots=1, queries=15, seed=1).to(device)
    batch = (episode.support_x, episode.support_y, episode.query_x, episode.query_y)

    def iteration() -> None:
        optimizer.zero_grad(set_to_none=True)
        meta_backward(learner, *batch, task_chunk=chunk)
        optimizer.step()

    if device.type == "cuda":
        peak = peak_bytes(iteration, device)  # the warm-up
    else:
        before = _rss_mib("VmRSS")
        iteration()  # the warm-up: the optimiser's state and every lazy initialisation
    seconds = []
    for _ in range(timed):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        iteration()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak_mib = peak / 2**20 if device.type == "cuda" else _rss_mib("VmHWM") - before
    rss = _rss_mib("VmHWM")
    footprint = measure_footprint(learner, *batch)  # after: it must not raise the high-water mark
    return Row(
        setting=setting,
        inner_steps=steps,
        peak_mib=peak_mib,
        estimate_mib=footprint.chunk_bytes(chunk or tasks) / 2**20,
        rss_mib=rss,
        tasks_per_s=tasks / statistics.median(seconds),
    )


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the high-water mark) of this process, in MiB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_all(args: argparse.Namespace) -> list[Row]:
    rows = []
    for steps in args.steps:
        for setting in SETTINGS:
            command = [
                sys.executable, __file__, "--one", setting, str(steps), "--tasks", str(args.tasks),
                "--filters", str(args.filters), "--timed", str(args.timed), "--device", args.device,
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{setting} at {steps} steps failed:\n{done.stderr[-3000:]}")
            row = Row(**json.loads(done.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(
                f"  {setting:>10} {steps:>2} steps: {row.peak_mib:8.1f} MiB, {row.tasks_per_s:6.1f} tasks/s",
                flush=True,
            )
    return rows


def table(rows: list[Row]) -> str:
    base_memory = next(
        r.peak_mib for r in rows if r.setting == "plain" and r.inner_steps == min(r.inner_steps for r in rows)
    )
    lines = [
        "| inner steps | setting | peak MiB | x 1 step | estimate MiB | process MiB | tasks/s "
        "| time x plain |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        plain = next(r for r in rows if r.setting == "plain" and r.inner_steps == row.inner_steps)
        lines.append(
            f"| {row.inner_steps} | {row.setting} | {row.peak_mib:.1f} | {row.peak_mib / base_memory:.2f} | "
            f"{row.estimate_mib:.1f} | {row.rss_mib:.0f} | {row.tasks_per_s:.1f} | "
            f"{plain.tasks_per_s / row.tasks_per_s:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 tasks, 16 filters, 1-2 steps")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10], help="inner steps of the rows")
    parser.add_argument("--tasks", type=int, default=32, help="meta-batch size")
    parser.add_argument("--filters", type=int, default=64, help="Conv-4 filters")
    parser.add_argument("--timed", type=int, default=1, help="timed meta-iterations a row (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", help="also write the rows and the machine to this file")
    parser.add_argument("--one", nargs=2, metavar=("SETTING", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.tasks, args.filters, args.timed = [1, 2], 4, 16, 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.one:
        setting, steps = args.one[0], int(args.one[1])
        print(json.dumps(asdict(measure(setting, steps, args.tasks, args.filters, args.timed, device))))
        return
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    command = " ".join(["python", "benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"{datetime.date.today()}: {command}\n{machine}", flush=True)
    rows = run_all(args)
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"date": str(datetime.date.today()), "command": command, "machine": machine,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
