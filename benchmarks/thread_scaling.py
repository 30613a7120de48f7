"""Trainer threads against one thread on the same client jobs: the speed-up, and the share of a
job that holds the GIL.

    .venv/bin/python benchmarks/thread_scaling.py [--jobs 24] [--workers 1,2] [--rounds 2]
        [--recipe recipes/har.yaml] [--format table|json]

The jobs: the recipe's model and data (har.yaml: har_cnn at width 3, batch 32), dense plan, one
job per client from the initial model, one torch thread (the simulator's default `--threads`).
Sides: the jobs one after the other on this thread (the in-process backend's loop), then
`sim/thread_backend.ThreadBackend` with each of `--workers` trainer threads (all jobs submitted,
then every result taken), then `sim/process_backend.ProcessBackend` with each count above 1
(forked workers: what separate processes get from the same cores). The sides run interleaved
for `--rounds` rounds and the fastest round of each is kept, so a load change on the machine
hits every side alike.

Printed per side: wall, CPU of the process and its workers (user + sys), CPU / wall (cores in
use), speed-up over one trainer thread, whether every delta equals the in-process one to the
bit, and the serial share that speed-up implies (Amdahl, k workers: s = (k / speed-up - 1) /
(k - 1)). k threads run k jobs at once except where one of them holds the GIL or waits on
another process-wide lock (or the cores are taken by other work), so for threads s is an upper
bound on that serial share; the processes row, measured in the same rounds, shows what the
cores allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import load_recipe  # noqa: E402
from ftte_cli.engine import sparse  # noqa: E402
from ftte_cli.engine.coordinator import Job  # noqa: E402
from ftte_cli.engine.train import JobResult, train_job  # noqa: E402
from ftte_cli.sim.process_backend import ProcessBackend  # noqa: E402
from ftte_cli.sim.runner import SimSettings, World, prepare  # noqa: E402
from ftte_cli.sim.thread_backend import ThreadBackend  # noqa: E402

HAR = Path(__file__).resolve().parents[1] / "recipes" / "har.yaml"


def _jobs(world: World, count: int) -> List[Job]:
    subset = sparse.extract(world.params, world.dense)
    return [Job(f"j{i}", f"c{i:04d}", 0, subset, 0.0, 1000 + i) for i in range(count)]


def in_process(world: World, jobs: List[Job]) -> List[JobResult]:
    return [train_job(world.model, world.params, world.dense, j.subset,
                      world.data.clients[i].train, world.recipe.train, j.seed)
            for i, j in enumerate(jobs)]


def pooled(world: World, jobs: List[Job], backend: Any) -> List[JobResult]:
    """The jobs on a started-here ThreadBackend or ProcessBackend: all submitted, then taken."""
    backend.start(world)
    try:
        handles = [backend.submit("dense", j, i, world.recipe.train) for i, j in enumerate(jobs)]
        return [backend.result(h)[0] for h in handles]
    finally:
        backend.close()


def _same(a: List[JobResult], b: List[JobResult]) -> bool:
    return all(x.delta.keys() == y.delta.keys()
               and all(torch.equal(x.delta[k], y.delta[k]) for k in x.delta)
               and x.grad_variance == y.grad_variance for x, y in zip(a, b))


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the processes backend's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(recipe: Path, count: int, workers: List[int], rounds: int) -> Dict[str, Any]:
    torch.set_num_threads(1)
    world = prepare(SimSettings(load_recipe(recipe), clients=count, strategies=("fedavg",)))
    jobs = _jobs(world, count)
    runs: Dict[str, Any] = {"in-process": lambda: in_process(world, jobs)}
    for k in workers:
        runs[f"threads, {k}"] = lambda k=k: pooled(world, jobs, ThreadBackend(k))
    for k in workers:
        if k > 1:  # the same jobs in forked workers: the reference threads should approach
            runs[f"processes, {k}"] = lambda k=k: pooled(world, jobs, ProcessBackend(k))
    best: Dict[str, Dict[str, Any]] = {}
    reference: Optional[List[JobResult]] = None
    for _ in range(rounds):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), _cpu()
            results = run()
            wall, cpu = time.perf_counter() - wall, _cpu() - cpu
            if reference is None:
                reference = results
            row = {"wall_s": wall, "cpu_s": cpu, "same_bits": _same(reference, results)}
            if name not in best or wall < best[name]["wall_s"]:
                best[name] = row
    one = best.get("threads, 1")
    for name, row in best.items():
        k = 1 if name == "in-process" else int(name.split(", ")[1])
        row["workers"] = k
        row["cores_in_use"] = row["cpu_s"] / row["wall_s"]
        row["speedup"] = one["wall_s"] / row["wall_s"] if one else None
        row["serial_share"] = (None if row["speedup"] is None or k == 1
                               else (k / row["speedup"] - 1) / (k - 1))
    return {"recipe": str(recipe), "model": f"{world.recipe.model.name} x"
            f"{world.recipe.model.width:g}", "jobs": count,
            "batch_size": world.recipe.train.batch_size, "rounds": rounds,
            "cpus": len(os.sched_getaffinity(0)), "sides": best,
            "load_average": os.getloadavg()}


def print_table(doc: Dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{doc['jobs']} dense jobs of {doc['model']} (batch {doc['batch_size']}), "
                    f"1 torch thread, fastest of {doc['rounds']} rounds, {doc['cpus']} usable "
                    "CPUs")
    for col in ("side", "wall", "CPU", "CPU / wall", "speed-up vs 1 thread", "same bits",
                "implied serial (GIL) share"):
        t.add_column(col)
    for name, r in doc["sides"].items():
        t.add_row(name, f"{r['wall_s']:.2f} s", f"{r['cpu_s']:.2f} s",
                  f"{r['cores_in_use']:.2f}",
                  "-" if r["speedup"] is None else f"{r['speedup']:.2f}",
                  "yes" if r["same_bits"] else "NO",
                  "-" if r["serial_share"] is None else f"{r['serial_share']:.0%}")
    console = Console()
    console.print(t)
    console.print(f"load average at the end: {doc['load_average']}", highlight=False)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--recipe", type=Path, default=HAR)
    p.add_argument("--jobs", type=int, default=24, help="jobs (one per client) per side")
    p.add_argument("--workers", default="1,2", help="trainer thread counts, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; fastest kept")
    p.add_argument("--format", choices=("table", "json"), default="table")
    args = p.parse_args(argv)
    doc = measure(args.recipe, args.jobs, [int(w) for w in args.workers.split(",") if w],
                  args.rounds)
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
