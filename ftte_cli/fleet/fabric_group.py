"""Fabric connections to inventory devices, with ftte's settings and host-key rules.

For users who script their testbed with Fabric: `fabric_group(devices, opts)` returns a
`fabric.ThreadingGroup` holding one `DeviceConnection` (a `fabric.Connection` that also knows its
inventory `Device`) per device, so a script gets what every ftte command uses:

    group = api.fabric_group("inventory/lab.yaml", limit="pis")
    for conn, result in group.run("uptime", hide=True).items():
        print(conn.device.name, result.stdout.strip())

What is taken from the resolved inventory (`config/inventory.py: resolve_device` already applied
CLI overrides, host and group vars and ~/.ssh/config, so Fabric must not read ssh config again):
host, port, user, key file (as the only identity, like `_open_client`), the key passphrase from
`ftte_password_env`, the jump host (a gateway `Connection` with the same rules), the connect
timeout (TCP connect, banner, auth and channel open) and the command timeout (Fabric's
`timeouts.command`, so `run()` raises `CommandTimedOut`). Local stdin is not forwarded
(`run.in_stream` False).

Host keys: Fabric's own `Connection` auto-adds any unknown key and loads no known_hosts. Here
every client (the gateway's too) gets `ssh.enforce_host_keys`: the device's known_hosts file,
unknown keys refused unless `accept_new_host_keys` (then recorded there), changed keys always
refused, with the same messages as the fleet commands. Errors surface as Fabric/paramiko raise
them (`GroupException` maps each connection to its exception); `ssh.classify(exc, conn.device)`
turns one into an ftte outcome and detail.

`connection: local` devices cannot join: Fabric connections are SSH only (`invoke.Context` runs
local commands); they are refused with a ConfigError naming the host.
"""

from __future__ import annotations

from typing import Any, Optional

import fabric
import paramiko

from ftte_cli.config.inventory import Device
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.ssh.hostkeys import enforce_host_keys
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.sessions import jump_host, key_passphrase


class DeviceConnection(fabric.Connection):
    """A fabric.Connection that knows the inventory `Device` it reaches."""

    # A class attribute, so invoke's DataProxy sets it as an attribute, not as config.
    device: Optional[Device] = None


def _config(opts: SshOptions) -> fabric.Config:
    """A Fabric config that reads no ssh config files (the inventory is already resolved),
    carries the command timeout, and does not copy this process's stdin to the devices (several
    threads reading one stdin race, and a script without a terminal would block on it; pass
    `in_stream=` to one `run` to send input)."""
    return fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={
        "timeouts": {"command": opts.command_timeout}, "run": {"in_stream": False}})


def _connect_kwargs(device: Device, opts: SshOptions) -> dict[str, Any]:
    """What `SSHClient.connect` gets: the identity and every connect-time deadline."""
    key_file = str(device.key_file.expanduser()) if device.key_file else None
    kwargs: dict[str, Any] = {
        "look_for_keys": key_file is None, "allow_agent": True,
        "passphrase": key_passphrase(device),
        "timeout": opts.connect_timeout, "banner_timeout": opts.connect_timeout * 0.8,
        "auth_timeout": opts.connect_timeout, "channel_timeout": opts.connect_timeout,
    }
    if key_file is not None:
        kwargs["key_filename"] = key_file
    return kwargs


def device_connection(device: Device, opts: SshOptions) -> DeviceConnection:
    """One `DeviceConnection` (not yet opened) to `device`, via its jump host if it has one."""
    if device.connection != "ssh":
        raise ConfigError(f"host {device.name}: connection {device.connection} cannot join a "
                          "Fabric group (SSH only; leave it out with --limit)")
    config = _config(opts)
    gateway: Any = False  # False, not None: a gateway from a user's fabric.yaml is not used
    hop = jump_host(device)
    if hop is not None:
        juser, jhost, jport = hop
        gateway = fabric.Connection(jhost, user=juser or device.user, port=jport, config=config,
                                    gateway=False, connect_kwargs=_connect_kwargs(device, opts))
        enforce_host_keys(gateway.client, device, opts)
    conn = DeviceConnection(device.host, user=device.user, port=device.port, config=config,
                            gateway=gateway, connect_kwargs=_connect_kwargs(device, opts))
    conn.device = device
    enforce_host_keys(conn.client, device, opts)
    return conn


def fabric_group(devices: list[Device], opts: SshOptions) -> fabric.ThreadingGroup:
    """A ThreadingGroup of `DeviceConnection`s, in inventory order (connections open lazily)."""
    return fabric.ThreadingGroup.from_connections([device_connection(d, opts) for d in devices])
