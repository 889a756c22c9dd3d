"""NVIDIA's own ``tensorrt.plugin`` over a minimal stand-in for TensorRT's compiled core.

The decorator-plugin package (``register``, ``autotune``, ``aot_impl``, the
plugin and creator classes TensorRT calls, their validation) is pure Python
and ships in the PyPI wheel ``tensorrt-cu13-bindings`` (pinned in
requirements.txt), next to a compiled core that needs libnvinfer, which these
machines cannot install. ``load()`` builds a package ``tensorrt`` whose
attributes are the stand-in below and whose ``plugin`` subpackage is NVIDIA's
code, read from the installed wheel. So our ``quick.register`` meets NVIDIA's
decorators and validation, and the tests drive NVIDIA's plugin classes the way
TensorRT's builder does.

The stand-in is only what the plugin package touches, as TensorRT's bindings
behave: enums, plugin fields (data kept as numpy arrays), a registry that
refuses a second creator of one (name, version, namespace), and dimension
expressions that fold constants.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np

WHEEL = "tensorrt-cu13-bindings"
PACKAGE = "tensorrt_bindings"


def plugin_package_dir() -> Optional[Path]:
    """The installed wheel's package folder (holding ``plugin/``), without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / "plugin" / "_lib.py").is_file() else None


#: Older releases of the package, unpacked by ``make setup`` (NVIDIA_PLUGIN_VERSIONS in the
#: Makefile): the oldest with ``aot_impl`` and the newest before 11.4's fixes.
OLDER_RELEASES = ("10.9.0.34", "11.1.0.106")


def release_dir(version: str) -> Path:
    """The package folder of an older release of ``tensorrt.plugin``, as ``make setup``
    unpacks it next to the virtual environment's packages."""
    folder = Path(sys.prefix) / "nvidia-plugin" / version / PACKAGE
    if not (folder / "plugin" / "_lib.py").is_file():
        raise RuntimeError(f"tensorrt.plugin {version} is not unpacked in {folder.parent}: "
                           "`make setup` fetches it")
    return folder


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
       DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8,
       DataType.INT64: np.int64}


class TensorFormat(enum.IntEnum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


class PluginFieldType(enum.IntEnum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12
    FP4 = 13


_FIELD_NP = {PluginFieldType.FLOAT16: np.float16, PluginFieldType.FLOAT32: np.float32,
             PluginFieldType.FLOAT64: np.float64, PluginFieldType.INT8: np.int8,
             PluginFieldType.INT16: np.int16, PluginFieldType.INT32: np.int32,
             PluginFieldType.INT64: np.int64, PluginFieldType.CHAR: np.int8,
             PluginFieldType.UNKNOWN: np.int8}


class PluginField:
    """A named plugin attribute; ``data`` is a numpy array of the field type, as the
    bindings return it (bytes become int8 arrays)."""

    def __init__(self, name: str = "", data: Any = None,
                 type: PluginFieldType = PluginFieldType.UNKNOWN):
        self.name, self.type = name, PluginFieldType(type)
        if isinstance(data, (bytes, bytearray)):
            self.data = np.frombuffer(bytes(data), dtype=np.int8).copy()
        else:
            self.data = np.asarray([] if data is None else data).astype(_FIELD_NP[self.type])
        self.size = self.data.size


class PluginFieldCollection(list):
    pass


class TensorRTPhase(enum.IntEnum):
    BUILD = 0
    RUNTIME = 1


class QuickPluginCreationRequest(enum.IntEnum):
    UNKNOWN = 0
    PREFER_JIT = 1
    PREFER_AOT = 2
    STRICT_JIT = 3
    STRICT_AOT = 4


class DimensionOperation(enum.IntEnum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


_FOLD = {DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
         DimensionOperation.MAX: max, DimensionOperation.MIN: min,
         DimensionOperation.SUB: lambda a, b: a - b,
         DimensionOperation.EQUAL: lambda a, b: int(a == b),
         DimensionOperation.LESS: lambda a, b: int(a < b),
         DimensionOperation.FLOOR_DIV: lambda a, b: a // b,
         DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b)}


class IDimensionExpr:
    """A dimension: a constant, or a symbol (``value`` None) such as a dynamic batch."""

    def __init__(self, value: Optional[int] = None):
        self.value = value

    def is_constant(self) -> bool:
        return self.value is not None

    def get_constant_value(self) -> int:
        if self.value is None:
            raise RuntimeError("not a constant dimension")
        return self.value

    def is_size_tensor(self) -> bool:
        return False


class IExprBuilder:
    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr(int(value))

    def operation(self, op, a: IDimensionExpr, b: IDimensionExpr) -> IDimensionExpr:
        if a.is_constant() and b.is_constant():
            return IDimensionExpr(_FOLD[DimensionOperation(op)](a.value, b.value))
        return IDimensionExpr()


class DimsExprs(list):
    def __init__(self, n: int = 0):
        super().__init__([None] * n)


class Dims(tuple):
    MAX_DIMS = 8

    def __new__(cls, shape=()):
        return super().__new__(cls, (0,) * shape if isinstance(shape, int) else tuple(shape))


class PluginTensorDesc:
    def __init__(self):
        self.dims, self.type, self.format, self.scale = Dims(), DataType.FLOAT, \
            TensorFormat.LINEAR, 1.0


class DynamicPluginTensorDesc:
    def __init__(self):
        self.desc, self.min, self.opt, self.max = PluginTensorDesc(), Dims(), Dims(), Dims()


class PluginArgType(enum.IntEnum):
    INT = 0


class PluginArgDataType(enum.IntEnum):
    INT8 = 0
    INT16 = 1
    INT32 = 2


class _Interface:
    def __init__(self, *args, **kwargs):
        pass


class PluginRegistry:
    """TensorRT's plugin registry: one creator per (name, version, namespace)."""

    def __init__(self):
        self.creators: dict[tuple[str, str, str], Any] = {}

    def register_creator(self, creator: Any, namespace: str = "") -> bool:
        key = (creator.name, creator.plugin_version, namespace)
        if key in self.creators:
            return False
        self.creators[key] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = "") -> Any:
        return self.creators.get((name, version, namespace))

    @property
    def all_creators(self) -> list:
        return list(self.creators.values())


class Logger:
    WARNING = 2

    def __init__(self, *args):
        self.messages: list[tuple[int, str]] = []

    def log(self, severity: int, message: str) -> None:
        self.messages.append((severity, message))


def _core(folder: Path, version: str) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__path__ = [str(folder)]  # so `tensorrt.plugin` is NVIDIA's package
    trt.__version__ = version
    registry = PluginRegistry()
    for name, value in dict(
            DataType=DataType, TensorFormat=TensorFormat, PluginField=PluginField,
            PluginFieldType=PluginFieldType, PluginFieldCollection=PluginFieldCollection,
            TensorRTPhase=TensorRTPhase, QuickPluginCreationRequest=QuickPluginCreationRequest,
            DimensionOperation=DimensionOperation, IDimensionExpr=IDimensionExpr,
            IExprBuilder=IExprBuilder, DimsExprs=DimsExprs, Dims=Dims,
            PluginTensorDesc=PluginTensorDesc, DynamicPluginTensorDesc=DynamicPluginTensorDesc,
            PluginArgType=PluginArgType, PluginArgDataType=PluginArgDataType, Logger=Logger,
            get_plugin_registry=lambda: registry,
            nptype=lambda t: _NP[DataType(t)],
            float32=DataType.FLOAT, float16=DataType.HALF, bfloat16=DataType.BF16,
            int8=DataType.INT8, int32=DataType.INT32, int64=DataType.INT64,
            bool=DataType.BOOL, uint8=DataType.UINT8, fp8=DataType.FP8).items():
        setattr(trt, name, value)
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild",
                 "IPluginV3QuickRuntime", "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick",
                 "ISymExpr", "ITensor", "TensorDesc"):
        setattr(trt, name, type(name, (_Interface,), {}))
    return trt


def load(monkeypatch, version: Optional[str] = None) -> types.ModuleType:
    """``tensorrt`` with NVIDIA's ``tensorrt.plugin`` on the stand-in core, in
    ``sys.modules`` until ``monkeypatch`` undoes it (with every submodule).
    ``version``: one of ``OLDER_RELEASES`` (None: the installed wheel's, 11.4)."""
    folder = plugin_package_dir() if version is None else release_dir(version)
    if folder is None:
        raise RuntimeError(f"{WHEEL} is not installed: `make setup` installs it")
    for name in [m for m in sys.modules if m == "tensorrt" or m.startswith("tensorrt.")]:
        monkeypatch.delitem(sys.modules, name)
    trt = _core(folder, version or "11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    before = set(sys.modules)
    import tensorrt.plugin  # noqa: F401  (NVIDIA's package, on the stand-in core)

    for name in set(sys.modules) - before:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # removed on undo
    return trt


class _LaunchParams:
    """What TensorRT hands ``get_launch_params`` to fill: grid, block, shared memory."""


class _SymExprSetter(list):
    """TensorRT's setter of the extra integer arguments: a count, then one per index."""

    def __init__(self):
        super().__init__()
        self.nbSymExprs = 0

    def __setitem__(self, index, value):
        while len(self) <= index:
            self.append(None)
        super().__setitem__(index, value)


def _tensor_desc(dtype: DataType, shape: tuple[int, ...]) -> DynamicPluginTensorDesc:
    d = DynamicPluginTensorDesc()
    d.desc.type, d.desc.dims = dtype, Dims(shape)
    d.min = d.opt = d.max = Dims(shape)
    return d


def _value(sym: Any) -> int:
    """A launch value TensorRT received (an ISymExpr or a dimension expression)."""
    expr = getattr(sym, "expr", sym)
    return expr.get_constant_value()



class AotLayer:
    """What TensorRT's builder took from an AOT plugin layer: the plugin object, its
    outputs ((type, shape) each), the kernel (name, PTX), the launch (grid, block,
    shared memory) and the extra integer arguments, in the order TensorRT passes
    them after the input pointers."""

    def __init__(self, plugin, outputs, kernel_name, ptx, launch, scalars, scalar_types):
        self.plugin, self.outputs, self.kernel_name, self.ptx = plugin, outputs, kernel_name, ptx
        self.launch, self.scalars, self.scalar_types = launch, scalars, scalar_types


def build_aot_layer(trt: types.ModuleType, op: str, namespace: str, fields: list,
                    inputs: list[tuple[DataType, tuple[int, ...]]],
                    request: QuickPluginCreationRequest = QuickPluginCreationRequest.UNKNOWN
                    ) -> AotLayer:
    """Build one plugin layer as TensorRT's builder calls a quickly deployable plugin:
    creator lookup, ``create_plugin`` with the parser's fields, output types and
    shapes, format negotiation (the node's own types must be offered), configure,
    launch parameters, kernel. ``inputs``: (type, static shape) per node input.
    ``request``: what the parser asks for; UNKNOWN for a node without an ``aot``
    attribute in a network without a PREFER_*_PYTHON_PLUGINS flag, as ours."""
    creator = trt.get_plugin_registry().get_creator(op, "1", namespace)
    if creator is None:
        raise LookupError(f"no creator {namespace}::{op} v1 in the registry")
    plugin = creator.create_plugin(op, namespace, PluginFieldCollection(fields),
                                   TensorRTPhase.BUILD, request)
    types_in = [t for t, _ in inputs]
    out_types = plugin.get_output_data_types(types_in, [len(s) for _, s in inputs])
    builder = IExprBuilder()
    in_exprs = []
    for _, shape in inputs:
        exprs = DimsExprs(len(shape))
        for i, d in enumerate(shape):
            exprs[i] = builder.constant(d)
        in_exprs.append(exprs)
    out_exprs = plugin.get_output_shapes(in_exprs, [], builder)
    out_shapes = [tuple(e.get_constant_value() for e in exprs) for exprs in out_exprs]
    in_out = [_tensor_desc(t, s) for t, s in inputs] + \
        [_tensor_desc(t, s) for t, s in zip(out_types, out_shapes)]
    offered = plugin.get_supported_format_combinations(in_out, len(inputs))
    n = len(in_out)
    combos = {tuple((d.type, d.format) for d in offered[i:i + n])
              for i in range(0, len(offered), n)}
    wanted = tuple((d.desc.type, TensorFormat.LINEAR) for d in in_out)
    if wanted not in combos:
        raise ValueError(f"{op}: the node's types {[t.name for t, _ in wanted]} are not among "
                         "the plugin's type/format combinations")
    plugin.configure_plugin(in_out[:len(inputs)], in_out[len(inputs):])
    tactics = plugin.get_valid_tactics()
    plugin.set_tactic(tactics[0] if tactics else 0)
    launch, setter = _LaunchParams(), _SymExprSetter()
    plugin.get_launch_params(in_exprs, in_out, len(inputs), launch, setter, builder)
    name, ptx = plugin.get_kernel([d.desc for d in in_out[:len(inputs)]],
                                  [d.desc for d in in_out[len(inputs):]])
    values = {k: _value(getattr(launch, k)) for k in
              ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")}
    setter = setter[:setter.nbSymExprs]
    return AotLayer(plugin, list(zip(out_types, out_shapes)), name.decode() if isinstance(name, bytes) else name,
                    ptx.decode() if isinstance(ptx, bytes) else ptx, values,
                    [_value(s) for s in setter], [s.dtype for s in setter])


#: ONNX element types -> the stand-in's DataType.
ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 6: DataType.INT32,
              7: DataType.INT64}


def parser_fields(creator: Any, node: Any) -> list[PluginField]:
    """The fields TensorRT's ONNX parser hands ``creator`` for ``node`` (onnx-tensorrt's
    ``loadFields``, 10.3 to 11.x): the creator's field names in its order, each taken
    from the node's attribute of that name (an INT attribute as INT32), a missing one
    left out (no defaults); attributes the creator does not declare are not passed."""
    import onnx

    attrs = {a.name: a for a in node.attribute}
    out = []
    for declared in creator.field_names:
        attr = attrs.get(declared.name)
        if attr is None:
            continue
        if attr.type != onnx.AttributeProto.INT:
            raise NotImplementedError(f"attribute {attr.name} of type {attr.type}")
        out.append(PluginField(attr.name, np.array([attr.i], np.int32), PluginFieldType.INT32))
    return out
