#!/usr/bin/env bash
# GPU checks, run on a lent CUDA machine from the repository root (see README "Development"):
#   the device tool carries .whl/ (pydantic and its needs, cp312 wheels) and runs this script.
# It checks that the inner loop is correct on CUDA (vmap vs per-task meta-gradients), that
# 'metasweep train' runs with device: auto on the GPU, and measures throughput on the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/correctness.txt"
import torch, torch.nn.functional as F
from metasweep.algorithms import MAML, MetaSGD, ANIL, Conv4, MLP, SinusoidTasks
from metasweep.algorithms.functional import resolve_strategy
dev = torch.device("cuda")
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
print("torch", torch.__version__, torch.cuda.get_device_name())
def grads(learner, ep):
    learner.zero_grad()
    learner.meta_loss(*ep).backward()
    return {n: p.grad.detach().clone() for n, p in learner.named_parameters()}
ep = SinusoidTasks().sample(25, torch.Generator().manual_seed(0))
ep = tuple(t.to(dev).double() for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y))
for cls in (MAML, MetaSGD):
    out = {}
    for s in ("vmap", "loop"):
        torch.manual_seed(0)
        out[s] = grads(cls(MLP().to(dev).double(), loss_fn=F.mse_loss, strategy=s).to(dev), ep)
    err = max((out["vmap"][k] - out["loop"][k]).abs().max().item() for k in out["loop"])
    print(f"sinusoid {cls.__name__:8s} second order, vmap vs loop max |diff| = {err:.2e}", "OK" if err < 1e-8 else "FAIL")
x = torch.randn(8, 5, 1, 28, 28, device=dev, dtype=torch.float64)
y = torch.arange(5, device=dev).repeat(8, 1)
ep = (x, y, x.flip(1), y.flip(1))
for first_order in (True, False):
    out = {}
    for s in ("vmap", "loop"):
        torch.manual_seed(0)
        out[s] = grads(MAML(Conv4().to(dev).double(), inner_lr=0.4, first_order=first_order, strategy=s), ep)
    a, b = out.values()
    err = max((a[k] - b[k]).abs().max().item() for k in b)
    print(f"conv4 MAML first_order={first_order} (TaskBatchNorm2d), vmap/loop max |diff| = {err:.2e}", "OK" if err < 1e-8 else "FAIL")
print("auto on cuda: conv4 second order ->", resolve_strategy("auto", Conv4(), dev, True),
      "| conv4 first order ->", resolve_strategy("auto", Conv4(), dev, False), "| mlp ->", resolve_strategy("auto", MLP(), dev, True))
PY
python3 -m metasweep train examples/sinusoid_maml.yaml --no-progress --set device=auto \
  --set train.iterations=2000 --set train.eval_every=1000 --set output_dir=/tmp/gpu_run 2>&1 | tail -3 | tee "$OUT/train.txt"
# THROUGHPUT_ARGS narrows the benchmark to fit a short lease, e.g. "--impls auto,baseline".
timeout "${THROUGHPUT_TIMEOUT:-420}" python3 benchmarks/throughput.py --device cuda ${THROUGHPUT_ARGS:-} \
  --json "$OUT/throughput_cuda.json" 2>&1 | tee "$OUT/throughput.txt"
