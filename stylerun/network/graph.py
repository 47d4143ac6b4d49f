"""A small builder over `onnx.helper`: fresh names, constants and one-line node creation.

Both the forward/loss construction (`network/loss_graph.py`) and the differentiation pass
(`network/autodiff.py`) append to graphs through this one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Accumulates nodes and initializers; names are made unique on request."""

    def __init__(self, graph: onnx.GraphProto | None = None):
        self.graph = graph if graph is not None else onnx.GraphProto()
        self._taken: set[str] = set()
        for init in self.graph.initializer:
            self._taken.add(init.name)
        for vi in list(self.graph.input) + list(self.graph.output):
            self._taken.add(vi.name)
        for node in self.graph.node:
            self._taken.update(node.output)
            self._taken.add(node.name)
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._taken:
            i += 1
            name = f"{hint}_{i}"
        self._taken.add(name)
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | Sequence[str] = 1, hint: str | None = None, **attrs: Any):
        """Append a node; return its output name (or list of names when several)."""
        base = hint or op_type.lower()
        if isinstance(outputs, int):
            out_names = [self.fresh(base) for _ in range(outputs)]
        else:
            out_names = list(outputs)
            self._taken.update(out_names)
        node = helper.make_node(op_type, list(inputs), out_names, name=self.fresh(f"{base}_node"), **attrs)
        self.graph.node.append(node)
        return out_names[0] if len(out_names) == 1 else out_names

    def const(self, value: Any, hint: str = "const", dtype=np.float32) -> str:
        """An initializer holding `value`; small constants are shared by value."""
        array = np.asarray(value, dtype=dtype)
        key = None
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._consts[key] = name
        return name

    def add_input(self, name: str, shape: Sequence[int | str | None], elem_type: int = TensorProto.FLOAT) -> str:
        self._taken.add(name)
        self.graph.input.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(
        self, name: str, shape: Sequence[int | str | None] | None, elem_type: int = TensorProto.FLOAT
    ) -> str:
        dims = None if shape is None else list(shape)
        self.graph.output.append(helper.make_tensor_value_info(name, elem_type, dims))
        return name

    def rename_output(self, value: str, name: str) -> str:
        """Give `value` a public name by routing it through an Identity node."""
        return self.op("Identity", value, outputs=[name])


def make_model(graph: onnx.GraphProto, metadata: dict[str, str], doc: str = "") -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="stylerun",
        doc_string=doc,
    )
    model.ir_version = 8  # onnx >= 1.10 and every onnxruntime of the last years read IR 8
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model
