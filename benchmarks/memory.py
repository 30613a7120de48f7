"""The memory estimate against real peaks on a testbed device, side by side (issue 11, part 3).

    .venv/bin/python benchmarks/memory.py [--models har,har-demo,mobilenet] [--jobs 3]
                                           [--class pi4] [--format json]

For each model and each of the dense plan, the plan chosen at 20% of full-training memory and at
50%, one fresh process on an emulated device (its cgroup caps and CPU quota, over SSH) imports
torch and builds the model (the runtime baseline, as the probe measures it), then trains the
plan for --jobs jobs as an agent does (2 steps each) and reports its peak RSS. The claim checked:

    measured = peak RSS - baseline        predicted = plan estimate + runtime overhead

where the estimate is engine/memory.py's (the plan's tensors, frozen copy excluded: the built
model holds it here) and the runtime overhead is the device's probe figure for that model
(fleet/probe.runtime_step), i.e. what M_i now subtracts. Goal: predicted within +-10% of measured.
Needs root for the caps (without it the device is a plain loopback sshd, the figures hold).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, List, Optional

from ftte_cli.config.inventory import Device, load_inventory
from ftte_cli.config.recipe import (
    DataConfig,
    ModelConfig,
    PlanConfig,
    Recipe,
    TrainConfig,
    load_recipe,
)
from ftte_cli.fleet.profile import ProfileRequest, profile_fleet
from ftte_cli.fleet.ssh import SshOptions, connect
from ftte_cli.testbed import lifecycle
from ftte_cli.units import format_size

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.10

# Runs on the device: argv = model name, width, input shape (JSON), classes, batch, plan file
# (a saved plan, or "dense"), jobs. Prints one JSON line.
_PROGRAM = r"""
import json, sys
import torch
from ftte_cli.config.recipe import ModelConfig, TrainConfig
from ftte_cli.engine.models import build_model
name, width, shape, classes, batch, plan_path, jobs = sys.argv[1:8]
shape, classes, batch, jobs = tuple(json.loads(shape)), int(classes), int(batch), int(jobs)
torch.manual_seed(0)
model = build_model(ModelConfig(name, float(width)), shape, classes)
def rss(field):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field + ":"))
baseline = rss("VmRSS")
from ftte_cli.engine import sparse
from ftte_cli.engine.data import Dataset
from ftte_cli.engine.memory import training_memory
from ftte_cli.engine.plan import dense_plan, load_plan
from ftte_cli.engine.train import train_job
plan = dense_plan(model) if plan_path == "dense" else load_plan(plan_path)
frozen = {k: v.detach() for k, v in model.named_parameters()}
gen = torch.Generator().manual_seed(1)
data = Dataset(torch.randn((4 * batch,) + shape, generator=gen),
               torch.randint(0, classes, (4 * batch,), generator=gen))
cfg = TrainConfig(batch_size=batch, max_steps=2)
subset = sparse.extract(frozen, plan)
for job in range(jobs):  # the same w* each time: an agent frees a job before the next one
    res = train_job(model, frozen, plan, subset, data, cfg, job)
    del res
est = training_memory(model, plan, batch, shape, 0.0)
print(json.dumps({"baseline": baseline, "peak": rss("VmHWM"),
                  "estimate": est.training_overhead}))
"""


@dataclass(frozen=True)
class Row:
    """One model and plan on the device."""

    model: str
    plan: str  # dense | 20% | 50%
    trainable: float  # share of parameters trained
    micro_batch: Optional[int]
    estimate: int  # the plan's tensors beyond the frozen model (engine/memory.py)
    overhead: int  # the probe's runtime overhead for this model on this device
    measured: int  # peak RSS - baseline over the jobs
    ratio: float  # (estimate + overhead) / measured


def recipes(names: List[str]) -> List[Recipe]:
    """The benchmarked recipes, in order."""
    out = []
    for name in names:
        if name == "har":
            out.append(load_recipe(REPO / "recipes" / "har.yaml"))
        elif name == "har-demo":
            out.append(load_recipe(REPO / "recipes" / "har-demo.yaml"))
        elif name == "mobilenet":
            out.append(Recipe(name="cifar-shaped-mobilenet", seed=1,
                              data=DataConfig(dataset="cifar10"),  # its shape only
                              model=ModelConfig("mobilenet_v2", 0.5),
                              train=TrainConfig(batch_size=32),
                              plan=PlanConfig(method="gradnorm")))
        else:
            raise SystemExit(f"--models: unknown {name!r} (har, har-demo, mobilenet)")
    return out


def shape_of(recipe: Recipe) -> tuple[tuple[int, ...], int]:
    """Input shape and classes: HAR windows, or CIFAR-10 images for mobilenet."""
    return ((3, 32, 32), 10) if recipe.model.name == "mobilenet_v2" else ((9, 128), 6)


def plans(recipe: Recipe, folder: Path) -> List[tuple[str, str, Any]]:
    """(label, plan argument, Plan or None) for dense, 20% and 50% of full training."""
    import torch

    from ftte_cli.engine.models import build_model
    from ftte_cli.engine.plan import save_plan
    from ftte_cli.engine.selection import select

    shape, classes = shape_of(recipe)
    torch.manual_seed(0)  # the device builds the same model from the same seed
    model = build_model(recipe.model, shape, classes)
    out: List[tuple[str, str, Any]] = [("dense", "dense", None)]
    gradnorm = replace(recipe, plan=replace(recipe.plan, method="gradnorm"))
    full = select(model, gradnorm, None, 2**50, shape, classes).full_memory.total
    for share in (0.2, 0.5):
        plan = select(model, gradnorm, None, int(share * full), shape, classes).plan
        path = folder / f"{recipe.name}-{int(share * 100)}"
        save_plan(plan, path)
        out.append((f"{share:.0%}", str(path), plan))
    return out


def measure(device: Device, opts: SshOptions, recipe: Recipe, plan_arg: str, jobs: int) -> dict:
    """Run _PROGRAM once on the device (a fresh process) and parse its line."""
    shape, classes = shape_of(recipe)
    args = [recipe.model.name, str(recipe.model.width), json.dumps(list(shape)), str(classes),
            str(recipe.train.batch_size), plan_arg, str(jobs)]
    cmd = (f"PYTHONPATH={shlex.quote(str(REPO))} {device.python} -c {shlex.quote(_PROGRAM)} "
           + " ".join(shlex.quote(a) for a in args))
    with connect(device, opts) as session:
        out = session.run(cmd, timeout=600).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def bench(device: Device, opts: SshOptions, recipe: Recipe, jobs: int, folder: Path) -> List[Row]:
    """Rows for one recipe: its probe overhead, then each plan in its own process."""
    profile = profile_fleet([device], opts, ProfileRequest(recipe=recipe))[device.name]
    overhead = int(getattr(profile.value, "runtime_overhead_bytes", 0) or 0)
    rows = []
    for label, arg, plan in plans(recipe, folder):
        got = measure(device, opts, recipe, arg, jobs)
        measured = got["peak"] - got["baseline"]
        share = 1.0 if plan is None else plan.trainable_params / plan.total_params
        rows.append(Row(recipe.model.name + f" x{recipe.model.width:g}", label, share,
                        None if plan is None else plan.micro_batch, got["estimate"], overhead,
                        measured, (got["estimate"] + overhead) / measured))
    return rows


def print_rows(rows: List[Row], device: str) -> None:
    """One table, one line per model and plan, with the ratio predicted / measured."""
    print(f"estimate vs measured on {device} (increase of peak RSS over the runtime baseline)")
    head = (f"{'model':<18}{'plan':>6}{'trained':>9}{'micro':>7}{'estimate':>12}"
            f"{'+ runtime':>12}{'= predicted':>13}{'measured':>12}{'ratio':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.model:<18}{r.plan:>6}{r.trainable:>9.0%}{str(r.micro_batch or '-'):>7}"
              f"{format_size(r.estimate):>12}{format_size(r.overhead):>12}"
              f"{format_size(r.estimate + r.overhead):>13}{format_size(r.measured):>12}"
              f"{r.ratio:>8.2f}")
    inside = sum(abs(r.ratio - 1) <= GOAL for r in rows)
    print(f"\nwithin +-{GOAL:.0%}: {inside} of {len(rows)}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="har,har-demo,mobilenet")
    parser.add_argument("--jobs", type=int, default=3, help="jobs per process, as an agent runs")
    parser.add_argument("--class", dest="cls", default="pi4", help="testbed device class")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    rows: List[Row] = []
    with tempfile.TemporaryDirectory(prefix="ftte-memory-") as tmp:
        state = lifecycle.up(Path(tmp) / "bed", 1, args.cls)
        try:
            device = load_inventory(Path(state.dir) / lifecycle.INVENTORY_FILE).select(None)[0]
            opts = SshOptions(command_timeout=600)
            for recipe in recipes(args.models.split(",")):
                rows += bench(device, opts, recipe, args.jobs, Path(tmp))
        finally:
            lifecycle.down(Path(tmp) / "bed")
    if args.format == "json":
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print_rows(rows, f"{device.name} ({args.cls})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
