"""ONNX Runtime int8 or fp8 (Q/DQ from ``ssmprune calibrate``) vs fp32 on the CPU, and agreement.

    python benchmarks/bench_int8.py [--model vim_s] [--prune vim_s_paper] [--batch 1 8]
                                    [--precision int8|fp8] [--samples 32] [--holdout 64]
                                    [--repeats 5] [--out DIR]

For each batch: export the (pruned) model with seeded random weights, calibrate
it on scikit-image photos plus random crops (seed 0), report top-1 agreement
and errors against fp32 on held-out crops (seed 1), then time fp32 vs the
quantized files (pruned: token selection kept fp32, and everything quantized)
in ONNX Runtime sessions side by side (interleaved medians, timing.py). Prints
markdown for benchmarks/RESULTS.md. (ONNX Runtime's CPU provider runs fp8 Q/DQ
as QuantizeLinear -> DequantizeLinear -> fp32 MatMul: its timings are not fp8's.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, machine  # noqa: E402

from ssmprune.calibration import CalibrateOptions, PhotoCropsData, calibrate  # noqa: E402
from ssmprune.exporter import ExportOptions, export  # noqa: E402
from ssmprune.exporter.manifest import MODEL_FILE  # noqa: E402
from ssmprune.parity.runners import CPU_PROVIDER, onnxrt_session  # noqa: E402


def session(path: Path, threads: int):
    """ssmprune's own session (exact int8 arithmetic on every CPU), on the CPU provider."""
    return onnxrt_session(path, threads, providers=[CPU_PROVIDER])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_s")
    parser.add_argument("--prune", default="vim_s_paper")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--holdout", type=int, default=64)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--precision", choices=["int8", "fp8"], default="int8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="Keep the exports here (default: temporary).")
    args = parser.parse_args()

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-int8-"))
    # Variants: token selection kept fp32 (the default) and everything quantized.
    precision = args.precision
    variants = ({precision: True, f"{precision} all": False} if args.prune
                else {precision: False})
    rows, quality = [], []
    for batch in args.batch:
        fp32_dir = root / f"{args.model}-b{batch}-fp32"
        result = export(ExportOptions(args.model, prune=args.prune or None, batch=batch), fp32_dir)
        config = result.manifest.config
        dirs = {"fp32": fp32_dir}
        for variant, protect in variants.items():
            dirs[variant] = root / f"{args.model}-b{batch}-{variant.replace(' ', '-')}"
            cal = calibrate(fp32_dir, PhotoCropsData(config, count=args.samples, seed=0),
                            CalibrateOptions(method=args.method, precision=precision,
                                             samples=args.samples, protect_selection=protect),
                            dirs[variant],
                            holdout=PhotoCropsData(config, count=args.holdout, seed=1,
                                                   whole=False))
            held = cal.report["held_out"]["outputs"]["logits"]
            quality.append((batch, variant, cal.report["calibration"]["outputs"]["logits"],
                            held, cal.placement))
        x = np.random.default_rng(0).standard_normal(result.manifest.input["shape"],
                                                     dtype=np.float32)
        sessions = {k: session(d / MODEL_FILE, args.threads) for k, d in dirs.items()}
        times = interleaved({k: (lambda s=s: s.run(None, {"images": x}))
                             for k, s in sessions.items()}, args.repeats)
        sizes = {k: (d / MODEL_FILE).stat().st_size / 1e6 for k, d in dirs.items()}
        rows.append((batch, times, sizes))
        print(json.dumps({"batch": batch, "ms": times, "mb": sizes}), file=sys.stderr, flush=True)

    name = f"{args.model} pruned ({args.prune})" if args.prune else f"{args.model} dense"
    print(f"\n{name}, seeded random weights, {machine()}, ONNX Runtime CPU, "
          f"{args.repeats} interleaved repeats, median ms\n")
    print("| batch | " + " | ".join(f"{k} ms" for k in ("fp32", *variants))
          + " | " + " | ".join(f"{k} / fp32" for k in variants)
          + " | " + " | ".join(f"{k} MB" for k in ("fp32", *variants)) + " |")
    print("|---" * (3 + 3 * len(variants)) + "|")
    for batch, t, s in rows:
        print(f"| {batch} | " + " | ".join(f"{t[k]:.1f}" for k in ("fp32", *variants)) + " | "
              + " | ".join(f"{t[k] / t['fp32']:.2f}x" for k in variants) + " | "
              + " | ".join(f"{s[k]:.1f}" for k in ("fp32", *variants)) + " |")
    print(f"\n{precision} ({args.method}, {args.samples} calibration samples: scikit-image "
          f"photos + random crops, seed 0) vs fp32 on {args.holdout} held-out crops (seed 1):\n")
    print("| batch | variant | calib top-1 agree | held-out top-1 agree | held-out max_rel "
          "| quantized nodes | Q / DQ nodes |")
    print("|---|---|---|---|---|---|---|")
    for batch, variant, c, h, p in quality:
        print(f"| {batch} | {variant} | {c['top1']:.1%} | {h['top1']:.1%} | {h['max_rel']:.3g} | "
              f"{p['quantized_nodes']} | {p['QuantizeLinear']} / {p['DequantizeLinear']} |")


if __name__ == "__main__":
    main()
