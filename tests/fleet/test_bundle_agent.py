"""A bundle's agent end to end: a fresh interpreter loads the bundle and trains from its
ftte-agent.pyz alone, importing nothing of ftte_cli from outside it. Bundle bytes, manifests and
tokens are checked in process in test_bundle.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.bundlekit import build, head_plan, local_devices

from ftte_cli.config.recipe import Recipe

pytestmark = pytest.mark.slow


# Runs in a fresh interpreter: imports of laptop-only packages are made to fail (numpy stays:
# torch itself may use it), then the
# agent's own loader reads the bundle and one real training job runs, all from inside the pyz.
_ISOLATED = r"""
import sys
BLOCKED = {"rich", "typer", "yaml", "paramiko", "aiohttp", "matplotlib", "fabric"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError("blocked on the device: " + name)
        return None
sys.meta_path.insert(0, Block())
pyz, bundle = sys.argv[1], sys.argv[2]
sys.path.insert(0, pyz)
from pathlib import Path
from ftte_cli.client.agent import load_bundle
from ftte_cli.engine import sparse
from ftte_cli.engine.data import Dataset
from ftte_cli.engine.train import train_job
b = load_bundle(Path(bundle))
subset = sparse.extract(b.frozen, b.plan)
result = train_job(b.model, b.frozen, b.plan, subset, Dataset(b.train_x, b.train_y, None),
                   b.train_cfg, seed=b.seed)
outside = [m for m, mod in sys.modules.items() if m.startswith("ftte_cli")
           and not (getattr(mod, "__file__", None) or pyz).startswith(pyz)]
assert not outside, outside
print(sorted(result.delta) == sorted(subset), result.num_samples)
"""


def test_agent_loads_its_bundle_and_trains_from_the_pyz_alone(
        recipe: Recipe, params: dict[str, torch.Tensor], tmp_path: Path) -> None:
    bundle = build(recipe, local_devices(tmp_path, 1), head_plan(recipe), params, tmp_path / "x")
    path = bundle["dev0"].path
    out = subprocess.run([sys.executable, "-c", _ISOLATED, str(path / "ftte-agent.pyz"),
                          str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "64"]
    helped = subprocess.run([sys.executable, str(path / "ftte-agent.pyz"), "--help"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert helped.returncode == 0 and "--bundle" in helped.stdout
