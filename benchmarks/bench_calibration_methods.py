"""Which activation range calibration to default to: minmax, entropy and percentile, side by side.

    python benchmarks/bench_calibration_methods.py [--methods minmax,entropy,percentile]
                                                   [--photo-model vim_t --photo-prune vim_t_paper]
                                                   [--photo-samples 48 --photo-holdout 300]

Three cases, each calibrated with every method on the same samples and judged on the
same held-out set (top-1 agreement with fp32 in ONNX Runtime, with its 95 % Wilson
interval, and accuracy where the set has labels):
- the two digits models, pruned (embedded weights): 256 training scans, the whole
  held-out split;
- a pruned ImageNet-size Vim on real photos (seeded random weights): scikit-image
  photos and random crops (seed 0), held-out crops of seed 1.
Token selection stays fp32 (calibrate's default). Prints markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine  # noqa: E402

from ssmprune.calibration import CalibrateOptions, calibrate, data_from_spec  # noqa: E402
from ssmprune.calibration.report import wilson_interval  # noqa: E402
from ssmprune.exporter import ExportOptions, export  # noqa: E402
from ssmprune.exporter.manifest import read_export  # noqa: E402


def cases(args) -> list[dict]:
    digits = [dict(name=f"{m}_top (digits)", model=m, prune=f"{m}_top", data="digits:train",
                   holdout="digits:held_out", samples=256, holdout_samples=10_000)
              for m in ("vim_digits", "plainmamba_digits")]
    photos = dict(name=f"{args.photo_prune} (photos, seeded weights)", model=args.photo_model,
                  prune=args.photo_prune, data="skimage", holdout="skimage",
                  samples=args.photo_samples, holdout_samples=args.photo_holdout)
    return [*digits, photos]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="minmax,entropy,percentile")
    parser.add_argument("--photo-model", default="vim_t")
    parser.add_argument("--photo-prune", default="vim_t_paper")
    parser.add_argument("--photo-samples", type=int, default=48)
    parser.add_argument("--photo-holdout", type=int, default=300)
    args = parser.parse_args()
    methods = args.methods.split(",")
    root = Path(tempfile.mkdtemp(prefix="bench-calibration-"))
    print(f"machine: {machine()}")
    print("| case | method | held-out n | top-1 agreement | 95% interval | acc fp32 | "
          "acc int8 | calibrate s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases(args):
        source = export(ExportOptions(case["model"], prune=case["prune"]),
                        root / case["model"]).directory
        _, manifest = read_export(source)
        for method in methods:
            data = data_from_spec(case["data"], manifest.config, manifest.input["name"],
                                  seed=0, count=case["samples"])
            held = data_from_spec(case["holdout"], manifest.config, manifest.input["name"],
                                  seed=1, count=case["holdout_samples"])
            start = time.perf_counter()
            result = calibrate(source, data, CalibrateOptions(method, "int8", case["samples"],
                                                              allow_miss=True),
                               root / f"{case['model']}-{method}", held)
            seconds = time.perf_counter() - start
            m = result.report["held_out"]["outputs"]["logits"]
            low, high = wilson_interval(round(m["top1"] * m["samples"]), m["samples"])
            acc = [f"{m[k]:.1%}" if k in m else "-"
                   for k in ("accuracy_fp32", "accuracy_quantized")]
            print(f"| {case['name']} | {method} | {m['samples']} | {m['top1']:.1%} | "
                  f"{low:.1%} - {high:.1%} | {acc[0]} | {acc[1]} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
