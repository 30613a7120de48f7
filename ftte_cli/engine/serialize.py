"""Tensors on a wire or disk: safetensors only, size-bounded before parsing, atomic on disk.

Device path: torch + safetensors + stdlib, Python 3.9. Never pickle, never torch.load.
A safetensors blob is `u64 little-endian header length | JSON header | raw bytes`; we read and check
the header ourselves (size, dtypes, offsets) before handing the bytes to safetensors.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

PathLike = Union[str, "os.PathLike[str]"]

#: dtypes a tensor payload may carry (safetensors names); anything else is rejected unread.
ALLOWED_DTYPES: frozenset = frozenset({"F32", "F64", "F16", "BF16", "I64", "I32"})
_HEADER_LIMIT = 16 * 2**20  # a header beyond 16 MiB is not a payload we produce


class TensorPayloadError(ValueError):
    """A tensor payload is malformed, has an unexpected dtype, or is over its size bound."""


class PayloadTooLarge(TensorPayloadError):
    """The payload is larger than the bound the receiver allows (checked before parsing)."""


# safetensors' names of the torch dtypes we write.
_ST_DTYPE: Dict[torch.dtype, str] = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL"}


def tensors_to_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None
) -> bytes:
    """Serialize a name -> tensor dict (plus optional str -> str metadata) as safetensors bytes.

    Written here rather than by safetensors.torch.save, which wraps every tensor's memory in a
    ctypes pointer that forms a reference cycle: two objects of cyclic garbage per tensor, which
    at a server's hundreds of payloads per second made each young-generation collection free
    thousands of them (20-45 ms pauses, measured by benchmarks/loadtest.py). The format is
    safetensors' own, read back by safetensors (tests check both ways).
    """
    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    if sys.byteorder != "little" or any(t.dtype not in _ST_DTYPE for t in flat.values()):
        return bytes(_st_save(flat, metadata=meta))  # safetensors byte-swaps; rare dtypes
    header: Dict[str, object] = {"__metadata__": meta} if meta else {}
    chunks = []
    offset = 0
    for name, t in flat.items():
        raw = _raw_bytes(t)
        header[name] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])


def _raw_bytes(t: torch.Tensor) -> bytes:
    """A contiguous CPU tensor's bytes, copied by address (one memcpy; no ctypes objects)."""
    size = t.numel() * t.element_size()
    return ctypes.string_at(t.data_ptr(), size) if size else b""


def tensors_from_own_bytes(data: bytes) -> Dict[str, torch.Tensor]:
    """Tensors from bytes ftte wrote for itself (between its own processes, or inside its
    cluster), checked as any payload but with no size bound: a device's bytes never come here."""
    return tensors_and_metadata_from_bytes(data, len(data))[0]


def read_header(data: bytes, max_bytes: Optional[int] = None) -> Tuple[dict, Dict[str, str]]:
    """The checked safetensors header: (tensor entries, metadata); raises TensorPayloadError."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"payload of {len(data)} bytes is over the bound of {max_bytes}")
    if len(data) < 8:
        raise TensorPayloadError("payload too short for a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(len(data) - 8, _HEADER_LIMIT):
        raise TensorPayloadError(f"safetensors header length {size} exceeds the payload")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise TensorPayloadError(f"safetensors header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise TensorPayloadError("safetensors header is not a JSON object")
    raw_meta = header.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise TensorPayloadError("safetensors metadata must map strings to strings")
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in ALLOWED_DTYPES:
            raise TensorPayloadError(f"tensor {name!r}: dtype {dtype!r} not allowed")
    return header, dict(raw_meta)


def tensors_from_bytes(data: bytes, max_bytes: int) -> Dict[str, torch.Tensor]:
    """Parse safetensors bytes into tensors; reject over `max_bytes` or bad dtypes first."""
    return tensors_and_metadata_from_bytes(data, max_bytes)[0]


def tensors_and_metadata_from_bytes(
    data: bytes, max_bytes: int
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Like tensors_from_bytes, also returning the str -> str metadata."""
    _, meta = read_header(data, max_bytes)
    try:
        tensors = _st_load(bytes(data))
    except Exception as err:  # safetensors raises its own SafetensorError for corrupt data
        raise TensorPayloadError(f"corrupt safetensors payload: {err}") from None
    return dict(tensors), meta


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip there.
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(
    path: PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Atomically write tensors (and metadata) as a .safetensors file."""
    atomic_write_bytes(path, tensors_to_bytes(tensors, metadata))


def load_tensors(path: PathLike, max_bytes: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Read a .safetensors file; ValueError naming the file when it is missing or malformed."""
    return load_tensors_with_metadata(path, max_bytes)[0]


def load_tensors_with_metadata(
    path: PathLike, max_bytes: Optional[int] = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a .safetensors file with its metadata; errors name the file."""
    path = Path(path)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise PayloadTooLarge(f"{path}: file is over the bound of {max_bytes} bytes")
        data = path.read_bytes()
    except OSError as err:
        raise TensorPayloadError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        limit = len(data) if max_bytes is None else max_bytes
        return tensors_and_metadata_from_bytes(data, limit)
    except TensorPayloadError as err:
        raise type(err)(f"{path}: {err}") from None
