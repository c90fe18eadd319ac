"""Tensors and byte strings as raw frames: the dtype table and the zero-copy views both ways.

A tensor travels as its raw little-endian bytes (bfloat16 included: its two bytes per value are
sent as they are, numpy never sees the dtype) with ``{"dtype", "shape"}`` in the header. Sending
views the tensor's memory, so the caller must not modify a tensor until its send returned (ZMQ
holds the buffer until the bytes are on the wire). Receiving views the frame's memory, so a
received tensor lives as long as its frame; both views keep their owner alive.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch

from shared.wire.errors import WireError

if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
    raise ImportError("the wire format sends native bytes and assumes a little-endian host")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
BYTES = "bytes"  # the pseudo-dtype of a raw byte-string frame
MAX_NDIM = 8
MAX_DIM = 1 << 40


def itemsize(dtype: str) -> int:
    return 1 if dtype == BYTES else DTYPES[dtype].itemsize


def tensor_frame(t: torch.Tensor) -> tuple[dict[str, Any], memoryview | bytes]:
    """(descriptor, buffer) of a tensor; CPU and contiguous tensors are not copied."""
    if t.dtype not in DTYPE_NAMES:
        raise WireError(f"tensor dtype {t.dtype} cannot be sent (supported: {', '.join(DTYPES)})")
    desc = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.numel() == 0:
        return desc, b""
    flat = t.contiguous().reshape(-1)
    # uint8 view: numpy has no bfloat16, and a byte view is dtype-agnostic anyway.
    return desc, memoryview(flat.view(torch.uint8).numpy().data)


def bytes_frame(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], bytes | memoryview]:
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    return {"dtype": BYTES, "shape": [len(view)]}, view


def check_descriptor(desc: Any, frame_len: int, where: str) -> tuple[str, list[int]]:
    """Validate one frame descriptor against the frame's actual length."""
    if not isinstance(desc, dict) or set(desc) != {"dtype", "shape"}:
        raise WireError(f"{where}: a frame descriptor must be a map with exactly 'dtype' and 'shape'")
    dtype, shape = desc["dtype"], desc["shape"]
    if not isinstance(dtype, str) or (dtype != BYTES and dtype not in DTYPES):
        raise WireError(f"{where}: unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)}, bytes)")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireError(f"{where}: shape must be a list of at most {MAX_NDIM} dimensions, got {shape!r}")
    if not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        raise WireError(f"{where}: shape {shape!r} must hold non-negative integers")
    if dtype == BYTES and len(shape) != 1:
        raise WireError(f"{where}: a bytes frame has a 1-d shape, got {shape!r}")
    numel = 1
    for d in shape:
        numel *= d
    expected = numel * itemsize(dtype)
    if expected != frame_len:
        raise WireError(
            f"{where}: {dtype} {shape} needs {expected} bytes but the frame holds {frame_len} "
            "(truncated or mismatched frame)"
        )
    return dtype, shape


def frame_buffer(frame: Any) -> memoryview:
    """The bytes of a received frame (bytes, memoryview or ``zmq.Frame``) as a flat memoryview."""
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    return memoryview(buf if buf is not None else frame).cast("B")


def frame_tensor(buf: memoryview, dtype: str, shape: list[int]) -> torch.Tensor:
    """A tensor viewing a received frame's bytes (validated by ``check_descriptor``)."""
    target = DTYPES[dtype]
    if len(buf) == 0:
        return torch.empty(shape, dtype=target)
    if buf.readonly:  # frames given as bytes (tests); zmq frames are writable
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.frombuffer(buf, dtype=torch.uint8)
    else:
        raw = torch.frombuffer(buf, dtype=torch.uint8)
    return raw.view(target).reshape(shape)
