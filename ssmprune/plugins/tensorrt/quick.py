"""The decorator form of the plugins (``tensorrt.plugin``) with ahead-of-time kernels.

``register(trt, specs)`` declares each op to TensorRT's quickly deployable
plugin registry: a shape and type description (``register``), the type
combinations the kernel takes (``autotune``) and an ahead-of-time
implementation (``aot_impl``) that compiles the op's Triton launch for the
build GPU and hands TensorRT the PTX, the grid and the integer arguments. The
engine then holds the kernels and runs without Python.

The exported graphs have static shapes, so every size is a build-time
constant: the kernel is specialised on them exactly as a launch from Python
would be (``ops.triton.aot.compile_for_cuda``), and a dynamic dimension is
refused. Needs TensorRT >= 10.9 (``tensorrt.plugin.aot_impl``) and a GPU to
build on; nothing here runs under TensorRT-RTX, which has no ``plugin``
module. The signatures are spelled out per op because TensorRT reads each
input's name and annotation from them, and validates them when they are
declared: ``aot_impl`` must name its return type (so no ``from __future__
import annotations`` in this module). The kernels are written in the PTX ISA
version of ``SETTINGS`` (``ptx.choose``), so that the driver of the machine
that runs the engine can load them.
"""

import importlib
import itertools
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import torch

from ssmprune.plugins.tensorrt.buffers import TORCH_DTYPES, type_names
from ssmprune.plugins.tensorrt.selective_scan import SPEC as SCAN
from ssmprune.plugins.tensorrt.spec import NAMESPACE, TYPE_CLASSES, OpSpec
from ssmprune.plugins.tensorrt.token_gather import SPEC as GATHER
from ssmprune.plugins import ptx
from ssmprune.ops.triton import aot

#: spec type names -> the names of ``tensorrt.plugin.AutoTuneCombination``.
QDP_TYPES = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16", "int32": "INT32", "int64": "INT64"}


@dataclass
class AotSettings:
    """How the ahead-of-time kernels are compiled. ``ptx_version``: PTX ISA (84 = 8.4);
    None: ``ptx.choose``'s default for the build GPU and its driver."""

    ptx_version: Optional[int] = None


SETTINGS = AotSettings()


def type_combinations(spec: OpSpec) -> list[str]:
    """Every accepted assignment of types to the op's tensors (inputs, then
    outputs), as TensorRT's comma-separated type strings."""
    classes = spec.io_classes
    free = sorted({c for c in classes if c != "T" and len(TYPE_CLASSES[c]) > 1})
    out = []
    for t, *rest in itertools.product(TYPE_CLASSES["T"], *(TYPE_CLASSES[c] for c in free)):
        chosen = dict(zip(free, rest), T=t)
        out.append(", ".join(QDP_TYPES[chosen.get(c, TYPE_CLASSES[c][0])] for c in classes))
    return out


def constant_shape(desc: Any) -> tuple[int, ...]:
    """A ``TensorDesc``'s shape as ints; ValueError for a dynamic dimension."""
    dims = [desc.shape_expr[i] for i in range(len(desc.shape_expr))]
    if not all(d.is_constant for d in dims):
        raise ValueError("ssmprune's AOT plugins need static shapes: export at a fixed "
                         "batch and image size")
    return tuple(int(d.constant_value()) for d in dims)


def build_arch() -> int:
    """The compute capability to compile for: the GPU present, else sm_90."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return 10 * major + minor
    return aot.DEFAULT_ARCH


def build_ptx_version(arch: int) -> int:
    """The PTX ISA the kernels for sm_<arch> are written in (``SETTINGS``, else the
    newest the build machine's driver loads)."""
    return ptx.choose(arch, SETTINGS.ptx_version, ptx.driver_cuda_version())


def aot_kernel(trt: Any, trtp: Any, spec: OpSpec, inputs: Sequence[Any],
               outputs: Sequence[Any], values: dict[str, int]):
    """(kernel name, PTX, launch parameters, integer arguments) for TensorRT."""
    names = type_names(trt)

    def placeholders(descs):
        # Compiling reads dtypes, shapes and strides only; the memory is never touched.
        return [torch.empty(constant_shape(d), dtype=TORCH_DTYPES[names[d.dtype]])
                for d in descs]

    launch = spec.make_launch(placeholders(inputs), placeholders(outputs), values)
    arch = build_arch()
    compiled = aot.compile_for_cuda(launch, arch, build_ptx_version(arch))
    if compiled.metadata.shared > aot.STATIC_SHARED_LIMIT:
        raise ValueError(f"{spec.name}: the kernel needs {compiled.metadata.shared} bytes of "
                         f"shared memory, more than the {aot.STATIC_SHARED_LIMIT} a launch gets "
                         "without opting in")
    grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
    params = trtp.KernelLaunchParams(grid_x=grid[0], grid_y=grid[1], grid_z=grid[2],
                                     block_x=compiled.metadata.num_warps * aot.WARP_SIZE,
                                     shared_mem=compiled.metadata.shared)
    scalars = aot.scalar_arguments(compiled, launch)
    extra = trtp.SymIntExprs(len(scalars))
    for i, v in enumerate(scalars):
        extra[i] = trtp.SymInt32(v)
    return compiled.metadata.name, aot.without_idle_hidden_parameters(compiled), params, extra


def register(trt: Any) -> list[str]:
    """Declare both ops to ``trt.plugin``; returns their plugin ids."""
    trtp = importlib.import_module(f"{trt.__name__}.plugin")
    TensorDesc = trtp.TensorDesc
    # What aot_impl returns: kernel name, PTX, launch parameters, integer arguments.
    Kernel = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                   trtp.SymIntExprs]
    # Attributes as int32 arrays, not Python ints: TensorRT's ONNX parser hands INT
    # attributes over as INT32 fields, and tensorrt.plugin 10.9 to 11.1 turns a field
    # declared `int` into a scalar with int(array of one), which NumPy >= 2.4 refuses.
    Field = npt.NDArray[np.int32]
    scan_id, gather_id = (f"{NAMESPACE}::{s.name}" for s in (SCAN, GATHER))
    names = type_names(trt)
    to_trt = {v: k for k, v in names.items()}

    def out_descs(spec, inputs, values):
        dims = spec.output_dims([d.shape_expr for d in inputs], values, lambda v: v)
        types = spec.output_types([names[d.dtype] for d in inputs])
        return tuple(trtp.from_shape_expr(trtp.ShapeExprs.from_tuple(tuple(ds)),
                                          dtype=to_trt[t]) for ds, t in zip(dims, types))

    def tune(spec):
        return [trtp.AutoTuneCombination(types, "LINEAR") for types in type_combinations(spec)]

    @trtp.register(scan_id)
    def scan_desc(u: TensorDesc, delta: TensorDesc, A: TensorDesc, B: TensorDesc,
                  C: TensorDesc, D: TensorDesc, z: TensorDesc, delta_bias: TensorDesc,
                  gap: TensorDesc, delta_softplus: Field, has_z: Field) -> Tuple[TensorDesc]:
        return out_descs(SCAN, (u, delta, A, B, C, D, z, delta_bias, gap), {})

    @trtp.autotune(scan_id)
    def scan_tune(u: TensorDesc, delta: TensorDesc, A: TensorDesc, B: TensorDesc,
                  C: TensorDesc, D: TensorDesc, z: TensorDesc, delta_bias: TensorDesc,
                  gap: TensorDesc, outputs: Tuple[TensorDesc]):
        return tune(SCAN)

    @trtp.aot_impl(scan_id)
    def scan_aot(u: TensorDesc, delta: TensorDesc, A: TensorDesc, B: TensorDesc,
                 C: TensorDesc, D: TensorDesc, z: TensorDesc, delta_bias: TensorDesc,
                 gap: TensorDesc, delta_softplus: Field, has_z: Field,
                 outputs: Tuple[TensorDesc], tactic: int) -> Kernel:
        values = SCAN.field_values({"delta_softplus": delta_softplus, "has_z": has_z})
        return aot_kernel(trt, trtp, SCAN, (u, delta, A, B, C, D, z, delta_bias, gap),
                          outputs, values)

    @trtp.register(gather_id)
    def gather_desc(scores: TensorDesc, positions: TensorDesc, x: TensorDesc, k: Field,
                    protect: Field, insert_at: Field) -> Tuple[TensorDesc, TensorDesc]:
        values = GATHER.field_values({"k": k, "protect": protect, "insert_at": insert_at})
        return out_descs(GATHER, (scores, positions, x), values)

    @trtp.autotune(gather_id)
    def gather_tune(scores: TensorDesc, positions: TensorDesc, x: TensorDesc,
                    outputs: Tuple[TensorDesc, TensorDesc]):
        return tune(GATHER)

    @trtp.aot_impl(gather_id)
    def gather_aot(scores: TensorDesc, positions: TensorDesc, x: TensorDesc, k: Field,
                   protect: Field, insert_at: Field, outputs: Tuple[TensorDesc, TensorDesc],
                   tactic: int) -> Kernel:
        values = GATHER.field_values({"k": k, "protect": protect, "insert_at": insert_at})
        return aot_kernel(trt, trtp, GATHER, (scores, positions, x), outputs, values)

    return [scan_id, gather_id]
