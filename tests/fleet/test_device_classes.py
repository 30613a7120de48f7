"""Per-device-class settings (inventory `ftte_train`) and device accelerators (`train.device`):
inventory parsing, each bundle's effective TrainConfig and threads, the plan checked on every
device at its own batch size, `auto` -> cpu here, `cuda` without CUDA refused clearly. The real
agent applying them is in test_device_classes_agent.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.trainkit import write_class_inventory, write_recipe

from ftte_cli.config.inventory import device_train, load_inventory
from ftte_cli.config.recipe import load_recipe
from ftte_cli.engine.train import DeviceUnavailable, resolve_device
from ftte_cli.errors import ConfigError
from ftte_cli.fleet.profile import DeviceProfile, MemoryCounted, memory_counted


def test_group_ftte_train_overrides_the_recipe_for_its_devices(tmp_path: Path) -> None:
    inv = load_inventory(write_class_inventory(tmp_path, "{batch_size: 8, epochs: 2, threads: 1}"))
    recipe = load_recipe(write_recipe(tmp_path))
    zero, pi = inv.devices["zero-1"], inv.devices["pi4-1"]
    assert zero.train == {"batch_size": 8, "epochs": 2, "threads": 1}
    assert (device_train(recipe.train, zero).batch_size, device_train(recipe.train, zero).epochs) \
        == (8, 2)
    assert device_train(recipe.train, pi) == recipe.train


@pytest.mark.parametrize("value, message", [
    ("{batch_size: 0}", "ftte_train.batch_size: expected an integer > 0"),
    ("{batch: 8}", "ftte_train.batch: unknown key"),
    ("{device: tpu}", "ftte_train.device: must be cpu, cuda or auto"),
    ("8", "ftte_train: expected a mapping"),
])
def test_bad_ftte_train_names_the_group_and_key(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_inventory(write_class_inventory(tmp_path, value))
    assert "zeros" in str(info.value)


def test_each_bundle_carries_its_devices_training_settings(tmp_path: Path) -> None:
    from ftte_cli.engine.plan import dense_plan
    from ftte_cli.fleet.bundle import build_bundles, initial_model

    inv = load_inventory(write_class_inventory(tmp_path, "{batch_size: 8, threads: 1}"))
    recipe = load_recipe(write_recipe(tmp_path))
    model = initial_model(recipe, (9, 128), 6)
    bundles = build_bundles(recipe, list(inv.devices.values()), dense_plan(model, "har_cnn"),
                            root=tmp_path / ".ftte")
    zero = json.loads((bundles["zero-1"].path / "recipe.json").read_text())
    pi = json.loads((bundles["pi4-1"].path / "recipe.json").read_text())
    assert (zero["train"]["batch_size"], pi["train"]["batch_size"]) == (8, 32)
    assert json.loads((bundles["zero-1"].path / "server.json").read_text())["threads"] == 1
    assert "threads" not in json.loads((bundles["pi4-1"].path / "server.json").read_text())


def test_plan_fits_a_device_with_a_larger_batch_at_its_own_batch_size(tmp_path: Path) -> None:
    from ftte_cli.engine.data import load_federated
    from ftte_cli.engine.memory import training_memory
    from ftte_cli.fleet.bundle import initial_model
    from ftte_cli.train.planning import choose_plan

    write_recipe(tmp_path).rename(tmp_path / "r.yaml")
    # 2MB holds full training at the recipe's batch 32 in one pass, not at batch 48
    text = (tmp_path / "r.yaml").read_text().replace("memory_budget: 40MB", "memory_budget: 2MB")
    (tmp_path / "r.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "r.yaml")
    fed = load_federated(recipe.data, 2, recipe.seed)
    model = initial_model(recipe, fed.input_shape, fed.num_classes)
    plain = list(load_inventory(write_class_inventory(tmp_path, "{epochs: 1}")).devices.values())
    big = list(load_inventory(write_class_inventory(tmp_path, "{batch_size: 48}")).devices.values())
    base = choose_plan(recipe, model, plain, fed.input_shape, fed.num_classes, fed.proxy, {})
    over = training_memory(model, base.plan, 48, fed.input_shape, 0.0).total
    assert base.plan.micro_batch is None
    assert over > 2_000_000  # the recipe-batch plan would not fit the big-batch device
    chosen = choose_plan(recipe, model, big, fed.input_shape, fed.num_classes, fed.proxy, {})
    fits = training_memory(model, chosen.plan, 48, fed.input_shape, 0.0).total
    assert fits <= 2_000_000, fits
    # the lower budget buys passes of fewer samples (or fewer units): the big batch then fits
    assert (chosen.plan.micro_batch is not None
            or chosen.plan.trainable_params < base.plan.trainable_params)
    assert any("zero-1: batch size 48" in n for n in chosen.notes), chosen.notes


def test_auto_trains_on_cpu_here_and_cuda_is_refused_clearly() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        return
    with pytest.raises(DeviceUnavailable, match="train.device: cuda requested but"):
        resolve_device("cuda")


def test_profile_says_which_memory_is_counted() -> None:
    base = DeviceProfile(name="d", host="h", profiled_at="now")
    jetson = DeviceProfile(name="j", host="h", profiled_at="now", jetson_release="# R32")
    gpu = DeviceProfile(name="g", host="h", profiled_at="now", accelerator="cuda:RTX")
    assert memory_counted(base) == MemoryCounted.cpu
    assert memory_counted(jetson) == MemoryCounted.shared
    assert memory_counted(gpu) == MemoryCounted.cpu_only


def test_strict_fedavg_excludes_a_device_whose_own_batch_cannot_hold_full_training(
        tmp_path: Path) -> None:
    from ftte_cli.engine.data import load_federated
    from ftte_cli.fleet.bundle import initial_model
    from ftte_cli.train.planning import choose_plan

    text = write_recipe(tmp_path, strategy="fedavg").read_text()
    (tmp_path / "recipe.yaml").write_text(text.replace("memory_budget: 40MB",
                                                       "memory_budget: 2.5MB"))
    recipe = load_recipe(tmp_path / "recipe.yaml")
    fed = load_federated(recipe.data, 2, recipe.seed)
    model = initial_model(recipe, fed.input_shape, fed.num_classes)
    inventory = write_class_inventory(tmp_path, "{batch_size: 64}")
    devices = list(load_inventory(inventory).devices.values())
    chosen = choose_plan(recipe, model, devices, fed.input_shape, fed.num_classes, fed.proxy, {})
    assert [d.name for d in chosen.devices] == ["pi4-1"]  # batch 32 fits 2.5 MB, batch 64 not
    assert "zero-1" in chosen.excluded and "full training" in chosen.excluded["zero-1"]
