"""Train the same recipe on the fleet under several strategies and compare them.

    python examples/compare_strategies.py --inventory .testbed/inventory.yaml \\
        --recipe recipes/har.yaml --strategies ftte,fedbuff,fedavg

One real run per strategy (fresh server, same bundles where the plan is the same), then a table:
time to target, best accuracy, payload until the target, measured peak memory per device.

`.testbed/inventory.yaml` is what `ftte testbed up` writes (four emulated devices); any
inventory works.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ftte_cli import api
from ftte_cli.units import format_size


def main() -> None:
    """One `api.train` per strategy, then one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inventory", "-i", type=Path, required=True)
    ap.add_argument("--recipe", "-r", type=Path, default=Path("recipes/har.yaml"))
    ap.add_argument("--strategies", default="ftte,fedbuff,fedavg")
    ap.add_argument("--limit", "-l")
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = ap.parse_args()

    results = {}
    for strategy in args.strategies.split(","):
        results[strategy] = api.train(args.recipe, args.inventory, strategy=strategy,
                                      limit=args.limit, run_dir=args.out / strategy)
    print(f"{'strategy':<10} {'stop':<13} {'to target':>10} {'best acc':>9} {'payload':>11}  "
          "peak memory per device")
    for name, r in results.items():
        to_target = "-" if r.time_to_target is None else f"{r.time_to_target:.1f} s"
        best = "-" if r.best_accuracy is None else f"{r.best_accuracy:.3f}"
        payload = r.summary.get("payload_to_target") or r.summary.get("payload_total") or 0
        peaks = ", ".join(f"{d['name']} {format_size(d['peak_memory'])}" for d in r.devices
                          if d.get("peak_memory"))
        print(f"{name:<10} {r.stop_reason.value:<13} {to_target:>10} {best:>9} "
              f"{format_size(payload):>11}  {peaks}")


if __name__ == "__main__":
    main()
