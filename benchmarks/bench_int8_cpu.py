"""int8 Q/DQ agreement with fp32 per ONNX Runtime session setting: does the CPU change it?

    python benchmarks/bench_int8_cpu.py prepare DIR [--model vim_digits] [--prune vim_digits_top]
    python benchmarks/bench_int8_cpu.py agree DIR [--settings default exact fp32-qdq]
                                                  [--saturate-int16]
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/bench_int8_cpu.py agree DIR ...

``prepare`` exports a digits model (embedded weights), calibrates it as
``test_int8_matches_fp32_on_digits`` does (pruned: percentile, 256 training
scans; dense: minmax, 64) and keeps, in DIR, the fp32 and int8 exports, the
held-out split and its fp32 logits (ssmprune's session, on the CPU).

``agree`` runs the int8 file on the held-out split under each setting and
prints top-1 agreement with those fp32 logits and the int8 accuracy. It
imports only numpy, onnx and onnxruntime, so it also runs under ``qemu-x86_64
-cpu Haswell`` (an AVX2 CPU without VNNI, slowly: about 40 CPU minutes per
setting for vim_digits_top). Settings (session config entries):

    default    ONNX Runtime's own (u8 x s8 int8 MatMul; without VNNI its pair
               sums saturate at int16)
    exact      ``session.x64quantprecision=1``, ssmprune's (``EXACT_INT8``)
    fp32-qdq   ``session.disable_quant_qdq=1``: Q/DQ as nodes, fp32 MatMul

``--saturate-int16`` instead rewrites each DequantizeLinear -> MatMul of the
int8 file into integer ONNX ops that add u8 x s8 products in pairs clipped to
int16, as vpmaddubsw does: the AVX2 kernel's arithmetic on any CPU, fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SETTINGS = {"default": {}, "exact": {"session.x64quantprecision": "1"},
            "fp32-qdq": {"session.disable_quant_qdq": "1"}}
HELD_OUT, REFERENCE = "held_out.npz", "fp32_logits.npy"


def prepare(directory: Path, model: str, prune: str | None) -> None:
    from ssmprune.calibration import CalibrateOptions, DigitsData, calibrate
    from ssmprune.calibration.report import run_onnx
    from ssmprune.exporter import ExportOptions, export, read_export
    from ssmprune.exporter.manifest import MODEL_FILE
    from ssmprune.models.digits import embedded_weights

    src = export(ExportOptions(model, checkpoint=str(embedded_weights(model)), prune=prune),
                 directory / "fp32").directory
    manifest = read_export(src)[1]
    options = (CalibrateOptions(method="percentile", samples=256) if prune
               else CalibrateOptions(samples=64))
    result = calibrate(src, DigitsData(manifest.config, "train"), options, directory / "int8",
                       holdout=DigitsData(manifest.config, "held_out"))
    held = DigitsData(manifest.config, "held_out").load()
    np.savez(directory / HELD_OUT, x=held.x, labels=held.labels)
    logits = run_onnx(src / MODEL_FILE, held.x, manifest.input["name"], manifest.batch)
    np.save(directory / REFERENCE, logits[manifest.outputs[0]["name"]])
    print(f"calibration report, held out: {result.report['held_out']['outputs']}")


def saturating_int16(model):
    """The model with each DQ(x) -> MatMul <- DQ(w) done as u8 x s8 pair sums clipped to int16.

    x: int8 activations (zero point 0) -> u8 (+128), as ONNX Runtime feeds its
    x86 kernel; w: (k, n) int8 constant, per-channel or per-tensor scale.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes, consts = [], []

    def const(name, value):
        consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for node in model.graph.node:
        dq = [producer.get(i) for i in node.input] if node.op_type == "MatMul" else []
        if not (dq and all(d is not None and d.op_type == "DequantizeLinear" for d in dq)):
            nodes.append(node)
            continue
        p = f"{node.name}_sat_"
        w = inits[dq[1].input[0]].astype(np.int32)
        scale = (inits[dq[0].input[1]] * inits[dq[1].input[1]]).astype(np.float32)
        step = [const(p + "start", [0]), const(p + "end", [1 << 30]), const(p + "axis", [-1]),
                const(p + "step", [2])]
        nodes += [
            helper.make_node("Cast", [dq[0].input[0]], [p + "x"], to=onnx.TensorProto.INT32),
            helper.make_node("Add", [p + "x", const(p + "zp", np.int32(128))], [p + "u8"]),
            helper.make_node("Slice", [p + "u8", *step], [p + "even"]),
            helper.make_node("Slice", [p + "u8", const(p + "one", [1]), *step[1:]], [p + "odd"]),
            helper.make_node("Unsqueeze", [p + "even", const(p + "last", [-1])], [p + "e"]),
            helper.make_node("Unsqueeze", [p + "odd", p + "last"], [p + "o"]),
            helper.make_node("Mul", [p + "e", const(p + "w_even", w[0::2])], [p + "pe"]),
            helper.make_node("Mul", [p + "o", const(p + "w_odd", w[1::2])], [p + "po"]),
            helper.make_node("Add", [p + "pe", p + "po"], [p + "pair"]),  # (..., k/2, n)
            helper.make_node("Min", [p + "pair", const(p + "hi", np.int32(32767))], [p + "lo"]),
            helper.make_node("Max", [p + "lo", const(p + "lo_c", np.int32(-32768))], [p + "sat"]),
            helper.make_node("ReduceSum", [p + "sat", const(p + "k", [-2])], [p + "sum"],
                             keepdims=0),
            helper.make_node("Sub", [p + "sum", const(p + "zp_w", (128 * w.sum(0)).astype(np.int32))], [p + "acc"]),
            helper.make_node("Cast", [p + "acc"], [p + "f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [p + "f", const(p + "scale", scale)], [node.output[0]]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(consts)
    return model


def agree(directory: Path, settings: list[str], saturate: bool) -> None:
    import onnx
    import onnxruntime as ort

    manifest = json.loads((directory / "int8" / "manifest.json").read_text())
    name, batch = manifest["input"]["name"], manifest["batch"]
    held = np.load(directory / HELD_OUT)
    reference = np.load(directory / REFERENCE).argmax(1)
    model = onnx.load(str(directory / "int8" / "model.onnx"))
    runs = ({"int16-saturated pairs": saturating_int16(model).SerializeToString()} if saturate
            else {s: model.SerializeToString() for s in settings})
    for label, data in runs.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in SETTINGS.get(label, {}).items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        x = held["x"]
        pad = -len(x) % batch
        x = np.concatenate([x, np.repeat(x[:1], pad, 0)]) if pad else x
        logits = np.concatenate([session.run(None, {name: x[i:i + batch]})[0]
                                 for i in range(0, len(x), batch)])[:len(held["x"])]
        top1 = logits.argmax(1)
        print(f"| {label} | {np.mean(top1 == reference):.1%} ({int(np.sum(top1 == reference))}/"
              f"{len(top1)}) | {np.mean(top1 == held['labels']):.1%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("directory", type=Path)
    p.add_argument("--model", default="vim_digits")
    p.add_argument("--prune", default="vim_digits_top", help="'' for the dense model")
    a = sub.add_parser("agree")
    a.add_argument("directory", type=Path)
    a.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["default"])
    a.add_argument("--saturate-int16", action="store_true")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.directory, args.model, args.prune or None)
    else:
        agree(args.directory, args.settings, args.saturate_int16)


if __name__ == "__main__":
    main()
