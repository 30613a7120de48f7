"""`ftte deploy` on a real sshd: checks before copying, verified upload, skip when unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from helpers.sshd import SshServer
from helpers.testbed import Testbed
from safetensors.torch import save_file
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import InitConfig, Recipe, load_recipe
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FULL, Plan, build_plan, dense_plan
from ftte_cli.fleet.bundle import LocalBundle, build_bundles, bundle_archive, initial_params
from ftte_cli.fleet.deploy import (
    DeployFailed,
    DeployInfo,
    DeviceCheck,
    _require,
    deploy_fleet,
    install_archive,
    precheck,
    ship_bundles,
)
from ftte_cli.fleet.ssh import Outcome, SshOptions, connect

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHAPE, CLASSES = (9, 128), 6
OPTS = SshOptions(connect_timeout=10, command_timeout=120)
NO_TORCH_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    # bundles, not the warm start, are under test here: a random start needs no public data
    return replace(load_recipe(REPO / "recipes" / "har.yaml"), init=InitConfig())


def _plan(recipe: Recipe, dense: bool = False) -> Plan:
    model = build_model(recipe.model, SHAPE, CLASSES)
    if dense:
        return dense_plan(model, recipe.model.name)
    names = [n for n, _ in model.named_parameters()]
    return build_plan(model, {n: FULL for n in names[-2:]}, model_name=recipe.model.name)


def _fleet(srv: SshServer, tmp: Path, python: str = sys.executable) -> list[Device]:
    data = tmp / "local.safetensors"
    save_file({"train_x": torch.zeros(8, *SHAPE), "train_y": torch.zeros(8, dtype=torch.int64)},
              str(data))
    return [
        Device(name="ssh0", host="127.0.0.1", port=srv.port, user=srv.user,
               key_file=srv.client_key, known_hosts=srv.known_hosts, python=python,
               workdir=str(tmp / "dev-ssh0"), data=str(data)),
        Device(name="local0", host="localhost", connection="local", python=python,
               workdir=str(tmp / "dev-local0"), data=str(data)),
    ]


def _bundles(recipe: Recipe, devices: list[Device], tmp: Path, dense: bool = False
             ) -> dict[str, LocalBundle]:
    return build_bundles(recipe, devices, _plan(recipe, dense),
                         params=initial_params(recipe, SHAPE, CLASSES), root=tmp / ".ftte")


def _outcomes(results: object) -> dict[str, Outcome]:
    return {r.device.name: r.outcome for r in results}  # type: ignore[attr-defined]


def test_deploy_twice_then_changed_plan(recipe: Recipe, sshd: SshServer, tmp_path: Path) -> None:
    devices = _fleet(sshd, tmp_path)
    bundles = _bundles(recipe, devices, tmp_path)
    first = ship_bundles(devices, bundles, OPTS)
    assert _outcomes(first) == {"ssh0": Outcome.changed, "local0": Outcome.changed}
    for dev in devices:
        info = first[dev.name].value
        assert isinstance(info, DeployInfo) and info.uploaded_bytes > 0
        remote = Path(info.remote_bundle)
        assert remote == Path(dev.workdir) / "bundle" and remote.is_symlink()
        manifest = json.loads((remote / "manifest.json").read_text())
        assert manifest["bundle_sha256"] == bundles[dev.name].sha256 == info.bundle_sha256
        for name, digest in manifest["files"].items():  # what arrived is what was built
            assert hashlib.sha256((remote / name).read_bytes()).hexdigest() == digest
        assert (remote / "token").stat().st_mode & 0o777 == 0o600
        assert not list(Path(dev.workdir).glob(".upload-*"))  # the archive was cleaned up

    second = ship_bundles(devices, bundles, OPTS)
    assert _outcomes(second) == {"ssh0": Outcome.ok, "local0": Outcome.ok}
    assert all(r.value.uploaded_bytes == 0 and "already" in r.detail for r in second)
    assert second.exit_code() == 0

    dense = _bundles(recipe, devices, tmp_path, dense=True)
    third = ship_bundles(devices, dense, OPTS)
    assert _outcomes(third) == {"ssh0": Outcome.changed, "local0": Outcome.changed}
    for dev in devices:  # the swap left exactly the new bundle behind
        kept = [p.name for p in (Path(dev.workdir) / "bundles").iterdir()]
        assert kept == [dense[dev.name].sha256]
        plan = json.loads((Path(dev.workdir) / "bundle" / "plan.json").read_text())
        assert plan["method"] == "dense"


def test_dry_run_copies_nothing(recipe: Recipe, sshd: SshServer, tmp_path: Path) -> None:
    devices = _fleet(sshd, tmp_path)
    results = deploy_fleet(recipe, devices, _plan(recipe), OPTS, dry_run=True,
                           params=initial_params(recipe, SHAPE, CLASSES), root=tmp_path / ".f")
    assert _outcomes(results) == {"ssh0": Outcome.ok, "local0": Outcome.ok}
    assert all(r.detail.startswith("would install") for r in results)
    assert not any(Path(d.workdir).exists() for d in devices)
    only = deploy_fleet(recipe, devices, _plan(recipe), OPTS, targets=["local0"],
                        params=initial_params(recipe, SHAPE, CLASSES), root=tmp_path / ".f")
    assert _outcomes(only) == {"local0": Outcome.changed}
    assert not Path(devices[0].workdir).exists() and Path(devices[1].workdir).exists()


def test_device_without_torch_fails_before_copying(recipe: Recipe, sshd: SshServer,
                                                   tmp_path: Path) -> None:
    probe = subprocess.run([NO_TORCH_PYTHON, "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, f"{NO_TORCH_PYTHON} must lack torch for this test"
    good, _ = _fleet(sshd, tmp_path)
    _, bad = _fleet(sshd, tmp_path, python=NO_TORCH_PYTHON)
    results = ship_bundles([good, bad], _bundles(recipe, [good, bad], tmp_path), OPTS)
    assert _outcomes(results) == {"ssh0": Outcome.changed, "local0": Outcome.failed}
    assert "torch is not importable" in results["local0"].detail
    assert NO_TORCH_PYTHON in results["local0"].detail
    assert not Path(bad.workdir).exists()  # nothing was copied
    assert results.exit_code() == 8  # DEVICE_FAILED; the good device still deployed


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (CI runs as root, as the testbed needs)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_too_little_disk_fails_before_copying(recipe: Recipe, sshd: SshServer, tmp_path: Path,
                                              tiny_disk: Path) -> None:
    device = replace(_fleet(sshd, tmp_path)[0], workdir=str(tiny_disk / "ftte"))
    results = ship_bundles([device], _bundles(recipe, [device], tmp_path), OPTS)
    assert results["ssh0"].outcome == Outcome.failed
    assert f"not enough free disk in {tiny_disk}/ftte" in results["ssh0"].detail
    assert list(tiny_disk.iterdir()) == []  # not even the work dir was made


def test_missing_python_and_small_disk_fail_with_their_reason(
        recipe: Recipe, sshd: SshServer, tmp_path: Path) -> None:
    devices = _fleet(sshd, tmp_path, python="/nonexistent/python3")
    results = ship_bundles(devices, _bundles(recipe, devices, tmp_path), OPTS)
    assert all(r.outcome == Outcome.failed and "not found on the device" in r.detail
               for r in results)
    check = DeviceCheck(python=(3, 11, 0), workdir="/w", torch="2.0", safetensors="0.4",
                        free=1000, bundle_sha256=None)
    with pytest.raises(DeployFailed, match="not enough free disk in /w: 1000 bytes free"):
        _require(check, devices[0], needed=5000)
    old = DeviceCheck(python=(3, 8, 10), workdir="/w", torch="2.0", safetensors="0.4",
                      free=10**9, bundle_sha256=None)
    with pytest.raises(DeployFailed, match="Python 3.8.10; the agent needs 3.9"):
        _require(old, devices[0], needed=1)


def test_hash_mismatch_on_device_is_refused_and_nothing_swapped(
        recipe: Recipe, sshd: SshServer, tmp_path: Path) -> None:
    device = _fleet(sshd, tmp_path)[0]
    bundle = _bundles(recipe, [device], tmp_path)["ssh0"]
    archive = bundle_archive(bundle)
    with connect(device, OPTS) as session:
        workdir = precheck(session).workdir
        with pytest.raises(DeployFailed, match="sha256 mismatch"):
            install_archive(session, workdir, archive, "0" * 64, bundle.sha256)
        assert not (Path(workdir) / "bundle").exists()
        assert not list(Path(workdir).glob(".upload-*"))
        good = hashlib.sha256(archive).hexdigest()
        install_archive(session, workdir, archive, good, bundle.sha256)
        assert precheck(session).bundle_sha256 == bundle.sha256


def test_damaged_bundle_on_device_is_uploaded_again(recipe: Recipe, sshd: SshServer,
                                                    tmp_path: Path) -> None:
    devices = _fleet(sshd, tmp_path)
    bundles = _bundles(recipe, devices, tmp_path)
    assert _outcomes(ship_bundles(devices, bundles, OPTS))["ssh0"] == Outcome.changed
    plan = Path(devices[0].workdir) / "bundle" / "plan.json"
    os.chmod(plan, 0o644)
    plan.write_text(plan.read_text().replace('"method"', '"method" ', 1))
    again = ship_bundles(devices, bundles, OPTS)
    assert _outcomes(again) == {"ssh0": Outcome.changed, "local0": Outcome.ok}


# --- `ftte deploy` on the emulated testbed: profiles -> budget -> plan -> bundles -> devices ----


def _deploy_cli(bed: Testbed, recipe: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["deploy", "--recipe", str(recipe), "--inventory",
                                      str(bed.inventory), "--format", "json", *extra])
    return result.exit_code, json.loads(result.stdout)


def test_ftte_deploy_on_the_testbed(testbed: Testbed, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # local bundles under tmp_path/.ftte
    recipe = tmp_path / "recipe.yaml"
    raw = yaml.safe_load((REPO / "recipes" / "har.yaml").read_text())
    raw["name"], raw["plan"]["method"], raw["init"] = "har-deploy-test", "gradnorm", "random"
    recipe.write_text(yaml.safe_dump(raw))
    names = [d.name for d in testbed.devices()]
    code, dry = _deploy_cli(testbed, recipe, "--dry-run")
    assert code == 0, dry
    assert [d["device"] for d in dry["devices"]] == names
    assert all(d["outcome"] == "ok" for d in dry["devices"])
    assert all(d["value"]["uploaded_bytes"] == 0 for d in dry["devices"])

    code, first = _deploy_cli(testbed, recipe)
    assert code == 0, first
    assert first["summary"] in ({"changed": len(names)}, {"ok": len(names)})  # ok: rerun
    shards = {d["device"]: d["value"]["bundle_sha256"] for d in first["devices"]}
    assert len(set(shards.values())) == len(names)  # own shard and token each

    code, second = _deploy_cli(testbed, recipe, "--limit", names[0])
    assert code == 0 and second["summary"] == {"ok": 1}
    assert second["devices"][0]["value"]["bundle_sha256"] == shards[names[0]]
    assert "already in place" in second["devices"][0]["detail"]


def test_ftte_deploy_without_torch_anywhere_says_so_and_copies_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "device-home"
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"bare": {
        "ansible_connection": "local", "ansible_python_interpreter": NO_TORCH_PYTHON,
        "ftte_workdir": str(workdir)}}}}))
    result = CliRunner().invoke(app, ["deploy", "--recipe", str(REPO / "recipes" / "har.yaml"),
                                      "--inventory", str(inventory), "--format", "json"])
    assert result.exit_code == 8, result.output  # DEVICE_FAILED, not a planning error
    (row,) = json.loads(result.stdout)["devices"]
    assert row["outcome"] == "failed" and "torch is not importable" in row["detail"]
    assert not workdir.exists()


# ---- issue 13, fault 4: a full disk on a device -------------------------------------------------

def _tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _disk(path: Path, mount: Path) -> tuple[list[str], int]:
    """What a folder holds (names, recursively) and the free blocks of the small mount."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")), os.statvfs(mount).f_bavail


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI is root)")
@pytest.mark.parametrize("where", ["bundles", "workdir"])
def test_a_full_disk_leaves_the_previous_bundle_and_the_disk_as_they_were(
        sshd: SshServer, tmp_path: Path, recipe: Recipe, where: str) -> None:
    device = _fleet(sshd, tmp_path)[0]  # a real sshd: the upload goes through SFTP
    workdir = Path(device.workdir)
    narrow = replace(recipe, model=replace(recipe.model, width=1.0))
    first = _bundles(narrow, [device], tmp_path / "a")[device.name]
    wide = replace(recipe, model=replace(recipe.model, width=3.0))
    big = _bundles(wide, [device], tmp_path / "b")[device.name]  # another sha, ~9x the bytes
    size = len(bundle_archive(first))
    assert len(bundle_archive(big)) > 7 * size
    mount = workdir / "bundles" if where == "bundles" else workdir
    _tmpfs(mount, 2 * size + (2 << 20))  # room for the first bundle, not for the big one
    try:
        assert ship_bundles([device], {device.name: first}, OPTS)[device.name].outcome == \
            Outcome.changed
        before = _disk(workdir, mount)
        # 1. the pre-check sees the full filesystem (also bundles/ on its own) before copying
        res = ship_bundles([device], {device.name: big}, OPTS)[device.name]
        assert res.outcome == Outcome.failed
        assert f"not enough free disk in {mount}:" in res.detail and "needed" in res.detail
        assert _disk(workdir, mount) == before
        # 2. the disk fills during the upload or the unpack itself (no pre-check to save us)
        archive = bundle_archive(big)
        with connect(device, OPTS) as session, pytest.raises(DeployFailed) as err:
            install_archive(session, str(workdir), archive,
                            hashlib.sha256(archive).hexdigest(), big.sha256)
        message = str(err.value)
        assert "bytes free" in message and f"{len(archive)} needed" in message or \
            "needed (upload and partial copy removed" in message, message
        assert str(workdir) in message and "Failure" not in message.split(":")[0]
        assert _disk(workdir, mount)[0] == before[0]  # no .upload-*.tar, no bundles/<sha>.tmp
        assert abs(_disk(workdir, mount)[1] - before[1]) <= 2  # blocks: the disk is as it was
        assert (workdir / "bundle" / "manifest.json").exists()  # the old bundle still works
        manifest = json.loads((workdir / "bundle" / "manifest.json").read_text())
        assert manifest["bundle_sha256"] == first.sha256
    finally:
        _umount(mount)
