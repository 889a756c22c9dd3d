"""The fused CPU selective scan (csrc/*.c: forward and backward), built on first use.

The C files have no Python or torch headers, so it compiles in about a second
with the system C compiler and loads through ctypes; nothing needs building at
install time. The shared library is cached per source, flags and CPU (it is
built with -march=native), written to a temporary file and renamed into place.
Where no compiler works the loader returns None and the op falls back to the
pure-PyTorch chunked form.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

SOURCES = [Path(__file__).with_name("csrc") / name
           for name in ("selective_scan.c", "selective_scan_bwd.c")]
# 512-bit vectors: one 16-channel block is one AVX-512 register where the CPU has them.
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp",
          "-shared", "-fPIC"]
MAX_STATE = 64  # the C kernel's per-channel state buffer


def cache_dir() -> Path:
    root = os.environ.get("SSMPRUNE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root) / "ssmprune" if root else Path.home() / ".cache" / "ssmprune"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (*(src.read_bytes() for src in SOURCES), " ".join(CFLAGS).encode(),
                 compiler.encode(), _cpu_signature().encode()):
        key.update(part)
    return cache_dir() / f"selective_scan_{key.hexdigest()[:16]}.so"


def _build(target: Path, compiler: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *CFLAGS, *map(str, SOURCES), "-o", tmp, "-lm"],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, building it if needed; None if impossible."""
    if os.environ.get("SSMPRUNE_DISABLE_CPU_KERNEL"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("ssmprune: no C compiler found; the selective scan uses the slower "
                      "pure-PyTorch form", RuntimeWarning, stacklevel=2)
        return None
    path = _library_path(compiler)
    try:
        if not path.exists():
            _build(path, compiler)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"ssmprune: could not build the CPU scan kernel ({detail.strip()[:200]}); "
                      "using the slower pure-PyTorch form", RuntimeWarning, stacklevel=2)
        return None
    fn = lib.ssmprune_selective_scan_f32
    fn.restype = None
    fn.argtypes = ([ctypes.c_void_p] * 10 + [ctypes.c_int64] * 4
                   + [ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_int])
    bwd = lib.ssmprune_selective_scan_bwd_f32
    bwd.restype = ctypes.c_int
    bwd.argtypes = [ctypes.c_void_p] * 18 + [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]
    return lib


def supports(u: Tensor, A: Tensor) -> bool:
    """Whether the fused kernel can run these inputs (CPU tensors, small state)."""
    return u.device.type == "cpu" and A.shape[-1] <= MAX_STATE and load() is not None


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, gap=None,
                         delta_softplus=False) -> Tensor:
    """The scan through the C kernel; same contract as ``selective_scan_ref``.

    u, delta, z: (b d l); A: (d n); B, C: (b n l); D, delta_bias: (d);
    gap: (b l) int. Returns (b d l) in u's dtype. fp32 inputs of any strides
    are read in place; channel-last ones (transposed (b l d)) read fastest.
    """
    if not supports(u, A):
        raise RuntimeError("the fused CPU scan kernel is not available here")
    lib = load()
    b, d, l = u.shape
    n = A.shape[1]

    def f32(t):
        return None if t is None else t.float()

    def flat(t):
        return None if t is None else t.float().contiguous()

    u32, delta32, z32 = f32(u), f32(delta), f32(z)
    A_t = A.float().t().contiguous()
    B32, C32 = flat(B), flat(C)
    D32, bias32, gap32 = flat(D), flat(delta_bias), flat(gap)
    y = torch.empty(b, d, l, dtype=torch.float32)
    strides = [s for t in (u32, delta32, z32 if z32 is not None else u32, y) for s in t.stride()]
    lib.ssmprune_selective_scan_f32(
        _ptr(u32), _ptr(delta32), _ptr(A_t), _ptr(B32), _ptr(C32), _ptr(D32),
        _ptr(z32), _ptr(bias32), _ptr(gap32), _ptr(y), b, d, l, n,
        (ctypes.c_int64 * 12)(*strides), int(delta_softplus), torch.get_num_threads(),
    )
    return y.to(u.dtype)


BLOCK = 16  # channels per task in the C kernels


def selective_scan_fused_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                  gap=None, delta_softplus=False):
    """Gradients of the scan through the C backward kernel.

    Same inputs as ``selective_scan_fused`` plus grad_out (b d l). Returns the
    gradients of (u, delta, A, B, C, D, z, delta_bias), each fp32 with its
    input's shape (None for an input that is None).
    """
    if not supports(u, A):
        raise RuntimeError("the fused CPU scan kernel is not available here")
    lib = load()
    b, d, l = u.shape
    n = A.shape[1]
    nblocks = -(-d // BLOCK)

    def flat(t):
        return None if t is None else t.float().contiguous()

    u32, delta32, z32, gy = flat(u), flat(delta), flat(z), flat(grad_out)
    A_t = A.float().t().contiguous()
    B32, C32, D32, bias32, gap32 = flat(B), flat(C), flat(D), flat(delta_bias), flat(gap)
    gu, gdelta = torch.empty_like(u32), torch.empty_like(u32)
    gz = torch.empty_like(u32) if z is not None else None
    gA_part = torch.empty(b, d, n)
    gD_part, gbias_part = torch.empty(b, d), torch.empty(b, d)
    gB_part, gC_part = torch.empty(nblocks, b, n, l), torch.empty(nblocks, b, n, l)
    status = lib.ssmprune_selective_scan_bwd_f32(
        _ptr(u32), _ptr(delta32), _ptr(A_t), _ptr(B32), _ptr(C32), _ptr(D32), _ptr(z32),
        _ptr(bias32), _ptr(gap32), _ptr(gy), _ptr(gu), _ptr(gdelta), _ptr(gz),
        _ptr(gA_part), _ptr(gD_part), _ptr(gbias_part), _ptr(gB_part), _ptr(gC_part),
        b, d, l, n, int(delta_softplus), torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("selective scan backward: out of memory for the state buffer")
    return (gu, gdelta, gA_part.sum(0), gB_part.sum(0), gC_part.sum(0),
            gD_part.sum(0) if D is not None else None, gz,
            gbias_part.sum(0) if delta_bias is not None else None)
