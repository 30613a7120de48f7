"""Memory accounting against reality: peak RSS of a real training step in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Runs in a fresh interpreter: load model and data, one warm-up step, reset VmHWM, one step.
# MALLOC_MMAP_THRESHOLD_ pins glibc's threshold so every large tensor is mmapped and returned to
# the kernel when freed: RSS then tracks live tensors instead of malloc's retained heap.
_PROBE = r"""
import gc, json, sys
from dataclasses import dataclass
import torch
torch.set_num_threads(1)
from ftte_cli.config.recipe import ModelConfig, TrainConfig
from ftte_cli.engine import sparse
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FULL, MaskKind, ParamMask, build_plan, dense_plan
from ftte_cli.engine.train import peak_rss, reset_peak_rss, train_job

@dataclass(frozen=True)
class Data:
    x: torch.Tensor
    y: torch.Tensor

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))

name, shape, batch, mask = json.loads(sys.argv[1])
mask, _, micro = mask.partition("/")
torch.manual_seed(0)
model = build_model(ModelConfig(name), tuple(shape), 10)
params = {k: v.detach() for k, v in model.named_parameters()}
if mask == "dense":
    plan = dense_plan(model)
elif mask == "head":
    plan = build_plan(model, {n: FULL for n in list(params)[-2:]})
else:  # the second half of the parameters: weights at half their input channels
    names = list(params)
    masks = {}
    for n in names[len(names) // 2:-2]:
        p = params[n]
        half = tuple(range(0, p.shape[1], 2)) if p.dim() > 1 and p.shape[1] > 1 else ()
        masks[n] = ParamMask(MaskKind.channels, half) if half else FULL
    masks.update({n: FULL for n in names[-2:]})
    plan = build_plan(model, masks)
if micro:  # passes of `micro` samples, gradients accumulated
    from dataclasses import replace
    plan = replace(plan, micro_batch=int(micro))
data = Data(torch.randn(batch, *shape), torch.randint(0, 10, (batch,)))
cfg = TrainConfig(batch_size=batch, max_steps=1)
subset = sparse.extract(params, plan)
train_job(model, params, plan, subset, data, cfg, 0)
gc.collect()
base = rss()
assert reset_peak_rss()
res = train_job(model, params, plan, subset, data, cfg, 0)
est = training_memory(model, plan, batch, tuple(shape), 0.0)
print(json.dumps({"measured": res.peak_memory - base, "estimated": est.training_overhead}))
"""

CASES = [
    ("har_cnn", (9, 128), 256, "dense"),
    ("har_cnn", (9, 128), 256, "half"),
    ("har_cnn", (9, 128), 256, "head"),  # half and head run their frozen prefix in micro-batches
    ("har_cnn", (9, 128), 256, "dense/64"),  # the trainable part in micro-batches too
    ("har_cnn", (9, 128), 256, "half/64"),
    ("mobilenet_v2", (3, 32, 32), 16, "dense"),
    ("mobilenet_v2", (3, 32, 32), 16, "half"),
]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[3]}")
def test_estimate_within_20_percent_of_peak_rss(case: tuple) -> None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(case)], env=env,
                         capture_output=True, text=True, timeout=240, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = figures["estimated"] / figures["measured"]
    assert 0.8 <= ratio <= 1.2, f"{case}: {figures} ratio {ratio:.3f}"
