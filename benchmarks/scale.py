"""The same simulation in-process, on 2 forked worker processes (`--backend processes`) and on
Ray with 1 and 2 workers: wall time, peak memory, and the per-job overhead each backend adds.

    .venv/bin/python benchmarks/scale.py [--clients 100] [--versions 12] [--format table|json]

Each mode runs in its own child process (a local Ray with 2 CPUs for the Ray modes; they are
left out when Ray is not installed) while this process samples the memory of the child's whole
process tree (driver, forked workers, Ray's raylet / GCS / object store, the actors) every
0.2 s: "peak memory" is the largest RSS sum, "peak PSS" the largest PSS sum (forked workers
share their parent's pages; PSS counts a shared page once over the tree). The child
also times 24 jobs trained one at a time, alternately in-process and through the backend (submit,
then wait): the difference of the medians is Ray's overhead per job (placing w*, the actor
call, moving the delta back).
Results must be equal across modes (same accuracy/loss bits per evaluation); the table says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from proctree import tree_memory  # benchmarks/proctree.py (scripts run from this folder)

RECIPE = """
name: scale
seed: 11
data: {{dataset: synthetic_har, windows: {windows}, subjects: 20, partition: iid}}
model: {{name: har_cnn, width: 1.0}}
train: {{epochs: 2, batch_size: 16, lr: 0.05}}
strategy: {{buffer_size: 4, max_concurrency: 8}}
plan: {{memory_budget: 2MB, proxy_steps: 2}}
stop: {{target_accuracy: 0.99, max_versions: {versions}, time_limit: 1000000, eval_every: 4}}
sim: {{clients: {clients}, stragglers: 0.3, dropout_rate: 0.0, return_after: 5}}
"""
MODES = {"in-process": 0, "processes, 2": -2, "ray, 1 worker": 1, "ray, 2 workers": 2}
RAY_MODES = ("ray, 1 worker", "ray, 2 workers")
OVERHEAD_JOBS = 24


def child(recipe_path: str, workers: int) -> Dict[str, Any]:
    """Run the simulation (and the overhead probe) in this process; return the figures.
    `workers`: 0 in-process, > 0 Ray actors, < 0 forked worker processes."""
    import torch

    from ftte_cli.config.recipe import load_recipe
    from ftte_cli.engine import sparse
    from ftte_cli.engine.coordinator import Job
    from ftte_cli.sim.runner import InProcessBackend, SimSettings, prepare, run_strategy

    torch.set_num_threads(1)
    settings = SimSettings(load_recipe(Path(recipe_path)), strategies=("ftte",),
                           stop_at_target=False, eval_samples=500)
    start = time.perf_counter()
    world = prepare(settings)
    prepared = time.perf_counter()
    backend: Any = InProcessBackend()
    if workers < 0:
        from ftte_cli.sim.process_backend import ProcessBackend

        backend = ProcessBackend(-workers)
    elif workers:
        import ray

        from ftte_cli.sim.ray_backend import RayBackend

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        backend = RayBackend(workers=workers)
    backend.start(world)
    placed = time.perf_counter()
    res = run_strategy(world, "ftte", backend=backend)
    ran = time.perf_counter()
    subset = {k: v.clone() for k, v in sparse.extract(world.params, world.ftte).items()}
    jobs = [Job(f"probe{i}", f"c{i:04d}", 0, subset, 0.0, i) for i in range(OVERHEAD_JOBS)]
    local = InProcessBackend()
    local.start(world)
    times: Dict[str, List[float]] = {"local": [], "backend": []}
    for i, job in enumerate(jobs):  # alternate, so load on the machine hits both alike
        for key, where in (("local", local), ("backend", backend)):
            t0 = time.perf_counter()
            where.result(where.submit("ftte", job, i, world.recipe.train))
            times[key].append(time.perf_counter() - t0)
    backend.close()
    digest = hashlib.sha256(json.dumps(res.metrics.to_dict(), sort_keys=True).encode())
    return {"prepare_s": prepared - start, "start_backend_s": placed - prepared,
            "run_s": ran - placed, "jobs": res.metrics.jobs_dispatched,
            "versions": res.summary.versions, "final_accuracy": res.summary.final_accuracy,
            "train_cpu_s": res.train_cpu_s,
            "job_local_ms": statistics.median(times["local"]) * 1e3,
            "job_backend_ms": statistics.median(times["backend"]) * 1e3,
            "metrics_sha256": digest.hexdigest()}


def run_mode(recipe_path: Path, workers: int) -> Dict[str, Any]:
    """One mode in a child process, sampling its process tree's memory."""
    cmd = [sys.executable, __file__, "--child", str(recipe_path), "--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]  # RSS sum, PSS sum

    def sample() -> None:
        while proc.poll() is None:
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"scale: mode with {workers} workers failed (exit {proc.returncode})")
    doc = json.loads(out.strip().splitlines()[-1])
    return {**doc, "wall_s": time.perf_counter() - start, "peak_rss": peak[0],
            "peak_pss": peak[1]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--versions", type=int, default=12)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.workers)))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.yaml"
        path.write_text(RECIPE.format(clients=args.clients, versions=args.versions,
                                      windows=max(120 * args.clients, 1000)))
        rows = {name: run_mode(path, w) for name, w in MODES.items()
                if name not in RAY_MODES or _has_ray()}
    base = rows["in-process"]["metrics_sha256"]
    for r in rows.values():
        r["equal_to_in_process"] = r["metrics_sha256"] == base
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    _table(rows, args.clients)
    return 0 if all(r["equal_to_in_process"] for r in rows.values()) else 1


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _table(rows: Dict[str, Dict[str, Any]], clients: int) -> None:
    from ftte_cli.units import format_size

    first = base = next(iter(rows.values()))
    print(f"ftte on {clients} clients, {first['versions']} versions, {first['jobs']} jobs "
          f"(har_cnn, sparse plan); local Ray with 2 CPUs; 2 forked worker processes")
    head = ["", *rows]
    lines = [
        ("wall, whole process (s)", [f"{r['wall_s']:.1f}" for r in rows.values()]),
        ("  start backend (s)", [f"{r['start_backend_s']:.1f}" for r in rows.values()]),
        ("  simulation (s)", [f"{r['run_s']:.1f}" for r in rows.values()]),
        ("simulation / in-process", [f"{r['run_s'] / base['run_s']:.2f}" for r in rows.values()]),
        ("peak memory, all processes", [format_size(r["peak_rss"]) for r in rows.values()]),
        ("peak PSS, all processes", [format_size(r["peak_pss"]) for r in rows.values()]),
        ("CPU in train_job (s)", [f"{r['train_cpu_s']:.1f}" for r in rows.values()]),
        ("one job, in-process (ms)", [f"{r['job_local_ms']:.1f}" for r in rows.values()]),
        ("one job, via backend (ms)", [f"{r['job_backend_ms']:.1f}" for r in rows.values()]),
        ("per-job overhead (ms)", [f"{r['job_backend_ms'] - r['job_local_ms']:.1f}"
                                   for r in rows.values()]),
        ("final accuracy", [f"{r['final_accuracy']:.4f}" for r in rows.values()]),
        ("metrics equal to in-process", [str(r["equal_to_in_process"]).lower()
                                         for r in rows.values()]),
    ]
    width = max(len(k) for k, _ in lines) + 2
    print("".join([f"{head[0]:<{width}}"] + [f"{h:>16}" for h in head[1:]]))
    for label, cells in lines:
        print("".join([f"{label:<{width}}"] + [f"{c:>16}" for c in cells]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
