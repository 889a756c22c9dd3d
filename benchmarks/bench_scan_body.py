"""The ONNX scan body: the per-token ``Scan`` body against the chunked body it replaced.

    python benchmarks/bench_scan_body.py [--model vim_s] [--prune vim_s_paper] [--batch 1 8]
        [--repeats 5] [--threads 1] [--trt-model vim_t] [--trt-prune vim_t_paper]
        [--opt-level N] [--skip-ort] [--skip-trt] [--skip-old-trt]

Side by side, in one run, on one export whose two copies differ only in the
model-local function of ``ssmprune::SelectiveScan`` (chunked_scan_body.py is
the old one):
1. nodes in one SelectiveScan body, its step graph included;
2. ONNX Runtime (CPU) on MODEL pruned: session creation and latency per batch;
3. TensorRT-RTX build (CPU, for sm_86) of TRT_MODEL pruned at 224 px with
   ``--no-plugins``, i.e. the custom nodes lowered to either body;
4. causality: a NaN in u at token 40 of 70, and how many earlier outputs it reaches.
Timings are interleaved medians (timing.py), on seeded random weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chunked_scan_body import chunked_selective_scan_function  # noqa: E402
from timing import interleaved, machine  # noqa: E402

from ssmprune.exporter import ExportOptions, export  # noqa: E402
from ssmprune.exporter.bodies import node_attributes, selective_scan_function  # noqa: E402
from ssmprune.exporter.manifest import MODEL_FILE  # noqa: E402
from ssmprune.exporter.op_models import body_node_count, op_model, run_op_model  # noqa: E402
from ssmprune.exporter.schemas import SELECTIVE_SCAN  # noqa: E402
from ssmprune.parity.runners import onnxrt_session  # noqa: E402

BODIES = {"chunked (old)": lambda opset, attributes: chunked_selective_scan_function(opset),
          "Scan (new)": selective_scan_function}
VIM = dict(delta_softplus=1, has_z=1)  # every scan of Vim


def with_body(model: onnx.ModelProto, body) -> onnx.ModelProto:
    """``model`` with its SelectiveScan functions replaced by ``body(opset, attributes)``,
    one per overload its nodes call, under that overload (the old body reads the
    attributes itself)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    calls = {n.overload: node_attributes(n) for n in out.graph.node
             if n.op_type == SELECTIVE_SCAN}
    keep = [f for f in out.functions if f.name != SELECTIVE_SCAN]
    del out.functions[:]
    out.functions.extend(keep)
    for overload, attributes in calls.items():
        function = body(opset, attributes if overload else None)
        function.overload = overload
        out.functions.append(function)
    return out


def bench_nodes() -> dict[str, int]:
    counts = {name: body_node_count(body(20, VIM)) for name, body in BODIES.items()}
    old, new = counts.values()
    print("| body | nodes in one SelectiveScan body |\n|---|---|")
    for name, n in counts.items():
        print(f"| {name} | {n} |")
    print(f"\nold/new: {old / new:.1f}x fewer nodes\n")
    return counts


def check_causality() -> None:
    rng = np.random.default_rng(0)
    b, d, length, n, t = 1, 4, 70, 8, 40

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    clean = dict(u=f(b, d, length), delta=f(b, d, length), A=-np.exp(f(d, n)),
                 B=f(b, n, length), C=f(b, n, length), D=f(d), z=f(b, d, length),
                 delta_bias=f(d), gap=np.zeros((b, length), np.int64))
    poisoned = {k: v.copy() for k, v in clean.items()}
    poisoned["u"][0, 0, t] = np.nan
    print(f"\n| body | outputs before token {t} made NaN by a NaN in u at token {t} |\n|---|---|")
    for name, body in BODIES.items():
        model = op_model(SELECTIVE_SCAN, clean, ["y"], VIM, body)
        y = run_op_model(model, poisoned)[0]
        print(f"| {name} | {int(np.isnan(y[0, 0, :t]).sum())} of {t} |")
    print()


def bench_onnxrt(args, workdir: Path) -> None:
    print(f"ONNX Runtime, {args.model} pruned ({args.prune}), {args.threads} thread(s)\n")
    print("| batch | session old s | session new s | session old/new | latency old ms | "
          "latency new ms | old/new latency (speed ratio) |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        result = export(ExportOptions(args.model, prune=args.prune, batch=batch),
                        workdir / f"ort-{batch}")
        model = onnx.load(str(result.directory / MODEL_FILE))
        blobs = {name: with_body(model, body).SerializeToString()
                 for name, body in BODIES.items()}
        created = {name: [] for name in BODIES}
        for _ in range(3):  # interleaved: session creation is what the noise hits hardest
            for name, blob in blobs.items():
                start = time.perf_counter()
                onnxrt_session(blob, args.threads)
                created[name].append(time.perf_counter() - start)
        sessions = {name: onnxrt_session(blob, args.threads) for name, blob in blobs.items()}
        feed = {"images": np.random.default_rng(0).standard_normal(
            result.manifest.input["shape"]).astype(np.float32)}
        outs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
        old_out, new_out = outs.values()
        rel = float(np.abs(old_out - new_out).max() / np.abs(old_out).max())
        ms = interleaved({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()},
                         args.repeats)
        (old_c, new_c), (old_ms, new_ms) = ([float(np.median(created[n])) for n in BODIES],
                                            [ms[n] for n in BODIES])
        print(f"| {batch} | {old_c:.2f} | {new_c:.2f} | {old_c / new_c:.1f}x | {old_ms:.0f} | "
              f"{new_ms:.0f} | {old_ms / new_ms:.2f} (logits max rel diff {rel:.1e}) |")


def bench_tensorrt(args, workdir: Path) -> None:
    from ssmprune.engine.build import BuildOptions, build_engine

    result = export(ExportOptions(args.trt_model, prune=args.trt_prune), workdir / "trt")
    model = onnx.load(str(result.directory / MODEL_FILE))
    options = BuildOptions(plugins=False, targets=("sm_86",), flavour="tensorrt_rtx",
                           optimization_level=args.opt_level)
    level = "default" if args.opt_level is None else args.opt_level
    print(f"\nTensorRT-RTX build, {args.trt_model} pruned ({args.trt_prune}) 224 px, "
          f"--no-plugins, sm_86, opt level {level}\n")
    print("| body | build s (parse + build) |\n|---|---|")
    seconds = {}
    bodies = list(reversed(BODIES.items()))  # the quick one first
    for name, body in bodies[:1] if args.skip_old_trt else bodies:
        path = workdir / f"trt-{name.split()[0]}.onnx"
        onnx.save(with_body(model, body), str(path))
        start = time.perf_counter()
        build_engine(path, options)
        seconds[name] = time.perf_counter() - start
        print(f"| {name} | {seconds[name]:.0f} |", flush=True)
    if not args.skip_old_trt:
        print(f"\nold/new: {seconds['chunked (old)'] / seconds['Scan (new)']:.1f}x faster build")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_s")
    parser.add_argument("--prune", default="vim_s_paper")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trt-model", default="vim_t")
    parser.add_argument("--trt-prune", default="vim_t_paper")
    parser.add_argument("--opt-level", type=int, default=None)
    parser.add_argument("--skip-ort", action="store_true")
    parser.add_argument("--skip-trt", action="store_true")
    parser.add_argument("--skip-old-trt", action="store_true",
                        help="build the new body only (the old one took over 27 minutes here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}\n")
    bench_nodes()
    check_causality()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ort:
            bench_onnxrt(args, Path(tmp))
        if not args.skip_trt:
            bench_tensorrt(args, Path(tmp))


if __name__ == "__main__":
    main()
