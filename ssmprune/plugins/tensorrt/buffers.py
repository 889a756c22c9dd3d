"""TensorRT's device pointers as torch tensors, without copies.

A plugin's ``enqueue`` receives raw CUDA addresses and descriptors. torch
takes foreign device memory through ``__cuda_array_interface__`` (version 3),
which has no bfloat16 typestr: bf16 buffers travel as int16 and are viewed
back, the same bytes.
"""

from __future__ import annotations

from typing import Any

import torch

_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.int16: "<i2",
            torch.int32: "<i4", torch.int64: "<i8", torch.int8: "|i1", torch.uint8: "|u1",
            torch.bool: "|b1"}
_CARRIER = {torch.bfloat16: torch.int16}


def cuda_array_interface(address: int, shape: tuple[int, ...], dtype: torch.dtype
                         ) -> dict[str, Any]:
    """The ``__cuda_array_interface__`` of a contiguous buffer at ``address``."""
    carrier = _CARRIER.get(dtype, dtype)
    if carrier not in _TYPESTR:
        raise TypeError(f"no CUDA array interface type for {dtype}")
    return {"shape": tuple(int(s) for s in shape), "typestr": _TYPESTR[carrier],
            "data": (int(address), False), "version": 3, "strides": None}


class _DeviceBuffer:
    def __init__(self, interface: dict[str, Any]):
        self.__cuda_array_interface__ = interface


def device_tensor(address: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CUDA tensor of ``shape`` and ``dtype`` over the memory at ``address``."""
    buffer = _DeviceBuffer(cuda_array_interface(address, shape, dtype))
    t = torch.as_tensor(buffer, device="cuda")
    return t.view(dtype) if t.dtype != dtype else t


def type_names(trt: Any) -> dict[Any, str]:
    """TensorRT ``DataType`` -> the neutral type names of ``spec``."""
    return {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16",
            trt.int32: "int32", trt.int64: "int64"}


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                "int32": torch.int32, "int64": torch.int64}
