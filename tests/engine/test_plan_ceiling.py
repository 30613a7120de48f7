"""benchmarks/plan_ceiling.py's `--late` plan: the last feature block whole and the head."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from torch import nn

from ftte_cli.engine.plan import FROZEN, FULL

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import plan_ceiling  # noqa: E402


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, 3)
        self.norm = nn.GroupNorm(1, cout)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*[_Block(2, 4), _Block(4, 4), _Block(4, 8)])
        self.head = nn.Linear(8, 3)


def test_late_plan_trains_the_last_block_and_head_only() -> None:
    model = _Net()
    world = SimpleNamespace(model=model, params=dict(model.named_parameters()),
                            ftte=SimpleNamespace(model="net"))
    plan = plan_ceiling.late_plan(world)  # type: ignore[arg-type]
    trainable = {n for n, m in plan.masks.items() if m == FULL}
    assert trainable == {"features.2.conv.weight", "features.2.conv.bias",
                         "features.2.norm.weight", "features.2.norm.bias",
                         "head.weight", "head.bias"}
    assert plan.masks["features.0.conv.weight"] == FROZEN
    # 8*4*3 + 8 conv, 8 + 8 norm, 8*3 + 3 head
    assert plan.trainable_params == 96 + 8 + 16 + 27
    assert plan.earliest_layer == "features.2.conv"
