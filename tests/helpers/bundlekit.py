"""Bundles of har.yaml with a random start, for the fleet's bundle tests (in process and agent)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ftte_cli.config.inventory import Device
from ftte_cli.config.recipe import InitConfig, Recipe, load_recipe
from ftte_cli.engine.models import build_model
from ftte_cli.engine.plan import FULL, Plan, build_plan
from ftte_cli.fleet.bundle import LocalBundle, build_bundles

REPO = Path(__file__).resolve().parents[2]
SHAPE, CLASSES = (9, 128), 6


def har_recipe() -> Recipe:
    # bundles, not the warm start, are under test here: a random start needs no public data
    return replace(load_recipe(REPO / "recipes" / "har.yaml"), init=InitConfig())


def head_plan(recipe: Recipe) -> Plan:
    model = build_model(recipe.model, SHAPE, CLASSES)
    names = [n for n, _ in model.named_parameters()]
    return build_plan(model, {n: FULL for n in names[-2:]}, model_name=recipe.model.name,
                      method="gradnorm")


def local_data(path: Path, n: int = 64) -> Path:
    gen = torch.Generator().manual_seed(0)
    save_file({"train_x": torch.randn(n, *SHAPE, generator=gen),
               "train_y": torch.randint(0, CLASSES, (n,), generator=gen)}, str(path))
    return path


def local_devices(tmp: Path, n: int = 2) -> list[Device]:
    data = local_data(tmp / "local.safetensors")
    return [Device(name=f"dev{i}", host="localhost", connection="local", data=str(data))
            for i in range(n)]


def build(recipe: Recipe, devices: list[Device], plan: Plan, params: dict[str, torch.Tensor],
          root: Path) -> dict[str, LocalBundle]:
    return build_bundles(recipe, devices, plan, params=params, root=root)
