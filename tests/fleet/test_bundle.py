"""Bundles and the device runtime in process: deterministic bytes, tokens kept, shards, sources
for Python 3.9. The agent trained from a bundle's pyz alone is in test_bundle_agent.py."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.bundlekit import CLASSES, SHAPE, build, head_plan, local_devices
from safetensors.torch import load_file

from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import Recipe
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import dense_plan
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.bundle import (
    build_bundles,
    bundle_archive,
    initial_params,
    load_tokens,
    read_manifest,
)
from ftte_cli.fleet.runtime import build_runtime


def test_runtime_bytes_are_deterministic_and_hold_only_the_device_path() -> None:
    a, b = build_runtime(), build_runtime()
    assert a.data == b.data and a.sha256 == b.sha256
    assert a.data.startswith(b"#!/usr/bin/env python3\n")
    names = zipfile.ZipFile(io.BytesIO(a.data)).namelist()
    assert names == sorted(names)
    for needed in ("__main__.py", "ftte_cli/client/agent.py", "ftte_cli/engine/train.py",
                   "ftte_cli/engine/plan.py", "ftte_cli/engine/sparse.py"):
        assert needed in names
    assert not [n for n in names if n.startswith(("ftte_cli/fleet/", "ftte_cli/server/",
                                                  "ftte_cli/commands/", "ftte_cli/sim/"))]
    assert a.foreign_imports == ()  # nothing beyond torch, safetensors and the stdlib
    infos = zipfile.ZipFile(io.BytesIO(a.data)).infolist()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_same_inputs_give_identical_bundles_and_tokens_are_kept(
        recipe: Recipe, params: dict[str, torch.Tensor], tmp_path: Path) -> None:
    devices = local_devices(tmp_path)
    plan = head_plan(recipe)
    first = build(recipe, devices, plan, params, tmp_path / "a")
    token_file = first["dev0"].path / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    again = build(recipe, devices, plan, initial_params(recipe, SHAPE, CLASSES), tmp_path / "a")
    assert {k: v.sha256 for k, v in again.items()} == {k: v.sha256 for k, v in first.items()}
    assert token_file.read_text() == token  # reused, not regenerated
    assert bundle_archive(first["dev0"]) == bundle_archive(again["dev0"])
    # Another root: new tokens, but every other file byte-identical.
    other = build(recipe, devices, plan, params, tmp_path / "b")
    diff = {n for n, d in first["dev0"].files.items() if other["dev0"].files[n] != d}
    assert diff == {"token"}
    assert first["dev0"].files["token"] != first["dev1"].files["token"]  # one token per device


def test_manifest_lists_every_file_and_a_changed_plan_changes_the_hash(
        recipe: Recipe, params: dict[str, torch.Tensor], tmp_path: Path) -> None:
    devices = local_devices(tmp_path)
    head = build(recipe, devices, head_plan(recipe), params, tmp_path / "r")["dev0"]
    manifest = read_manifest(head.path)
    assert manifest["bundle_sha256"] == head.sha256
    expected = {"ftte-agent.pyz", "recipe.json", "plan.json", "plan.safetensors",
                "model.safetensors", "token", "server.json"}
    assert set(manifest["files"]) == expected  # ftte_data device: no shard shipped
    server = json.loads((head.path / "server.json").read_text())
    assert server == {"device": "dev0", "run": "har", "client_index": 0,
                      "data_path": devices[0].data,
                      "watts_per_cpu": 2.0}  # no device class: the default energy figure
    model = load_file(str(head.path / "model.safetensors"))
    assert all(torch.equal(model[k], params[k]) for k in params)
    dense = dense_plan(build_model(recipe.model, SHAPE, CLASSES), recipe.model.name)
    changed = build(recipe, devices, dense, params, tmp_path / "r")["dev0"]
    assert changed.sha256 != head.sha256 and changed.files["token"] == head.files["token"]
    tar = tarfile.open(fileobj=io.BytesIO(bundle_archive(changed)))
    members = {m.name: m for m in tar.getmembers()}
    assert set(members) == expected | {"manifest.json"}
    assert members["token"].mode == 0o600 and {m.mtime for m in members.values()} == {0}


def test_initial_model_depends_on_the_seed_only(recipe: Recipe) -> None:
    torch.manual_seed(123)  # the global RNG state must not matter
    a = initial_params(recipe, SHAPE, CLASSES)
    b = initial_params(recipe, SHAPE, CLASSES)
    c = initial_params(replace(recipe, seed=recipe.seed + 1), SHAPE, CLASSES)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_load_tokens_matches_bundles_and_names_a_missing_one(
        recipe: Recipe, params: dict[str, torch.Tensor], tmp_path: Path) -> None:
    built = build(recipe, local_devices(tmp_path), head_plan(recipe), params, tmp_path / "t")
    tokens = load_tokens("har", ["dev0", "dev1"], tmp_path / "t")
    assert tokens == {k: (b.path / "token").read_text().strip() for k, b in built.items()}
    assert all(len(t) == 64 for t in tokens.values())
    with pytest.raises(ConfigError, match="dev9"):
        load_tokens("har", ["dev9"], tmp_path / "t")


def test_shards_follow_inventory_order_and_ftte_data_devices_get_none(
        recipe: Recipe, tmp_path: Path) -> None:
    from ftte_cli.engine.data import load_federated

    small = replace(recipe, data=replace(recipe.data, windows=1200, subjects=6))
    devices = [Device(name=f"d{i}", host="localhost", connection="local") for i in range(3)]
    devices[1] = replace(devices[1], data="/data/har.safetensors")
    built = build_bundles(small, devices, head_plan(recipe), root=tmp_path)
    fed = load_federated(small.data, 3, small.seed)
    for i in (0, 2):
        shard = load_file(str(built[f"d{i}"].path / "data.safetensors"))
        client = fed.clients[i]
        assert torch.equal(shard["train_x"], client.train.x)
        assert torch.equal(shard["test_y"], client.test.y)
        server = json.loads((built[f"d{i}"].path / "server.json").read_text())
        assert server["client_index"] == i and "data_path" not in server
    assert "data.safetensors" not in built["d1"].files
    assert json.loads((built["d1"].path / "server.json").read_text())["data_path"] == \
        "/data/har.safetensors"
    model = load_file(str(built["d0"].path / "model.safetensors"))
    expected = initial_params(small, fed.input_shape, fed.num_classes)
    assert all(torch.equal(model[k], expected[k]) for k in expected)


def test_runtime_sources_parse_as_python_3_9() -> None:
    """Devices may run Python 3.9: no `match`, and `X | Y` only under postponed annotations."""
    import ast

    archive = zipfile.ZipFile(io.BytesIO(build_runtime().data))
    for name in archive.namelist():
        source = archive.read(name).decode()
        tree = ast.parse(source, filename=name, feature_version=(3, 9))
        postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                        and any(a.name == "annotations" for a in n.names) for n in tree.body)
        annotations = [n.annotation for n in ast.walk(tree)
                       if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation is not None]
        annotations += [n.returns for n in ast.walk(tree)
                        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns]
        unions = [a for a in annotations for b in ast.walk(a)
                  if isinstance(b, ast.BinOp) and isinstance(b.op, ast.BitOr)]
        assert postponed or not unions, f"{name}: `X | Y` annotation needs __future__ import"
