"""Compile the Triton kernels for a CUDA GPU ahead of time and read their entries.

TensorRT's ahead-of-time plugins (``tensorrt.plugin.aot_impl``, TensorRT >=
10.9) take a kernel's PTX and launch its entry with exactly the input
pointers, the extra integer scalars and the output pointers, in that order.
Triton >= 3.3 appends hidden parameters to every entry (3.9: a global scratch
pointer and a profile scratch pointer), which that contract does not pass. So
the plugin has to look at the PTX entry before trusting it:
``hidden_parameters`` names what follows the declared arguments and whether
the kernel body ever reads it.

Compiling needs no GPU: Triton's CUDA backend lowers to PTX and assembles it
with the ``ptxas`` shipped in its wheel for any target architecture, so CI
checks here that every kernel variant compiles, not only that it interprets.
The PTX ISA version is chosen by the caller (``ptx.choose``): left to
Triton, it follows the bundled ptxas (Triton 3.9: 9.4 for sm_90a, 8.8 below),
newer than most drivers load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, CompiledKernel, make_backend
from triton.runtime.jit import create_function_from_signature

from ssmprune.ops.triton.runtime import Launch

# sm_90: H100 / H200, the GPUs this project is measured on.
DEFAULT_ARCH = 90
WARP_SIZE = 32
# Dynamic shared memory a kernel gets without cudaFuncSetAttribute, which a launch by
# TensorRT's AOT plugin does not make.
STATIC_SHARED_LIMIT = 48 * 1024


def compile_for_cuda(launch: Launch, arch: int = DEFAULT_ARCH,
                     ptx_version: Optional[int] = None) -> CompiledKernel:
    """Compile ``launch``'s kernel for sm_<arch>, specialised as a launch with
    the same arguments on a GPU would be (pointer alignment, integers equal to 1
    folded into constants), in PTX ISA ``ptx_version`` (84 = 8.4; None: what
    Triton's ptxas knows). The tensors may live on any device; only their
    dtypes, strides and addresses are read.
    """
    target = GPUTarget("cuda", arch, WARP_SIZE)
    backend = make_backend(target)
    jit = launch.kernel.jit
    kwargs = launch.kwargs if ptx_version is None else {**launch.kwargs,
                                                        "ptx_version": ptx_version}
    # The same binding and packing as JITFunction.run, minus the driver query
    # that would need a GPU: two internals of triton.runtime.jit, which is why
    # requirements.txt pins triton.
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound,
                                                           specialization, options)
    return triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


@dataclass(frozen=True)
class EntryParameter:
    """One parameter of a PTX kernel entry."""

    name: str
    ptx_type: str  # ".u64", ".u32", ...
    is_pointer: bool
    used: bool  # the body loads it (ld.param)


_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.S)
_PARAM = re.compile(r"\.param\s+(\.\w+)\s+(\.ptr\b[^,]*?)?\s*(\w+)\s*(?:,|$)")


def entry_parameters(ptx: str) -> list[EntryParameter]:
    """The parameters of the (first) ``.entry`` in ``ptx``, in order."""
    match = _ENTRY.search(ptx)
    if match is None:
        raise ValueError("no .entry in this PTX")
    body = ptx[match.end():]
    return [EntryParameter(name=name, ptx_type=ptx_type, is_pointer=bool(ptr),
                           used=re.search(rf"\[{name}\]", body) is not None)
            for ptx_type, ptr, name in _PARAM.findall(match.group(2))]


def declared_parameter_count(compiled: CompiledKernel) -> int:
    """How many entry parameters the kernel's own arguments account for: every
    argument (tuple members counted one by one) that was not compiled in as a
    constant."""
    def leaves(v):
        return sum(leaves(x) for x in v) if isinstance(v, tuple) else int(v != "constexpr")

    return sum(leaves(v) for v in compiled.src.signature.values())


def hidden_parameters(compiled: CompiledKernel) -> list[EntryParameter]:
    """Entry parameters Triton added after the declared ones (empty before 3.3)."""
    return entry_parameters(compiled.asm["ptx"])[declared_parameter_count(compiled):]


def without_idle_hidden_parameters(compiled: CompiledKernel) -> str:
    """The kernel's PTX with the hidden entry parameters removed, so its entry takes
    exactly TensorRT's AOT contract (inputs, integer scalars, outputs).

    A launch must pass every declared parameter (cuLaunchKernel copies one value
    per parameter), so a hidden parameter that TensorRT does not pass may only be
    dropped from the declaration: allowed when the body never reads it, refused
    (ValueError) when it does.
    """
    hidden = hidden_parameters(compiled)
    used = [p.name for p in hidden if p.used]
    if used:
        raise ValueError(f"kernel {compiled.metadata.name} reads the hidden parameters "
                         f"{', '.join(used)}: it cannot run under TensorRT's AOT contract")
    ptx = compiled.asm["ptx"]
    if not hidden:
        return ptx
    match = _ENTRY.search(ptx)
    params = match.group(2).split(",")
    kept = ",".join(params[:len(params) - len(hidden)])
    return ptx[:match.start(2)] + kept + "\n" + ptx[match.end(2):]


def scalar_arguments(compiled: CompiledKernel, launch: Launch) -> list[int]:
    """The values of the integer parameters left in the compiled entry, in entry order
    (arguments Triton folded into constants are not among them): what a caller
    that launches the PTX passes between the input and the output pointers.
    ValueError for one that is not int32 (Triton makes an argument of 2**31 or more
    int64), which TensorRT's 32-bit arguments would misplace."""
    jit = launch.kernel.jit
    values = dict(zip(jit.arg_names, launch.args)) | launch.kwargs

    def leaves(kind, value):
        if isinstance(kind, tuple):
            return [v for k, x in zip(kind, value) for v in leaves(k, x)]
        if kind == "constexpr" or kind.startswith("*"):
            return []
        if kind != "i32":  # TensorRT passes every extra argument as a 32-bit integer
            raise ValueError(f"kernel {compiled.metadata.name} takes an integer argument of "
                             f"type {kind} ({value}); TensorRT's AOT launch passes int32 only")
        return [int(value)]

    return [v for name, kind in compiled.src.signature.items()
            for v in leaves(kind, values[name])]
