"""Ship bundles to devices: checks first, then upload, verify on the device, swap atomically.

Per device (all in parallel through `run_on_fleet`):
1. Pre-check with one small Python script on the device: interpreter version, torch and
   safetensors installed (found on the interpreter's path, not imported: that takes seconds on
   a Pi), free disk in the work dir, and the hash of the bundle already there (re-hashing its
   files, so a damaged bundle counts as absent). A failing check ends the device
   as `failed` with a one-line reason before a single byte is copied.
2. Same bundle hash already in place -> `ok` (not changed). `--dry-run` stops here and says
   what would happen.
3. Upload the bundle as a tar to `<workdir>/.upload-<sha>.tar`, verify its sha256 on the
   device, unpack into `<workdir>/bundles/<sha>.tmp`, rename to `bundles/<sha>`, then point the
   `<workdir>/bundle` symlink at it with one rename (readers see the old or the new bundle,
   never half of one) -> `changed`.

The device-side scripts use only the standard library of Python 3.9.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from ftte_cli.fleet.bundle import DEFAULT_ROOT, LocalBundle, build_bundles, bundle_archive
from ftte_cli.fleet.ssh.options import SshOptions
from ftte_cli.fleet.ssh.pool import run_on_fleet
from ftte_cli.fleet.ssh.results import DeviceResult, FleetResults, Outcome
from ftte_cli.fleet.ssh.sessions import Session

if TYPE_CHECKING:
    import torch

    from ftte_cli.config.inventory import Device
    from ftte_cli.config.recipe import Recipe
    from ftte_cli.engine.data import FederatedData
    from ftte_cli.engine.plan import Plan

log = logging.getLogger(__name__)

MIN_PYTHON = (3, 9)
DISK_MARGIN = 1 << 20  # bytes kept free beyond the archive and its unpacked copy

# Prints one JSON line describing the device; argv[1] is the work dir (may not exist yet).
_PRECHECK = r"""
import hashlib, json, os, shutil, sys
w = os.path.abspath(os.path.expanduser(sys.argv[1]))
info = {"python": list(sys.version_info[:3]), "workdir": w, "torch": None, "safetensors": None}
def version(name):
    # find_spec + metadata instead of importing: importing torch takes seconds on a Pi.
    import importlib.util
    try:
        if importlib.util.find_spec(name) is None:
            info[name + "_error"] = "No module named %r" % name
            return None
    except Exception as e:
        info[name + "_error"] = ("%s: %s" % (type(e).__name__, e))[:160]
        return None
    try:
        from importlib.metadata import version as v
        return v(name)
    except Exception:
        return "present"
info["torch"] = version("torch")
info["safetensors"] = version("safetensors")
def near(p):
    while not os.path.isdir(p):
        p = os.path.dirname(p)
    return p
p, pb = near(w), near(os.path.join(w, "bundles"))
info["free"] = shutil.disk_usage(p).free
# bundles/ may be its own (smaller) filesystem: the unpacked copy needs room there
info["free_bundles"] = shutil.disk_usage(pb).free
info["bundles_path"] = os.path.join(w, "bundles")
info["same_fs"] = os.stat(p).st_dev == os.stat(pb).st_dev
b = os.path.join(w, "bundle")
try:
    with open(os.path.join(b, "manifest.json")) as f:
        m = json.load(f)
    for name, want in sorted(m["files"].items()):
        with open(os.path.join(b, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != want:
                raise ValueError(name)
    info["bundle_sha256"] = m["bundle_sha256"]
except Exception:
    info["bundle_sha256"] = None
print(json.dumps(info))
"""

# argv: workdir, uploaded tar, its expected sha256, bundle sha256. Exit 3 on a hash mismatch.
_INSTALL = r"""
import hashlib, json, os, shutil, sys, tarfile
w, tar_path, want, bsha = sys.argv[1:5]
h = hashlib.sha256()
with open(tar_path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != want:
    os.unlink(tar_path)
    sys.stderr.write("archive sha256 mismatch: got %s, expected %s\n" % (h.hexdigest(), want))
    sys.exit(3)
root = os.path.join(w, "bundles")
final = os.path.join(root, bsha)
tmp = final + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
needed = 0
try:
    os.makedirs(tmp)
    with tarfile.open(tar_path) as t:
        members = t.getmembers()
        needed = sum(m.size for m in members)
        for m in members:
            if not m.isfile() or "/" in m.name or m.name.startswith("."):
                shutil.rmtree(tmp, ignore_errors=True)
                os.unlink(tar_path)
                sys.stderr.write("unexpected archive member %r\n" % m.name)
                sys.exit(4)
        for m in members:
            with open(os.path.join(tmp, m.name), "wb") as out:
                shutil.copyfileobj(t.extractfile(m), out)
            os.chmod(os.path.join(tmp, m.name), m.mode & 0o700 | (m.mode & 0o044))
except OSError as e:  # a full disk: leave the device as it was (old bundle, no strays)
    shutil.rmtree(tmp, ignore_errors=True)
    os.unlink(tar_path)
    free = shutil.disk_usage(root if os.path.isdir(root) else w).free
    sys.stderr.write("%s: %s; %d bytes free, %d needed (upload and partial copy removed, "
                     "previous bundle kept)\n" % (e.filename or tmp, e.strerror or e, free, needed))
    sys.exit(5)
shutil.rmtree(final, ignore_errors=True)
os.rename(tmp, final)
link = os.path.join(w, "bundle")
tmp_link = link + ".tmp"
if os.path.lexists(tmp_link):
    os.unlink(tmp_link)
os.symlink(os.path.join("bundles", bsha), tmp_link)
if os.path.isdir(link) and not os.path.islink(link):
    shutil.rmtree(link)
os.replace(tmp_link, link)
os.unlink(tar_path)
for d in os.listdir(root):
    if d != bsha:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
print(json.dumps({"bundle": link}))
"""


@dataclass(frozen=True)
class DeployInfo:
    """What `ftte deploy` left on one device (`DeviceResult.value`)."""

    remote_bundle: str  # absolute path of <workdir>/bundle on the device
    bundle_sha256: str
    uploaded_bytes: int  # 0 when the bundle was already there (or on a dry run)
    python: str  # the device's Python version
    torch: str  # the device's torch version


@dataclass(frozen=True)
class DeviceCheck:
    """The pre-check's view of one device."""

    python: tuple[int, ...]
    workdir: str
    torch: Optional[str]
    safetensors: Optional[str]
    free: int
    bundle_sha256: Optional[str]
    torch_error: str = ""
    free_bundles: Optional[int] = None  # free bytes where bundles/ lives (None: not measured)
    bundles_path: str = ""
    same_fs: bool = True  # bundles/ on the work dir's filesystem


class DeployFailed(Exception):
    """A check or install step failed on the device; the message is the recap's one line."""


def deploy_fleet(
    recipe: Recipe,
    devices: Sequence[Device],
    plan: Plan,
    opts: SshOptions,
    *,
    targets: Optional[Sequence[str]] = None,
    dry_run: bool = False,
    root: Path = DEFAULT_ROOT,
    fed: Optional[FederatedData] = None,
    params: Optional[dict[str, torch.Tensor]] = None,
    on_done: Optional[Callable[[DeviceResult], None]] = None,
) -> FleetResults:
    """Build every device's bundle (`devices` = whole inventory, in order), ship it to `targets`.

    Values of the returned results are DeployInfo (also for ok and dry-run devices whose checks
    passed). `targets` are device names (default: every device); `fed` and `params` as in
    `build_bundles`.
    """
    bundles = build_bundles(recipe, devices, plan, fed=fed, params=params, root=root)
    chosen = [d for d in devices if targets is None or d.name in set(targets)]
    return ship_bundles(chosen, bundles, opts, dry_run=dry_run, on_done=on_done)


def ship_bundles(
    devices: Sequence[Device],
    bundles: dict[str, LocalBundle],
    opts: SshOptions,
    *,
    dry_run: bool = False,
    on_done: Optional[Callable[[DeviceResult], None]] = None,
) -> FleetResults:
    """Check, then upload and install each device's already-built bundle, in parallel."""

    def step(session: Session) -> DeviceResult:
        return _deploy_one(session, bundles[session.device.name], dry_run)

    return run_on_fleet(list(devices), step, opts, on_done=on_done)


def precheck_fleet(devices: Sequence[Device], opts: SshOptions) -> FleetResults:
    """Only the pre-checks (Python, torch, safetensors), in parallel; values are DeviceCheck.

    Run before planning, so a device that cannot train is reported with its reason even when
    no device could be profiled; the disk check waits for the bundle's size (ship_bundles).
    """

    def step(session: Session) -> DeviceResult:
        try:
            check = precheck(session)
            _require(check, session.device, needed=0)
        except DeployFailed as err:
            return DeviceResult(session.device, Outcome.failed, str(err))
        return DeviceResult(session.device, Outcome.ok, "ready", value=check)

    return run_on_fleet(list(devices), step, opts)


def _deploy_one(session: Session, bundle: LocalBundle, dry_run: bool) -> DeviceResult:
    device = session.device
    try:
        check = precheck(session)
        archive = bundle_archive(bundle)
        _require(check, device, needed=2 * len(archive) + DISK_MARGIN, archive=len(archive))
    except DeployFailed as err:
        return DeviceResult(device, Outcome.failed, str(err))
    remote = f"{check.workdir}/bundle"
    info = DeployInfo(remote, bundle.sha256, 0, ".".join(map(str, check.python)), check.torch or "")
    if check.bundle_sha256 == bundle.sha256:
        return DeviceResult(device, Outcome.ok, f"bundle {bundle.sha256[:12]} already in place",
                            value=info)
    if dry_run:
        what = "replace" if check.bundle_sha256 else "install"
        return DeviceResult(device, Outcome.ok, f"would {what} bundle with {bundle.sha256[:12]} "
                            f"({len(archive)} bytes) at {remote}", value=info)
    try:
        install_archive(session, check.workdir, archive, hashlib.sha256(archive).hexdigest(),
                        bundle.sha256)
    except DeployFailed as err:
        return DeviceResult(device, Outcome.failed, str(err))
    info = DeployInfo(remote, bundle.sha256, len(archive), info.python, info.torch)
    return DeviceResult(device, Outcome.changed,
                        f"bundle {bundle.sha256[:12]} installed ({len(archive)} bytes)", value=info)


def precheck(session: Session) -> DeviceCheck:
    """Run the pre-check script; DeployFailed when Python itself is missing or broken."""
    device = session.device
    cmd = f"{device.python} -c {shlex.quote(_PRECHECK)} {shlex.quote(device.workdir)}"
    result = session.run(cmd, check=False)
    if result.rc == 127:
        raise DeployFailed(f"{device.python}: not found on the device "
                           "(install Python 3.9+ or set ansible_python_interpreter)")
    try:
        raw: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1][:160]
        raise DeployFailed(f"{device.python}: pre-check failed (rc {result.rc}): {tail}") from None
    return DeviceCheck(
        python=tuple(raw["python"]), workdir=raw["workdir"], torch=raw.get("torch"),
        safetensors=raw.get("safetensors"), free=int(raw["free"]),
        bundle_sha256=raw.get("bundle_sha256"), torch_error=raw.get("torch_error", ""),
        free_bundles=raw.get("free_bundles"), bundles_path=raw.get("bundles_path", ""),
        same_fs=bool(raw.get("same_fs", True)),
    )


def _require(check: DeviceCheck, device: Device, needed: int, archive: int = 0) -> None:
    """Fail with the first unmet requirement (nothing has been copied yet)."""
    py = ".".join(map(str, check.python))
    if check.python < MIN_PYTHON:
        raise DeployFailed(f"{device.python} is Python {py}; the agent needs 3.9 or newer")
    if check.torch is None:
        raise DeployFailed(f"torch is not importable by {device.python} (Python {py}): "
                           f"{check.torch_error or 'not installed'}; install torch on the device")
    if check.safetensors is None:
        raise DeployFailed(f"safetensors is not importable by {device.python}; "
                           "pip install safetensors on the device")
    if needed <= 0:  # checks only (precheck_fleet): the bundle's size is not known yet
        return
    if check.same_fs or check.free_bundles is None:
        if check.free < needed:
            raise DeployFailed(f"not enough free disk in {check.workdir}: {check.free} bytes "
                               f"free, {needed} needed")
        return
    # bundles/ is its own filesystem: the tar goes to the work dir, the unpacked copy there
    if check.free < archive + DISK_MARGIN:
        raise DeployFailed(f"not enough free disk in {check.workdir}: {check.free} bytes free, "
                           f"{archive + DISK_MARGIN} needed")
    if check.free_bundles < archive + DISK_MARGIN:
        raise DeployFailed(f"not enough free disk in {check.bundles_path}: {check.free_bundles} "
                           f"bytes free, {archive + DISK_MARGIN} needed")


def _free_bytes(session: Session, path: str) -> str:
    """Free bytes on the filesystem of `path` on the device ("?" when it cannot be asked)."""
    script = "import shutil,sys,os; print(shutil.disk_usage(os.path.expanduser(sys.argv[1])).free)"
    try:
        out = session.run(f"{session.device.python} -c {shlex.quote(script)} "
                          f"{shlex.quote(path)}", check=False)
        return out.stdout.strip() or "?"
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def install_archive(session: Session, workdir: str, archive: bytes, archive_sha256: str,
                    bundle_sha256: str) -> str:
    """Upload `archive`, verify `archive_sha256` on the device, unpack and swap it into place."""
    device = session.device
    upload = f"{workdir}/.upload-{bundle_sha256[:16]}.tar"
    session.run(f"mkdir -p {shlex.quote(workdir)}")
    with tempfile.TemporaryDirectory(prefix="ftte-deploy-") as tmp:
        local = Path(tmp) / "bundle.tar"
        local.write_bytes(archive)
        try:
            session.put(local, upload)
        except (OSError, EOFError) as err:  # paramiko says only "Failure" for a full disk
            session.run(f"rm -f {shlex.quote(upload)}", check=False)
            raise DeployFailed(f"{upload}: upload failed ({err or type(err).__name__}): "
                               f"{_free_bytes(session, workdir)} bytes free, {len(archive)} "
                               "needed (partial upload removed, previous bundle kept)") from None
    args = " ".join(shlex.quote(a) for a in (workdir, upload, archive_sha256, bundle_sha256))
    result = session.run(f"{device.python} -c {shlex.quote(_INSTALL)} {args}", check=False)
    if result.rc != 0:
        tail = (result.stderr.strip().splitlines() or [f"exit {result.rc}"])[-1][:500]
        raise DeployFailed(f"install failed: {tail}")
    return f"{workdir}/bundle"
