"""Selective scan at Vim-S sizes: sequential oracle vs chunked PyTorch vs fused C kernel.

    python benchmarks/bench_scan.py [--repeats N]
    python benchmarks/bench_scan.py --baseline REV [--baseline-flags "..."] [--cpu NAME]

Prints a markdown table for benchmarks/RESULTS.md. With --baseline, instead
times this tree's C kernel (built with ``cpu_kernel.cflags(cpu=NAME)``) against
the kernel built from the C sources at git revision REV with --baseline-flags,
both in this process, interleaved, forward and backward. --cpu x86-64-v3 builds
both without AVX-512 (the portable path, as on an AVX2 CPU).
"""

from __future__ import annotations

import argparse
import ctypes
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, machine  # noqa: E402

from ssmprune.ops import cpu_kernel  # noqa: E402
from ssmprune.ops.selective_scan import selective_scan_chunked, selective_scan_ref  # noqa: E402

D_INNER, N, L = 768, 16, 197
ROOT = Path(__file__).resolve().parent.parent
# The flags of the kernel before issue 12 (x86-64), the default baseline.
FAST_MATH_FLAGS = ("-O3 -march=native -mprefer-vector-width=512 -ffast-math -fopenmp "
                   "-shared -fPIC")


def vim_s_inputs(batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        u=torch.randn(batch, D_INNER, L, generator=g),
        delta=torch.randn(batch, D_INNER, L, generator=g) * 0.5,
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(D_INNER, 1),
        B=torch.randn(batch, N, L, generator=g),
        C=torch.randn(batch, N, L, generator=g),
        D=torch.ones(D_INNER),
        z=torch.randn(batch, D_INNER, L, generator=g),
        delta_bias=torch.randn(D_INNER, generator=g) * 0.5,
        gap=None,
        delta_softplus=True,
    )


def build_at(rev: str | None, flags: list[str], out: Path) -> ctypes.CDLL:
    """The kernel library built with ``flags`` from the C sources at git revision ``rev``
    (with the headers of this tree that exist there), or of this tree for None."""
    out.mkdir()
    for src in (*cpu_kernel.SOURCES, *cpu_kernel.HEADERS):
        if rev is None:
            (out / src.name).write_bytes(src.read_bytes())
            continue
        shown = subprocess.run(["git", "-C", str(ROOT), "show",
                                f"{rev}:{src.relative_to(ROOT).as_posix()}"],
                               capture_output=True, text=True)
        if shown.returncode and src in cpu_kernel.HEADERS:
            continue
        shown.check_returncode()
        (out / src.name).write_text(shown.stdout)
    target = out / "kernel.so"
    cpu_kernel.build(target, cpu_kernel.find_compiler(), flags,
                     [out / src.name for src in cpu_kernel.SOURCES])
    return cpu_kernel.bind(ctypes.CDLL(str(target)))


def compare_builds(rev: str, base_flags: list[str], cpu: str, repeats: int) -> None:
    """This tree's kernel (``cflags(cpu=cpu)``) against the one at ``rev`` (``base_flags``,
    -march=native there replaced by -march=<cpu>): forward and backward, batch 1 and 8."""
    flags = cpu_kernel.cflags(cpu=cpu)
    base_flags = [f"-march={cpu}" if f == "-march=native" else f for f in base_flags]
    with tempfile.TemporaryDirectory() as tmp:
        base = build_at(rev, base_flags, Path(tmp) / "base")
        this = build_at(None, flags, Path(tmp) / "this")
        print(f"Machine: {machine()}")
        print(f"Sizes: d_inner {D_INNER}, N {N}, L {L}, fp32, with D, z, delta_bias, softplus")
        print(f"Baseline: sources at {rev}, flags {' '.join(base_flags)}")
        print(f"This build: this tree, flags {' '.join(flags)}\n")
        print("| batch | pass | baseline ms | this build ms | baseline / this |")
        print("|---|---|---|---|---|")
        for batch in (1, 8):
            kw = vim_s_inputs(batch)
            grad = torch.randn(batch, D_INNER, L, generator=torch.Generator().manual_seed(1))
            for name, fn in (("forward", cpu_kernel.selective_scan_fused),
                             ("backward", lambda **k: cpu_kernel.selective_scan_fused_backward(
                                 grad, **k))):
                ms = interleaved({"base": lambda fn=fn: fn(**kw, lib=base),
                                  "this": lambda fn=fn: fn(**kw, lib=this)}, repeats)
                print(f"| {batch} | {name} | {ms['base']:.2f} | {ms['this']:.2f} | "
                      f"{ms['base'] / ms['this']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", metavar="REV",
                        help="compare this C kernel build with the one at git revision REV")
    parser.add_argument("--baseline-flags", default=FAST_MATH_FLAGS,
                        help=f"compiler flags of the baseline (default: {FAST_MATH_FLAGS})")
    parser.add_argument("--cpu", default="native",
                        help="with --baseline: the -march of both builds (x86-64-v3: AVX2 only)")
    parser.add_argument("--threads", type=int, help="torch (and kernel) threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.baseline:
        with torch.inference_mode():
            compare_builds(args.baseline, shlex.split(args.baseline_flags), args.cpu,
                           args.repeats)
        return
    impls = {"sequential": selective_scan_ref, "chunked": selective_scan_chunked}
    if cpu_kernel.load() is not None:
        impls["fused C"] = cpu_kernel.selective_scan_fused
    print(f"Machine: {machine()}")
    print(f"Sizes: d_inner {D_INNER}, N {N}, L {L}, fp32, with D, z, delta_bias, softplus\n")
    print("| batch | " + " | ".join(f"{k} ms" for k in impls)
          + " | " + " | ".join(f"sequential / {k}" for k in impls if k != "sequential") + " |")
    print("|---" * (2 * len(impls)) + "|")
    with torch.inference_mode():
        for batch in (1, 8):
            kw = vim_s_inputs(batch)
            ms = interleaved({k: (lambda f=f: f(**kw)) for k, f in impls.items()}, args.repeats)
            ratios = [ms["sequential"] / ms[k] for k in impls if k != "sequential"]
            print(f"| {batch} | " + " | ".join(f"{v:.1f}" for v in ms.values()) + " | "
                  + " | ".join(f"{r:.1f}x" for r in ratios) + " |")


if __name__ == "__main__":
    main()
