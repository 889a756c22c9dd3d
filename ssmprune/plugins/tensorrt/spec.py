"""What a TensorRT plugin of one op must know, free of any TensorRT module.

An ``OpSpec`` holds an op's plugin contract as data and plain functions: its
inputs and outputs, the type class of each (so format and type negotiation
and output types follow from one table), its fields (the ONNX node's
attributes, which TensorRT's parser hands to the plugin creator), its output
shapes over any dimension-expression type, and the Triton launch that computes
it. ``v3`` turns a spec into IPluginV3 classes for whichever TensorRT module is
installed; ``quick`` into the decorator form. Testing a spec needs no GPU.

Type names are the neutral vocabulary shared with ``v3``: fp32, fp16, bf16,
int32, int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, TypeVar

import numpy as np

NAMESPACE = "ssmprune"
VERSION = "1"

FLOATS = ("fp32", "fp16", "bf16")
#: Type classes: "T" is a floating activation, the same type at every T slot
#: of a node; the others admit exactly the types listed.
TYPE_CLASSES = {"T": FLOATS, "fp32": ("fp32",), "int64": ("int64",),
                "int": ("int32", "int64")}

Dim = TypeVar("Dim")


@dataclass(frozen=True)
class OpSpec:
    """The plugin contract of one op.

    Attributes:
        name: the ONNX op type and plugin name (``SelectiveScan``).
        inputs, outputs: (name, type class) per tensor, in node order.
        fields: (name, default) of the integer fields; default None: required.
        output_dims: ``(input dims, field values, constant) -> output dims``,
            where a dims is a list of dimension objects (TensorRT's
            ``IDimensionExpr`` or plain ints) and ``constant(int)`` makes one.
        make_launch: ``(inputs, outputs, field values) -> Launch``: the Triton
            launch that writes the outputs (torch tensors over TensorRT's
            buffers); ``v3`` runs it on TensorRT's stream, ``quick`` compiles
            it ahead of time.
    """

    name: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, Optional[int]], ...]
    output_dims: Callable
    make_launch: Callable

    @property
    def io_classes(self) -> tuple[str, ...]:
        return tuple(c for _, c in self.inputs + self.outputs)

    def accepts(self, pos: int, type_name: Optional[str], earlier: Sequence[Optional[str]]
                ) -> bool:
        """May tensor ``pos`` (inputs, then outputs) have ``type_name``, given the
        types already chosen for positions ``0 .. pos-1`` (TensorRT asks in order)?"""
        cls = self.io_classes[pos]
        if type_name not in TYPE_CLASSES[cls]:
            return False
        if cls != "T":
            return True
        first_t = self.io_classes.index("T")
        return pos == first_t or earlier[first_t] == type_name

    def output_types(self, input_types: Sequence[str]) -> list[str]:
        """Output type names from the input type names."""
        if len(input_types) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs, got "
                             f"{len(input_types)}")
        t = input_types[[c for _, c in self.inputs].index("T")]
        return [t if c == "T" else TYPE_CLASSES[c][-1] for _, c in self.outputs]

    def field_values(self, given: Mapping[str, object]) -> dict[str, int]:
        """Every field's integer value from ``given`` (name -> scalar or array;
        names that are not fields, such as the parser's ``plugin_version``, are
        ignored), defaults filled in; ValueError when a required one is missing."""
        out = {}
        for name, default in self.fields:
            if name in given:
                out[name] = int(np.asarray(given[name]).reshape(-1)[0])
            elif default is None:
                raise ValueError(f"{NAMESPACE}::{self.name} needs the field {name!r}")
            else:
                out[name] = default
        return out


def dims_list(dims: Sequence[Dim]) -> list[Dim]:
    """A plain list of a dims object's entries."""
    return [dims[i] for i in range(len(dims))]


def scan_output_dims(inputs: Sequence[Sequence[Dim]], values: Mapping[str, int],
                     constant: Callable[[int], Dim]) -> list[list[Dim]]:
    """y has u's shape (b d l)."""
    return [dims_list(inputs[0])]


def gather_output_dims(inputs: Sequence[Sequence[Dim]], values: Mapping[str, int],
                       constant: Callable[[int], Dim]) -> list[list[Dim]]:
    """kept_positions (b k'), x_kept (b k' ...) with k' = k + (protect >= 0)."""
    x = dims_list(inputs[2])
    kept = constant(values["k"] + (1 if values["protect"] >= 0 else 0))
    return [[x[0], kept], [x[0], kept, *x[2:]]]
