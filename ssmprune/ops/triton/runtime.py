"""Which form of a Triton kernel runs: compiled on CUDA, interpreted on CPU.

``triton.jit`` picks the form once, when the kernel's module is imported, from
``TRITON_INTERPRET``. Here both forms of every kernel exist side by side and
the choice is made at each launch, so one process can run the compiled kernels
on CUDA tensors and a test can switch the interpreter on for CPU tensors with
``monkeypatch.setenv`` without the setting leaking into other modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


# Compiler options every launch passes. Triton 3.9 fuses multiply-adds by
# default and warns that 3.10 will not: asking for it keeps the numerics the
# same across the upgrade and silences the warning.
COMPILE_OPTIONS = dict(enable_fp_fusion=True)


# The combine function of tl.sum and tl.cumsum. Kernels write
# tl.reduce(x, axis, ADD) and tl.associative_scan(x, axis, ADD) instead, and
# tl.full for tl.zeros: tl.sum, tl.cumsum, tl.zeros, tl.sigmoid, tl.max, ... are
# themselves @triton.jit functions, fixed in their compiled form when triton is
# imported without TRITON_INTERPRET, and an interpreted kernel cannot call
# them. The interpreter recognises this combine function and runs it as one
# numpy call.
ADD = tl.standard._sum_combine


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` is set (read now, not at import)."""
    return triton.knobs.runtime.interpret


@dataclass(eq=False)
class Kernel:
    """A Triton kernel written once, held in its compiled and interpreted form.

    ``fn`` is the undecorated kernel function. It may call the builtins of
    ``triton.language`` but no ``@triton.jit`` function, those of
    ``triton.language`` included (see ``ADD``): the interpreted form executes
    the body as Python and cannot call a compiled function.
    """

    fn: Callable
    jit: triton.JITFunction = field(init=False)
    interpreted: InterpretedFunction = field(init=False)

    def __post_init__(self):
        self.jit = triton.JITFunction(self.fn)
        self.interpreted = InterpretedFunction(self.fn)

    def on(self, device: torch.device):
        """The form to launch for tensors on ``device``.

        The interpreter whenever ``TRITON_INTERPRET`` is set (it also accepts CUDA
        tensors), else the compiled kernel, which needs CUDA tensors.
        """
        if interpreting():
            return self.interpreted
        if device.type != "cuda":
            raise RuntimeError(
                f"Triton kernel {self.fn.__name__}: tensors on {device} need "
                "TRITON_INTERPRET=1 (the kernels compile for CUDA only)")
        return self.jit


@dataclass(frozen=True)
class Launch:
    """Everything one launch of ``kernel`` needs, built by a kernel module's
    ``*_launch`` function: the grid, the positional arguments (tensors,
    tuples of tensors, integers) and the keyword arguments (compile-time
    constants and compiler options). ``run`` launches it; ``aot`` compiles the
    same specialisation ahead of time.
    """

    kernel: Kernel
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def run(self, device: torch.device):
        """Launch on ``device``'s tensors; returns what Triton's launch returns
        (the ``CompiledKernel`` when compiled)."""
        return self.kernel.on(device)[self.grid](*self.args, **self.kwargs)
