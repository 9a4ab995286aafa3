"""Data-parallel meta-gradients over a real ``torch.distributed`` group (gloo, two processes on
this CPU): 20 meta-iterations of second-order MAML in float64, on the sinusoid MLP (under vmap,
Adam) and on Conv-4 (task by task, SGD), end with the parameters one process reaches on the
whole meta-batch; and the shards cover the meta-batch in order whatever the number of processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from metasweep.algorithms import MAML, MLP, Conv4, SinusoidTasks
from metasweep.algorithms.distributed import distributed_meta_backward, task_shard
from metasweep.algorithms.memory import meta_backward
from metasweep.algorithms.testing import image_episode

ITERATIONS, TASKS = 20, 5  # five tasks over two processes: shards of 3 and 2


def learner(kind: str) -> MAML:
    torch.manual_seed(0)
    if kind == "mlp":
        return MAML(MLP().double(), inner_lr=0.05, inner_steps=2, loss_fn=F.mse_loss)
    return MAML(Conv4(1, 28, 5, 4).double(), inner_lr=0.3, inner_steps=2)


def batch(kind: str, iteration: int) -> tuple[torch.Tensor, ...]:
    """The whole meta-batch of an iteration, the same in every process."""
    generator = torch.Generator().manual_seed(iteration)
    if kind == "mlp":
        e = SinusoidTasks(shots=5, queries=5).sample(TASKS, generator)
    else:
        e = image_episode(tasks=TASKS, shots=1, queries=2, seed=iteration)
    return tuple(
        t.double() if t.is_floating_point() else t for t in (e.support_x, e.support_y, e.query_x, e.query_y)
    )


def train(kind: str, distributed: bool) -> dict[str, torch.Tensor]:
    model = learner(kind)
    # Conv-4's convolution biases sit before per-task BatchNorm, so their meta-gradient is zero
    # up to rounding; Adam would scale that rounding noise into steps of its full learning rate,
    # different in every run of the same arithmetic in another order. SGD keeps it noise.
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=1e-3)
        if kind == "mlp"
        else torch.optim.SGD(model.parameters(), lr=0.1)
    )
    for iteration in range(ITERATIONS):
        optimizer.zero_grad(set_to_none=True)
        if distributed:
            distributed_meta_backward(model, *batch(kind, iteration))
        else:
            meta_backward(model, *batch(kind, iteration))
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save({kind: train(kind, distributed=True) for kind in ("mlp", "conv4")}, f"{out}.{rank}")
        # Neither rank tears its group down while the other may still use it: on a loaded machine
        # (CI) a rank once aborted in gloo's teardown ("terminate called without an active
        # exception") when its peer destroyed the group and exited first.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tmp_path: Path) -> None:
    # Two processes of this file, one per rank, as a launcher starts them (multiprocessing's
    # spawn would leave its resource tracker running in this process).
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), "2", str(tmp_path / "store"), str(tmp_path / "params")]
        )
        for rank in range(2)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    ranks = [torch.load(tmp_path / f"params.{r}", weights_only=True) for r in range(2)]
    for kind in ("mlp", "conv4"):
        alone = train(kind, distributed=False)
        start = {k: v for k, v in learner(kind).state_dict().items()}
        assert any(not torch.equal(start[k], alone[k]) for k in alone), "training changed nothing"
        for name in alone:
            torch.testing.assert_close(ranks[0][kind][name], ranks[1][kind][name], rtol=0, atol=0)
            torch.testing.assert_close(
                ranks[0][kind][name], alone[name], rtol=1e-9, atol=1e-12, msg=f"{kind} {name}"
            )


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_the_shards_cover_the_meta_batch_in_order(world: int) -> None:
    shards = [task_shard(5, rank, world) for rank in range(world)]
    assert [i for s in shards for i in range(5)[s]] == list(range(5))
    sizes = [s.stop - s.start for s in shards]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="is not one of the"):
        task_shard(5, world, world)


if __name__ == "__main__":  # one rank of the two-process test: RANK WORLD STORE OUT
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
