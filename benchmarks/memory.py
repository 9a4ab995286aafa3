"""Peak memory and speed of meta-gradients: MAML's memory settings on Conv-4, learners on ResNet-12.

The workload of issue 13: Conv-4 (64 filters) on Omniglot-shaped episodes (1x28x28 random
pixels), 5-way 1-shot 15-query, meta-batch 32, second-order MAML, one meta-iteration being
``meta_backward`` plus Adam's step. Each row is one setting of ``train.memory`` at 1, 5 and 10
inner steps:

* ``plain``: the whole meta-batch in one pass, every inner step's activations kept;
* ``checkpoint``: ``checkpoint_inner``, each inner step recomputed in the backward pass;
* ``chunk 8``: ``task_chunk=8``, four passes of 8 tasks, gradients accumulated;
* ``both``: the two together.

``--workload resnet12`` measures instead the learners of the miniImageNet literature on
ResNet-12 (64-160-320-640 filters) and 3x84x84 random pixels, 5-way 1-shot 15-query, meta-batch
2 by default: second-order MAML plain and checkpointed one task at a time (``both, chunk 1``),
ANIL and ProtoNet.

Each row runs in a fresh subprocess. ``peak MiB`` is what a meta-iteration adds to the process:
on the CPU its resident high-water mark (``VmHWM``) less the resident size before the first
meta-iteration (model, optimiser and episode made); on CUDA ``torch.cuda.max_memory_allocated``
less what was allocated before. ``estimate MiB`` is what ``task_chunk: auto`` works from:
``measure_footprint``'s allocator measurement of one task and of two, extrapolated to the row's
chunk. Speed is tasks per second of the timed meta-iterations (median) after a warm-up one;
``time x plain`` is against ``plain`` at the same inner steps, ``x 1 step`` against ``plain``
at one inner step, all from the same run.

Usage::

    python benchmarks/memory.py                 # the full table, about 11 min on 2 idle cores
    python benchmarks/memory.py --quick         # smoke run: meta-batch 4, 16 filters, 1-2 steps
    python benchmarks/memory.py --json results.json
    python benchmarks/memory.py --workload resnet12   # ResNet-12, 84x84: about 11 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from metasweep.algorithms import ANIL, MAML, Conv4, Episode, ProtoNet, ResNet12
from metasweep.algorithms.memory import measure_footprint, meta_backward, peak_bytes
from metasweep.algorithms.testing import image_episode

SETTINGS = {  # name: (checkpoint_inner, task_chunk)
    "plain": (False, None),
    "checkpoint": (True, None),
    "chunk 8": (False, 8),
    "both": (True, 8),
    "both, chunk 1": (True, 1),
}
CONV4_SETTINGS = ("plain", "checkpoint", "chunk 8", "both")


@dataclass(frozen=True)
class Row:
    """One learner and setting at one number of inner steps."""

    workload: str
    algorithm: str
    setting: str
    inner_steps: int
    peak_mib: float
    estimate_mib: float
    rss_mib: float
    tasks_per_s: float


# The ResNet-12 workload's rows: the learners the few-shot literature runs on it.
RESNET12_ROWS = (("maml", "plain"), ("maml", "both, chunk 1"), ("anil", "plain"), ("protonet", "plain"))


def learner_for(workload: str, algorithm: str, setting: str, steps: int, filters: int) -> Any:
    """The row's learner: Conv-4 on 1x28x28, or ResNet-12 (64-160-320-640) on 3x84x84."""
    checkpoint = SETTINGS[setting][0]
    ways = None if algorithm == "protonet" else 5
    if workload == "conv4":
        backbone: torch.nn.Module = Conv4(1, 28, ways, filters)
    else:
        widths = (64, 160, 320, 640) if filters == 64 else (filters,) * 4
        backbone = ResNet12(3, 84, ways, widths)
    if algorithm == "protonet":
        return ProtoNet(backbone)
    learner_class = {"maml": MAML, "anil": ANIL}[algorithm]
    return learner_class(backbone, inner_lr=0.4, inner_steps=steps, checkpoint_inner=checkpoint)


def episode_for(workload: str, tasks: int) -> Episode:
    """5-way 1-shot 15-query tasks of random pixels, Omniglot-shaped or miniImageNet-shaped."""
    episode = image_episode(
        tasks=tasks, ways=5, shots=1, queries=15, seed=1, image_size=28 if workload == "conv4" else 84
    )
    if workload == "conv4":
        return episode
    return Episode(
        episode.support_x.expand(-1, -1, 3, -1, -1).contiguous(), episode.support_y,
        episode.query_x.expand(-1, -1, 3, -1, -1).contiguous(), episode.query_y,
    )  # fmt: skip


def measure(
    workload: str, algorithm: str, setting: str, steps: int, tasks: int, filters: int, timed: int,
    device: torch.device,
) -> Row:  # fmt: skip
    """One row, in this process."""
    torch.manual_seed(0)
    chunk = SETTINGS[setting][1]
    chunk = min(chunk, tasks) if chunk else None
    learner = learner_for(workload, algorithm, setting, steps, filters)
    learner.to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    episode = episode_for(workload, tasks).to(device)
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
    # After the timing, so that it cannot raise the high-water mark. Profiling ResNet-12 on the
    # CPU takes minutes a row: its rows have no estimate.
    estimate = math.nan
    if workload == "conv4" or device.type == "cuda":
        estimate = measure_footprint(learner, *batch).chunk_bytes(chunk or tasks) / 2**20
    return Row(
        workload=workload,
        algorithm=algorithm,
        setting=setting,
        inner_steps=steps,
        peak_mib=peak_mib,
        estimate_mib=estimate,
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
    if args.workload == "conv4":
        plan = [("maml", setting, steps) for steps in args.steps for setting in CONV4_SETTINGS]
    else:
        plan = [(algorithm, setting, steps) for steps in args.steps for algorithm, setting in RESNET12_ROWS]
    rows = []
    for algorithm, setting, steps in plan:
        command = [
            sys.executable, __file__, "--one", algorithm, setting, str(steps), "--workload", args.workload,
            "--tasks", str(args.tasks), "--filters", str(args.filters), "--timed", str(args.timed),
            "--device", args.device,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{algorithm} {setting} at {steps} steps failed:\n{done.stderr[-3000:]}")
        row = Row(**json.loads(done.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(
            f"  {algorithm:>8} {setting:>10} {steps:>2} steps: {row.peak_mib:8.1f} MiB, "
            f"{row.tasks_per_s:6.2f} tasks/s",
            flush=True,
        )
    return rows


def table(rows: list[Row]) -> str:
    """The rows as Markdown, with each row's memory against the first row's and its time against
    the same learner's ``plain`` row at the same inner steps."""
    first = rows[0]
    lines = [
        "| learner | inner steps | setting | peak MiB | x first row | estimate MiB | process MiB | tasks/s "
        "| time x plain |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        plain = next(
            (
                r
                for r in rows
                if (r.algorithm, r.setting, r.inner_steps) == (row.algorithm, "plain", row.inner_steps)
            ),
            row,
        )
        lines.append(
            f"| {row.algorithm} | {row.inner_steps} | {row.setting} | {row.peak_mib:.1f} | "
            f"{row.peak_mib / first.peak_mib:.2f} | {row.estimate_mib:.1f} | {row.rss_mib:.0f} | "
            f"{row.tasks_per_s:.2f} | {plain.tasks_per_s / row.tasks_per_s:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 tasks, 16 filters, 1-2 steps")
    parser.add_argument(
        "--workload", choices=("conv4", "resnet12"), default="conv4",
        help="conv4: MAML's settings at each inner steps; resnet12: MAML, ANIL and ProtoNet on 84x84 RGB",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, nargs="+", help="inner steps of the rows (conv4: 1 5 10; resnet12: 1)"
    )
    parser.add_argument("--tasks", type=int, help="meta-batch size (conv4: 32; resnet12: 2)")
    parser.add_argument(
        "--filters",
        type=int,
        default=64,
        help="Conv-4 filters; ResNet-12: 64 is 64-160-320-640, else N in each block",
    )
    parser.add_argument("--timed", type=int, default=1, help="timed meta-iterations a row (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", help="also write the rows and the machine to this file")
    parser.add_argument("--one", nargs=3, metavar=("ALGORITHM", "SETTING", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    resnet = args.workload == "resnet12"
    args.steps = args.steps or ([1] if resnet else [1, 5, 10])
    args.tasks = args.tasks or (2 if resnet else 32)
    if args.quick:
        args.steps, args.tasks, args.filters, args.timed = (
            [1] if resnet else [1, 2],
            2 if resnet else 4,
            8 if resnet else 16,
            1,
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.one:
        algorithm, setting, steps = args.one[0], args.one[1], int(args.one[2])
        row = measure(args.workload, algorithm, setting, steps, args.tasks, args.filters, args.timed, device)
        print(json.dumps(asdict(row)))
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
