"""Selective scan at Vim-S sizes: sequential oracle vs chunked PyTorch vs fused C kernel.

    python benchmarks/bench_scan.py [--repeats N]

Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, machine  # noqa: E402

from ssmprune.ops import cpu_kernel  # noqa: E402
from ssmprune.ops.selective_scan import selective_scan_chunked, selective_scan_ref  # noqa: E402

D_INNER, N, L = 768, 16, 197


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
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
