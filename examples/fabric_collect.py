"""Collect one file from every device with Fabric, using ftte's inventory and host-key rules.

    python examples/fabric_collect.py -i .testbed/inventory.yaml /proc/meminfo --out collected

Writes `collected/<device>/<file name>` for each device that has the file, and prints one line
per device (fetched with its size, or why not). `api.fabric_group` gives each connection the
inventory's host, port, user, key, jump host and timeouts, refuses unknown host keys (unless
`--accept-new-host-keys`) and changed ones; `conn.device` is the inventory entry. `/proc` files
report size 0 to SFTP, so the file is read with `cat` rather than `conn.get`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fabric.exceptions import GroupException

from ftte_cli import api
from ftte_cli.fleet.ssh import classify


def main() -> int:
    """Fetch the file from every device; exit 1 when any device did not deliver it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inventory", "-i", type=Path, required=True)
    ap.add_argument("remote", help="the file to fetch from every device")
    ap.add_argument("--limit", "-l")
    ap.add_argument("--out", "-o", type=Path, default=Path("collected"))
    ap.add_argument("--accept-new-host-keys", action="store_true")
    args = ap.parse_args()

    group = api.fabric_group(args.inventory, args.limit, args.accept_new_host_keys)
    try:
        results = dict(group.run(f"cat -- '{args.remote}'", hide=True, warn=True))
    except GroupException as err:  # some devices failed to connect: keep the others' results
        results = dict(err.result)
    finally:
        group.close()
    missing = 0
    for conn in group:
        res = results.get(conn)
        name = conn.device.name
        if isinstance(res, Exception):
            outcome, detail = classify(res, conn.device)
            print(f"{name}: {outcome.value}: {detail}")
        elif res is None:
            print(f"{name}: no result")
        elif not res.ok:  # (a Result is falsy when the command failed)
            print(f"{name}: failed: {res.stderr.strip()}")
        else:
            target = args.out / name / Path(args.remote).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(res.stdout)
            print(f"{name}: fetched {len(res.stdout.encode())} bytes -> {target}")
            continue
        missing += 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
