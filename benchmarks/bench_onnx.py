"""ONNX Runtime on the CPU: exported dense vs pruned model, ORT vs PyTorch eager, scan bodies.

    python benchmarks/bench_onnx.py [--model vim_s] [--prune vim_s_paper] [--batch 1 8]
                                    [--repeats 5] [--threads N] [--skip-models] [--skip-scan]

Prints markdown tables for benchmarks/RESULTS.md:
1. the exports: time, file size against the fp32 weights;
2. latency per batch: ORT dense vs ORT pruned (pruned/dense speedup) and
   ORT vs PyTorch eager on the same pruned model, same thread count;
3. one selective scan at Vim-S sizes: the ONNX body the exporter writes vs
   the PyTorch op (fused C kernel), and the floor of any standard-op body: its
   b*l*d*n decay exponentials alone (the old chunked body against the new:
   bench_scan_body.py).
All timings are interleaved medians (timing.py), on seeded random weights.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, machine  # noqa: E402

from ssmprune.exporter import ExportOptions, export  # noqa: E402
from ssmprune.exporter.bodies import selective_scan_function  # noqa: E402
from ssmprune.exporter.manifest import MODEL_FILE  # noqa: E402
from ssmprune.exporter.op_models import op_model  # noqa: E402
from ssmprune.exporter.schemas import SCAN_OUTPUTS, SELECTIVE_SCAN  # noqa: E402
from ssmprune.models import create_model  # noqa: E402
from ssmprune.ops.selective_scan import selective_scan  # noqa: E402
from ssmprune.parity.runners import onnxrt_session  # noqa: E402

D_INNER, N, L = 768, 16, 197


def bench_models(args, workdir: Path) -> None:
    print(f"Model: {args.model}, dense vs {args.prune}; ONNX opset 20, plugins flavour "
          "(standard-op bodies)\n")
    print("| export | batch | export s | file MB | fp32 weights MB | file/weights |")
    print("|---|---|---|---|---|---|")
    sessions = {}
    for batch in args.batch:
        for kind, prune in (("dense", None), ("pruned", args.prune)):
            result = export(ExportOptions(args.model, prune=prune, batch=batch),
                            workdir / f"{kind}-{batch}")
            print(f"| {args.model} {kind} | {batch} | {result.seconds:.0f} | "
                  f"{result.file_bytes / 1e6:.1f} | {result.weight_bytes / 1e6:.1f} | "
                  f"{result.file_bytes / result.weight_bytes:.3f} |")
            sessions[kind, batch] = onnxrt_session(result.directory / MODEL_FILE, args.threads)
    torch.manual_seed(0)
    dense = create_model(args.model)
    pruned = create_model(args.model, prune=args.prune)
    pruned.load_state_dict(dense.state_dict())
    print(f"\nFLOPs ratio dense/pruned {dense.flops() / pruned.flops():.2f}x\n")
    print("| batch | ORT dense ms | ORT pruned ms | pruned speedup | eager dense ms | "
          "eager pruned ms | eager/ORT (pruned) |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in args.batch:
            x = torch.randn(batch, *dense.input_shape())
            feed = {"images": x.numpy()}
            ms = interleaved({
                "ort dense": lambda: sessions["dense", batch].run(None, feed),
                "ort pruned": lambda: sessions["pruned", batch].run(None, feed),
                "eager dense": lambda: dense(x),
                "eager pruned": lambda: pruned(x),
            }, args.repeats)
            print(f"| {batch} | {ms['ort dense']:.0f} | {ms['ort pruned']:.0f} | "
                  f"{ms['ort dense'] / ms['ort pruned']:.2f}x | {ms['eager dense']:.0f} | "
                  f"{ms['eager pruned']:.0f} | {ms['eager pruned'] / ms['ort pruned']:.2f}x |")


def scan_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return dict(
        u=rng.standard_normal((batch, D_INNER, L), np.float32),
        delta=(rng.standard_normal((batch, D_INNER, L)) * 0.5).astype(np.float32),
        A=-np.tile(np.arange(1, N + 1, dtype=np.float32), (D_INNER, 1)),
        B=rng.standard_normal((batch, N, L), np.float32),
        C=rng.standard_normal((batch, N, L), np.float32),
        D=np.ones(D_INNER, np.float32),
        z=rng.standard_normal((batch, D_INNER, L), np.float32),
        delta_bias=(rng.standard_normal(D_INNER) * 0.5).astype(np.float32),
        gap=np.zeros((batch, L), np.int64),
    )


def exponentials_floor_model(batch: int) -> onnx.ModelProto:
    """The b*l*d*n decay exponentials every standard-op scan body computes,
    exp(dt * A), and one reduction of them: a lower bound on any such body."""
    nodes = [helper.make_node("Unsqueeze", ["delta", "axis"], ["dt"]),
             helper.make_node("Mul", ["dt", "A"], ["dA"]),
             helper.make_node("Exp", ["dA"], ["decay"]),
             helper.make_node("ReduceSum", ["decay", "axis"], ["y"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "exponentials",
        [helper.make_tensor_value_info("delta", TensorProto.FLOAT, [batch, L, D_INNER]),
         helper.make_tensor_value_info("A", TensorProto.FLOAT, [D_INNER, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([3], np.int64), "axis")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def bench_scan(args) -> None:
    print(f"\nOne selective scan, d_inner {D_INNER}, N {N}, L {L}, fp32, softplus, z gate\n")
    print("| batch | ONNX body ms | torch op (C kernel) ms | exponentials floor ms "
          "| body / floor |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        inputs = scan_inputs(batch)
        model = op_model(SELECTIVE_SCAN, inputs, SCAN_OUTPUTS, dict(delta_softplus=1),
                         selective_scan_function)
        session = onnxrt_session(model.SerializeToString(), args.threads)
        floor = onnxrt_session(exponentials_floor_model(batch).SerializeToString(), args.threads)
        floor_feed = {"delta": np.ascontiguousarray(inputs["delta"].transpose(0, 2, 1)),
                      "A": inputs["A"]}
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        candidates = {"body": functools.partial(session.run, None, inputs),
                      "floor": functools.partial(floor.run, None, floor_feed),
                      "torch": lambda: selective_scan(**tensors, delta_softplus=True)}
        with torch.inference_mode():
            ms = interleaved(candidates, args.repeats)
        print(f"| {batch} | {ms['body']:.1f} | {ms['torch']:.1f} | {ms['floor']:.1f} | "
              f"{ms['body'] / ms['floor']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_s")
    parser.add_argument("--prune", default="vim_s_paper")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="Threads for both ONNX Runtime and PyTorch.")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-scan", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}; ONNX Runtime and PyTorch at {args.threads} thread(s)\n")
    if not args.skip_models:
        with tempfile.TemporaryDirectory() as tmp:
            bench_models(args, Path(tmp))
    if not args.skip_scan:
        bench_scan(args)


if __name__ == "__main__":
    main()
