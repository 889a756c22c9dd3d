"""Full PyTorch forward on CPU: dense vs pruned, side by side in one run.

    python benchmarks/bench_forward.py [--model vim_s] [--prune vim_s_paper]
                                       [--batch 1 8] [--repeats 5]

Prints a markdown table for benchmarks/RESULTS.md: latency per batch, the
pruned/dense speedup, and the FLOPs ratio it should approach.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, machine  # noqa: E402

from ssmprune.models import create_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_s")
    parser.add_argument("--prune", default="vim_s_paper")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = create_model(args.model)
    pruned = create_model(args.model, prune=args.prune)
    pruned.load_state_dict(dense.state_dict())
    flops_ratio = dense.flops() / pruned.flops()
    print(f"Machine: {machine()}")
    print(f"Model: {args.model}, dense {dense.flops() / 1e9:.3f} GFLOPs vs {args.prune} "
          f"{pruned.flops() / 1e9:.3f} GFLOPs (ratio {flops_ratio:.2f}x)\n")
    print("| batch | dense ms | pruned ms | speedup | FLOPs ratio |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in args.batch:
            x = torch.randn(batch, *dense.input_shape())
            ms = interleaved({"dense": lambda: dense(x), "pruned": lambda: pruned(x)},
                             args.repeats)
            print(f"| {batch} | {ms['dense']:.0f} | {ms['pruned']:.0f} | "
                  f"{ms['dense'] / ms['pruned']:.2f}x | {flops_ratio:.2f}x |")


if __name__ == "__main__":
    main()
