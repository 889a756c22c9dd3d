"""The calibration report: the quantized model against fp32, both in ONNX Runtime.

Per set (the calibration set, the held-out set) and output:

    max_abs   max |quantized - fp32|
    mean_abs  mean |quantized - fp32|
    max_rel   max over samples of max |quantized - fp32| / max |fp32| (as in parity)
    top1      fraction of samples whose arg-max class agrees with fp32
    top1_interval95  its 95 % Wilson score interval: what the sample size allows
              one to say about the agreement on data like it
    accuracy  fp32 and quantized top-1 accuracy, where the set has labels

The verdict uses the parity table's tolerance for the precision (int8, fp8:
top-1 agreement, ``ssmprune.parity.tolerances``), judged on the held-out
set when there is one, else on the calibration set. The observed agreement
decides it; the interval says how much that decision is worth (on 64 samples
that all agree, the interval still reaches down to 94 %; on 360, to 99 %).

Both files run on ONNX Runtime's CPU provider in ``parity.runners.onnxrt_session``
sessions, whose int8 arithmetic is exact on every x86 CPU (``EXACT_INT8``):
without it a CPU without VNNI saturates int8 products and the report would
change with the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ssmprune.calibration.data import DYNAMIC_FEED_BATCH, Samples, batches
from ssmprune.exporter.manifest import Manifest


def run_onnx(path: Path, x: np.ndarray, input_name: str, batch: int,
             threads: int = 0) -> dict[str, np.ndarray]:
    """All outputs of the ONNX file at ``path`` on x (n, ...), in static batches of ``batch``
    (CPU provider, ``onnxrt_session``'s options)."""
    from ssmprune.parity.runners import CPU_PROVIDER, onnxrt_session

    session = onnxrt_session(path, threads, providers=[CPU_PROVIDER])
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(names, {input_name: b}) for b in batches(x, batch)]
    return {name: np.concatenate([c[i] for c in chunks])[:len(x)] for i, name in enumerate(names)}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % for z = 1.96): unlike the normal
    approximation it stays inside [0, 1] and is honest at 0 or n successes."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def compare_outputs(actual: np.ndarray, expected: np.ndarray,
                    labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Metrics of one output, arrays (n, ...) with the class axis last."""
    a = actual.reshape(actual.shape[0], -1).astype(np.float64)
    e = expected.reshape(expected.shape[0], -1).astype(np.float64)
    diff = np.abs(a - e)
    scale = np.maximum(np.abs(e).max(axis=1), 1e-12)
    metrics = {"samples": int(a.shape[0]), "max_abs": float(diff.max()),
               "mean_abs": float(diff.mean()), "max_rel": float((diff.max(axis=1) / scale).max()),
               "top1": float((a.argmax(axis=1) == e.argmax(axis=1)).mean()),
               "finite": bool(np.isfinite(a).all())}
    agree = int((a.argmax(axis=1) == e.argmax(axis=1)).sum())
    metrics["top1_interval95"] = list(wilson_interval(agree, int(a.shape[0])))
    if labels is not None:
        metrics["accuracy_fp32"] = float((e.argmax(axis=1) == labels).mean())
        metrics["accuracy_quantized"] = float((a.argmax(axis=1) == labels).mean())
    return metrics


def evaluate_set(fp32: Path, quantized: Path, manifest: Manifest,
                 samples: Samples) -> dict[str, Any]:
    name, batch = manifest.input["name"], min(manifest.batch_range()[1], DYNAMIC_FEED_BATCH)
    reference = run_onnx(fp32, samples.x, name, batch)
    actual = run_onnx(quantized, samples.x, name, batch)
    labels = samples.labels
    if labels is not None and int(labels.max()) >= manifest.config.get("num_classes", 0):
        labels = None  # labels of another label space: agreement only
    return {"source": samples.source, "skipped": len(samples.skipped),
            "outputs": {o: compare_outputs(actual[o], reference[o], labels) for o in reference}}


def build_report(fp32: Path, quantized: Path, manifest: Manifest, calibration: Samples,
                 held_out: Optional[Samples] = None, precision: str = "int8") -> dict[str, Any]:
    """The report as a JSON-able dict (see the module docstring); ``precision`` (int8,
    fp8) is the quantized file's, whose parity tolerance gives the verdict."""
    from ssmprune.parity.tolerances import tolerance_for

    report: dict[str, Any] = {"model": manifest.model, "prune": manifest.prune,
                              "batch": manifest.batch, "precision": precision,
                              "calibration": evaluate_set(fp32, quantized, manifest, calibration)}
    if held_out is not None:
        report["held_out"] = evaluate_set(fp32, quantized, manifest, held_out)
    judged = "held_out" if held_out is not None else "calibration"
    verdicts = {}
    for output, m in report[judged]["outputs"].items():
        tol = tolerance_for(precision, output)
        ok = m["finite"] and (tol.top1 is None or m["top1"] >= tol.top1) and \
            (tol.max_rel is None or m["max_rel"] <= tol.max_rel)
        verdicts[output] = {"tolerance": tol.describe(), "passed": bool(ok),
                            "top1": m["top1"], "samples": m["samples"],
                            "top1_interval95": m["top1_interval95"]}
    report["judged_on"] = judged
    report["verdict"] = verdicts
    report["passed"] = all(v["passed"] for v in verdicts.values())
    return report


def table(report: dict[str, Any]) -> list[str]:
    """A short text table of the report."""
    quantized = f"acc {report.get('precision', 'int8')}"
    lines = [f"{'set':<12} {'output':<8} {'n':>5} {'max_abs':>9} {'max_rel':>9} {'top1':>7} "
             f"{'acc fp32':>9} {quantized:>9}"]
    for key in ("calibration", "held_out"):
        if key not in report:
            continue
        for output, m in report[key]["outputs"].items():
            acc32 = f"{m['accuracy_fp32']:.1%}" if "accuracy_fp32" in m else "-"
            acc8 = f"{m['accuracy_quantized']:.1%}" if "accuracy_quantized" in m else "-"
            lines.append(f"{key:<12} {output:<8} {m['samples']:>5} {m['max_abs']:>9.3g} "
                         f"{m['max_rel']:>9.3g} {m['top1']:>7.1%} {acc32:>9} {acc8:>9}")
    for output, v in report["verdict"].items():
        low, high = v["top1_interval95"]
        lines.append(f"verdict ({report['judged_on']}) {output}: {v['tolerance']} "
                     f"[{'ok' if v['passed'] else 'EXCEEDED'}]: {v['top1']:.1%} on "
                     f"{v['samples']} samples, 95% interval {low:.1%} to {high:.1%}")
    return lines


def miss_message(report: dict[str, Any]) -> str:
    """One line: which verdict missed, by how much and on how many samples."""
    missed = [f"{output} {v['top1']:.1%} on {v['samples']} samples (needs {v['tolerance']})"
              for output, v in report["verdict"].items() if not v["passed"]]
    return (f"the {report.get('precision', 'int8')} model misses its tolerance on the "
            f"{report['judged_on']} set: {'; '.join(missed)}")
