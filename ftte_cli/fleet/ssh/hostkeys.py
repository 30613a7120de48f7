"""Host keys: which known_hosts file, how entries are named and recorded, and the policy.

Unknown keys are refused unless the operator opts in (`SshOptions.accept_new_host_keys`, then
they are recorded, like OpenSSH's StrictHostKeyChecking=accept-new); a changed key, or keys of
another type already known for the host, are always refused. `enforce_host_keys` gives any
paramiko client these rules, also clients ftte does not open itself (Fabric's).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import paramiko

from ftte_cli.config.inventory import Device
from ftte_cli.fleet.ssh.options import SshOptions

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_RECORD_LOCK = threading.Lock()  # workers append to the same known_hosts file


class HostKeyUnknown(paramiko.SSHException):
    """The device's host key is not in known_hosts and the operator did not opt in."""


class HostKeyChanged(paramiko.BadHostKeyException):
    """Known_hosts holds keys of other types for this host: treated like a changed key."""



def fingerprint(key: paramiko.PKey) -> str:
    """`keytype fingerprint`, as the recap shows a key."""
    return f"{key.get_name()} {key.fingerprint}"


def known_hosts_path(device: Device, opts: SshOptions) -> Path:
    """The known_hosts file used for `device`: CLI flag, then the device's, then ~/.ssh's."""
    path = opts.known_hosts or device.known_hosts or DEFAULT_KNOWN_HOSTS
    return Path(path).expanduser()


def host_key_name(host: str, port: int) -> str:
    """The known_hosts entry name OpenSSH uses: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append `name keytype base64` to `path` (created 0600 in a 0700 folder) unless present."""
    with _RECORD_LOCK:
        if path.exists():
            known = paramiko.HostKeys(str(path)).lookup(name)
            if known is not None and known.get(key.get_name()) == key:
                return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when the presented key type is not known for the host."""

    def __init__(self, path: Path, accept_new: bool) -> None:
        self.path = path
        self.accept_new = accept_new

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        others = client.get_host_keys().lookup(hostname)
        if others:  # keys of another type are known: a swap of key type is not "new"
            raise HostKeyChanged(hostname, key, next(iter(others.values())))
        if not self.accept_new:
            raise HostKeyUnknown(
                f"host key for {hostname} is unknown ({fingerprint(key)}), not in {self.path}; "
                "verify it and rerun with --accept-new-host-keys to trust and record it"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        record_host_key(self.path, hostname, key)
        log.info("recorded new host key for %s in %s", hostname, self.path)



def enforce_host_keys(client: paramiko.SSHClient, device: Device, opts: SshOptions) -> Path:
    """Give a client ftte's host-key rules for `device`: its known_hosts loaded, unknown keys
    refused unless `opts.accept_new_host_keys` (then recorded), changed keys always refused.
    Also for clients ftte does not open itself (Fabric's, `fleet/fabric_group.py`)."""
    path = known_hosts_path(device, opts)
    if path.is_file():
        client.get_host_keys().load(str(path))
    client.set_missing_host_key_policy(_HostKeyPolicy(path, opts.accept_new_host_keys))
    return path
