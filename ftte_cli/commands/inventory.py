"""`ftte inventory list` and `ftte inventory graph`: the fleet as ftte resolved it.

JSON output follows `ansible-inventory --list` (groups with `hosts`/`children`, variables under
`_meta.hostvars`; each host's resolved connection settings are added as `ftte_resolved`) and
`--graph` (the same tree as text, or nested JSON).
"""

from __future__ import annotations

from typing import Any

import typer

from ftte_cli import api
from ftte_cli.commands.options import FormatOpt, InventoryOpt, LimitOpt
from ftte_cli.config.inventory import Device, Inventory
from ftte_cli.output import Format, console, handle_errors, print_json, table, to_jsonable

app = typer.Typer(help="Show the fleet inventory as ftte resolves it.", no_args_is_help=True)

LIST_COLUMNS = (
    "device", "address", "user", "class", "mem cap", "groups", "key file", "python", "workdir",
    "jump",
)


def resolved(device: Device) -> dict[str, Any]:
    """The settings ftte will actually use for `device` (after ssh config and defaults)."""
    keys = ("host", "port", "user", "connection", "key_file", "known_hosts", "proxy_jump",
            "python", "workdir", "data", "device_class", "mem_cap_mb", "groups")
    return {k: to_jsonable(getattr(device, k)) for k in keys}


def _kept_groups(inv: Inventory, names: set[str]) -> list[str]:
    """Groups with at least one selected host below them; `all` always."""
    return [g for g in inv.groups if g == "all" or names & set(inv.members(g))]


def ansible_list(inv: Inventory, devices: list[Device]) -> dict[str, Any]:
    """The `ansible-inventory --list` document for the selected devices."""
    names = {d.name for d in devices}
    kept = _kept_groups(inv, names)
    doc: dict[str, Any] = {"_meta": {"hostvars": {}}}
    for g in kept:
        group = inv.groups[g]
        entry: dict[str, Any] = {}
        children = [c for c in group.children if c in kept]
        hosts = [h for h in group.hosts if h in names]
        if children:
            entry["children"] = children
        if hosts:
            entry["hosts"] = hosts
        doc[g] = entry
    for d in devices:
        doc["_meta"]["hostvars"][d.name] = {
            **to_jsonable(inv.hostvars.get(d.name, {})), "ftte_resolved": resolved(d)
        }
    return doc


def graph_tree(inv: Inventory, devices: list[Device], group: str = "all") -> dict[str, Any]:
    """Nested {name, children, hosts} from `group` down, names sorted as ansible-inventory does."""
    names = {d.name for d in devices}
    kept = set(_kept_groups(inv, names))
    g = inv.groups[group]
    return {
        "name": group,
        "children": [graph_tree(inv, devices, c) for c in sorted(g.children) if c in kept],
        "hosts": sorted(h for h in g.hosts if h in names),
    }


def graph_lines(tree: dict[str, Any], depth: int = 0) -> list[str]:
    """`ansible-inventory --graph` text: `@all:`, `  |--@pis:`, `  |  |--pi4-a`."""

    def indent(d: int) -> str:
        return "  |" * d + "--" if d else ""

    lines = [f"{indent(depth)}@{tree['name']}:"]
    for child in tree["children"]:
        lines.extend(graph_lines(child, depth + 1))
    lines.extend(f"{indent(depth + 1)}{h}" for h in tree["hosts"])
    return lines


def _row(d: Device) -> list[Any]:
    address = "local" if d.connection == "local" else f"{d.host}:{d.port}"
    return [
        d.name, address, d.user or "(local user)", d.device_class or "",
        f"{d.mem_cap_mb} MB" if d.mem_cap_mb else "", ", ".join(d.groups),
        d.key_file or "(agent/default)", d.python, d.workdir, d.proxy_jump or "",
    ]


@app.command("list")
def list_devices(
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Devices and their resolved connection settings (JSON: ansible-inventory --list)."""
    with handle_errors(fmt):
        inv, devices = api.select_devices(inventory, limit)
        if fmt == Format.json:
            print_json(ansible_list(inv, devices))
        else:
            console.print(table(f"{inv.path}: {len(devices)} devices", LIST_COLUMNS,
                                [_row(d) for d in devices]))


@app.command("graph")
def graph(
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The group tree, like ansible-inventory --graph (JSON: nested groups)."""
    with handle_errors(fmt):
        inv, devices = api.select_devices(inventory, limit)
        tree = graph_tree(inv, devices)
        if fmt == Format.json:
            print_json(tree)
        else:
            typer.echo("\n".join(graph_lines(tree)))
