"""The fused CPU selective scan (csrc/*.c: forward and backward), built on first use.

The C files have no Python or torch headers, so it compiles in about a second
with the system C compiler and loads through ctypes; nothing needs building at
install time. The shared library is cached per source, flags, compiler and CPU
(it is tuned to the CPU it runs on), written to a temporary file and renamed
into place. Where it cannot be built or loaded, ``load`` logs one warning line
with the reason, once per process, and returns None: the op then falls back to
the pure-PyTorch chunked form.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("selective_scan.c", "selective_scan_bwd.c")]
HEADERS = [CSRC / "scan_math.h"]  # included by both sources
# The parts of -ffast-math the kernels need for speed and none that changes what a
# non-finite input gives: errno-free math and no trapping let the compiler
# vectorise the branches of softplus and the clamps; fp-contract fuses the
# multiply-adds (GCC's default outside strict ISO C). Left out on purpose:
# -ffinite-math-only (NaN-dropping min/max and clamps: a NaN step came out finite)
# and -fassociative-math (the kernels' results would depend on the compiler's
# vectorisation choices).
MATH_FLAGS = ["-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
MAX_STATE = 64  # the C kernel's per-channel state buffer

log = logging.getLogger(__name__)


def cflags(machine: Optional[str] = None, cpu: str = "native") -> list[str]:
    """The compiler flags of the kernel library for a CPU architecture.

    ``machine`` is a ``platform.machine()`` name (default: this machine's);
    ``cpu`` the CPU to tune for: ``native`` for a build on the machine that runs
    it, which is what ``load`` does; a cross compiler knows no ``native`` and
    needs a named CPU (``generic``, or ``cortex-a78ae`` for a Jetson Orin).

    x86-64 gets ``-march=<cpu>`` and 512-bit vectors (one 16-channel block is
    one AVX-512 register where the CPU has them); aarch64 gets ``-mcpu=<cpu>``
    (GCC's form there; NEON has no vector-width option); any other machine
    builds untuned.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        target = [f"-march={cpu}", "-mprefer-vector-width=512"]
    elif machine in ("aarch64", "arm64"):
        target = [f"-mcpu={cpu}"]
    else:
        target = []
    return ["-O3", *target, *MATH_FLAGS, "-fopenmp", "-shared", "-fPIC"]


def cache_dir() -> Path:
    root = os.environ.get("SSMPRUNE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root) / "ssmprune" if root else Path.home() / ".cache" / "ssmprune"


def find_compiler() -> Optional[str]:
    """The C compiler ``load`` uses: $CC, else cc, else gcc; None if there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def library_path(compiler: str) -> Path:
    """Where the library built by ``compiler`` for this machine is cached (it may not
    exist yet): the name changes with the sources, the flags, the compiler and the CPU."""
    key = hashlib.sha256()
    for part in (*(src.read_bytes() for src in (*SOURCES, *HEADERS)), " ".join(cflags()).encode(),
                 compiler.encode(), _cpu_signature().encode()):
        key.update(part)
    return cache_dir() / f"selective_scan_{key.hexdigest()[:16]}.so"


def build(target: Path, compiler: str, flags: Optional[Sequence[str]] = None,
          sources: Sequence[Path] = SOURCES) -> None:
    """Compile ``sources`` into the shared library ``target`` (atomically: a temporary
    file renamed into place). ``flags`` default to this machine's ``cflags()``.
    Raises ``subprocess.CalledProcessError`` (compiler messages in ``stderr``) or OSError.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *(cflags() if flags is None else flags), *map(str, sources),
                        "-o", tmp, "-lm"], check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the argument types of the library's two entry points; returns ``lib``.
    Raises AttributeError if one is missing."""
    fn = lib.ssmprune_selective_scan_f32
    fn.restype = None
    fn.argtypes = ([ctypes.c_void_p] * 10 + [ctypes.c_int64] * 4
                   + [ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_int])
    bwd = lib.ssmprune_selective_scan_bwd_f32
    bwd.restype = ctypes.c_int
    bwd.argtypes = [ctypes.c_void_p] * 18 + [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]
    return lib


def _one_line(err: BaseException) -> str:
    """The reason a build or load failed, as one short line: the compiler's first
    error line where there is one, else the exception's text."""
    text = getattr(err, "stderr", None) or str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    line = " ".join(line.split()) or type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _fall_back(reason: str) -> None:
    # A log record, not warnings.warn: the default warnings display adds the calling
    # source line, a second line; logging's fallback handler prints the message alone.
    log.warning("ssmprune: the fused CPU scan kernel is not used (%s); the selective scan "
                "runs the slower pure-PyTorch form", reason)


@functools.cache
def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, building it if needed; None if impossible.

    Cached: a failure is reported once per process, as one warning line (logger
    ``ssmprune.ops.cpu_kernel``) that says why. SSMPRUNE_DISABLE_CPU_KERNEL=1
    turns the kernel off without a warning.
    """
    if os.environ.get("SSMPRUNE_DISABLE_CPU_KERNEL"):
        return None
    compiler = find_compiler()
    if compiler is None:
        _fall_back("no C compiler: set CC or install gcc")
        return None
    try:
        path = library_path(compiler)  # reads the sources: a broken install fails here
        if not path.exists():
            build(path, compiler)
        return bind(ctypes.CDLL(str(path)))
    except (OSError, AttributeError, subprocess.CalledProcessError) as err:
        _fall_back(f"could not build or load it with {compiler}: {_one_line(err)}")
        return None


def supports(u: Tensor, A: Tensor) -> bool:
    """Whether the fused kernel can run these inputs (CPU tensors, small state)."""
    return u.device.type == "cpu" and A.shape[-1] <= MAX_STATE and load() is not None


def _kernel(u: Tensor, A: Tensor, lib: Optional[ctypes.CDLL]) -> ctypes.CDLL:
    """``lib``, or the loaded kernel, for inputs it can run; RuntimeError otherwise."""
    if u.device.type != "cpu" or A.shape[-1] > MAX_STATE:
        raise RuntimeError(f"the fused CPU scan kernel runs CPU tensors with at most "
                           f"{MAX_STATE} states, not {u.device} with {A.shape[-1]}")
    lib = lib if lib is not None else load()
    if lib is None:
        raise RuntimeError("the fused CPU scan kernel is not available here")
    return lib


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, gap=None,
                         delta_softplus=False, *, lib: Optional[ctypes.CDLL] = None) -> Tensor:
    """The scan through the C kernel; same contract as ``selective_scan_ref``.

    u, delta, z: (b d l); A: (d n); B, C: (b n l); D, delta_bias: (d);
    gap: (b l) int. Returns (b d l) in u's dtype. fp32 inputs of any strides
    are read in place; channel-last ones (transposed (b l d)) read fastest.
    ``lib``: another build of the kernel (``bind``-ed), to compare builds;
    default the one ``load`` gives.
    """
    lib = _kernel(u, A, lib)
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
                                  gap=None, delta_softplus=False, *,
                                  lib: Optional[ctypes.CDLL] = None):
    """Gradients of the scan through the C backward kernel.

    Same inputs as ``selective_scan_fused`` plus grad_out (b d l). Returns the
    gradients of (u, delta, A, B, C, D, z, delta_bias), each fp32 with its
    input's shape (None for an input that is None).
    """
    lib = _kernel(u, A, lib)
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
