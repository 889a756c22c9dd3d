"""How far does the installed TensorRT flavour get with a custom ONNX node, without a GPU?

    python benchmarks/probe_trt_plugins.py [--op-type SelectiveScan] [--json OUT]

Each case runs in its own subprocess, because with TensorRT-RTX 1.7.1 a
registered Python IPluginV3 creator makes the ONNX parser abort the whole
process. The graph is ``Relu -> ssmprune::<op-type> -> Relu`` on a (2, 8)
float tensor; the custom node's semantics are the identity, which is enough:
what is probed is whether the parser binds the node, and whether the builder
makes an engine from it. Cases:

- ``no-plugin``: nothing registered, no function body;
- ``local-function``: a model-local ONNX function of the same name gives the
  node a standard-op body, nothing registered (the ``--no-plugins`` path);
- ``python-creator``: a Python IPluginV3 creator registered under namespace
  ``ssmprune``, no function body;
- ``python-creator+function``: both;
- ``python-creator+function+override``: both, and the parser flag
  ``ENABLE_PLUGIN_OVERRIDE`` set;
- ``builtin-plugins``: loads TensorRT's built-in C++ plugins and lists them.

Prints one markdown table row per case (exit status, outcome, last output
line) for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ["no-plugin", "local-function", "python-creator", "python-creator+function",
         "python-creator+function+override", "builtin-plugins"]
NAMESPACE = "ssmprune"


def make_onnx(path: Path, op_type: str, with_function: bool) -> None:
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_in"),
        helper.make_node(op_type, ["a"], ["b"], name="custom", domain=NAMESPACE),
        helper.make_node("Relu", ["b"], ["y"], name="relu_out"),
    ]
    graph = helper.make_graph(
        nodes, "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    functions = []
    if with_function:
        functions.append(helper.make_function(
            NAMESPACE, op_type, ["a"], ["b"],
            [helper.make_node("Identity", ["a"], ["b"])],
            [helper.make_opsetid("", 18)]))
    model = helper.make_model(
        graph, functions=functions,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(NAMESPACE, 1)])
    model.ir_version = 9
    onnx.save(model, str(path))


def register_python_creator(trt, op_type: str) -> bool:
    """A minimal identity IPluginV3 (core/build/runtime) and its creator, registered."""
    import numpy as np

    class Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                 trt.IPluginV3OneRuntime):
        def __init__(self):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.num_outputs = 1
            self.plugin_namespace = NAMESPACE
            self.plugin_name = op_type
            self.plugin_version = "1"
            print("probe: Plugin.__init__", flush=True)

        def get_capability_interface(self, kind):
            print(f"probe: get_capability_interface({kind})", flush=True)
            return self

        def clone(self):
            print("probe: clone", flush=True)
            return Plugin()

        def get_output_data_types(self, input_types):
            print("probe: get_output_data_types", flush=True)
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            print("probe: get_output_shapes", flush=True)
            return [inputs[0]]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            return desc.format == trt.TensorFormat.LINEAR and desc.type == trt.float32

        def configure_plugin(self, inputs, outputs):
            print("probe: configure_plugin", flush=True)

        def get_workspace_size(self, inputs, outputs):
            return 0

        def get_valid_tactics(self):
            return []

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([])

        def on_shape_change(self, inputs, outputs):
            pass

        def set_tactic(self, tactic):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            raise RuntimeError("probe plugin never runs")

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = op_type
            self.plugin_namespace = NAMESPACE
            self.plugin_version = "1"
            self.field_names = trt.PluginFieldCollection([])
            self._keep = np  # numpy must stay importable for field handling

        def create_plugin(self, name, fields, phase):
            print(f"probe: create_plugin(name={name!r}, phase={phase})", flush=True)
            plugin = Plugin()
            print("probe: create_plugin returns", flush=True)
            return plugin

    creator = Creator()
    register_python_creator.keep = creator  # the registry does not own Python objects
    return trt.get_plugin_registry().register_creator(creator, NAMESPACE)


def run_case(case: str, op_type: str) -> None:
    """Child process: run one case and print what happens, step by step."""
    from ssmprune.engine import trt as trt_mod

    flavour = trt_mod.load()
    trt = flavour.trt
    print(f"probe: {flavour.display}", flush=True)
    logger = trt_mod.make_logger(flavour, echo_level="error")
    if case == "builtin-plugins":
        ok = trt.init_libnvinfer_plugins(logger, "") if hasattr(trt, "init_libnvinfer_plugins") \
            else None
        creators = sorted(f"{ns}::{n} v{v}" for ns, n, v in trt_mod.registered_plugins(flavour))
        print(f"probe: init_libnvinfer_plugins -> {ok}; {len(creators)} creators: "
              f"{', '.join(creators[:8])}{' ...' if len(creators) > 8 else ''}", flush=True)
        return
    if case.startswith("python-creator"):
        print(f"probe: register_creator -> {register_python_creator(trt, op_type)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        make_onnx(path, op_type, with_function="function" in case)
        builder = trt_mod.create_builder(flavour, logger)
        network = trt_mod.create_network(flavour, builder, strongly_typed=True)
        parser = trt_mod.create_parser(flavour, network, logger)
        if case.endswith("override"):
            parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
        print("probe: parsing", flush=True)
        ok = parser.parse_from_file(str(path))
        errors = trt_mod.parser_errors(parser)
        kinds = [str(network.get_layer(i).type).split(".")[-1] for i in range(network.num_layers)]
        print(f"probe: parse -> {ok}; layers {kinds}; errors {errors}", flush=True)
        if not ok:
            return
        config = builder.create_builder_config()
        if flavour.builds_without_gpu:
            config.num_compute_capabilities = 1
            config.set_compute_capability(trt.ComputeCapability.SM86, 0)
        mark = len(logger.messages)
        blob = builder.build_serialized_network(network, config)
        size = None if blob is None else blob.nbytes
        print(f"probe: build -> {'engine of %d bytes' % size if size else 'failed'}"
              f"{'' if size else '; ' + '; '.join(logger.errors_since(mark))}", flush=True)


def probe(case: str, op_type: str, timeout: float = 300) -> dict:
    """Run one case in a subprocess; its exit status and its last lines of output."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--op-type", op_type],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    probe_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("probe: ")]
    return {"case": case, "returncode": proc.returncode, "seconds": time.perf_counter() - start,
            "probe_lines": probe_lines, "last_lines": lines[-6:]}


def outcome(result: dict) -> str:
    rc, lines = result["returncode"], result["probe_lines"]
    if rc < 0:
        return f"process killed by signal {-rc}"
    if rc != 0:
        return f"process exited {rc}"
    return lines[-1].removeprefix("probe: ") if lines else "no output"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--op-type", default="SelectiveScan")
    parser.add_argument("--json", type=Path, help="also write every result as JSON here")
    args = parser.parse_args()
    if args.case:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        run_case(args.case, args.op_type)
        return
    results = [probe(case, args.op_type) for case in CASES]
    print("| case | exit | outcome | last line of output |")
    print("|---|---|---|---|")
    for r in results:
        last = r["last_lines"][-1] if r["last_lines"] else ""
        print(f"| {r['case']} | {r['returncode']} | {outcome(r)} | `{last[:160]}` |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
