"""Profile wall time for 1, 4 and 8 emulated devices side by side (needs root for the caps).

    .venv/bin/python benchmarks/fleet.py [--sizes 1,4,8] [--mix pi-zero-2,pi4,jetson-nano,phone]
                                         [--recipe recipes/har.yaml] [--benchmark] [--format json]

For each size it brings a testbed up (devices of the mix, round-robin), runs `ftte profile`'s
fleet step (probe + runtime baseline with the recipe's model, all devices in parallel), and takes
the testbed down. The claim checked: profiling 8 devices in parallel takes at most 2x the time of
one, i.e. the fleet layer's pool, not the device count, sets the wall time. Exit status 1 when
the ratio is above 2. Each device runs under its class's CPU quota, so one device alone is already
bound by its quota, as a real Pi would be; the host's cores are shared by all emulated devices.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ftte_cli.config.inventory import load_inventory
from ftte_cli.config.recipe import load_recipe
from ftte_cli.fleet.profile import ProfileRequest, profile_fleet
from ftte_cli.fleet.ssh import SshOptions
from ftte_cli.testbed import lifecycle
from ftte_cli.testbed.devices import DEFAULT_MIX

REPO = Path(__file__).resolve().parents[1]
MAX_RATIO = 2.0


@dataclass(frozen=True)
class Row:
    """One fleet size."""

    devices: int
    wall_s: float  # the whole profile step, connect to last result
    slowest_s: float  # the slowest device's own elapsed time
    mean_s: float  # mean device elapsed time
    ok: int  # devices that ended ok
    ratio: float  # wall_s / wall_s of the smallest size


def run_size(n: int, mix: str, request: ProfileRequest,
             forks: int) -> tuple[float, list[float], int]:
    """(wall seconds, per-device elapsed, number ok) of one profile of an n-device testbed."""
    with tempfile.TemporaryDirectory(prefix=f"ftte-bench-{n}-") as tmp:
        state = lifecycle.up(Path(tmp), n, mix)
        try:
            devices = load_inventory(Path(state.dir) / lifecycle.INVENTORY_FILE).select(None)
            start = time.perf_counter()
            results = profile_fleet(devices, SshOptions(forks=forks, command_timeout=600), request)
            wall = time.perf_counter() - start
            for res in results.failed.values():
                print(f"  {n} devices: {res.device.name}: {res.outcome.value}: {res.detail}",
                      file=sys.stderr)
        finally:
            lifecycle.down(Path(tmp))
    return wall, [r.elapsed for r in results], len(results.succeeded)


def main(argv: list[str] | None = None) -> int:
    """Run every size, print the table (or JSON) and the 8-vs-1 ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,8")
    ap.add_argument("--mix", default=",".join(DEFAULT_MIX))
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "har.yaml")
    ap.add_argument("--forks", type=int, default=10)
    ap.add_argument("--benchmark", action="store_true",
                    help="profile with --benchmark (training steps, RTT, upload) as well")
    ap.add_argument("--format", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    request = ProfileRequest(recipe=load_recipe(args.recipe), benchmark=args.benchmark)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[Row] = []
    for n in sizes:
        wall, elapsed, ok = run_size(n, args.mix, request, args.forks)
        base = rows[0].wall_s if rows else wall
        rows.append(Row(n, wall, max(elapsed), sum(elapsed) / len(elapsed), ok, wall / base))
    ratio = rows[-1].ratio
    passed = ratio <= MAX_RATIO and all(r.ok == r.devices for r in rows)
    if args.format == "json":
        print(json.dumps({"rows": [asdict(r) for r in rows], "ratio": ratio,
                          "max_ratio": MAX_RATIO, "passed": passed, "mix": args.mix}, indent=2))
    else:
        print(f"ftte profile{' --benchmark' if args.benchmark else ''} wall time, "
              f"mix {args.mix}, forks {args.forks}")
        print(f"{'devices':>8} {'wall s':>8} {'slowest s':>10} {'mean s':>8} {'ok':>4} "
              f"{'ratio':>6}")
        for r in rows:
            print(f"{r.devices:>8} {r.wall_s:>8.2f} {r.slowest_s:>10.2f} {r.mean_s:>8.2f} "
                  f"{r.ok:>4} {r.ratio:>6.2f}")
        print(f"{rows[-1].devices} devices / {rows[0].devices} device: {ratio:.2f}x "
              f"(limit {MAX_RATIO:g}x): {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
