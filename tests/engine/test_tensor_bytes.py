"""serialize.tensors_to_bytes writes safetensors itself: readable by safetensors, no garbage."""

from __future__ import annotations

import gc
import struct
from typing import Dict

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ftte_cli.engine.serialize import (
    TensorPayloadError,
    read_header,
    tensors_and_metadata_from_bytes,
    tensors_from_own_bytes,
    tensors_to_bytes,
)


def _tensors() -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 5, generator=g),
        "column": torch.arange(12).reshape(3, 4)[:, 1],  # a strided view
        "rows": torch.randn(50, 20, generator=g)[10:20],  # a view at an offset into a storage
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "half": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "i32": torch.arange(4, dtype=torch.int32),
        "mask": torch.tensor([True, False, True]),
    }


def test_safetensors_reads_what_we_write_with_the_metadata() -> None:
    tensors = _tensors()
    data = tensors_to_bytes(tensors, {"job_id": "7", "version": 3})  # type: ignore[dict-item]
    back = st_load(data)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    header, meta = read_header(tensors_to_bytes({k: v for k, v in tensors.items() if k != "mask"},
                                                {"job_id": "7", "version": "3"}))
    assert meta == {"job_id": "7", "version": "3"}
    assert header["rows"]["shape"] == [10, 20]
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0  # the data starts aligned, as safetensors' own writer leaves it


def test_we_read_what_safetensors_writes_and_the_data_bytes_agree() -> None:
    tensors = {k: v.contiguous() for k, v in _tensors().items() if k != "mask"}
    ours, theirs = tensors_to_bytes(tensors), st_save(tensors)
    back, _ = tensors_and_metadata_from_bytes(theirs, len(theirs))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    header, _ = read_header(ours)
    (size,) = struct.unpack("<Q", ours[:8])
    body = ours[8 + size:]
    for name, t in tensors.items():  # each tensor's bytes where the header says, nothing else
        begin, end = header[name]["data_offsets"]
        alone = st_save({"x": t})
        assert end - begin == t.numel() * t.element_size()
        assert body[begin:end] == alone[len(alone) - (end - begin):]
    assert sum(e - b for b, e in (h["data_offsets"] for h in header.values())) == len(body)


def test_an_empty_dict_round_trips() -> None:
    data = tensors_to_bytes({})
    assert st_load(data) == {}


def test_writing_leaves_no_cyclic_garbage() -> None:
    tensors = _tensors()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            tensors_to_bytes(tensors, {"k": "v"})
        assert gc.collect() == 0  # safetensors.torch.save left 2 objects per tensor
    finally:
        gc.enable()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fn])
def test_dtypes_we_do_not_name_still_go_through_safetensors(dtype: torch.dtype) -> None:
    t = torch.zeros(3, dtype=dtype)
    assert st_load(tensors_to_bytes({"t": t}))["t"].dtype == dtype


def test_own_bytes_decode_whatever_their_size_and_still_get_checked() -> None:
    big = {"w": torch.zeros(1 << 20)}  # 4 MiB: over any device payload bound we set
    assert torch.equal(tensors_from_own_bytes(tensors_to_bytes(big))["w"], big["w"])
    with pytest.raises(TensorPayloadError, match="not allowed"):  # dtypes are still checked
        tensors_from_own_bytes(tensors_to_bytes({"m": torch.zeros(2, dtype=torch.bool)}))
