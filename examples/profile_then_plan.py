"""Profile every device of an inventory, then choose the FTTE plan that fits the tightest one.

    python examples/profile_then_plan.py -i .testbed/inventory.yaml -r recipes/har.yaml

Prints each device's usable training memory M_i and whether the plan (and full training) fit.

`.testbed/inventory.yaml` is what `ftte testbed up` writes (four emulated devices); any
inventory works.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ftte_cli import api
from ftte_cli.units import format_size


def main() -> None:
    """Profile -> M_min -> plan -> one line per device."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inventory", "-i", type=Path, required=True)
    ap.add_argument("--recipe", "-r", type=Path, default=Path("recipes/har.yaml"))
    ap.add_argument("--limit", "-l")
    ap.add_argument("--max-age", type=float, default=3600.0, help="reuse profiles this young")
    args = ap.parse_args()

    profiles = api.profile(args.inventory, limit=args.limit, recipe=args.recipe,
                           max_age=args.max_age)
    for name, res in profiles.failed.items():
        print(f"{name}: not profiled ({res.outcome.value}: {res.detail})")
    budget = api.memory_budget(args.recipe, profiles)
    devices = len(api.load_inventory(args.inventory).devices)  # one data shard per device
    chosen = api.plan(args.recipe, budget=budget.m_min, num_clients=devices)
    plan = chosen.plan
    print(f"budget M_min = {format_size(budget.m_min)} (bound by {budget.bound_by or 'recipe'})")
    print(f"plan: {plan.trainable_params:,} of {plan.total_params:,} parameters, "
          f"{format_size(plan.estimated_bytes or 0)} training memory "
          f"(full training {format_size(plan.full_training_bytes or 0)}), "
          f"{format_size(plan.payload_bytes)} per job")
    full = plan.full_training_bytes or 0
    for d in budget.devices:
        fits = "fits" if d.usable_bytes >= (plan.estimated_bytes or 0) else "DOES NOT FIT"
        dense = "full training fits" if d.usable_bytes >= full else "full training does not fit"
        print(f"  {d.name:<16} usable {format_size(max(d.usable_bytes, 0)):>10}  plan {fits}; "
              f"{dense}")


if __name__ == "__main__":
    main()
