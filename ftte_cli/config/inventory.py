"""Fleet inventories (inventory/*.yaml): an Ansible-compatible YAML subset, validated once.

Format (as Ansible's YAML inventory): a top-level `all` group (other top-level groups count as
its children), each group a mapping with `hosts` (name -> vars or empty), `vars` and `children`
(name -> group, or empty to refer to a group defined elsewhere). A host may sit in several groups.

Variable precedence, lowest first: `all` vars, then group vars from the outermost to the innermost
group (depth from `all`; at the same depth by `ansible_group_priority` (default 1), then name, as
Ansible's sort_groups does), then host vars. tests/data holds an inventory and the output of
`ansible-inventory --list` for it, which the tests compare. When a host's groups give it
different addresses (ansible_host or ansible_port) and no host var settles it, a warning names
the groups and the one that wins.

Understood keys: ansible_host, ansible_port, ansible_user (and their old ansible_ssh_* aliases),
ansible_connection (ssh | local), ansible_ssh_private_key_file, ansible_python_interpreter, and
ftte_device_class, ftte_mem_cap_mb, ftte_workdir, ftte_data, ftte_known_hosts,
ftte_password_env (NAME of an environment variable holding the key passphrase),
ftte_proxy_jump ("[user@]host[:port]" or an inventory host; one hop), ftte_train (per device
class overrides of the recipe's train section: batch_size, epochs, max_steps, lr, device, and
the agent's torch threads; a host's ftte_train replaces its groups' as a whole). Relative key and
known_hosts paths resolve against the inventory file's folder.

Decisions: an unknown `ftte_*` key is an error (a typo would silently change a run). Ansible keys
that only matter to Ansible itself (IGNORED_ANSIBLE_KEYS: become, pipelining, extra ssh args...)
are accepted and ignored so one inventory serves both tools; any other `ansible_*` key is an error
naming it. Other keys are user vars, kept and shown. A password in any form (ansible_password,
ansible_ssh_pass, ansible_become_pass, ...) is refused. Jinja templates are not evaluated and
are refused. Every error is one line naming the file, the host or group, and the key.

`resolve_device` is the ONE place connection settings are decided (see its docstring).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ftte_cli.config.recipe import TrainConfig
from ftte_cli.config.sshconfig import SshConfig, load_ssh_config
from ftte_cli.errors import ConfigError

log = logging.getLogger(__name__)

CONNECTIONS = ("ssh", "local")
GROUP_KEYS = ("hosts", "vars", "children")
STR_KEYS = (
    "ansible_host", "ansible_user", "ansible_ssh_private_key_file", "ansible_python_interpreter",
    "ftte_device_class", "ftte_workdir", "ftte_data", "ftte_known_hosts", "ftte_proxy_jump",
)
INT_KEYS = ("ansible_port", "ftte_mem_cap_mb")
KNOWN_KEYS = (*STR_KEYS, *INT_KEYS, "ansible_connection", "ftte_password_env", "ftte_train")
# ftte_train: per device (class) overrides of the recipe's train section, plus torch threads.
TRAIN_INT_KEYS = ("batch_size", "epochs", "max_steps", "threads")
TRAIN_KEYS = (*TRAIN_INT_KEYS, "lr", "device")
ALIASES = {
    "ansible_ssh_host": "ansible_host",
    "ansible_ssh_port": "ansible_port",
    "ansible_ssh_user": "ansible_user",
}
IGNORED_ANSIBLE_KEYS = frozenset({
    "ansible_become", "ansible_become_user", "ansible_become_method", "ansible_become_flags",
    "ansible_become_exe", "ansible_ssh_common_args", "ansible_ssh_extra_args",
    "ansible_sftp_extra_args", "ansible_scp_extra_args", "ansible_ssh_pipelining",
    "ansible_pipelining", "ansible_shell_type", "ansible_shell_executable",
    "ansible_ssh_executable", "ansible_host_key_checking", "ansible_ssh_timeout",
    "ansible_timeout", "ansible_group_priority", "ansible_ssh_retries",
})
_PASSWORD = re.compile(r"(^|_)(pass|passwd|password|passphrase|secret)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NO_PASSWORD_HINT = (
    "plain-text passwords are refused; use ansible_ssh_private_key_file, ssh-agent, or "
    "ftte_password_env: VAR (an environment variable holding the key passphrase)"
)


@dataclass(frozen=True)
class Device:
    """One device of the fleet with every connection setting already resolved."""

    name: str  # inventory host name (also the alias looked up in ~/.ssh/config)
    host: str  # address or DNS name actually dialled
    port: int = 22
    user: Optional[str] = None  # None: the local user name, as OpenSSH does
    connection: str = "ssh"  # "ssh" | "local"
    key_file: Optional[Path] = None  # private key; None: the agent and ~/.ssh/id_* keys
    python: str = "python3"  # interpreter on the device
    device_class: Optional[str] = None  # free-form label: pi4, jetson_nano, phone...
    mem_cap_mb: Optional[int] = None  # cap on usable memory set by the operator
    workdir: str = "~/.ftte"  # where bundles and caches live on the device
    data: Optional[str] = None  # device-local dataset path (no shard is shipped)
    known_hosts: Optional[Path] = None  # per-device known_hosts file (ftte_known_hosts)
    proxy_jump: Optional[str] = None  # "[user@]host[:port]" of one jump host
    groups: tuple[str, ...] = ()  # every group the host belongs to, outermost first
    vars: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    train: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # ftte_train


@dataclass(frozen=True)
class Group:
    """One inventory group: its direct hosts and child groups, and its own vars."""

    name: str
    hosts: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Inventory:
    """A loaded inventory: devices in file order, groups by name (with `all` and `ungrouped`)."""

    path: Path
    devices: dict[str, Device]
    groups: dict[str, Group]
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)

    def members(self, group: str) -> list[str]:
        """Host names in `group` and all its descendants, in file order."""
        seen: set[str] = set()
        stack = [group]
        while stack:
            g = self.groups[stack.pop()]
            seen.update(g.hosts)
            stack.extend(g.children)
        return [name for name in self.devices if name in seen]

    def select(self, limit: Optional[str] = None) -> list[Device]:
        """Devices named by `limit` ("g1,host2", groups or hosts; None: all), in file order.

        An unknown name is a ConfigError naming the inventory file and the name.
        """
        if limit is None or not limit.strip():
            return list(self.devices.values())
        wanted: set[str] = set()
        for name in (part.strip() for part in limit.split(",")):
            if not name:
                continue
            if name in self.groups:
                wanted.update(self.members(name))
            elif name in self.devices:
                wanted.add(name)
            else:
                raise ConfigError(
                    f"{self.path}: --limit: no host or group named {name!r} "
                    f"(groups: {', '.join(self.groups)})"
                )
        return [d for name, d in self.devices.items() if name in wanted]


# --- checking one variable ----------------------------------------------------------------------


def check_var(key: Any, value: Any, where: str) -> tuple[str, Any]:
    """Validate one inventory variable; returns (canonical key, coerced value).

    `where` is "FILE: host NAME" or "FILE: group NAME"; errors read "<where>: <key>: <why>".
    """
    if not isinstance(key, str):
        raise ConfigError(f"{where}: variable names must be strings, got {key!r}")
    key = ALIASES.get(key, key)
    at = f"{where}: {key}"
    if _PASSWORD.search(key):
        raise ConfigError(f"{at}: {NO_PASSWORD_HINT}")
    if isinstance(value, str) and "{{" in value:
        raise ConfigError(f"{at}: Jinja templates are not evaluated by ftte; write the value")
    if key.startswith("ftte_") and key not in KNOWN_KEYS:
        known = ", ".join(k for k in KNOWN_KEYS if k.startswith("ftte_"))
        raise ConfigError(f"{at}: unknown ftte key (known: {known})")
    if key.startswith("ansible_") and key not in KNOWN_KEYS:
        if key not in IGNORED_ANSIBLE_KEYS:
            raise ConfigError(
                f"{at}: not supported by ftte (understood: "
                f"{', '.join(k for k in KNOWN_KEYS if k.startswith('ansible_'))})"
            )
        log.debug("%s: ignored (only meaningful to Ansible)", at)
    return key, _coerce(key, value, at)


def _coerce(key: str, value: Any, at: str) -> Any:
    if key in INT_KEYS:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{at}: expected an integer, got {value!r}")
        upper = 65535 if key == "ansible_port" else 1 << 40
        if not 0 < value <= upper:
            raise ConfigError(f"{at}: {value} is out of range (1..{upper})")
        return value
    if key in STR_KEYS and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{at}: expected a non-empty string, got {value!r}")
    if key == "ansible_connection" and value not in CONNECTIONS:
        raise ConfigError(f"{at}: unknown connection {value!r} (use ssh or local)")
    if key == "ftte_password_env" and not (isinstance(value, str) and _ENV_NAME.match(value)):
        raise ConfigError(f"{at}: expected an environment variable NAME, got {value!r}")
    if key == "ftte_train":
        return _train_overrides(value, at)
    return value


def _train_overrides(value: Any, at: str) -> dict[str, Any]:
    """ftte_train: {batch_size, epochs, max_steps, threads: int > 0; lr: > 0; device}."""
    if not isinstance(value, dict):
        raise ConfigError(f"{at}: expected a mapping like {{batch_size: 8, epochs: 1}}")
    for k, v in value.items():
        where = f"{at}.{k}"
        if k not in TRAIN_KEYS:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(TRAIN_KEYS)})")
        if k in TRAIN_INT_KEYS and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ConfigError(f"{where}: expected an integer > 0, got {v!r}")
        if k == "lr" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"{where}: expected a number > 0, got {v!r}")
        if k == "device" and v not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"{where}: must be cpu, cuda or auto, got {v!r}")
    return dict(value)


def device_train(train: TrainConfig, device: Device) -> TrainConfig:
    """The recipe's train section with the device's ftte_train overrides (threads excluded: it
    is not a training setting but the agent's torch threads)."""
    changes = {k: v for k, v in device.train.items() if k != "threads"}
    if "lr" in changes:
        changes["lr"] = float(changes["lr"])
    return replace(train, **changes) if changes else train


def _check_vars(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of variables, got {type(data).__name__}")
    return dict(check_var(k, v, where) for k, v in data.items())


# --- parsing the YAML tree ----------------------------------------------------------------------


@dataclass
class _Tree:
    """Mutable parse state: groups and hosts as written, before resolution."""

    path: Path
    group_hosts: dict[str, list[str]] = field(default_factory=dict)
    group_children: dict[str, list[str]] = field(default_factory=dict)
    group_vars: dict[str, dict[str, Any]] = field(default_factory=dict)
    defined: set[str] = field(default_factory=set)
    referenced: dict[str, str] = field(default_factory=dict)  # child -> parent naming it
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def touch(self, group: str) -> None:
        self.group_hosts.setdefault(group, [])
        self.group_children.setdefault(group, [])
        self.group_vars.setdefault(group, {})


def _add_group(tree: _Tree, name: Any, data: Any, parent: Optional[str]) -> None:
    where = f"{tree.path}: group {name}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{tree.path}: group names must be non-empty strings, got {name!r}")
    if name in tree.host_vars:
        raise ConfigError(f"{where}: a host has the same name")
    tree.touch(name)
    if data is None:
        tree.referenced.setdefault(name, parent or "all")
        return
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping with hosts/vars/children, got {type(data).__name__}"
        )
    tree.defined.add(name)
    for key in data:
        if key not in GROUP_KEYS:
            raise ConfigError(f"{where}: {key}: unknown key (known: {', '.join(GROUP_KEYS)})")
    tree.group_vars[name].update(_check_vars(data.get("vars"), f"{where}: vars"))
    _add_hosts(tree, name, data.get("hosts"))
    children = data.get("children")
    if children is not None and not isinstance(children, dict):
        raise ConfigError(f"{where}: children: expected a mapping of group names")
    for child, child_data in (children or {}).items():
        if child not in tree.group_children[name]:
            tree.group_children[name].append(child)
        _add_group(tree, child, child_data, name)


def _add_hosts(tree: _Tree, group: str, hosts: Any) -> None:
    where = f"{tree.path}: group {group}: hosts"
    if hosts is None:
        return
    if not isinstance(hosts, dict):
        raise ConfigError(f"{where}: expected a mapping of host names (name: vars), not a list")
    for host, data in hosts.items():
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{where}: host names must be non-empty strings, got {host!r}")
        if host in tree.group_hosts and host != group:
            raise ConfigError(f"{tree.path}: host {host}: a group has the same name")
        hv = _check_vars(data, f"{tree.path}: host {host}")
        tree.host_vars.setdefault(host, {}).update(hv)  # later mentions win, as in Ansible
        if host not in tree.group_hosts[group]:
            tree.group_hosts[group].append(host)


def _parse(path: Path, data: Any) -> _Tree:
    tree = _Tree(path)
    if data is None:
        raise ConfigError(f"{path}: empty inventory (expected a top-level 'all' group)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a top-level 'all' group")
    tree.touch("all")
    tree.defined.add("all")
    _add_group(tree, "all", data.get("all") or {}, None)
    for name, group in data.items():
        if name != "all":  # other top-level groups are children of all
            if name not in tree.group_children["all"]:
                tree.group_children["all"].append(name)
            _add_group(tree, name, group, "all")
    for name, parent in tree.referenced.items():
        if name not in tree.defined:
            raise ConfigError(
                f"{path}: group {parent}: children: {name}: group is not defined anywhere "
                f"(write '{name}: {{}}' for an empty group)"
            )
    _check_cycles(tree)
    if not tree.host_vars:
        raise ConfigError(f"{path}: no hosts defined")
    return tree


def _check_cycles(tree: _Tree) -> None:
    """Children must form a DAG; a cycle is named by its path (a -> b -> a)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(group: str, trail: list[str]) -> None:
        if state.get(group) == 1:
            cycle = " -> ".join(trail[trail.index(group):] + [group])
            raise ConfigError(f"{tree.path}: group {group}: children: cycle {cycle}")
        if state.get(group) == 2:
            return
        state[group] = 1
        for child in tree.group_children[group]:
            visit(child, trail + [group])
        state[group] = 2

    for group in list(tree.group_children):
        visit(group, [])


def _depths(tree: _Tree) -> dict[str, int]:
    """Longest distance of each group from `all` (Ansible's group depth)."""
    depth = {"all": 0}
    order = ["all"]
    while order:
        g = order.pop(0)
        for child in tree.group_children[g]:
            if depth.get(child, -1) < depth[g] + 1:
                depth[child] = depth[g] + 1
                order.append(child)
    return depth


def _groups_of(tree: _Tree, host: str, depth: dict[str, int]) -> list[str]:
    """Every group containing `host` directly or through children, outermost first."""
    parents: dict[str, list[str]] = {}
    for g, kids in tree.group_children.items():
        for k in kids:
            parents.setdefault(k, []).append(g)
    found: set[str] = set()
    stack = [g for g, hosts in tree.group_hosts.items() if host in hosts]
    while stack:
        g = stack.pop()
        if g not in found:
            found.add(g)
            stack.extend(parents.get(g, []))
    found.add("all")
    return sorted(found, key=lambda g: (depth.get(g, 0), _priority(tree, g), g))


def _priority(tree: _Tree, group: str) -> int:
    """A group's ansible_group_priority (Ansible's default 1; higher merges later, so wins)."""
    try:
        return int(tree.group_vars.get(group, {}).get("ansible_group_priority", 1))
    except (TypeError, ValueError):
        return 1


def _warn_address_merge(path: Path, host: str, groups: list[str], tree: _Tree) -> None:
    """Warn when the host's groups disagree on its address and the precedence picked one."""
    for key in ("ansible_host", "ansible_port"):
        if key in tree.host_vars[host]:
            continue  # the host says it itself: nothing was decided by the merge
        said = [(g, tree.group_vars[g][key]) for g in groups if key in tree.group_vars[g]]
        if len({v for _, v in said}) > 1:
            winner = said[-1]
            log.warning("%s: host %s: %s %s from group %s (over %s): groups disagree, the "
                        "Ansible precedence picked it", path, host, key, winner[1], winner[0],
                        ", ".join(f"{v} from {g}" for g, v in said[:-1]))


# --- resolution ---------------------------------------------------------------------------------


def _path(value: Optional[str], base: Path) -> Optional[Path]:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _parse_jump_spec(spec: str, at: str) -> tuple[Optional[str], str, Optional[int]]:
    if "," in spec:
        raise ConfigError(f"{at}: {spec!r}: only one jump host is supported")
    user, _, hostport = spec.rpartition("@")
    host, sep, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
    if sep and not port.isdigit():
        raise ConfigError(f"{at}: {spec!r}: bad port")
    return (user or None), host, (int(port) if sep else None)


def _resolve_jump(
    spec: str, ssh: SshConfig, hostvars: Mapping[str, Mapping[str, Any]], at: str
) -> str:
    """"user@host:port" for a jump given as an inventory host, an ssh alias, or an address."""
    user, alias, port = _parse_jump_spec(spec, at)
    inv = hostvars.get(alias, {})
    if inv.get("ftte_proxy_jump"):
        raise ConfigError(f"{at}: jump host {alias} has its own jump host; one hop is supported")
    target = str(inv.get("ansible_host", alias))
    cfg = ssh.lookup(target)
    if cfg.proxy_jump:
        raise ConfigError(f"{at}: jump host {alias} has a ProxyJump in ssh config; one hop only")
    user = user or inv.get("ansible_user") or cfg.user
    port = port or inv.get("ansible_port") or cfg.port or 22
    host = cfg.hostname or target
    return f"{user + '@' if user else ''}{host}:{port}"


def resolve_device(
    name: str,
    merged: Mapping[str, Any],
    groups: tuple[str, ...],
    ssh: SshConfig,
    base: Path,
    where: str,
    overrides: Optional[Mapping[str, Any]] = None,
    hostvars: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Device:
    """The one place a device's settings are decided, highest priority first:

    1. `overrides` (CLI flags, keyed like inventory vars, e.g. {"ansible_user": "pi"});
    2. the host's inventory vars, then its groups' (already merged into `merged`);
    3. ~/.ssh/config for the alias (ansible_host if set, else the inventory name): HostName,
       Port, User, IdentityFile (the first that exists), ProxyJump. As with ssh, HostName maps
       the alias (ansible_host included) to the address dialled;
    4. defaults: port 22, the local user, the agent and default keys, python3, ~/.ftte.
    """
    v: dict[str, Any] = {**merged, **(overrides or {})}
    alias = str(v.get("ansible_host", name))
    cfg = ssh.lookup(alias)
    key_file = _path(v.get("ansible_ssh_private_key_file"), base)
    if key_file is None and cfg.identity_files:
        key_file = next((p for p in cfg.identity_files if p.is_file()), cfg.identity_files[0])
    jump = v.get("ftte_proxy_jump") or cfg.proxy_jump
    at = f"{where}: {'ftte_proxy_jump' if v.get('ftte_proxy_jump') else 'ProxyJump'}"
    return Device(
        name=name,
        host=cfg.hostname or alias,
        port=int(v.get("ansible_port") or cfg.port or 22),
        user=v.get("ansible_user") or cfg.user,
        connection=str(v.get("ansible_connection", "ssh")),
        key_file=key_file,
        python=str(v.get("ansible_python_interpreter", "python3")),
        device_class=v.get("ftte_device_class"),
        mem_cap_mb=v.get("ftte_mem_cap_mb"),
        workdir=str(v.get("ftte_workdir", "~/.ftte")),
        data=v.get("ftte_data"),
        known_hosts=_path(v.get("ftte_known_hosts"), base),
        proxy_jump=_resolve_jump(str(jump), ssh, hostvars or {}, at) if jump else None,
        groups=tuple(g for g in groups if g != "all"),
        vars=v,
        train=dict(v.get("ftte_train") or {}),
    )


def load_inventory(
    path: Path,
    overrides: Optional[Mapping[str, Any]] = None,
    ssh_config: Optional[SshConfig] = None,
) -> Inventory:
    """Load, validate and resolve an inventory; `ssh_config` defaults to ~/.ssh/config.

    `path` may also name a built-in inventory (`lab`; a local file wins), see ftte_cli/builtin.
    """
    from ftte_cli import builtin
    from ftte_cli.config.schema import load_yaml

    path = builtin.resolve(builtin.INVENTORIES, path).path
    tree = _parse(path, load_yaml(path))
    ssh = ssh_config if ssh_config is not None else load_ssh_config()
    flags = dict(check_var(k, v, "command line") for k, v in (overrides or {}).items())
    depth = _depths(tree)
    merged: dict[str, dict[str, Any]] = {}
    member_of: dict[str, tuple[str, ...]] = {}
    for host in tree.host_vars:
        groups = _groups_of(tree, host, depth)
        v: dict[str, Any] = {}
        for g in groups:
            v.update(tree.group_vars[g])
        v.update(tree.host_vars[host])
        v.pop("ansible_group_priority", None)  # a group setting, not a host var (as Ansible)
        _warn_address_merge(path, host, groups, tree)
        merged[host], member_of[host] = v, tuple(groups)
    devices = {
        h: resolve_device(h, merged[h], member_of[h], ssh, path.parent.resolve(),
                          f"{path}: host {h}", flags, merged)
        for h in tree.host_vars
    }
    return Inventory(path, devices, _groups(tree, member_of), merged)


def _groups(tree: _Tree, member_of: Mapping[str, tuple[str, ...]]) -> dict[str, Group]:
    """Groups as loaded plus Ansible's implicit `ungrouped` (hosts in no group but `all`)."""
    ungrouped = tuple(h for h, gs in member_of.items() if gs == ("all",))
    out = {
        g: Group(g, tuple(h for h in tree.group_hosts[g] if g != "all" or h not in ungrouped),
                 tuple(tree.group_children[g]), tree.group_vars[g])
        for g in tree.group_children
    }
    out["all"] = Group("all", (), ("ungrouped", *out["all"].children), out["all"].vars)
    out["ungrouped"] = Group("ungrouped", ungrouped)
    return out
