"""Plans, sparse subsets and safetensors payloads: tensors only, real files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from helpers.tinymodel import Tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from ftte_cli.engine import sparse
from ftte_cli.engine.plan import (
    FROZEN,
    FULL,
    MaskKind,
    ParamMask,
    build_plan,
    dense_plan,
    load_plan,
    save_plan,
)
from ftte_cli.engine.serialize import (
    PayloadTooLarge,
    TensorPayloadError,
    load_tensors_with_metadata,
    save_tensors,
    tensors_and_metadata_from_bytes,
    tensors_from_bytes,
    tensors_to_bytes,
)
from ftte_cli.errors import ConfigError


def _sparse_plan(model: nn.Module):
    masks = {
        "c2.weight": ParamMask(MaskKind.channels, (1, 4, 6)),
        "c2.bias": FULL,
        "head.weight": FULL,
        "head.bias": FULL,
    }
    return build_plan(model, masks, model_name="tiny", units=["c2.weight@0.5", "c2.bias"],
                      method="contribution", budget_bytes=1000, estimated_bytes=900,
                      full_training_bytes=5000, notes=["a note"])


def test_plan_counts_and_payload() -> None:
    model = Tiny()
    plan = _sparse_plan(model)
    assert plan.masks["c1.weight"] == FROZEN
    assert plan.earliest_layer == "c2"
    assert plan.trainable_params == 8 * 3 * 3 + 8 + 8 * 4 + 4
    assert plan.total_params == sum(p.numel() for p in model.parameters())
    assert plan.payload_bytes == 2 * 4 * plan.trainable_params
    dense = dense_plan(model)
    assert dense.trainable_params == dense.total_params
    assert dense.earliest_layer == "c1"


@pytest.mark.parametrize("as_file", [False, True])
def test_plan_round_trips(tmp_path: Path, as_file: bool) -> None:
    plan = _sparse_plan(Tiny())
    target = tmp_path / "p.json" if as_file else tmp_path / "bundle"
    json_path, st_path = save_plan(plan, target)
    assert json_path.exists() and st_path.exists()
    assert load_plan(target) == plan


def test_load_plan_errors_name_the_file(tmp_path: Path) -> None:
    plan = _sparse_plan(Tiny())
    json_path, st_path = save_plan(plan, tmp_path)
    raw = json.loads(json_path.read_text())
    raw["masks"]["c2.weight"]["kind"] = "bogus"
    json_path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"plan\.json.*bogus"):
        load_plan(tmp_path)
    st_path.write_bytes(b"\x00" * 3)
    with pytest.raises(ConfigError, match=r"plan\.safetensors"):
        load_plan(tmp_path)
    with pytest.raises(ConfigError, match="nowhere"):
        load_plan(tmp_path / "nowhere")


def test_bad_channel_masks_are_refused() -> None:
    with pytest.raises(ValueError):
        ParamMask(MaskKind.channels, ())
    with pytest.raises(ValueError, match="c2.weight"):
        build_plan(Tiny(), {"c2.weight": ParamMask(MaskKind.channels, (8,))})
    with pytest.raises(ValueError, match="c2.bias"):
        build_plan(Tiny(), {"c2.bias": ParamMask(MaskKind.channels, (0,))})


def test_extract_insert_round_trip() -> None:
    model = Tiny()
    plan = _sparse_plan(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    sub = sparse.extract(params, plan)
    assert set(sub) == {"c2.weight", "c2.bias", "head.weight", "head.bias"}
    assert sub["c2.weight"].shape == (8, 3, 3) and sub["c2.weight"].is_contiguous()
    assert torch.equal(sub["c2.weight"], params["c2.weight"][:, [1, 4, 6]])
    assert sparse.check_subset(plan, sub) is None
    new = {k: v + 1 for k, v in sub.items()}
    full = sparse.insert(params, plan, new)
    assert torch.equal(full["c2.weight"][:, [1, 4, 6]], new["c2.weight"])
    untouched = [c for c in range(8) if c not in (1, 4, 6)]
    assert torch.equal(full["c2.weight"][:, untouched], params["c2.weight"][:, untouched])
    assert full["c1.weight"].data_ptr() == params["c1.weight"].data_ptr()  # shared, not copied
    assert torch.equal(sparse.extract(full, plan)["head.bias"], new["head.bias"])


def test_materialize_gives_gradients_only_for_w_star() -> None:
    model = Tiny()
    plan = _sparse_plan(model)
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    trainable = {k: v.clone().requires_grad_(True) for k, v in sparse.extract(frozen, plan).items()}
    params = sparse.materialize(frozen, plan, trainable)
    assert not params["c1.weight"].requires_grad and not params["n1.weight"].requires_grad
    out = functional_call(model, params, (torch.randn(5, 3, 10),))
    ref = model(torch.zeros(1, 3, 10))  # the module itself still runs
    assert out.shape == (5, 4) and ref.shape == (1, 4)
    grads = torch.autograd.grad(out.square().sum(), list(trainable.values()))
    assert all(g.shape == t.shape for g, t in zip(grads, trainable.values()))
    assert grads[0].abs().sum() > 0


def test_materialize_saves_nothing_before_the_earliest_layer() -> None:
    model = Tiny()
    plan = _sparse_plan(model)
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    trainable = {k: v.clone().requires_grad_(True) for k, v in sparse.extract(frozen, plan).items()}
    x = torch.randn(4, 3, 10)
    with torch.no_grad():
        c1_out = model.c1(x)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        functional_call(model, sparse.materialize(frozen, plan, trainable), (x,))
    # c1's output is never saved (c1 and n1 are frozen and come first), nor is the raw input
    assert saved
    assert not any(t.shape == c1_out.shape and torch.equal(t, c1_out) for t in saved)
    assert not any(t.shape == x.shape and torch.equal(t, x) for t in saved)


def test_check_subset_reports_mismatches() -> None:
    plan = _sparse_plan(Tiny())
    good = sparse.zeros_like_subset(plan)
    assert sparse.check_subset(plan, good) is None
    bad_shape = dict(good, **{"c2.weight": torch.zeros(8, 4, 3)})
    msg = sparse.check_subset(plan, bad_shape)
    assert msg is not None and "c2.weight" in msg and not sparse.is_mask_mismatch(msg)
    missing = {k: v for k, v in good.items() if k != "head.bias"}
    assert sparse.is_mask_mismatch(sparse.check_subset(plan, missing))
    extra = dict(good, **{"c1.weight": torch.zeros(8, 3, 3)})
    assert sparse.is_mask_mismatch(sparse.check_subset(plan, extra))
    ints = dict(good, **{"head.bias": torch.zeros(4, dtype=torch.int64)})
    assert "dtype" in (sparse.check_subset(plan, ints) or "")


def test_tensor_bytes_round_trip_with_metadata() -> None:
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    data = tensors_to_bytes(tensors, {"job_id": "7", "version": "3"})
    out, meta = tensors_and_metadata_from_bytes(data, max_bytes=len(data))
    assert meta == {"job_id": "7", "version": "3"}
    assert torch.equal(out["a"], tensors["a"]) and torch.equal(out["b"], tensors["b"])


def test_tensor_bytes_bound_checked_before_parsing() -> None:
    data = tensors_to_bytes({"a": torch.zeros(100)})
    with pytest.raises(PayloadTooLarge):
        tensors_from_bytes(data, max_bytes=len(data) - 1)
    # a header claiming to be huge is refused without being read
    forged = struct.pack("<Q", 2**40) + b"{}"
    with pytest.raises(TensorPayloadError, match="header length"):
        tensors_from_bytes(forged, max_bytes=1000)
    with pytest.raises(TensorPayloadError):
        tensors_from_bytes(b"abc", max_bytes=1000)


def test_unexpected_dtypes_are_refused() -> None:
    data = tensors_to_bytes({"m": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(TensorPayloadError, match="dtype"):
        tensors_from_bytes(data, max_bytes=10_000)


def test_save_tensors_is_atomic_and_names_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"w": torch.ones(2)}, {"k": "v"})
    save_tensors(path, {"w": torch.full((2,), 2.0)})
    out, meta = load_tensors_with_metadata(path)
    assert torch.equal(out["w"], torch.full((2,), 2.0)) and meta == {}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
    with pytest.raises(TensorPayloadError, match="missing.safetensors"):
        load_tensors_with_metadata(tmp_path / "missing.safetensors")
    with pytest.raises(PayloadTooLarge, match="m.safetensors"):
        load_tensors_with_metadata(path, max_bytes=10)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_masks_round_trip(tmp_path: Path, data: st.DataObject) -> None:
    """Property: any valid mask survives save_plan/load_plan exactly, as do the figures."""
    model = Tiny()
    masks = {}
    for name, p in model.named_parameters():
        kinds = ["full", "frozen"] + (["channels"] if p.dim() > 1 else [])
        kind = data.draw(st.sampled_from(kinds), label=name)
        if kind == "channels":
            chans = data.draw(st.sets(st.integers(0, p.shape[1] - 1), min_size=1), label="ch")
            masks[name] = ParamMask(MaskKind.channels, tuple(sorted(chans)))
        else:
            masks[name] = ParamMask(MaskKind(kind))
    budget = data.draw(st.one_of(st.none(), st.integers(0, 2**40)))
    plan = build_plan(model, masks, budget_bytes=budget, units=["u"], notes=["n \u00e9"])
    target = tmp_path / f"p{data.draw(st.integers(0, 10**9))}"
    save_plan(plan, target)
    loaded = load_plan(target)
    assert loaded == plan and loaded.subset_shapes() == plan.subset_shapes()
