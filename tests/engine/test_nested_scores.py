"""Channel-ratio scores made monotone before the knapsack (scoring.nested_scores, issue 10)."""

from __future__ import annotations

import pytest
import torch

from ftte_cli.config.recipe import ModelConfig
from ftte_cli.engine.costmodel import CostModel, search
from ftte_cli.engine.models import build_model
from ftte_cli.engine.scoring import NESTED_TIE, enumerate_units, nested_scores

CONV0 = "features.0.conv.weight"


def _units() -> list:
    torch.manual_seed(0)
    model = build_model(ModelConfig("har_cnn", 0.5), (9, 128), 6)
    return model, enumerate_units(model, (0.25, 0.5, 1.0))


def test_larger_ratio_never_scores_below_a_smaller_one() -> None:
    _, units = _units()
    raw = {f"{CONV0}@0.25": 0.10, f"{CONV0}@0.5": 0.30, f"{CONV0}@1": 0.20,
           "features.0.norm.affine": 0.05}
    out = nested_scores(units, raw)
    # @0.25 keeps its own, @0.5 is over it and keeps its own; @1 (0.20) is raised to 0.30 plus
    # the tie edge: 0.30 + 0.30 * 1e-6
    assert out[f"{CONV0}@0.25"] == 0.10 and out[f"{CONV0}@0.5"] == 0.30
    assert out[f"{CONV0}@1"] == pytest.approx(0.30 * (1 + NESTED_TIE), rel=1e-12)
    assert out[f"{CONV0}@1"] > out[f"{CONV0}@0.5"]
    assert out["features.0.norm.affine"] == 0.05  # another group: untouched
    assert raw[f"{CONV0}@1"] == 0.20  # the input is not changed


def test_monotone_scores_are_kept_and_unscored_units_stay_out() -> None:
    _, units = _units()
    raw = {f"{CONV0}@0.25": -0.2, f"{CONV0}@0.5": 0.1, f"{CONV0}@1": 0.4}
    out = nested_scores(units, raw)
    assert out == raw  # already increasing: nothing to raise
    assert f"{CONV0}@0.5" in out and "features.1.conv.weight@1" not in out


def test_negative_best_is_raised_towards_it_not_away() -> None:
    _, units = _units()
    out = nested_scores(units, {f"{CONV0}@0.25": -0.5, f"{CONV0}@0.5": -0.9})
    # -0.5 + 0.5 * 1e-6: a hair above -0.5, never below it
    assert out[f"{CONV0}@0.5"] == pytest.approx(-0.5 + 0.5 * NESTED_TIE, rel=1e-12)


def test_search_takes_the_whole_layer_when_its_raw_score_was_lower() -> None:
    model, units = _units()
    raw = {f"{CONV0}@0.5": 0.30, f"{CONV0}@1": 0.20}
    costs = CostModel.of(model, 8, (9, 128), 0.0)
    budget = costs.base(0) + 10 ** 6  # room for either unit
    picked_raw = [u.name for u in search(units, raw, budget, costs)]
    picked = [u.name for u in search(units, nested_scores(units, raw), budget, costs)]
    assert picked_raw == [f"{CONV0}@0.5"] and picked == [f"{CONV0}@1"]
