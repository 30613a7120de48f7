"""Sweep FTTE's buffer size K on the fleet (or in the simulator) and print the comparison.

    python examples/sweep_buffer_sizes.py --inventory .testbed/inventory.yaml \\
        --recipe recipes/har.yaml --sizes 2,5,10 --seeds 1,2 [--simulate]

The same as `ftte sweep --strategies ftte --set strategy.buffer_size=2,5,10`; run it again with
the same --out to finish a sweep that was interrupted.

`.testbed/inventory.yaml` is what `ftte testbed up` writes (four emulated devices); any
inventory works.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ftte_cli import api


def main() -> None:
    """One sweep over K, resumed when --out already holds it; one line per K."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inventory", "-i", type=Path)
    ap.add_argument("--recipe", "-r", type=Path, default=Path("recipes/har.yaml"))
    ap.add_argument("--sizes", default="2,5,10")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--limit", "-l")
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep-buffer"))
    args = ap.parse_args()

    grid = api.grid("ftte", args.seeds, (f"strategy.buffer_size={args.sizes}",))
    opts = api.SweepOptions(out=args.out, recipe=args.recipe, inventory=args.inventory,
                            grid=grid, simulate=args.simulate, limit=args.limit,
                            resume=(args.out / "sweep.json").exists())
    result = api.sweep(opts)
    print(f"{'K':>4} {'reached':>8} {'time to target':>16} {'final acc':>10}")
    for row in result.comparison:
        t, acc = row.time_to_target, row.final_accuracy
        when = "-" if t.mean is None else f"{t.mean:.1f} ± {t.spread:.1f} s"
        final = "-" if acc.mean is None else f"{acc.mean:.3f}"
        k = row.overrides["strategy.buffer_size"]
        print(f"{k:>4} {row.reached:>5}/{row.runs:<2} {when:>16} {final:>10}")
    for r in result.failed:
        print(f"failed {r.run_id}: {r.error}")
    print(f"plots: {', '.join(str(p) for p in result.plots)}")


if __name__ == "__main__":
    main()
