"""Meta-training throughput of metasweep's learners against a learn2learn-style baseline.

Throughput is tasks per second of one meta-training iteration (forward, ``meta_loss``,
``backward()`` and the meta-optimiser's ``step()``) after warm-up, on two workloads:

* ``sinusoid``: the MAML paper's regression MLP (1-40-40-1), meta-batch 25, 10 shots,
  10 queries, ``F.mse_loss``.
* ``omniglot``: Omniglot-shaped episodes for Conv-4 (1x28x28 random pixels), 5-way 1-shot
  15-query, meta-batch 32, cross-entropy.

Every algorithm runs as metasweep implements it with ``strategy="auto"``, ``"vmap"`` and
``"loop"``, as ``functorch``: ``"vmap"`` with every model batched by ``torch.func.vmap`` (for the
sinusoid MLP, the path before ``tasks_forward``; the same as ``vmap`` for Conv-4), and as a
baseline that adapts one task at a time the way learn2learn does: clone the module with its
parameters kept in the graph (``clone_module``), take inner steps by rebinding ``p - lr * grad``
on the clone's attributes (``maml_update``/``update_module``), sum the query losses and call
``backward()`` once. learn2learn itself no longer installs on Python 3.11, so the
baseline is re-implemented below from its source (``utils/__init__.py``, ``algorithms/maml.py``,
``algorithms/meta_sgd.py``). Before timing, the script checks that ``auto`` and the baseline give
the same meta-gradient on the same tasks, so that the two sides do the same work.

Peak memory: on the CPU every row runs in a fresh subprocess (``--one ALG WORKLOAD IMPL``), because
the resident-set high-water mark (``VmHWM``; ``ru_maxrss`` without ``/proc``) cannot be reset
within a process. It includes the interpreter and torch; ``step MB`` is the part above the level
reached before the first iteration. On CUDA the rows share one process and
``torch.cuda.max_memory_allocated`` is reset before each.

Usage::

    python benchmarks/throughput.py                      # full run, about 5 min on 2 idle cores
    python benchmarks/throughput.py --quick              # smoke run, under a minute
    python benchmarks/throughput.py --device cuda --json throughput.json

Timings on a shared machine are only as good as its idleness: the ``others' CPU`` column says how
much of the CPUs other processes took while each row was timed.

References:
    Arnold et al., "learn2learn: A Library for Meta-Learning Research", arXiv:2008.12284, 2020
    (the baseline). Finn et al., ICML 2017 (sinusoid and Omniglot settings).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasweep.algorithms import ANIL, MAML, MLP, Conv4, Episode, MetaSGD, ProtoNet, Reptile, SinusoidTasks
from metasweep.algorithms.functional import LossFn, Strategy, functorch_only, resolve_strategy

ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet")
IMPLS: tuple[str, ...] = ("auto", "vmap", "functorch", "loop", "baseline")
INNER_STEPS: dict[str, int] = {"maml": 1, "fomaml": 1, "anil": 1, "metasgd": 1, "reptile": 5, "protonet": 0}
"""Inner SGD steps during meta-training, the same for ours and the baseline (learners' defaults)."""
META_LR = 1e-3
"""Adam meta learning rate for every configuration."""
SEED = 0
SINUSOID_TARGET = 8.0
"""Sinusoid second-order MAML, ``auto``: at least this many times the baseline's tasks/s (the
one-trial speed issue's target)."""
CONV4_TARGET = 1.3
"""Omniglot (Conv-4), every algorithm's ``auto``: at least this many times the baseline's
tasks/s (the same issue's target)."""
GRADIENT_TOLERANCE = 1e-3
"""Largest relative difference between our and the baseline's meta-gradients taken as equal."""
BUSY_WARNING = 0.1
"""Share of the CPUs taken by other processes above which the report warns."""


@dataclass(frozen=True)
class Timing:
    """How long each configuration is measured.

    Attributes:
        warmup: untimed iterations first (allocator, oneDNN/cuDNN kernel selection, caches).
        iters: iterations per timed repeat.
        repeats: timed repeats; throughput comes from their median.
    """

    warmup: int
    iters: int
    repeats: int


@dataclass(frozen=True)
class Workload:
    """A model, an episode shape and the hyperparameters shared by ours and the baseline.

    Attributes:
        name: ``sinusoid`` or ``omniglot``.
        description: one line for the report header.
        meta_batch_size: tasks per meta-training iteration.
        ways: classes per task (0 for regression).
        shots: support examples per class (per task for regression).
        queries: query examples per class (per task for regression).
        inner_lr: inner-loop SGD step size.
        loss: ``mse`` or ``cross_entropy``.
        algorithms: the algorithms that apply to this workload.
        timing: default measurement lengths on the CPU (``--warmup/--iters/--repeats`` override).
        cuda_timing: the same on a CUDA device, where iterations take milliseconds.
    """

    name: str
    description: str
    meta_batch_size: int
    ways: int
    shots: int
    queries: int
    inner_lr: float
    loss: str
    algorithms: tuple[str, ...]
    timing: Timing
    cuda_timing: Timing

    @property
    def loss_fn(self) -> LossFn:
        """The mean-reduced loss used in the inner loop and on the queries."""
        return F.mse_loss if self.loss == "mse" else F.cross_entropy

    def model(self, embedding: bool = False) -> nn.Module:
        """A freshly initialised backbone; ``embedding`` drops the classifier head (ProtoNet)."""
        if self.name == "sinusoid":
            return MLP()
        return Conv4(in_channels=1, image_size=28, ways=None if embedding else self.ways)

    def episode(self, generator: torch.Generator) -> Episode:
        """One meta-batch of tasks drawn from ``generator`` (on the CPU)."""
        if self.name == "sinusoid":
            return SinusoidTasks(shots=self.shots, queries=self.queries).sample(
                self.meta_batch_size, generator
            )
        tasks, ways = self.meta_batch_size, self.ways
        support_y = torch.arange(ways).repeat(self.shots).expand(tasks, -1).contiguous()
        query_y = torch.arange(ways).repeat(self.queries).expand(tasks, -1).contiguous()
        support_x = torch.rand(tasks, ways * self.shots, 1, 28, 28, generator=generator)
        query_x = torch.rand(tasks, ways * self.queries, 1, 28, 28, generator=generator)
        return Episode(support_x, support_y, query_x, query_y)


WORKLOADS: dict[str, Workload] = {
    "sinusoid": Workload(
        name="sinusoid",
        description="MLP 1-40-40-1, meta-batch 25, 10 shots, 10 queries, F.mse_loss",
        meta_batch_size=25,
        ways=0,
        shots=10,
        queries=10,
        inner_lr=0.01,
        loss="mse",
        algorithms=("maml", "fomaml", "anil", "metasgd", "reptile"),
        timing=Timing(warmup=5, iters=10, repeats=5),
        cuda_timing=Timing(warmup=5, iters=10, repeats=5),
    ),
    "omniglot": Workload(
        name="omniglot",
        description="Conv-4 (64 filters), 1x28x28 random pixels, 5-way 1-shot 15-query, meta-batch 32",
        meta_batch_size=32,
        ways=5,
        shots=1,
        queries=15,
        inner_lr=0.4,
        loss="cross_entropy",
        algorithms=ALGORITHMS,
        # About 2 s per loop iteration on 2 idle cores: one warm-up and two timed iterations
        # per row keep the full run near 5 minutes.
        timing=Timing(warmup=1, iters=1, repeats=2),
        cuda_timing=Timing(warmup=3, iters=5, repeats=3),
    ),
}
QUICK_TIMING = Timing(warmup=1, iters=1, repeats=1)
QUICK_OMNIGLOT_META_BATCH = 4


# --- learn2learn-style baseline ----------------------------------------------------------------
# Re-implemented from learn2learn's source, keeping its structure: a module is cloned with
# ``Tensor.clone()`` so the clone's parameters stay in the graph, and an inner step rebinds every
# parameter attribute of the clone to ``p + update`` with ``update = -lr * grad``.


def clone_module(module: nn.Module, memo: dict[int, Tensor] | None = None) -> nn.Module:
    """``learn2learn.utils.clone_module``: a copy of ``module`` whose parameters are clones.

    Gradients of anything computed with the clone flow back to ``module``'s parameters.
    """
    if memo is None:
        memo = {}
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = clone._parameters.copy()
    clone._buffers = clone._buffers.copy()
    clone._modules = clone._modules.copy()
    for key, param in module._parameters.items():
        if param is not None:
            ptr = param.data_ptr()
            if ptr not in memo:
                memo[ptr] = param.clone()
            clone._parameters[key] = memo[ptr]  # type: ignore[assignment]
    for key, buffer in module._buffers.items():
        if buffer is not None and buffer.requires_grad:
            ptr = buffer.data_ptr()
            if ptr not in memo:
                memo[ptr] = buffer.clone()
            clone._buffers[key] = memo[ptr]
    for key, child in module._modules.items():
        clone._modules[key] = None if child is None else clone_module(child, memo)
    return clone


def update_module(module: nn.Module, memo: dict[Tensor, Tensor] | None = None) -> nn.Module:
    """``learn2learn.utils.update_module``: rebind every parameter with an ``update`` to ``p + update``."""
    if memo is None:
        memo = {}
    for key, param in module._parameters.items():
        update = getattr(param, "update", None)
        if param is not None and update is not None:
            if param not in memo:
                memo[param] = param + update
            module._parameters[key] = memo[param]  # type: ignore[assignment]
    for key, buffer in module._buffers.items():
        update = getattr(buffer, "update", None)
        if buffer is not None and update is not None:
            if buffer not in memo:
                memo[buffer] = buffer + update
            module._buffers[key] = memo[buffer]
    for key, child in module._modules.items():
        if child is not None:
            module._modules[key] = update_module(child, memo)
    return module


def maml_update(module: nn.Module, lr: float, grads: Sequence[Tensor | None]) -> nn.Module:
    """``learn2learn.algorithms.maml.maml_update``: ``p ← p − lr·g`` on the module's attributes."""
    for param, g in zip(module.parameters(), grads, strict=True):
        if g is not None:
            param.update = -lr * g  # type: ignore[attr-defined]
    return update_module(module)


def meta_sgd_update(
    module: nn.Module, lrs: Sequence[Tensor] | None = None, grads: Sequence[Tensor] | None = None
) -> nn.Module:
    """``learn2learn.algorithms.meta_sgd.meta_sgd_update``: ``p ← p − α ⊙ g`` per parameter."""
    if grads is not None and lrs is not None:
        for param, lr, g in zip(module.parameters(), lrs, grads, strict=True):
            param.grad = g
            param._lr = lr  # type: ignore[attr-defined]
    for key, p in module._parameters.items():
        if p is not None and p.grad is not None:
            module._parameters[key] = p - p._lr * p.grad  # type: ignore[assignment,attr-defined]
            p.grad = None
            p._lr = None  # type: ignore[attr-defined]
    for key, child in module._modules.items():
        if child is not None:
            module._modules[key] = meta_sgd_update(child)
    return module


def l2l_adapt(module: nn.Module, loss: Tensor, lr: float, first_order: bool) -> nn.Module:
    """``learn2learn.algorithms.MAML.adapt``: one differentiable SGD step on a cloned module."""
    second_order = not first_order
    grads = torch.autograd.grad(
        loss,
        list(module.parameters()),
        retain_graph=second_order,
        create_graph=second_order,
        allow_unused=True,
    )
    return maml_update(module, lr, grads)


@dataclass
class Trainer:
    """One implementation of one algorithm, ready to meta-train.

    Attributes:
        model: the backbone whose parameters are meta-learned.
        meta_parameters: every meta-parameter: the backbone's, then Meta-SGD's learning rates in
            the backbone's parameter order (so that two trainers' gradients line up).
        backward: computes the meta-gradient of a batch of tasks into ``.grad`` of every
            meta-parameter.
        optimizer: the meta-optimiser over all meta-parameters.
        strategy: what runs: ``vmap``/``loop`` for metasweep (``auto`` resolved), ``l2l`` for the
            baseline.
    """

    model: nn.Module
    meta_parameters: list[Tensor]
    backward: Callable[[Episode], None]
    optimizer: torch.optim.Optimizer
    strategy: str

    def step(self, episode: Episode) -> None:
        """One meta-training iteration: meta-gradient, then the meta-optimiser's step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(episode)
        self.optimizer.step()


def baseline_trainer(algorithm: str, workload: Workload, model: nn.Module) -> Trainer:
    """learn2learn-style meta-training: one task at a time, one ``backward()`` over the batch.

    Args:
        algorithm: one of :data:`ALGORITHMS`.
        workload: the loss and hyperparameters.
        model: the backbone (an embedding network for ``protonet``), already on its device.

    Returns:
        The trainer; Meta-SGD's learning rates start at ``workload.inner_lr``.
    """
    loss_fn, lr, steps = workload.loss_fn, workload.inner_lr, INNER_STEPS[algorithm]
    lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, lr)) for p in model.parameters()])
    params = list(model.parameters()) + (list(lrs) if algorithm == "metasgd" else [])

    def adapted_query_loss(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        if algorithm in ("maml", "fomaml"):
            learner = clone_module(model)
            for _ in range(steps):
                support_loss = loss_fn(learner(sx), sy)
                learner = l2l_adapt(learner, support_loss, lr, first_order=algorithm == "fomaml")
            return loss_fn(learner(qx), qy)
        if algorithm == "anil":
            # learn2learn's ANIL example: features once by the body, clone only the head.
            body, head = cast(nn.Module, model.body), clone_module(cast(nn.Module, model.head))
            support_features, query_features = body(sx), body(qx)
            for _ in range(steps):
                head = l2l_adapt(head, loss_fn(head(support_features), sy), lr, first_order=False)
            return loss_fn(head(query_features), qy)
        if algorithm == "metasgd":
            learner, task_lrs = clone_module(model), [a.clone() for a in lrs]
            for _ in range(steps):
                grads = torch.autograd.grad(
                    loss_fn(learner(sx), sy), list(learner.parameters()), retain_graph=True, create_graph=True
                )
                learner = meta_sgd_update(learner, task_lrs, grads)
            return loss_fn(learner(qx), qy)
        # protonet, as learn2learn's example: support sorted by label, prototypes by reshape.
        ways, shots = workload.ways, workload.shots
        support = model(sx[sy.argsort()]).flatten(1)
        prototypes = support.reshape(ways, shots, -1).mean(1)
        query = model(qx).flatten(1)
        logits = -(query.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)
        return loss_fn(logits, qy)

    def backward(episode: Episode) -> None:
        total = torch.zeros((), device=episode.support_x.device)
        for t in range(episode.tasks):
            total = total + adapted_query_loss(
                episode.support_x[t], episode.support_y[t], episode.query_x[t], episode.query_y[t]
            )
        (total / episode.tasks).backward()

    def reptile_backward(episode: Episode) -> None:
        # learn2learn's Reptile example: deepcopy the model, plain SGD, no graph. The
        # meta-gradient is θ − mean φ, the direction metasweep's Reptile gives the optimiser; the
        # query loss is evaluated as metasweep's Reptile does.
        meta_params = list(model.parameters())
        direction = [torch.zeros_like(p) for p in meta_params]
        query_loss = torch.zeros((), device=episode.support_x.device)
        for t in range(episode.tasks):
            learner = copy.deepcopy(model)
            fast = list(learner.parameters())
            for _ in range(steps):
                support_loss = loss_fn(learner(episode.support_x[t]), episode.support_y[t])
                grads = torch.autograd.grad(support_loss, fast)
                with torch.no_grad():
                    for p, g in zip(fast, grads, strict=True):
                        p.sub_(lr * g)
            with torch.no_grad():
                query_loss += loss_fn(learner(episode.query_x[t]), episode.query_y[t])
                for d, p, q in zip(direction, meta_params, fast, strict=True):
                    d.add_(p - q)
        for p, d in zip(meta_params, direction, strict=True):
            p.grad = d / episode.tasks

    optimizer = torch.optim.Adam(params, lr=META_LR)
    backward_fn = reptile_backward if algorithm == "reptile" else backward
    return Trainer(model, params, backward_fn, optimizer, "l2l")


# --- metasweep -------------------------------------------------------------------------------------


def ours_trainer(algorithm: str, workload: Workload, model: nn.Module, strategy: str) -> Trainer:
    """metasweep's meta-training: ``learner.meta_loss(...).backward()``.

    Args:
        algorithm: one of :data:`ALGORITHMS`.
        workload: the loss and hyperparameters.
        model: the backbone (an embedding network for ``protonet``), already on its device.
        strategy: ``auto``, ``vmap`` or ``loop``.

    Returns:
        The trainer, whose ``strategy`` says what ``auto`` resolved to.

    Raises:
        ValueError: metasweep refuses ``strategy`` for this algorithm and model (``vmap`` for
            second-order meta-gradients through BatchNorm).
    """
    loss_fn, lr, steps = workload.loss_fn, workload.inner_lr, INNER_STEPS[algorithm]
    how = cast(Strategy, strategy)
    learner: nn.Module
    if algorithm in ("maml", "fomaml"):
        first_order = algorithm == "fomaml"
        learner = MAML(model, lr, steps, first_order=first_order, loss_fn=loss_fn, strategy=how)
    elif algorithm == "anil":
        learner = ANIL(model, lr, steps, loss_fn=loss_fn, strategy=how)
    elif algorithm == "metasgd":
        learner = MetaSGD(model, lr, steps, loss_fn=loss_fn, strategy=how)
    elif algorithm == "reptile":
        learner = Reptile(model, lr, steps, loss_fn=loss_fn, strategy=how)
    else:
        learner = ProtoNet(model, loss_fn=loss_fn, strategy=how)
    device = next(model.parameters()).device
    learner.to(device)

    def backward(episode: Episode) -> None:
        learner.meta_loss(episode.support_x, episode.support_y, episode.query_x, episode.query_y).backward()

    params: list[Tensor] = list(model.parameters())
    if isinstance(learner, MetaSGD):
        # inner_lrs is a ParameterDict, whose order is not the model's: go by name.
        params += [learner._lr()[name] for name, _ in model.named_parameters()]
    optimizer = torch.optim.Adam(learner.parameters(), lr=META_LR)
    # What the learner will run; raises, as the learner would, for vmap where it is refused.
    second_order = algorithm in ("maml", "metasgd")
    strategy_run = resolve_strategy(how, model, device, second_order=second_order)
    return Trainer(model, params, backward, optimizer, strategy_run)


def make_trainer(algorithm: str, workload: Workload, impl: str, device: torch.device) -> Trainer:
    """A freshly initialised trainer (seeded, so every impl starts from the same weights)."""
    torch.manual_seed(SEED)
    model = workload.model(embedding=algorithm == "protonet").to(device)
    if impl == "baseline":
        return baseline_trainer(algorithm, workload, model)
    return ours_trainer(algorithm, workload, model, "vmap" if impl == "functorch" else impl)


# --- measurement -----------------------------------------------------------------------------------


@dataclass
class Result:
    """One configuration's measurement, as written to ``--json``.

    Attributes:
        workload: workload name.
        algorithm: algorithm name.
        impl: ``auto``, ``vmap``, ``loop`` or ``baseline``.
        strategy: what ran: ``vmap``/``loop`` for ours (``auto`` resolved), ``l2l`` for the baseline.
        tasks_per_s: ``meta_batch_size * iters / median(repeat seconds)``; 0 when it failed.
        ms_per_iter: median milliseconds per meta-training iteration.
        repeat_seconds: wall-clock seconds of every timed repeat.
        peak_mb: peak memory in MiB (CPU: the process's ``VmHWM``; CUDA: max allocated).
        step_mb: the part of ``peak_mb`` above the level reached before the first iteration.
        threads: ``torch.get_num_threads()`` during the run.
        others_cpu: share of the machine's CPU time that other processes (and the hypervisor)
            took during the timed repeats, 0 to 1; ``None`` where ``/proc/stat`` is missing.
        meta_batch_size: tasks per iteration.
        timing: warm-up, iterations and repeats used.
        error: why the configuration could not run, else empty.
    """

    workload: str
    algorithm: str
    impl: str
    strategy: str = ""
    tasks_per_s: float = 0.0
    ms_per_iter: float = 0.0
    repeat_seconds: list[float] | None = None
    peak_mb: float = 0.0
    step_mb: float = 0.0
    threads: int = 0
    others_cpu: float | None = None
    meta_batch_size: int = 0
    timing: dict[str, int] | None = None
    error: str = ""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine_busy_seconds() -> float | None:
    # CPU seconds all processes of the machine have used since boot (steal included).
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def others_cpu_share(seconds: float = 0.5) -> float | None:
    """Share of the machine's CPU time used by other processes over the next ``seconds``."""
    busy = _machine_busy_seconds()
    time.sleep(seconds)
    after = _machine_busy_seconds()
    if busy is None or after is None:
        return None
    return max(0.0, (after - busy) / (seconds * (os.cpu_count() or 1)))


def _rss_high_water_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a subprocess started
    # by a parent of 700 MB reports at least 700 MB.
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(algorithm: str, workload: Workload, impl: str, device: torch.device, timing: Timing) -> Result:
    """Time one configuration in this process.

    Two episode batches, drawn once from a seeded generator, alternate so that ours and the
    baseline see identical data and data generation is not timed.

    Args:
        algorithm: one of :data:`ALGORITHMS`.
        workload: what to run.
        impl: ``auto``, ``vmap``, ``functorch`` (``vmap`` inside
            :func:`~metasweep.algorithms.functional.functorch_only`), ``loop`` or ``baseline``.
        device: where to run.
        timing: warm-up, iterations and repeats.

    Returns:
        The measurement; peak memory covers everything this process did so far. A strategy that
        metasweep refuses for this configuration comes back with ``error`` saying why.
    """
    with functorch_only() if impl == "functorch" else contextlib.nullcontext():
        return _measure(algorithm, workload, impl, device, timing)


def _measure(algorithm: str, workload: Workload, impl: str, device: torch.device, timing: Timing) -> Result:
    try:
        trainer = make_trainer(algorithm, workload, impl, device)
    except ValueError as exc:
        return Result(workload.name, algorithm, impl, error=f"refused by metasweep: {exc}")
    generator = torch.Generator().manual_seed(SEED)
    episodes = [workload.episode(generator).to(device) for _ in range(2)]
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before_mb = torch.cuda.memory_allocated(device) / 2**20
    else:
        before_mb = _rss_high_water_mb()

    batches: Iterator[Episode] = (episodes[i % len(episodes)] for i in range(sys.maxsize))
    for _ in range(timing.warmup):
        trainer.step(next(batches))
    seconds = []
    busy_before, own_before = _machine_busy_seconds(), _own_cpu_seconds()
    for _ in range(timing.repeats):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(timing.iters):
            trainer.step(next(batches))
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    busy_after, own_cpu = _machine_busy_seconds(), _own_cpu_seconds() - own_before
    others = None
    if busy_before is not None and busy_after is not None:
        capacity = sum(seconds) * (os.cpu_count() or 1)
        others = min(1.0, max(0.0, (busy_after - busy_before - own_cpu) / capacity))

    peak_mb = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_high_water_mb()
    )
    median = statistics.median(seconds)
    return Result(
        workload=workload.name,
        algorithm=algorithm,
        impl=impl,
        strategy=trainer.strategy,
        tasks_per_s=workload.meta_batch_size * timing.iters / median,
        ms_per_iter=1000 * median / timing.iters,
        repeat_seconds=seconds,
        peak_mb=peak_mb,
        step_mb=peak_mb - before_mb,
        threads=torch.get_num_threads(),
        others_cpu=others,
        meta_batch_size=workload.meta_batch_size,
        timing=asdict(timing),
    )


def measure_in_subprocess(
    algorithm: str, workload: Workload, impl: str, device: torch.device, timing: Timing, threads: int | None
) -> Result:
    """Run :func:`measure` in a fresh interpreter so the peak memory is this configuration's own."""
    command = [sys.executable, os.path.abspath(__file__), "--one", algorithm, workload.name, impl]
    command += ["--device", device.type, "--warmup", str(timing.warmup), "--iters", str(timing.iters)]
    command += ["--repeats", str(timing.repeats), "--meta-batch-size", str(workload.meta_batch_size)]
    if threads is not None:
        command += ["--threads", str(threads)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return Result(workload.name, algorithm, impl, error=tail[:200])
    return Result(**json.loads(lines[-1]))


def gradient_agreement(
    workloads: list[Workload], algorithms: list[str], device: torch.device
) -> list[Agreement]:
    """How far metasweep's meta-gradient (``auto``) is from the baseline's on the same batch.

    Both start from the same weights and see the same four tasks, so they should differ by
    float rounding only; a large difference means the two sides compute different things and
    their timings are not comparable. TF32 is off during the check: with cuDNN's default TF32
    convolutions a batched and a per-task Conv-4 differ by 0.5% (FOMAML) to 5% (Reptile's five
    steps at ``inner_lr`` 0.4) on an H200, which would hide what the check is for.

    Args:
        workloads: the workloads to check.
        algorithms: the algorithms to check where the workload has them.
        device: where to compute.

    Returns:
        One :class:`Agreement` per workload and algorithm.
    """
    agreements = []
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for workload in workloads:
            small = replace(workload, meta_batch_size=min(workload.meta_batch_size, 4))
            episode = small.episode(torch.Generator().manual_seed(SEED)).to(device)
            for algorithm in (a for a in small.algorithms if a in algorithms):
                ours, baseline = (_meta_gradient(algorithm, small, i, episode) for i in ("auto", "baseline"))
                difference = ((ours - baseline).norm() / baseline.norm().clamp_min(1e-30)).item()
                agreements.append(Agreement(workload.name, algorithm, difference))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return agreements


def _meta_gradient(algorithm: str, workload: Workload, impl: str, episode: Episode) -> Tensor:
    # Every meta-parameter's gradient, flattened into one vector.
    trainer = make_trainer(algorithm, workload, impl, episode.support_x.device)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.backward(episode)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in trainer.meta_parameters]
    return torch.cat([g.flatten() for g in grads])


@dataclass(frozen=True)
class Agreement:
    """Relative L2 difference between metasweep's and the baseline's meta-gradients."""

    workload: str
    algorithm: str
    relative_difference: float

    @property
    def ok(self) -> bool:
        """Within float32 rounding for these depths (second-order Conv-4 included)."""
        return self.relative_difference < GRADIENT_TOLERANCE


# --- report ----------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, str]:
    """Where the figures come from, for the report header and the JSON file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": str(os.cpu_count()),
        "device": device.type,
        "device_name": name,
    }


def _ratio(result: Result, baseline: Result | None) -> float | None:
    if baseline is None or result.error or baseline.error or baseline.tasks_per_s <= 0:
        return None
    return result.tasks_per_s / baseline.tasks_per_s


def _spread(result: Result) -> float | None:
    # (slowest - fastest) / median repeat: how much the machine moved under this row.
    seconds = result.repeat_seconds or []
    if len(seconds) < 2:
        return None
    return (max(seconds) - min(seconds)) / statistics.median(seconds)


def _impl_label(result: Result) -> str:
    return f"auto[{result.strategy}]" if result.impl == "auto" and result.strategy else result.impl


def format_table(results: list[Result]) -> str:
    """A Markdown table, ready to paste into the README."""
    baselines = {(r.workload, r.algorithm): r for r in results if r.impl == "baseline"}
    rows = [
        "| workload | algorithm | impl | tasks/s | ms/iter | vs baseline | peak MB | step MB | others' CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            text = r.error if r.error.startswith("refused") else f"failed: {r.error}"
            rows.append(f"| {r.workload} | {r.algorithm} | {r.impl} | {text} | | | | | |")
            continue
        ratio = _ratio(r, baselines.get((r.workload, r.algorithm)))
        shown = "n/a" if ratio is None else f"{ratio:.2f}x"
        others = "n/a" if r.others_cpu is None else f"{100 * r.others_cpu:.0f}%"
        rows.append(
            f"| {r.workload} | {r.algorithm} | {_impl_label(r)} | {r.tasks_per_s:.1f} | {r.ms_per_iter:.1f} "
            f"| {shown} | {r.peak_mb:.0f} | {r.step_mb:.0f} | {others} |"
        )
    return "\n".join(rows)


def check_targets(results: list[Result]) -> list[tuple[bool, str]]:
    """The issue's two targets as ``(passed, message)``; a target without data fails."""
    by_key = {(r.workload, r.algorithm, r.impl): r for r in results}
    checks: list[tuple[str, str, float]] = []
    if any(r.workload == "sinusoid" and r.algorithm == "maml" for r in results):
        checks.append(("sinusoid", "maml", SINUSOID_TARGET))
    checks += sorted(
        {("omniglot", r.algorithm, CONV4_TARGET) for r in results if r.workload == "omniglot"},
        key=lambda c: ALGORITHMS.index(c[1]),
    )
    outcome = []
    for workload, algorithm, target in checks:
        auto = by_key.get((workload, algorithm, "auto"))
        ratio = None if auto is None else _ratio(auto, by_key.get((workload, algorithm, "baseline")))
        label = f"{workload} {algorithm} auto"
        if ratio is None:
            outcome.append((False, f"{label}: not measured (needs auto and baseline)"))
        else:
            assert auto is not None
            baseline = by_key[(workload, algorithm, "baseline")]
            spreads = (_spread(auto), _spread(baseline))
            spread = "n/a" if None in spreads else f"{100 * sum(s or 0.0 for s in spreads):.0f}%"
            message = (
                f"{workload} {algorithm} {_impl_label(auto)} = {ratio:.2f}x baseline "
                f"(target >= {target:g}x; repeats spread, ours + baseline: {spread})"
            )
            outcome.append((ratio >= target, message))
    return outcome


def header(
    info: dict[str, str],
    workloads: list[Workload],
    timings: dict[str, Timing],
    args: argparse.Namespace,
    busy: float | None,
) -> str:
    """The report's preamble: machine, date and settings."""
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    lines = [
        "# metasweep meta-training throughput",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} logical CPUs",
        f"- python {info['python']}, torch {info['torch']}, torch threads {threads}"
        + (" (torch default)" if args.threads is None else " (--threads)"),
        f"- device: {info['device']} ({info['device_name']})",
        f"- meta-optimiser: Adam(lr={META_LR:g}); tasks/s = meta_batch_size * iters / median repeat time",
    ]
    for w in workloads:
        t = timings[w.name]
        steps = ", ".join(f"{a} {INNER_STEPS[a]}" for a in w.algorithms if a in args.algorithms)
        lines.append(
            f"- {w.name}: {w.description if not args.quick else w.description.split(', meta-batch')[0]}"
            f"{f', meta-batch {w.meta_batch_size}' if args.quick else ''}; inner_lr {w.inner_lr:g}; "
            f"inner_steps: {steps}; warm-up {t.warmup}, {t.iters} iters x {t.repeats} repeats"
        )
    lines.append(
        "- baseline: learn2learn-style, one task at a time (clone_module + maml_update, "
        "one backward over the summed query losses); ProtoNet's: per-task embedding + prototypes"
    )
    if args.quick:
        lines.append("- --quick: a smoke test with a small Omniglot meta-batch, not figures to publish")
    if args.quick and info["device"] == "cpu":
        lines.append("- peak MB: the running process's peak RSS (--quick runs every row in one process)")
    elif info["device"] == "cpu":
        lines.append(
            "- peak MB: peak RSS (VmHWM) of a fresh process per row; step MB: the part above the pre-loop RSS"
        )
    else:
        lines.append(
            "- peak MB: torch.cuda.max_memory_allocated; step MB: the part above the pre-loop allocation"
        )
    lines.append(
        "- others' CPU: share of the machine's CPU time other processes took while a row was timed; "
        "rows with more than a few percent are not comparable"
    )
    if busy is not None and busy > BUSY_WARNING:
        lines.append(
            f"- WARNING: other processes used {100 * busy:.0f}% of the CPUs just before the run; "
            "timings will be noisy (try --threads 1, or an idle machine)"
        )
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------


def _csv(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; see the module docstring for examples."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if visible"
    )
    parser.add_argument(
        "--workloads",
        type=_csv(tuple(WORKLOADS), "workload"),
        default=list(WORKLOADS),
        help="comma-separated",
    )
    parser.add_argument(
        "--algorithms", type=_csv(ALGORITHMS, "algorithm"), default=list(ALGORITHMS), help="comma-separated"
    )
    parser.add_argument("--impls", type=_csv(IMPLS, "impl"), default=list(IMPLS), help="comma-separated")
    parser.add_argument("--warmup", type=int, help="untimed iterations (default: per workload)")
    parser.add_argument("--iters", type=int, help="iterations per timed repeat (default: per workload)")
    parser.add_argument("--repeats", type=int, help="timed repeats, median taken (default: per workload)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--json", metavar="PATH", help="also write machine, settings and results as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run in one process, small Omniglot batch")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed or the gradients disagree"
    )
    parser.add_argument("--one", nargs=3, metavar=("ALG", "WORKLOAD", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--meta-batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("warmup", "iters", "repeats", "threads", "meta_batch_size"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and name != "warmup")):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        sys.exit(2)
    return torch.device(name)


def _timing(workload: Workload, args: argparse.Namespace, device: torch.device) -> Timing:
    base = workload.cuda_timing if device.type == "cuda" else workload.timing
    base = QUICK_TIMING if args.quick else base
    return Timing(
        warmup=base.warmup if args.warmup is None else args.warmup,
        iters=base.iters if args.iters is None else args.iters,
        repeats=base.repeats if args.repeats is None else args.repeats,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--one``, a single configuration) and print the report."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args.device)

    if args.one is not None:
        algorithm, name, impl = args.one
        workload = WORKLOADS[name]
        if args.meta_batch_size is not None:
            workload = replace(workload, meta_batch_size=args.meta_batch_size)
        print(json.dumps(asdict(measure(algorithm, workload, impl, device, _timing(workload, args, device)))))
        return 0

    workloads = [WORKLOADS[n] for n in args.workloads]
    if args.quick:
        workloads = [
            replace(w, meta_batch_size=QUICK_OMNIGLOT_META_BATCH) if w.name == "omniglot" else w
            for w in workloads
        ]
    timings = {w.name: _timing(w, args, device) for w in workloads}
    configs = [(w, a, i) for w in workloads for a in w.algorithms if a in args.algorithms for i in args.impls]
    if not configs:
        print("error: no configuration left; protonet runs on the omniglot workload only", file=sys.stderr)
        return 2
    info = machine_info(device)
    busy = others_cpu_share(1.0) if device.type == "cpu" else None
    print(header(info, workloads, timings, args, busy), flush=True)
    agreements = gradient_agreement(workloads, args.algorithms, device)
    disagreeing = [a for a in agreements if not a.ok]
    worst = max(agreements, key=lambda a: a.relative_difference)
    agreeing = len(agreements) - len(disagreeing)
    print(
        f"- meta-gradients of auto and baseline agree on {agreeing}/{len(agreements)} "
        f"workload/algorithm pairs (largest relative difference {worst.relative_difference:.1e}, "
        f"{worst.workload} {worst.algorithm}; tolerance {GRADIENT_TOLERANCE:g})",
        flush=True,
    )
    for a in disagreeing:
        print(f"- WARNING: {a.workload} {a.algorithm} meta-gradients differ by {a.relative_difference:.1e}")

    results = []
    started = time.perf_counter()
    for n, (workload, algorithm, impl) in enumerate(configs, 1):
        timing = timings[workload.name]
        if device.type == "cpu" and not args.quick:
            result = measure_in_subprocess(algorithm, workload, impl, device, timing, args.threads)
        else:
            # CUDA's peak is reset per row, so one process suffices (and skips CUDA start-ups).
            try:
                result = measure(algorithm, workload, impl, device, timing)
            except Exception as exc:  # report every failure, then go on to the next row
                result = Result(workload.name, algorithm, impl, error=f"{type(exc).__name__}: {exc}"[:200])
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(result)
        status = result.error or f"{result.tasks_per_s:.1f} tasks/s"
        elapsed = time.perf_counter() - started
        print(
            f"[{n}/{len(configs)} {elapsed:.0f}s] {workload.name} {algorithm} {impl}: {status}",
            file=sys.stderr,
            flush=True,
        )

    print()
    print(format_table(results))
    print()
    outcome = check_targets(results)
    if outcome:
        print("Targets:")
        for passed, message in outcome:
            print(f"- {'PASS' if passed else 'FAIL'} {message}")
    print(f"\nTotal wall time {time.perf_counter() - started:.0f}s.")
    if args.json:
        payload = {
            "machine": info,
            "settings": {
                "threads": args.threads if args.threads is not None else torch.get_num_threads(),
                "meta_lr": META_LR,
                "inner_steps": INNER_STEPS,
                "workloads": {w.name: {**asdict(w), "timing": asdict(timings[w.name])} for w in workloads},
                "quick": args.quick,
            },
            "results": [asdict(r) for r in results],
            "gradient_agreement": [asdict(a) for a in agreements],
            "others_cpu_before": busy,
            "targets": [{"passed": p, "message": m} for p, m in outcome],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    missed = not all(p for p, _ in outcome) or bool(disagreeing)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
