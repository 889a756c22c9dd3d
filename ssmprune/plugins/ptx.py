"""Which PTX ISA version an ahead-of-time kernel is written in, and who can load it.

A CUDA driver JIT-compiles PTX only up to the ISA version of the CUDA release
it belongs to: a newer ``.version`` is CUDA_ERROR_UNSUPPORTED_PTX_VERSION at
load time, on the user's machine, long after the build. Triton writes the
newest version its bundled ptxas knows (Triton 3.9: 9.4 for sm_90a, 8.8 for
sm_8x), newer than most installed drivers. So the build caps it: at what the
build machine's driver accepts, or at what the user asks for
(``--ptx-version``), never below what the target architecture needs.

Versions are integers as Triton spells them: 84 is PTX ISA 8.4. Nothing here
imports Triton or torch: loading an engine whose kernels are compiled in needs
neither.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

#: The first PTX ISA version that knows each architecture (PTX ISA release notes).
ARCH_MIN_PTX = {75: 63, 80: 70, 86: 71, 87: 74, 89: 78, 90: 80, 100: 86, 120: 87}


def as_text(version: int) -> str:
    """84 -> ``"8.4"``."""
    return f"{version // 10}.{version % 10}"


def parse(text: str) -> int:
    """``"8.4"`` -> 84; ValueError for anything else."""
    major, _, minor = text.strip().partition(".")
    if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
        raise ValueError(f"a PTX ISA version looks like 8.4, got {text!r}")
    return 10 * int(major) + int(minor)


def driver_cuda_version() -> Optional[tuple[int, int]]:
    """The CUDA version of the installed driver, e.g. (12, 4); None without one.

    Asks libcuda directly (``cuDriverGetVersion`` needs no GPU context), so it
    answers on a machine whose torch has no CUDA.
    """
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def driver_max_ptx(cuda: tuple[int, int]) -> int:
    """The newest PTX ISA a driver of CUDA version ``cuda`` loads (the PTX ISA release
    notes: CUDA 11.x writes 7.x, 12.0-12.5 8.0-8.5, 12.6 8.5, 12.7-12.9 8.6-8.8, 13.x 9.x)."""
    major, minor = cuda
    if major >= 13:
        return 90 + 10 * (major - 13) + minor
    if major == 12:
        return 80 + minor - (minor >= 6)
    if major == 11:
        return 70 + minor
    raise ValueError(f"CUDA {major}.{minor} is older than any driver ssmprune supports")


def arch_min_ptx(arch: int) -> int:
    """The oldest PTX ISA that can describe sm_<arch> code."""
    known = [a for a in ARCH_MIN_PTX if a <= arch]
    if not known:
        raise ValueError(f"sm_{arch} is older than any GPU ssmprune compiles for")
    return ARCH_MIN_PTX[max(known)]


def choose(arch: int, requested: Optional[int] = None,
           driver: Optional[tuple[int, int]] = None) -> int:
    """The PTX ISA version to compile sm_<arch> kernels in.

    ``requested`` (``--ptx-version``) wins; else the newest the ``driver``
    accepts; else (no driver on the build machine) the oldest the architecture
    allows, which every driver that knows the GPU loads. ValueError when the
    result cannot describe sm_<arch>.
    """
    floor = arch_min_ptx(arch)
    if requested is not None:
        chosen = requested
    elif driver is not None:
        chosen = driver_max_ptx(driver)
    else:
        chosen = floor
    if chosen < floor:
        why = ("requested" if requested is not None
               else f"the newest the CUDA {driver[0]}.{driver[1]} driver accepts")
        raise ValueError(f"PTX {as_text(chosen)} ({why}) cannot describe sm_{arch} kernels, "
                         f"which need PTX >= {as_text(floor)}: update the driver or target "
                         "an older GPU")
    return chosen
