"""`ftte simulate`, each backend, against a plain per-client torch loop on the same FedAvg work.

Wall time, CPU time and peak memory, side by side with ratios, from one run; the backends are
in-process, batched, processes and threads.

    .venv/bin/python benchmarks/sim_speed.py [--sizes 20x3,100x5,500x5] [--threads 1]
                                             [--workers N] [--backends inprocess,threads]
                                             [--no-recipe] [--format table|json]

The work, for each CLIENTSxROUNDS: FedAvg on har_cnn with ftte's own synthetic HAR shards
(recipes/har.yaml's data, split over CLIENTS), every client trains one epoch at batch 16 and
lr 0.05 in every round, the server averages by n_i and evaluates the same 1,000 test samples
after every round. The sides:
- loop: the plainest loop a user would write on the same shards (nn.Module, torch.optim.SGD,
  load_state_dict per client, one client after the other);
- ftte inprocess / batched / processes / threads (or those of --backends): the real command,
  `python -m ftte_cli simulate --strategies fedavg --until limit --backend ...` (imports,
  set-up, run directory and plots included); processes and threads with `--workers` (default:
  the CPUs this process may use).
Each side runs in its own child process; this process samples the memory of the child's whole
process tree (RSS every 0.2 s, PSS every 1 s, from a nice-19 thread) and reads the child's CPU time
from the kernel when it exits. Memory is shown twice: the peak of the RSS sum over the tree ("RSS",
what the issue's Flower figures measure; pages a forked worker shares with its parent count once per
process) and the peak of the PSS sum ("PSS": shared pages split among their processes, the tree's
real footprint). The goals compare RSS, the measure Flower's figures use and the larger of the two
for ftte. On a shared machine wall time depends on the load; CPU time much less, so both are shown.
Final accuracies are close, not equal (same data, initial model and steps; the loop's shuffles use
its own seeds): 0.495 / 0.493 at 100x5, 0.629 / 0.690 after 20x3's three rounds (measured, issue
14).

The goal lines end with each size's floor: torch's import plus the loop's round CPU time spread
over every usable core. The rounds are arithmetic-bound (the convolutions run near the core's
peak), so no simulator doing the same arithmetic on these cores can be faster than that; a goal
under the floor is printed as out of reach on this machine.

Then, unless --no-recipe: recipes/har.yaml itself (strategy ftte) with 100 clients for its 300
versions on each of --recipe-backends (default inprocess,processes,threads; issue goal: under 2
minutes on 2 cores).

Flower: `--flower-python PY` adds Flower's side to every size, measured the same way in the same
run: PY is an interpreter of an environment of its own with flwr[simulation] and torch (Flower pins
typer and rich below ftte's, so it is never an ftte dependency), running
benchmarks/sim_speed_flower.py's child. A third table then gives ftte/Flower wall and memory, and
the issue's goals are printed met or missed:

    python -m venv /tmp/flwr && /tmp/flwr/bin/pip install 'flwr[simulation]==1.42.0' \
        torch==2.13.0 numpy pyyaml safetensors
    .venv/bin/python benchmarks/sim_speed.py --flower-python /tmp/flwr/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from proctree import tree_memory, tree_rss  # benchmarks/proctree.py (scripts run from this folder)

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "recipes" / "har.yaml"
BACKENDS = ("inprocess", "batched", "processes", "threads")
SIDES = ("loop", *(f"ftte {b}" for b in BACKENDS))  # every side a size's row can have
EVAL_SAMPLES = 1000
GOALS = {"loop_wall": 0.5, "flower_wall": 0.25, "flower_memory": 0.25}  # issue 14, ftte / other


def measure(cmd: List[str], last_line: bool = False) -> Dict[str, Any]:
    """Run `cmd`; wall seconds, CPU seconds (user + sys, children included), peak tree RSS and
    PSS sums, and its stdout parsed as JSON (only its last line with `last_line`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = [0, 0]  # RSS sum, PSS sum
    done = threading.Event()

    def sample() -> None:
        # The sampler must not slow what it measures: reading PSS (smaps_rollup) of a
        # multi-GiB process tree costs tens of ms, and Ray runs Flower's actors at nice 15, so
        # a 10 Hz sampler at nice 0 took half a core from them (Flower 500x5 ran 5x longer).
        # Hence nice 19 for this thread, RSS every 0.2 s and PSS every 1 s.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        ticks = 0
        # not proc.poll(): it reaps the child, and wait4 below then finds none (a race that
        # crashed a run); tree_memory of an exited pid is 0
        while not done.wait(0.2):
            if ticks % 5 == 0:
                rss, pss = tree_memory(proc.pid)
                peak[1] = max(peak[1], pss)
            else:
                rss = tree_rss(proc.pid)
            peak[0] = max(peak[0], rss)
            ticks += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sim_speed: {' '.join(cmd[:6])} ... failed (exit {proc.returncode})")
    text = out.strip().splitlines()[-1] if last_line and out.strip() else out
    doc = json.loads(text) if text.strip() else {}
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": peak[0] / 2**20,
            "peak_pss_mib": peak[1] / 2**20, "doc": doc}


# ---------------------------------------------------------------------------------------------
# the plain loop (runs in a child process)


def loop_child(clients: int, rounds: int, threads: int) -> Dict[str, Any]:
    """FedAvg as a user would write it, on ftte's shards; returns the final accuracy and where
    its time went: importing torch, the rest of the set-up, and the CPU time of the rounds."""
    t0 = time.perf_counter()
    import torch
    import_s = time.perf_counter() - t0
    import torch.nn.functional as F

    from ftte_cli.config.recipe import load_recipe
    from ftte_cli.engine.data import load_federated
    from ftte_cli.engine.models import build_model

    torch.set_num_threads(threads)
    recipe = load_recipe(HAR)
    data = load_federated(replace(recipe.data, clients=clients), clients, recipe.seed)  # as ftte
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data.input_shape, data.num_classes)
    test = data.test
    if len(test) > EVAL_SAMPLES:  # the same subset ftte's simulator evaluates on
        gen = torch.Generator().manual_seed(recipe.seed)
        test = test.subset(torch.randperm(len(test), generator=gen)[:EVAL_SAMPLES].sort().values)
    cfg = recipe.train
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    acc = 0.0
    setup_s, cpu0 = time.perf_counter() - t0, time.process_time()
    for r in range(rounds):
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        samples = 0
        for c in data.clients:
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
            gen = torch.Generator().manual_seed(1_000_003 * r + c.client_id)
            n = len(c.train)
            for _ in range(cfg.epochs):
                for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
                    opt.zero_grad()
                    F.cross_entropy(model(c.train.x[idx]), c.train.y[idx]).backward()
                    opt.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    total[k] += n * v
            samples += n
        global_state = {k: v / samples for k, v in total.items()}
        model.load_state_dict(global_state)
        with torch.no_grad():
            acc = float((model(test.x).argmax(1) == test.y).float().mean())
    return {"final_accuracy": acc, "jobs": clients * rounds, "import_torch_s": import_s,
            "setup_s": setup_s, "rounds_cpu_s": time.process_time() - cpu0}


def floor_s(loop: Dict[str, Any], cpus: int) -> Optional[float]:
    """The least wall time any simulator could take for the loop's work on `cpus` cores.

    The rounds are arithmetic-bound (har_cnn's convolutions run near the core's peak in the
    loop; docs/SCALING.md section 4), so doing the same arithmetic takes at least their CPU
    time spread perfectly over every core, after importing torch. Kind to the simulator: it
    still has to build the data, which the floor leaves out.
    """
    if "rounds_cpu_s" not in loop:
        return None
    return loop["import_torch_s"] + loop["rounds_cpu_s"] / max(cpus, 1)


# ---------------------------------------------------------------------------------------------
# ftte simulate children


def fedavg_recipe(folder: Path, rounds: int) -> Path:
    """recipes/har.yaml as FedAvg for `rounds` rounds, every client in, evaluated every round,
    from the seeded random model the loop starts from (har.yaml warm-starts: the loop does not,
    so with it the two sides neither did the same work nor reached the same accuracy)."""
    text = HAR.read_text()
    text = text.replace("\ninit: pretrain ", "\ninit: random   ")
    text = text.replace("name: ftte ", "name: fedavg ").replace("max_versions: 300",
                                                                f"max_versions: {rounds}")
    text = text.replace("time_limit: 900", "time_limit: 100000000").replace(
        "eval_every: 2", "eval_every: 1").replace("baseline_memory: strict",
                                                  "baseline_memory: lenient")
    path = folder / f"fedavg{rounds}.yaml"
    path.write_text(text)
    return path


def simulate_cmd(recipe: Path, clients: int, strategy: str, backend: str, threads: int,
                 out: Path, workers: Optional[int] = None) -> List[str]:
    pool = ["--workers", str(workers)] if backend in ("processes", "threads") and workers else []
    return [sys.executable, "-m", "ftte_cli", "simulate", "--recipe", str(recipe),
            "--clients", str(clients), "--strategies", strategy, "--until", "limit",
            "--backend", backend, *pool, "--threads", str(threads), "--eval-samples",
            str(EVAL_SAMPLES), "--format", "json", "--out", str(out)]


def _strategy(doc: Dict[str, Any]) -> Dict[str, Any]:
    return doc["strategies"][0] if doc.get("strategies") else {}


def run_size(tmp: Path, clients: int, rounds: int, threads: int, workers: Optional[int],
             flower_python: Optional[str] = None, backends: Tuple[str, ...] = BACKENDS
             ) -> Dict[str, Any]:
    recipe = fedavg_recipe(tmp, rounds)
    rows: Dict[str, Dict[str, Any]] = {}
    if flower_python:
        rows["flower"] = measure([flower_python, str(ROOT / "benchmarks" / "sim_speed_flower.py"),
                                  "--child", f"{clients}x{rounds}", "--threads", str(threads)],
                                 last_line=True)
        rows["flower"]["final_accuracy"] = rows["flower"]["doc"].get("final_accuracy")
    rows["loop"] = measure([sys.executable, __file__, "--loop-child", f"{clients}x{rounds}",
                            "--threads", str(threads)])
    rows["loop"]["final_accuracy"] = rows["loop"]["doc"]["final_accuracy"]
    rows["loop"].update({k: v for k, v in rows["loop"]["doc"].items() if k.endswith("_s")})
    for backend in backends:
        out = tmp / f"run-{clients}x{rounds}-{backend}"
        m = measure(simulate_cmd(recipe, clients, "fedavg", backend, threads, out, workers))
        s = _strategy(m["doc"])
        m["final_accuracy"] = s.get("final_accuracy")
        m["versions"] = s.get("versions")
        rows[f"ftte {backend}"] = m
    for r in rows.values():
        r.pop("doc", None)
    return {"clients": clients, "rounds": rounds, "sides": rows}


def run_recipe(tmp: Path, threads: int, workers: Optional[int], backends: List[str]
               ) -> Dict[str, Any]:
    """recipes/har.yaml (ftte, 300 versions) with 100 clients on each of `backends`."""
    rows = {}
    for backend in backends:
        m = measure(simulate_cmd(HAR, 100, "ftte", backend, threads, tmp / f"har-{backend}",
                                 workers))
        s = _strategy(m.pop("doc"))
        rows[f"ftte {backend}"] = {**m, "versions": s.get("versions"),
                                   "final_accuracy": s.get("final_accuracy")}
    return rows


# ---------------------------------------------------------------------------------------------
# output


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else a / b


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ftte_sides(sides: Dict[str, Any]) -> List[str]:
    """The ftte sides measured, in BACKENDS order."""
    return [f"ftte {b}" for b in BACKENDS if f"ftte {b}" in sides]


TABLE_COLUMNS = ("size", "side", "wall", "CPU", "peak RSS", "peak PSS", "acc", "wall/loop",
                 "CPU/loop", "RSS/loop", "PSS/loop")


def table_rows(doc: Dict[str, Any]) -> List[Tuple[str, ...]]:
    """One row per size and side (TABLE_COLUMNS), the ratios against the loop beside it."""
    rows = []
    for size in doc["sizes"]:
        sides = size["sides"]
        loop = sides["loop"]
        for name in ("loop", *_ftte_sides(sides)):
            s = sides[name]
            ratios = ["", "", "", ""] if name == "loop" else [
                _fmt(_ratio(s[k], loop[k]), ".2f")
                for k in ("wall_s", "cpu_s", "peak_mib", "peak_pss_mib")]
            rows.append((f"{size['clients']} x {size['rounds']}", name.removeprefix("ftte "),
                         f"{s['wall_s']:.1f} s", f"{s['cpu_s']:.1f} s",
                         f"{s['peak_mib']:.0f} MiB", f"{s['peak_pss_mib']:.0f} MiB",
                         _fmt(s["final_accuracy"], ".3f"), *ratios))
    return rows


def goal_lines(doc: Dict[str, Any]) -> List[str]:
    """The issue's goals per size, on the fastest ftte backend: met or missed."""
    lines = []
    for size in doc["sizes"]:
        sides = size["sides"]
        name = min(_ftte_sides(sides), key=lambda n: sides[n]["wall_s"])
        best, loop, flower = sides[name], sides["loop"], sides.get("flower")
        checks = [("wall vs loop", _ratio(best["wall_s"], loop["wall_s"]), GOALS["loop_wall"])]
        if flower:
            checks += [("wall vs Flower", _ratio(best["wall_s"], flower["wall_s"]),
                        GOALS["flower_wall"]),
                       ("memory (RSS) vs Flower", _ratio(best["peak_mib"], flower["peak_mib"]),
                        GOALS["flower_memory"])]
        parts = [f"{label} {_fmt(v, '.2f')} (goal <= {goal}: "
                 f"{'-' if v is None else 'met' if v <= goal else 'missed'})"
                 for label, v, goal in checks]
        lines.append(f"{size['clients']} x {size['rounds']}, fastest ftte side {name[5:]}: "
                     + "; ".join(parts))
        floor = floor_s(loop, doc["cpus"])
        if floor is not None:
            lines.append(_floor_line(floor, loop, flower, doc["cpus"]))
    return lines


def _floor_line(floor: float, loop: Dict[str, Any], flower: Optional[Dict[str, Any]],
                cpus: int) -> str:
    """What the wall goals ask against what the arithmetic allows on this machine."""
    text = (f"  floor on {cpus} cores: import torch {loop['import_torch_s']:.1f} s + the loop's "
            f"{loop['rounds_cpu_s']:.1f} s of round CPU / {cpus} = {floor:.1f} s = "
            f"{floor / loop['wall_s']:.2f}x the loop")
    under = [] if floor / loop["wall_s"] <= GOALS["loop_wall"] else [
        f"<= {GOALS['loop_wall']}x the loop"]
    if flower:
        text += f", {floor / flower['wall_s']:.2f}x Flower"
        if floor / flower["wall_s"] > GOALS["flower_wall"]:
            under.append(f"<= {GOALS['flower_wall']}x Flower")
    return text + (f"; below the floor, so out of reach here: {', '.join(under)}" if under else "")


def flower_table(doc: Dict[str, Any]) -> Any:
    """ftte's sides against Flower, per size (None when Flower was not measured)."""
    from rich.table import Table

    if not any("flower" in size["sides"] for size in doc["sizes"]):
        return None
    t = Table(title="Flower 1.x run_simulation (its own environment) and ftte / Flower")
    names = _ftte_sides(doc["sizes"][0]["sides"])
    for col in ("clients x rounds", "flower", *(f"{n[5:]} / flower" for n in names)):
        t.add_column(col)
    for size in doc["sizes"]:
        sides = size["sides"]
        f = sides.get("flower")
        if not f:
            continue
        cells = [f"{size['clients']} x {size['rounds']}",
                 f"{f['wall_s']:.1f} s, {f['cpu_s']:.1f} s CPU, {f['peak_mib']:.0f} MiB RSS, "
                 f"{f['peak_pss_mib']:.0f} MiB PSS, acc {_fmt(f['final_accuracy'], '.3f')}"]
        for name in names:
            s = sides[name]
            cells.append(f"{_fmt(_ratio(s['wall_s'], f['wall_s']), '.2f')} wall, "
                         f"{_fmt(_ratio(s['peak_mib'], f['peak_mib']), '.2f')} RSS, "
                         f"{_fmt(_ratio(s['peak_pss_mib'], f['peak_pss_mib']), '.2f')} PSS")
        t.add_row(*cells)
    return t


def print_table(doc: Dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"FedAvg on har_cnn, synthetic HAR, {doc['threads']} torch thread(s), "
                    f"{doc['workers']} workers (processes, threads), {doc['cpus']} usable CPUs: "
                    "wall, CPU (user+sys), peak RSS and PSS sums of the process tree, final "
                    "accuracy, ratios against the loop")
    for col in TABLE_COLUMNS:
        t.add_column(col)
    for row in table_rows(doc):
        t.add_row(*row)
    console.print(t)
    flower = flower_table(doc)
    if flower is not None:
        console.print(flower)
    for line in goal_lines(doc):
        console.print(line, highlight=False)
    rec = doc.get("recipe")
    if rec:
        t2 = Table(title="recipes/har.yaml (ftte), 100 clients, until 300 versions")
        for col in ("backend", "wall", "CPU", "peak RSS", "peak PSS", "versions", "final acc"):
            t2.add_column(col)
        for name, s in rec.items():
            t2.add_row(name, f"{s['wall_s']:.1f} s", f"{s['cpu_s']:.1f} s",
                       f"{s['peak_mib']:.0f} MiB", f"{s['peak_pss_mib']:.0f} MiB",
                       str(s["versions"]), _fmt(s["final_accuracy"], ".3f"))
        a = rec.get("ftte inprocess")
        for name, b in rec.items():
            if a is None or b is a:
                continue
            t2.add_row(f"{name[5:]} / inprocess", f"{b['wall_s'] / a['wall_s']:.2f}",
                       f"{b['cpu_s'] / a['cpu_s']:.2f}", f"{b['peak_mib'] / a['peak_mib']:.2f}",
                       f"{b['peak_pss_mib'] / a['peak_pss_mib']:.2f}", "", "")
        console.print(t2)
    console.print(f"load average at the end: {doc['load_average']}", highlight=False)


def _size(text: str) -> Tuple[int, int]:
    clients, rounds = text.lower().split("x")
    return int(clients), int(rounds)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="20x3,100x5,500x5", help="CLIENTSxROUNDS, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch threads on every side")
    p.add_argument("--workers", type=int, help="--workers of the processes and threads "
                   "backends (default: their own, the usable CPUs)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="ftte backends of the sizes' runs, comma-separated")
    p.add_argument("--no-recipe", action="store_true", help="skip the har.yaml 300-version run")
    p.add_argument("--recipe-backends", default="inprocess,processes,threads",
                   help="backends of the har.yaml run, comma-separated")
    p.add_argument("--flower-python", help="an interpreter with flwr[simulation] and torch: "
                   "adds Flower's side (see the module docstring)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--loop-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loop_child:
        clients, rounds = _size(args.loop_child)
        print(json.dumps(loop_child(clients, rounds, args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        backends = tuple(b for b in args.backends.split(",") if b)
        unknown = sorted(set(backends) - set(BACKENDS))
        if unknown:
            p.error(f"--backends: unknown {', '.join(unknown)} (expected {', '.join(BACKENDS)})")
        sizes = [run_size(tmp, *_size(s), args.threads, args.workers, args.flower_python,
                          backends) for s in args.sizes.split(",") if s]
        recipe = None if args.no_recipe else run_recipe(
            tmp, args.threads, args.workers, [b for b in args.recipe_backends.split(",") if b])
    doc = {"threads": args.threads, "workers": args.workers or len(os.sched_getaffinity(0)),
           "cpus": len(os.sched_getaffinity(0)), "sizes": sizes, "recipe": recipe,
           "load_average": os.getloadavg()}
    doc["goals"] = goal_lines(doc)
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
