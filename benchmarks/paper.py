"""The paper's comparison (FTTE.md "Headline claims") on synthetic HAR, in simulation.

    .venv/bin/python benchmarks/paper.py [--clients 100,500] [--stragglers 0,0.5,0.9]
        [--seeds 1,2,3] [--budgets 0.2,fleet] [--recipe recipes/har.yaml] [--jobs 2]
        [--out runs/paper] [--format table|json] [--quick]

Every (clients, stragglers, seed) world is shared by its strategies: the same data split,
initial model (the recipe's `init`, e.g. the cached warm start), simulated devices and plans.
FedBuff and FedAvg train the dense model, once per world; FTTE runs once per budget: a fraction
of full training memory (the paper's 20%), or `fleet` (the most constrained client of the
simulated fleet, `sim/devices.py`). Every run goes to the same virtual-time horizon (the recipe's
`stop.time_limit`, or `stop.max_versions`), so accuracy at the horizon compares like for like;
time and payload to target come from each run's evaluation timeline.

Memory per device is the plan's estimate (FTTE.md section 1) and a measured peak: a fresh
process loads the model, runs one warm-up job, then one job of the recipe's batch under the
plan, and reports its peak RSS above the loaded model plus the model's own weights. Never the
budget itself.

Printed: per setting and strategy, mean and min-max over seeds of time to target, payload to
target, accuracy at the horizon and memory; FTTE/FedAvg ratios and FTTE minus FedBuff accuracy,
with the paper's goals at 90% stragglers marked met or missed. A missed goal is printed as
missed; nothing here is tuned to the goals. `accuracy.png` plots accuracy against virtual time,
one curve per strategy, for each setting's first seed.

Each finished world is cached under OUT/worlds, keyed by the package source, this script, the
recipe and the world: a rerun of the same grid on the same code resumes where it stopped
(`--fresh` ignores the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftte_cli.config.recipe import Recipe, load_recipe  # noqa: E402
from ftte_cli.engine.plan import Plan, save_plan  # noqa: E402
from ftte_cli.sim.runner import SimSettings, World, prepare, ratio, run_strategy  # noqa: E402
from ftte_cli.units import format_size  # noqa: E402

GOALS = {"time": 0.19, "memory": 0.20, "payload": 0.31}  # FTTE / FedAvg at 90% stragglers
Budget = str  # "0.2" (fraction of full training memory) or "fleet"


@dataclass(frozen=True)
class Run:
    """One strategy on one world: the figures the table needs."""

    clients: int
    stragglers: float
    seed: int
    budget: Budget  # the FTTE budget of this world ("-" for the dense strategies)
    strategy: str
    time_to_target: Optional[float]
    payload_to_target: Optional[int]
    accuracy_at_horizon: Optional[float]
    best_accuracy: Optional[float]
    versions: int
    memory_estimate: int
    memory_measured: Optional[int]
    trainable: float  # share of parameters trained
    curve: List[Tuple[float, float]]
    start_accuracy: Optional[float]
    wall_s: float


# ---- memory measured in a fresh process --------------------------------------------------------

_PROBE = r"""
import gc, json, sys
import torch
torch.set_num_threads(1)
from ftte_cli.config.recipe import load_recipe
from ftte_cli.engine import sparse
from ftte_cli.engine.data import Dataset
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import load_plan
from ftte_cli.engine.train import reset_peak_rss, train_job

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))

recipe_path, plan_dir, shape, classes = json.loads(sys.argv[1])
recipe = load_recipe(recipe_path)
model = build_model(recipe.model, tuple(shape), classes)
params = {k: v.detach() for k, v in model.named_parameters()}
weights = sum(v.numel() * v.element_size() for v in params.values())
plan = load_plan(plan_dir)
batch = recipe.train.batch_size
data = Dataset(torch.randn(batch, *shape), torch.randint(0, classes, (batch,)))
cfg = recipe.train.__class__(batch_size=batch, max_steps=1, lr=recipe.train.lr,
                             momentum=recipe.train.momentum)
subset = sparse.extract(params, plan)
train_job(model, params, plan, subset, data, cfg, 0)  # warm-up: allocator, thread pools
gc.collect()
base = rss()
assert reset_peak_rss()
res = train_job(model, params, plan, subset, data, cfg, 1)
print(json.dumps({"measured": weights + res.peak_memory - base}))
"""


def measure(recipe: Recipe, plan: Plan, shape: Sequence[int], classes: int) -> Optional[int]:
    """Weights + peak RSS of one training job above the loaded, warmed-up model (None: no /proc)."""
    if recipe.source is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        save_plan(plan, Path(tmp))
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave RSS
        out = subprocess.run(
            [sys.executable, "-c", _PROBE,
             json.dumps([str(recipe.source), tmp, list(shape), classes])],
            capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        print(f"  memory probe failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return int(json.loads(out.stdout.strip().splitlines()[-1])["measured"])


# ---- one world ----------------------------------------------------------------------------------


def _world(recipe: Recipe, clients: int, stragglers: float, seed: int,
           budget: Budget) -> World:
    fraction = None if budget == "fleet" else float(budget)
    return prepare(SimSettings(recipe=recipe, clients=clients, stragglers=stragglers, seed=seed,
                               budget_fraction=fraction, stop_at_target=False))


def _run(world: World, name: str, budget: Budget, memory: Dict[str, Optional[int]]) -> Run:
    start = time.perf_counter()
    result = run_strategy(world, name)
    s = result.summary
    plan = world.ftte if name == "ftte" else world.dense
    key = "ftte" if name == "ftte" else "dense"
    evals = result.metrics.evals
    return Run(world.settings.clients or 0, world.settings.stragglers or 0.0, world.seed,
               budget if name == "ftte" else "-", name, s.time_to_target, s.payload_to_target,
               evals[-1].accuracy if evals else None, s.best_accuracy, s.versions,
               plan.estimated_bytes or 0, memory[key], plan.trainable_params / plan.total_params,
               [(e.time, e.accuracy) for e in evals], world.start.accuracy,
               time.perf_counter() - start)


def code_digest(recipe_path: str) -> str:
    """What a world's results depend on: the package source, this script and the recipe."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "ftte_cli").rglob("*.py")) + [Path(__file__).resolve(),
                                                              Path(recipe_path)]:
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


Work = Tuple[str, int, float, int, Tuple[Budget, ...], str, str]  # ..., cache dir, code digest


def cached_setting(args: Work) -> List[Run]:
    """`setting`, or its runs from the cache when the same code, recipe and world ran before:
    the full grid takes hours, so an interrupted run resumes where it stopped."""
    recipe_path, clients, stragglers, seed, budgets, cache_dir, digest = args
    key = hashlib.sha256(json.dumps([digest, clients, stragglers, seed, budgets]).encode())
    path = Path(cache_dir) / f"{clients}-{stragglers:g}-{seed}-{key.hexdigest()[:16]}.json"
    if cache_dir and path.is_file():
        runs = [Run(**{**r, "curve": [tuple(p) for p in r["curve"]]})
                for r in json.loads(path.read_text())]
        print(f"  cached: {clients} clients, {stragglers:.0%} stragglers, seed {seed} ({path})",
              file=sys.stderr, flush=True)
        return runs
    runs = setting((recipe_path, clients, stragglers, seed, budgets))
    if cache_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in runs]))
        tmp.replace(path)  # a killed run never leaves half a record behind
    return runs


def setting(args: Tuple[str, int, float, int, Tuple[Budget, ...]]) -> List[Run]:
    """Every strategy of one (clients, stragglers, seed) world; FTTE once per budget."""
    recipe_path, clients, stragglers, seed, budgets = args
    torch.set_num_threads(1)
    recipe = load_recipe(recipe_path)
    runs: List[Run] = []
    for i, budget in enumerate(budgets):
        world = _world(recipe, clients, stragglers, seed, budget)
        shape, classes = world.data.input_shape, world.data.num_classes
        memory = {"ftte": measure(recipe, world.ftte, shape, classes)}
        if i == 0:
            memory["dense"] = measure(recipe, world.dense, shape, classes)
            runs += [_run(world, name, budget, memory) for name in ("fedbuff", "fedavg")]
        else:
            memory["dense"] = None
        runs.append(_run(world, "ftte", budget, memory))
        print(f"  done: {clients} clients, {stragglers:.0%} stragglers, seed {seed}, "
              f"budget {budget}", file=sys.stderr, flush=True)
    return runs


# ---- aggregation and printing -------------------------------------------------------------------


def _stats(values: Sequence[Optional[float]]) -> Optional[Tuple[float, float, float, int]]:
    """(mean, min, max, n) over the values that exist; None when none does."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals), min(vals), max(vals), len(vals)


def _fmt(stat: Optional[Tuple[float, float, float, int]], total: int, unit: str = "") -> str:
    if stat is None:
        return "not reached"
    mean, lo, hi, n = stat
    conv = (lambda v: format_size(int(v))) if unit == "B" else (lambda v: f"{v:.3f}" if unit == ""
                                                                 else f"{v:.0f}{unit}")
    missing = "" if n == total else f" ({total - n} missed)"
    return f"{conv(mean)} [{conv(lo)}-{conv(hi)}]{missing}"


def summarize(runs: List[Run]) -> Dict[str, Any]:
    """Group the runs by setting; per strategy mean/min/max; ratios against FedAvg."""
    groups: Dict[Tuple[int, float, Budget], Dict[str, List[Run]]] = {}
    budgets = sorted({r.budget for r in runs if r.strategy == "ftte"})
    for r in runs:
        for budget in (budgets if r.strategy != "ftte" else [r.budget]):
            groups.setdefault((r.clients, r.stragglers, budget), {}).setdefault(
                r.strategy, []).append(r)
    out = []
    for (clients, p, budget), by in sorted(groups.items()):
        row: Dict[str, Any] = {"clients": clients, "stragglers": p, "budget": budget,
                               "strategies": {}}
        for name, rs in by.items():
            row["strategies"][name] = {
                "seeds": [r.seed for r in rs],
                "time_to_target": _stats([r.time_to_target for r in rs]),
                "payload_to_target": _stats([r.payload_to_target for r in rs]),
                "accuracy_at_horizon": _stats([r.accuracy_at_horizon for r in rs]),
                "best_accuracy": _stats([r.best_accuracy for r in rs]),
                "memory_estimate": _stats([r.memory_estimate for r in rs]),
                "memory_measured": _stats([r.memory_measured for r in rs]),
                "trainable": rs[0].trainable, "runs": len(rs),
            }
        row["ratios"] = _ratios(by)
        out.append(row)
    return {"settings": out}


def _mean(rs: List[Run], key: str) -> Optional[float]:
    stat = _stats([getattr(r, key) for r in rs])
    return None if stat is None or stat[3] < len(rs) else stat[0]  # a missed seed: undefined


def _ratios(by: Dict[str, List[Run]]) -> Dict[str, Optional[float]]:
    f, a, b = by.get("ftte", []), by.get("fedavg", []), by.get("fedbuff", [])
    acc_f, acc_b = _mean(f, "accuracy_at_horizon"), _mean(b, "accuracy_at_horizon")
    return {
        "time": ratio(_mean(f, "time_to_target"), _mean(a, "time_to_target")),
        "memory": ratio(_mean(f, "memory_measured"), _mean(a, "memory_measured")),
        "memory_estimate": ratio(_mean(f, "memory_estimate"), _mean(a, "memory_estimate")),
        "payload": ratio(_mean(f, "payload_to_target"), _mean(a, "payload_to_target")),
        "accuracy_minus_fedbuff": (None if acc_f is None or acc_b is None
                                   else 100 * (acc_f - acc_b)),
    }


def print_table(doc: Dict[str, Any], target: float) -> None:
    """The side-by-side table: mean [min-max] over seeds, then ratios and goals."""
    for row in doc["settings"]:
        p = row["stragglers"]
        print(f"\n== {row['clients']} clients, {p:.0%} stragglers, FTTE budget {row['budget']} "
              f"(target {target:.2f}) ==")
        print(f"  {'strategy':8s} {'trained':>7s}  {'time to target':24s} "
              f"{'payload to target':28s} {'acc at horizon':22s} {'memory est / measured'}")
        for name, s in row["strategies"].items():
            n = s["runs"]
            print(f"  {name:8s} {s['trainable']:7.1%}  {_fmt(s['time_to_target'], n, ' s'):24s} "
                  f"{_fmt(s['payload_to_target'], n, 'B'):28s} "
                  f"{_fmt(s['accuracy_at_horizon'], n):22s} "
                  f"{_fmt(s['memory_estimate'], n, 'B')} / {_fmt(s['memory_measured'], n, 'B')}")
        r = row["ratios"]
        parts = []
        for key in ("time", "memory", "payload"):
            value = r[key]
            verdict = ""
            if p >= 0.9:
                verdict = (f" goal <= {GOALS[key]:.2f}: "
                           + ("undefined (target not reached)" if value is None
                              else "met" if value <= GOALS[key] else "missed"))
            parts.append(f"{key} {'-' if value is None else f'{value:.3f}'}{verdict}")
        print("  FTTE/FedAvg: " + "; ".join(parts))
        gap = r["accuracy_minus_fedbuff"]
        goal = "" if p < 0.5 else (" (goal >= 0: " + ("met" if gap is not None and gap >= 0
                                                        else "missed") + ")")
        print(f"  FTTE - FedBuff accuracy at horizon: "
              f"{'-' if gap is None else f'{gap:+.1f} points'}{goal}")


def plot(runs: List[Run], path: Path, target: float) -> Path:
    """Accuracy against virtual time per strategy, one panel per setting (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r.clients, r.stragglers) for r in runs})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), dpi=110,
                             squeeze=False)
    for ax, (clients, p) in zip(axes[0], keys):
        mine = [r for r in runs if (r.clients, r.stragglers) == (clients, p)]
        seed = min(r.seed for r in mine)
        for r in mine:
            if r.seed == seed and r.curve:
                label = r.strategy if r.strategy != "ftte" else f"ftte ({r.budget})"
                ax.plot([t for t, _ in r.curve], [a for _, a in r.curve], label=label, lw=1.4)
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_title(f"{clients} clients, {p:.0%} stragglers", fontsize=9)
        ax.set_xlabel("virtual time (s)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (unseen subjects)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/har.yaml")
    parser.add_argument("--clients", default="100,500")
    parser.add_argument("--stragglers", default="0,0.5,0.9")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--budgets", default="0.2,fleet")
    parser.add_argument("--jobs", type=int, default=2, help="worlds simulated at once")
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore worlds cached under OUT/worlds by an earlier run")
    parser.add_argument("--quick", action="store_true",
                        help="CI size: 20 clients, 90%% stragglers, one seed, 20%% budget")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.stragglers, args.seeds, args.budgets = "20", "0.9", "1", "0.2"
    recipe = load_recipe(args.recipe)
    if args.quick:
        recipe = _quick(recipe, Path(args.out))
    budgets = tuple(args.budgets.split(","))
    cache = "" if args.fresh else str(Path(args.out) / "worlds")
    digest = code_digest(str(recipe.source))
    work: List[Work] = [(str(recipe.source), int(c), float(p), int(s), budgets, cache, digest)
                        for c in args.clients.split(",") for p in args.stragglers.split(",")
                        for s in args.seeds.split(",")]
    print(f"paper comparison: {args.recipe}, {len(work)} worlds, FTTE budgets {budgets}, "
          f"horizon {recipe.stop.time_limit:.0f} s virtual or {recipe.stop.max_versions} "
          f"versions, {args.jobs} at once", file=sys.stderr)
    start = time.perf_counter()
    runs: List[Run] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, batch in enumerate(pool.map(cached_setting, work), 1):
            runs += batch
            print(f"[{i}/{len(work)} worlds, {time.perf_counter() - start:.0f} s]",
                  file=sys.stderr, flush=True)
    doc = summarize(runs)
    doc.update(recipe=args.recipe, command=" ".join(sys.argv), wall_s=time.perf_counter() - start,
               date=time.strftime("%Y-%m-%d"), target=recipe.stop.target_accuracy,
               start_accuracy=runs[0].start_accuracy if runs else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper.json").write_text(json.dumps({**doc, "runs": [asdict(r) for r in runs]}))
    png = plot(runs, out / "accuracy.png", recipe.stop.target_accuracy)
    if args.format == "json":
        print(json.dumps(doc))
        return
    start_acc = doc["start_accuracy"]
    print(f"initial model: {recipe.init.method}"
          + ("" if start_acc is None else f", test accuracy {start_acc:.3f} before federation"))
    print_table(doc, recipe.stop.target_accuracy)
    print(f"\n{len(runs)} runs in {doc['wall_s']:.0f} s; {out / 'paper.json'}, {png}")


def _quick(recipe: Recipe, out: Path) -> Recipe:
    """A CI-sized copy of the recipe (fewer windows, versions and a short horizon), on disk."""
    small = replace(recipe, data=replace(recipe.data, windows=2000),
                    stop=replace(recipe.stop, max_versions=30, time_limit=300.0))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quick-recipe.json"
    from ftte_cli.config.recipe import recipe_to_dict

    path.write_text(json.dumps(recipe_to_dict(small)))
    return replace(small, source=path)


if __name__ == "__main__":
    main()
