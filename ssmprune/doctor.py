"""What this machine can run: one row per component, its version, whether it is usable here,
and for every missing piece what to install (``ssmprune doctor``).

Fast on purpose: it imports what it reports on (torch, Triton, TensorRT, ONNX Runtime) but
compiles nothing and builds no engine. The CPU scan kernel is reported from its cache (built
or not) without building it; onnx, onnxscript and polygraphy are read from their package
metadata without importing them.

Each row is checked on its own: a probe that raises becomes an unusable row that says what
went wrong, and the other rows are still reported.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Callable, Optional

#: Row names, in report order.
COMPONENTS = ("python", "ssmprune", "torch", "gpu", "nvidia_driver", "tensorrt",
              "tensorrt_plugins", "onnxruntime", "onnx", "onnxscript", "polygraphy", "triton",
              "cpu_scan_kernel")

# Install hints. requirements.txt pins the versions the project is tested with.
PIP_RTX = "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
CUDA_TORCH = ("a CUDA build of torch (pip install torch --index-url "
              "https://download.pytorch.org/whl/cu130)")
FULL_TRT = "full TensorRT (pip install tensorrt) on a machine with an NVIDIA GPU"


@dataclass
class Row:
    """One component of the report.

    Attributes:
        component: one of ``COMPONENTS``.
        version: its version, None when it is not installed (or, for the GPU, absent).
        usable: whether ssmprune can use it on this machine now.
        detail: one line on what it can do here.
        fix: what to install or change for what is missing ("" when nothing is).
        facts: machine-readable details, per component (README, "ssmprune doctor").
    """

    component: str
    version: Optional[str]
    usable: bool
    detail: str
    fix: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    rows: list[Row]
    seconds: float

    def row(self, component: str) -> Row:
        return next(r for r in self.rows if r.component == component)

    @property
    def missing(self) -> list[str]:
        return [r.component for r in self.rows if not r.usable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "components": {r.component: {k: v for k, v in asdict(r).items() if k != "component"}
                           for r in self.rows},
            "missing": self.missing,
            "seconds": round(self.seconds, 3),
        }


# ---- pure rules -----------------------------------------------------------------------------

def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> (10, 13, 0, 35); stops at the first part that is not a number."""
    out = []
    for part in version.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def plugin_forms(flavour: Optional[str], version: Optional[str]) -> tuple[str, ...]:
    """The plugin forms a TensorRT line offers, from its flavour name and version.

    ``v3`` (Python IPluginV3) needs full TensorRT >= 10.0; ``aot`` (``tensorrt.plugin``
    with ``aot_impl``) >= 10.9. TensorRT-RTX has none: its network has no
    ``add_plugin_v3`` and its parser aborts on Python plugins (ARCHITECTURE.md).
    """
    if flavour != "tensorrt" or not version:
        return ()
    v = version_tuple(version)
    forms = []
    if v >= (10, 0):
        forms.append("v3")
    if v >= (10, 9):
        forms.append("aot")
    return tuple(forms)


def usable_plugin_forms(offered: tuple[str, ...], *, gpu: bool, torch_cuda: bool,
                        triton: bool) -> tuple[str, ...]:
    """The offered forms that can build (and for v3 run) engines on this machine.

    Full TensorRT builds only on an NVIDIA GPU. v3 runs the Triton kernels from Python at
    build and run time (GPU, CUDA torch, Triton in the process); aot compiles them to PTX at
    build time (GPU, Triton) and its engines need nothing at run time.
    """
    needs = {"v3": gpu and torch_cuda and triton, "aot": gpu and triton}
    return tuple(f for f in offered if needs.get(f, False))


def cpu_kernel_state(disabled: bool, compiler: Optional[str], built: bool,
                     avx512: Optional[bool]) -> tuple[str, str, bool]:
    """(state, text, usable) of the CPU scan kernel. state: ``compiled``, ``compiles on
    first use`` or ``not compiled``; text e.g. ``compiled (avx512)``, ``compiled
    (portable)``, ``not compiled: <reason>``."""
    variant = {True: "avx512", False: "portable", None: "variant unknown"}[avx512]
    if disabled:
        return "not compiled", "not compiled: disabled by SSMPRUNE_DISABLE_CPU_KERNEL", False
    if compiler is None:
        return "not compiled", "not compiled: no C compiler (cc, gcc or $CC)", False
    if built:
        return "compiled", f"compiled ({variant})", True
    return ("compiles on first use", f"compiles on first use ({variant}, about a second)",
            True)


# ---- probes ---------------------------------------------------------------------------------

def _dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _Probe:
    """Facts several rows share, each found once."""

    def __init__(self) -> None:
        self.torch: Any = None
        self.torch_error = ""
        try:
            import torch

            self.torch = torch
        except Exception as err:  # noqa: BLE001 - a broken torch is a finding, not a crash
            self.torch_error = f"{type(err).__name__}: {err}"
        self.cuda = bool(self.torch is not None and self.torch.cuda.is_available())
        self.triton = _has_module("triton")
        self.driver: Optional[tuple[int, int]] = None
        self.driver_error = ""
        try:
            from ssmprune.plugins import ptx

            self.ptx = ptx
            self.driver = ptx.driver_cuda_version()
        except Exception as err:  # noqa: BLE001 - ptx.py needs a working Triton
            self.ptx = None
            self.driver_error = f"{type(err).__name__}: {err}"


def _python(p: _Probe) -> Row:
    return Row("python", platform.python_version(), True,
               f"{platform.python_implementation()} on {platform.machine()}, {sys.executable}",
               facts={"executable": sys.executable})


def _ssmprune(p: _Probe) -> Row:
    import ssmprune

    where = os.path.dirname(os.path.dirname(os.path.abspath(ssmprune.__file__)))
    return Row("ssmprune", ssmprune.__version__, True, f"from {where}", facts={"path": where})


def _torch(p: _Probe) -> Row:
    if p.torch is None:
        return Row("torch", _dist_version("torch"), False,
                   f"not importable: {p.torch_error}",
                   "pip install torch (requirements.txt pins the CPU build 2.13.0)")
    cuda_build = p.torch.version.cuda
    build = f"CUDA {cuda_build} build" if cuda_build else "CPU build"
    return Row("torch", p.torch.__version__, True,
               f"{build}, CUDA {'available' if p.cuda else 'not available'}",
               facts={"cuda_build": cuda_build, "cuda_available": p.cuda})


def _gpu(p: _Probe) -> Row:
    from ssmprune.engine.trt import current_gpu_arch

    if p.cuda:
        props = p.torch.cuda.get_device_properties(0)
        arch = current_gpu_arch()
        memory = round(props.total_memory / 2**30, 1)
        return Row("gpu", arch, True, f"{props.name}, {memory} GiB, "
                   f"{p.torch.cuda.device_count()} device(s)",
                   facts={"name": props.name, "arch": arch, "memory_gib": memory})
    facts = {"name": None, "arch": None, "memory_gib": None}
    if p.torch is not None and not p.torch.version.cuda and p.driver is not None:
        return Row("gpu", None, False, "none visible: this torch is a CPU build, though an "
                   "NVIDIA driver is installed", f"install {CUDA_TORCH}", facts)
    return Row("gpu", None, False, "none: no CUDA GPU visible to torch",
               f"a machine with an NVIDIA GPU, its driver and {CUDA_TORCH}", facts)


def _nvidia_driver(p: _Probe) -> Row:
    facts: dict[str, Any] = {"cuda": None, "max_ptx": None}
    if p.ptx is None:
        return Row("nvidia_driver", None, False, f"not checked: {p.driver_error}",
                   "install Triton (pip install triton), which reads the driver's PTX limit",
                   facts)
    if p.driver is None:
        return Row("nvidia_driver", None, False, "none: libcuda not found",
                   "install the NVIDIA driver (on a machine with an NVIDIA GPU)", facts)
    cuda = f"{p.driver[0]}.{p.driver[1]}"
    max_ptx = p.ptx.as_text(p.ptx.driver_max_ptx(p.driver))
    facts.update(cuda=cuda, max_ptx=max_ptx)
    return Row("nvidia_driver", f"CUDA {cuda}", True,
               f"loads PTX ISA up to {max_ptx} (ahead-of-time kernels are capped there)",
               facts=facts)


def _tensorrt(p: _Probe) -> Row:
    from ssmprune.engine import trt
    from ssmprune.errors import SsmpruneError

    facts: dict[str, Any] = {"flavour": None, "builds_without_gpu": False, "targets": [],
                             "decorator_plugins": False}
    try:
        flavour = trt.installed()
    except SsmpruneError as err:  # a bad SSMPRUNE_TENSORRT
        return Row("tensorrt", None, False, str(err),
                   f"unset {trt.ENV_VAR} or set it to tensorrt or tensorrt_rtx", facts)
    if flavour is None:
        return Row("tensorrt", None, False, "neither full TensorRT nor TensorRT-RTX importable",
                   f"{PIP_RTX} (builds engines without a GPU); {FULL_TRT}", facts)
    facts.update(flavour=flavour.name, builds_without_gpu=flavour.builds_without_gpu,
                 targets=flavour.supported_targets(),
                 decorator_plugins=flavour.has_decorator_plugins)
    name = trt.DISPLAY_NAMES[flavour.name]
    if flavour.is_rtx:
        return Row("tensorrt", f"{name} {flavour.version}", True,
                   f"builds ahead of time without a GPU for {', '.join(facts['targets'])}; "
                   "no plugin layers: `build --no-plugins` only", facts=facts)
    if not p.cuda:
        return Row("tensorrt", f"{name} {flavour.version}", False,
                   "full TensorRT builds and runs engines only on an NVIDIA GPU; none here",
                   f"run on a machine with an NVIDIA GPU, or {PIP_RTX} and set "
                   f"{trt.ENV_VAR}=tensorrt_rtx to build ahead of time", facts)
    strong = "always strongly typed" if flavour.always_strongly_typed else "precision flags"
    return Row("tensorrt", f"{name} {flavour.version}", True,
               f"builds for this GPU ({trt.current_gpu_arch()}); {strong}", facts=facts)


def _tensorrt_plugins(p: _Probe) -> Row:
    from ssmprune.engine import trt
    from ssmprune.errors import SsmpruneError

    facts: dict[str, Any] = {"offered": [], "usable": [], "default": None}
    try:
        flavour = trt.installed()
    except SsmpruneError:
        flavour = None
    if flavour is None or flavour.is_rtx:
        what = "no TensorRT" if flavour is None else (
            "TensorRT-RTX: no plugin layers (its parser aborts on Python plugins)")
        return Row("tensorrt_plugins", "none", False, f"{what}; `build --no-plugins` lowers "
                   "the custom nodes to their standard-op bodies",
                   f"{FULL_TRT}: >= 10.9 for both forms (v3, aot), >= 10.0 for v3", facts)
    offered = plugin_forms(flavour.name, flavour.version)
    why = []
    if "aot" in offered:
        from ssmprune.plugins.tensorrt import has_aot

        if not has_aot(flavour.trt):
            offered = tuple(f for f in offered if f != "aot")
            why.append(f"{flavour.trt.__name__}.plugin has no aot_impl")
    usable = usable_plugin_forms(offered, gpu=p.cuda, torch_cuda=p.cuda, triton=p.triton)
    facts.update(offered=list(offered), usable=list(usable))
    if usable:
        from ssmprune.plugins.tensorrt import FORM_VAR, chosen_form

        try:
            facts["default"] = chosen_form(flavour.trt)
            why.append(f"default {facts['default']} ({FORM_VAR}=v3|aot chooses)")
        except ValueError as err:
            why.append(str(err))
    missing = [f for f in ("v3", "aot") if f not in usable]
    fix = ""
    if missing:
        needs = []
        if "aot" not in offered:
            needs.append("TensorRT >= 10.9 for aot")
        if not p.cuda:
            needs.append("an NVIDIA GPU with " + CUDA_TORCH)
        if not p.triton:
            needs.append("Triton (pip install triton)")
        fix = "; ".join(needs)
    detail = (f"usable here: {', '.join(usable) or 'none'} "
              "(v3: Python, torch and Triton at run time; aot: nothing at run time)")
    return Row("tensorrt_plugins", ", ".join(offered) or "none", bool(usable),
               "; ".join([detail, *why]), fix, facts)


def _onnxruntime(p: _Probe) -> Row:
    try:
        import onnxruntime as ort
    except ImportError as err:
        return Row("onnxruntime", _dist_version("onnxruntime"), False, f"not importable: {err}",
                   "pip install onnxruntime (onnxruntime-gpu on a GPU machine)",
                   {"providers": []})
    providers = list(ort.get_available_providers())
    fix = ""
    if p.cuda and "CUDAExecutionProvider" not in providers:
        fix = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (CUDA provider)"
    return Row("onnxruntime", ort.__version__, True, "providers: " + ", ".join(providers), fix,
               {"providers": providers})


def _package(name: str, needed_for: str) -> Callable[[_Probe], Row]:
    def probe(p: _Probe) -> Row:
        version = _dist_version(name)
        if version is None or not _has_module(name):
            return Row(name, version, False, f"not installed: {needed_for} needs it",
                       f"pip install {name} (requirements.txt pins the tested version)")
        return Row(name, version, True, f"for {needed_for}")
    return probe


def _triton(p: _Probe) -> Row:
    version = _dist_version("triton")
    if not p.triton:
        return Row("triton", version, False, "not installed: the scan and gather kernels "
                   "and the TensorRT plugins need it", "pip install triton",
                   {"mode": None})
    if p.cuda:
        return Row("triton", version, True, "kernels compile and run on the CUDA GPU",
                   facts={"mode": "compiled"})
    return Row("triton", version, True, "interpreter only (TRITON_INTERPRET=1): no CUDA GPU",
               f"compiled kernels need an NVIDIA GPU and {CUDA_TORCH}", {"mode": "interpreter"})


def _avx512_build(compiler: str) -> Optional[bool]:
    """Whether ``-march=native`` turns AVX-512 on here (what the kernel's #if tests), asked
    from the preprocessor (milliseconds; nothing is compiled); None if that fails."""
    try:
        macros = subprocess.run([compiler, "-march=native", "-dM", "-E", "-x", "c", os.devnull],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return "__AVX512F__" in macros


def _cpu_scan_kernel(p: _Probe) -> Row:
    if p.torch is None:
        return Row("cpu_scan_kernel", None, False, "not checked: torch is not importable",
                   "install torch", {"state": "not compiled", "variant": None, "library": None})
    from ssmprune.ops import cpu_kernel

    disabled = bool(os.environ.get("SSMPRUNE_DISABLE_CPU_KERNEL"))
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    library = cpu_kernel.library_path(compiler) if compiler else None
    built = library is not None and library.exists()
    avx512 = _avx512_build(compiler) if compiler and not disabled else None
    state, text, usable = cpu_kernel_state(disabled, compiler, built, avx512)
    fix = ""
    if disabled:
        fix = "unset SSMPRUNE_DISABLE_CPU_KERNEL (the scan falls back to the slower chunked form)"
    elif compiler is None:
        fix = "install a C compiler (apt-get install gcc), or the scan uses the chunked form"
    return Row("cpu_scan_kernel", None, usable,
               text + (f"; {library}" if built else f"; cache {cpu_kernel.cache_dir()}"), fix,
               {"state": state, "variant": {True: "avx512", False: "portable"}.get(avx512),
                "library": str(library) if built else None})


PROBES: dict[str, Callable[[_Probe], Row]] = {
    "python": _python,
    "ssmprune": _ssmprune,
    "torch": _torch,
    "gpu": _gpu,
    "nvidia_driver": _nvidia_driver,
    "tensorrt": _tensorrt,
    "tensorrt_plugins": _tensorrt_plugins,
    "onnxruntime": _onnxruntime,
    "onnx": _package("onnx", "export"),
    "onnxscript": _package("onnxscript", "export"),
    "polygraphy": _package("polygraphy", "parity"),
    "triton": _triton,
    "cpu_scan_kernel": _cpu_scan_kernel,
}


def diagnose() -> Report:
    """Check every component of ``COMPONENTS``; a probe that raises gives an unusable row."""
    start = time.perf_counter()
    probe = _Probe()
    rows = []
    for name in COMPONENTS:
        try:
            rows.append(PROBES[name](probe))
        except Exception as err:  # noqa: BLE001 - one broken probe must not hide the others
            first = (str(err).splitlines() or [""])[0]
            rows.append(Row(name, None, False, f"could not check: {type(err).__name__}: {first}",
                            "report this as a bug in `ssmprune doctor`"))
    return Report(rows, time.perf_counter() - start)
