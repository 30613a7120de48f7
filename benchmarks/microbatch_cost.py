"""What micro-batching costs in time: har_cnn train steps of one batch split into smaller passes.

    .venv/bin/python benchmarks/microbatch_cost.py [--width 3] [--batch 32] [--steps 20]
        [--repeats 3] [--format table|json]

One torch thread (a small device's core). Each step trains the whole model (forward, backward,
SGD update) on one batch of `--batch` synthetic HAR windows, run as passes of 32/16/8/4/2/1
samples with gradients accumulated, as engine/train.py does under a plan's micro_batch. The
sizes are timed interleaved, `--repeats` rounds, and the median per round is kept, so a load
change on the machine hits every size alike. Printed: seconds per step, per sample, and the
ratio to one pass over the whole batch: the slowdown sim/devices.PASS_SLOWDOWN charges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import ModelConfig  # noqa: E402
from ftte_cli.engine.models import build_model  # noqa: E402

SHAPE = (9, 128)  # synthetic HAR windows: 9 channels x 128 time steps
CLASSES = 6


def pass_sizes(batch: int) -> List[int]:
    """The batch, halved down to 1 (the sizes selection tries)."""
    sizes = [batch]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int,
                 steps: int) -> float:
    """Seconds per train step of the whole batch, `micro` samples per forward/backward pass."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        for xs, ys in zip(x.split(micro), y.split(micro)):
            loss = F.cross_entropy(model(xs), ys) * (len(ys) / len(y))
            loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def measure(width: float, batch: int, steps: int, repeats: int) -> Dict[int, float]:
    """pass size -> median seconds per step over `repeats` interleaved rounds."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("har_cnn", width), SHAPE, CLASSES)
    x = torch.randn(batch, *SHAPE)
    y = torch.randint(0, CLASSES, (batch,))
    sizes = pass_sizes(batch)
    for m in sizes:  # warm-up: allocator and kernels for every shape
        step_seconds(model, x, y, m, 2)
    rounds: Dict[int, List[float]] = {m: [] for m in sizes}
    for _ in range(repeats):
        for m in sizes:
            rounds[m].append(step_seconds(model, x, y, m, steps))
    return {m: statistics.median(t) for m, t in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = measure(args.width, args.batch, args.steps, args.repeats)
    whole = times[args.batch]
    rows = [{"pass_size": m, "passes": args.batch // m, "step_s": t, "per_sample_s": t / args.batch,
             "ratio": t / whole} for m, t in times.items()]
    if args.format == "json":
        print(json.dumps({"model": "har_cnn", "width": args.width, "batch": args.batch,
                          "threads": 1, "rows": rows}, indent=2))
        return
    print(f"har_cnn width {args.width}, batch {args.batch}, 1 torch thread, full training step "
          f"(median of {args.repeats} rounds of {args.steps} steps)")
    print(f"{'pass':>5s} {'passes':>6s} {'step ms':>8s} {'ms/sample':>9s} {'vs whole':>8s}")
    for r in rows:
        print(f"{r['pass_size']:5d} {r['passes']:6d} {1000 * r['step_s']:8.2f} "
              f"{1000 * r['per_sample_s']:9.3f} {r['ratio']:7.2f}x")


if __name__ == "__main__":
    main()
