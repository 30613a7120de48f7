"""Per-device bundles: everything a device needs to train, built locally and byte-deterministic.

Lifecycle: `build_bundles` writes `.ftte/bundles/<recipe>/<device>/` for every device of the
inventory (shards are assigned in inventory order, so `--limit` never changes another device's
data), each with a manifest of sha256 digests; `bundle_archive` packs one bundle into a
deterministic tar for `ftte deploy`; `load_tokens` gives the server the same tokens the devices
hold. The same recipe, plan and seed give byte-identical files, so an unchanged bundle keeps its
hash and is not uploaded again. Layout: docs/ARCHITECTURE.md, "Bundles".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from safetensors.torch import save as st_save

from ftte_cli.client.power import watts_per_cpu
from ftte_cli.config.inventory import device_train
from ftte_cli.config.recipe import Recipe, recipe_to_dict
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.runtime import RUNTIME_NAME, Runtime, build_runtime

# the one home of the initial model is startmodel.py; these names stay importable from here
from ftte_cli.startmodel import initial_model as initial_model
from ftte_cli.startmodel import initial_params as initial_params

if TYPE_CHECKING:
    from ftte_cli.config.inventory import Device
    from ftte_cli.engine.data import FederatedData
    from ftte_cli.engine.plan import Plan

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(".ftte")
MANIFEST = "manifest.json"
TOKEN = "token"
MODEL = "model.safetensors"
DATA = "data.safetensors"
SERVER = "server.json"
RECIPE = "recipe.json"
_TAR_MODES = {TOKEN: 0o600}


@dataclass(frozen=True)
class LocalBundle:
    """One device's bundle as built on this machine."""

    device: str  # inventory name
    path: Path  # .ftte/bundles/<recipe>/<device>
    files: dict[str, str]  # file name -> sha256, manifest.json excluded
    sha256: str  # the bundle hash: sha256 of the canonical file list
    size: int  # bytes of every file, manifest included


def bundles_dir(recipe_name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Where a recipe's bundles live locally."""
    return root / "bundles" / recipe_name


def build_bundles(
    recipe: Recipe,
    devices: Sequence[Device],
    plan: Plan,
    *,
    fed: Optional[FederatedData] = None,
    params: Optional[dict[str, torch.Tensor]] = None,
    root: Path = DEFAULT_ROOT,
    runtime: Optional[Runtime] = None,
) -> dict[str, LocalBundle]:
    """Write every device's bundle; `devices` is the whole inventory, in inventory order.

    `fed` defaults to `load_federated(recipe.data, len(devices), recipe.seed)`, `params` to
    `startmodel.initial_params(recipe, ...)`; pass them when the caller already has them (the
    server must start from the same initial model: it is `model.safetensors`, identical in
    every bundle).
    """
    if not devices:
        raise ConfigError("inventory: no devices to build bundles for")
    if fed is None and any(d.data is None for d in devices):
        fed = _federated(recipe, len(devices))
    if params is None:
        if fed is None:
            raise ConfigError(f"{recipe.source or 'recipe'}: every device uses ftte_data; "
                              "pass the initial model to build bundles")
        params = initial_params(recipe, fed.input_shape, fed.num_classes, fed)
    shared = _shared_files(recipe, plan, params, runtime or build_runtime())
    out: dict[str, LocalBundle] = {}
    for index, device in enumerate(devices):
        files = dict(shared)
        if device.data is None:
            assert fed is not None
            files[DATA] = _shard_bytes(fed, index)
        if device.train:  # ftte_train: this device class trains with its own settings
            files[RECIPE] = _json_bytes(recipe_to_dict(
                replace(recipe, train=device_train(recipe.train, device))))
        files[SERVER] = _json_bytes(_server_settings(recipe, device, index))
        out[device.name] = _write_bundle(bundles_dir(recipe.name, root) / device.name,
                                         device.name, files)
    return out


def load_tokens(recipe_name: str, device_names: Sequence[str], root: Path = DEFAULT_ROOT
                ) -> dict[str, str]:
    """Device name -> token, read from the local bundles (ConfigError if one was never built)."""
    tokens: dict[str, str] = {}
    for name in device_names:
        path = bundles_dir(recipe_name, root) / name / TOKEN
        try:
            tokens[name] = path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no token for device {name!r}; run `ftte deploy` first") \
                from None
    return tokens


def bundle_archive(bundle: LocalBundle) -> bytes:
    """The bundle as an uncompressed tar: sorted names, fixed times and owners (stable bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted([*bundle.files, MANIFEST]):
            data = (bundle.path / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, _TAR_MODES.get(name, 0o644)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_manifest(path: Path) -> dict[str, Any]:
    """A bundle's manifest.json (ConfigError naming the file when missing or malformed)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path / MANIFEST}: unreadable bundle manifest ({err})") from None
    if not isinstance(data, dict) or "bundle_sha256" not in data:
        raise ConfigError(f"{path / MANIFEST}: bundle_sha256: missing")
    return data


# --- pieces ----------------------------------------------------------------------------------


def _federated(recipe: Recipe, num_devices: int) -> FederatedData:
    from ftte_cli.engine.data import load_federated

    return load_federated(recipe.data, num_devices, recipe.seed, recipe.init)


def _shared_files(recipe: Recipe, plan: Plan, params: dict[str, torch.Tensor],
                  runtime: Runtime) -> dict[str, bytes]:
    """The files every device's bundle holds identically."""
    files = {
        RUNTIME_NAME: runtime.data,
        RECIPE: _json_bytes(recipe_to_dict(recipe)),
        # One metadata key only: safetensors writes several in hash-map (random) order.
        MODEL: st_save(params, metadata={"format": "pt"}),
    }
    files.update(_plan_files(plan))
    return files


def _plan_files(plan: Plan) -> dict[str, bytes]:
    """plan.json + plan.safetensors as engine.plan.save_plan writes them."""
    from ftte_cli.engine.plan import save_plan

    with tempfile.TemporaryDirectory(prefix="ftte-plan-") as tmp:
        paths = save_plan(plan, Path(tmp))
        return {p.name: p.read_bytes() for p in paths}


def _shard_bytes(fed: FederatedData, index: int) -> bytes:
    """Client `index`'s train and test split as safetensors."""
    client = fed.clients[index]
    tensors = {
        "train_x": client.train.x, "train_y": client.train.y,
        "test_x": client.test.x, "test_y": client.test.y,
    }
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    return st_save(tensors, metadata={"client_id": str(client.client_id)})


def _server_settings(recipe: Recipe, device: Device, index: int) -> dict[str, Any]:
    """server.json: who this device is in the run; `data_path` when it trains on local data."""
    settings: dict[str, Any] = {"device": device.name, "run": recipe.name, "client_index": index,
                                "watts_per_cpu": watts_per_cpu(device.device_class)}
    if device.data is not None:
        settings["data_path"] = device.data
    if device.train.get("threads"):
        settings["threads"] = int(device.train["threads"])
    return settings


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bundle(path: Path, name: str, files: dict[str, bytes]) -> LocalBundle:
    """Write files that changed, keep (or make) the token, and write the manifest last."""
    path.mkdir(parents=True, exist_ok=True)
    files = {**files, TOKEN: _token(path)}
    digests = {fname: _sha256(data) for fname, data in sorted(files.items())}
    for fname, data in files.items():
        _write_if_changed(path / fname, data, _TAR_MODES.get(fname, 0o644))
    bundle_sha = _sha256(_json_bytes(digests))
    manifest = _json_bytes({"files": digests, "bundle_sha256": bundle_sha})
    _write_if_changed(path / MANIFEST, manifest, 0o644)
    for stale in path.iterdir():  # files of an older layout would travel in no archive anyway
        if stale.is_file() and stale.name not in files and stale.name != MANIFEST:
            stale.unlink()
    size = sum(len(d) for d in files.values()) + len(manifest)
    return LocalBundle(device=name, path=path, files=digests, sha256=bundle_sha, size=size)


def _token(path: Path) -> bytes:
    """This device's token: made once (0600) and reused, so the server and device always agree."""
    token_path = path / TOKEN
    if token_path.exists():
        return token_path.read_bytes()
    token = (secrets.token_hex(32) + "\n").encode()
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(token)
    return token


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    """Atomic write (temp + rename) unless the file already holds exactly `data`."""
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
