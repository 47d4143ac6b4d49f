"""Reverse-mode differentiation over an ONNX graph, emitting standard ONNX ops only.

`add_gradient(model, of="loss", wrt="image")` walks the forward graph backwards from
`of` and appends, for each node on a differentiable path from `wrt`, the ops that compute
its adjoint. The result runs on any plain onnxruntime build: no training domain, no
custom ops. One rule per op type lives in `ADJOINTS`; a rule receives the node and the
gradients of its outputs, and returns the gradients of the inputs that need one.

Only paths from `wrt` are differentiated: weights, targets and shape arithmetic get no
gradient, so nothing is computed that the optimizer would not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, shape_inference

from stylerun.network.graph import GraphBuilder

Rule = Callable[["_Pass", onnx.NodeProto, list], list]
ADJOINTS: dict[str, Rule] = {}

@dataclass(frozen=True)
class Flavours:
    """Which of several exact adjoint rules to emit, chosen by measurement (docs/performance.md).

    conv: "conv" (forward Conv with the flipped, transposed kernel, folded to a constant by
    onnxruntime at load) or "conv_transpose" (ConvTranspose with the same kernel).
    relu: "where" (Where(Greater(y, 0), dy, 0)), "sign" (Mul(dy, Sign(y))) or "hardsigmoid"
    (Mul(dy, HardSigmoid(y)), a 0/1 mask computed in the convolutions' layout).
    gram: "single" gives G = MatMul(F, Transpose(F)) one product, dF = (dG + dG^T) F;
    "generic" differentiates the MatMul and the Transpose separately.
    pool: "fused" masks a Relu followed only by MaxPool after the pooling adjoint, at pooled
    size; "separate" applies the Relu mask at full size after MaxUnpool.
    A value is part of the model cache key, so graphs built with other flavours never mix.
    """

    conv: str = "conv"
    relu: str = "hardsigmoid"
    gram: str = "single"
    pool: str = "fused"

    def __post_init__(self) -> None:
        allowed = {"conv": ("conv", "conv_transpose"), "relu": ("where", "sign", "hardsigmoid"),
                   "gram": ("single", "generic"), "pool": ("fused", "separate")}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{name} adjoint flavour must be one of {values}, got {getattr(self, name)!r}")


#: The measured-fastest flavours: what `stylerun export-vgg` and the cache use.
FASTEST = Flavours()
#: The plain graph every optimization is checked against (tests/test_perf_equivalence.py).
REFERENCE = Flavours(conv="conv", relu="where", gram="generic", pool="separate")


def adjoint(*op_types: str) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for op_type in op_types:
            ADJOINTS[op_type] = rule
        return rule

    return register


class _Pass:
    def __init__(self, model: onnx.ModelProto, flavours: Flavours = FASTEST):
        self.model = model
        self.flavours = flavours
        self.producer = {o: node for node in model.graph.node for o in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.b = GraphBuilder(model.graph)
        inferred = shape_inference.infer_shapes(model)
        self.shapes: dict[str, tuple | None] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
            self.shapes[vi.name] = None if dims is None else tuple(d.dim_value or d.dim_param or None for d in dims)
        for init in model.graph.initializer:
            self.shapes[init.name] = tuple(init.dims)
        self.constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer
                          if init.data_type == onnx.TensorProto.INT64}
        self.live: set[str] = set()

    # helpers used by the rules -------------------------------------------------
    def op(self, op_type: str, *inputs: str, **attrs):
        return self.b.op(op_type, *inputs, hint=f"grad_{op_type.lower()}", **attrs)

    def const(self, value, dtype=np.float32) -> str:
        return self.b.const(value, "grad_const", dtype)

    def shape_of(self, name: str) -> str:
        return self.op("Shape", name)

    def needs(self, name: str) -> bool:
        """Whether `name` carries gradient back to `wrt`; rules skip inputs that do not."""
        return name in self.live

    def unbroadcast(self, grad: str, x: str, y: str) -> str:
        """Sum an elementwise op's output gradient down to input `x`'s shape.

        Broadcast axes are found statically: axes `x` lacks, and axes where `x` has a
        literal 1 and `y` does not. A symbolic dimension is taken to be the same on both
        sides, as the graphs built here never broadcast along a dynamic axis.
        """
        sx, sy = self.shapes.get(x), self.shapes.get(y)
        if sx is None or sy is None:
            raise NotImplementedError(f"unknown rank for {x} or {y}: cannot differentiate a broadcast")
        lead = len(sy) - len(sx)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(sx) if d == 1 and sy[lead + i] != 1]
        if not axes:
            return grad
        summed = self.op("ReduceSum", grad, self.const(axes, np.int64), keepdims=1)
        return self.op("Reshape", summed, self.shape_of(x))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --- adjoint rules: one per op --------------------------------------------------


@adjoint("Identity")
def _identity(p: _Pass, node, dys):
    return [dys[0]]


@adjoint("Neg")
def _neg(p: _Pass, node, dys):
    return [p.op("Neg", dys[0])]


@adjoint("Add", "Sub")
def _add_sub(p: _Pass, node, dys):
    a, b = node.input
    y = node.output[0]
    da = p.unbroadcast(dys[0], a, y) if p.needs(a) else None
    db = None
    if p.needs(b):
        db = p.unbroadcast(dys[0], b, y)
        db = p.op("Neg", db) if node.op_type == "Sub" else db
    return [da, db]


@adjoint("Sum")
def _sum(p: _Pass, node, dys):
    return [p.unbroadcast(dys[0], x, node.output[0]) if p.needs(x) else None for x in node.input]


@adjoint("Mul")
def _mul(p: _Pass, node, dys):
    a, b = node.input
    y = node.output[0]
    da = p.unbroadcast(p.op("Mul", dys[0], b), a, y) if p.needs(a) else None
    db = p.unbroadcast(p.op("Mul", dys[0], a), b, y) if p.needs(b) else None
    return [da, db]


@adjoint("Div")
def _div(p: _Pass, node, dys):
    a, b = node.input
    y = node.output[0]
    da = p.unbroadcast(p.op("Div", dys[0], b), a, y) if p.needs(a) else None
    db = p.unbroadcast(p.op("Neg", p.op("Div", p.op("Mul", dys[0], y), b)), b, y) if p.needs(b) else None
    return [da, db]


@adjoint("Reshape", "Unsqueeze", "Squeeze", "Flatten")
def _reshape(p: _Pass, node, dys):
    return [p.op("Reshape", dys[0], p.shape_of(node.input[0]))] + [None] * (len(node.input) - 1)


@adjoint("Transpose")
def _transpose(p: _Pass, node, dys):
    perm = list(_attr(node, "perm"))
    inverse = [perm.index(i) for i in range(len(perm))]
    return [p.op("Transpose", dys[0], perm=inverse)]


@adjoint("Slice")
def _slice(p: _Pass, node, dys):
    # A unit-step slice with constant bounds keeps a box of its input: the adjoint pads the
    # gradient back with zeros, `start` in front and `-end` behind (end < 0) on each axis.
    starts, ends = (p.constants.get(name) for name in node.input[1:3])
    axes = p.constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = p.constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    rank = len(p.shapes.get(node.input[0]) or ())
    if starts is None or ends is None or not rank or (steps is not None and (steps != 1).any()):
        raise NotImplementedError("Slice adjoint needs constant starts/ends, unit steps and a known rank")
    axes = range(len(starts)) if axes is None else axes
    pads = [0] * (2 * rank)
    for axis, start, end in zip(axes, starts, ends, strict=True):
        axis = int(axis) % rank
        if start < 0 or 0 <= end < np.iinfo(np.int32).max:
            raise NotImplementedError("Slice adjoint supports start >= 0 and end < 0 (or to the end) only")
        pads[axis], pads[rank + axis] = int(start), (-int(end) if end < 0 else 0)
    return [p.op("Pad", dys[0], p.const(pads, np.int64))] + [None] * (len(node.input) - 1)


def _positive_part(p: _Pass, y: str, dy: str) -> str:
    """dy where y > 0, else 0: the Relu adjoint's mask, taken from the Relu's output (y >= 0)."""
    if p.flavours.relu == "sign":
        # Sign(y) is exactly 1 where y > 0 and 0 elsewhere
        return p.op("Mul", dy, p.op("Sign", y))
    if p.flavours.relu == "hardsigmoid":
        # min(1, y * FLT_MAX): exactly 1 for every y >= 2.9e-39 and 0 at y = 0. Mul runs ~10x
        # faster than Where in onnxruntime's CPU kernels, and HardSigmoid runs on the blocked
        # NCHWc output of the fused Conv+Relu, so the mask costs no layout reorder.
        return p.op("Mul", dy, p.op("HardSigmoid", y, alpha=float(np.finfo(np.float32).max), beta=0.0))
    return p.op("Where", p.op("Greater", y, p.const(0.0)), dy, p.const(0.0))


def _pool_of_relu(p: _Pass, relu: onnx.NodeProto) -> onnx.NodeProto | None:
    """The MaxPool that is this Relu output's only consumer, when its adjoint takes the Relu's mask.

    MaxUnpool sends each pooled gradient to its window's argmax, where the Relu output equals
    the pooled maximum; masking by `pooled > 0` before unpooling is therefore exact, and the
    mask is a quarter of the size (2x2 pooling).
    """
    consumers = p.consumers.get(relu.output[0], [])
    if p.flavours.pool == "fused" and len(consumers) == 1 and consumers[0].op_type == "MaxPool":
        return consumers[0]
    return None


@adjoint("Relu")
def _relu(p: _Pass, node, dys):
    if _pool_of_relu(p, node) is not None:
        return [dys[0]]  # masked at pooled size by the MaxPool's adjoint
    return [_positive_part(p, node.output[0], dys[0])]


def _spatial_attrs(node) -> dict:
    return {k: v for k in ("strides", "pads", "dilations") if (v := _attr(node, k)) is not None}


@adjoint("Conv")
def _conv(p: _Pass, node, dys):
    w = node.input[1]
    if _attr(node, "group", 1) != 1 or any(s != 1 for s in _attr(node, "strides", [1, 1])):
        raise NotImplementedError("Conv adjoint supports group=1, stride 1 only")
    if p.flavours.conv == "conv_transpose":
        dx = p.op("ConvTranspose", dys[0], w, **_spatial_attrs(node))
    else:
        # dX = Conv(dY, W'), W'[i, o] = W[o, i] rotated 180 degrees; padding k-1-p keeps the
        # size. W' is built from W in the graph, so the file holds each kernel once;
        # onnxruntime's constant folding turns it into an initializer at load time.
        kh, kw = _attr(node, "kernel_shape")
        pads = _attr(node, "pads", [0, 0, 0, 0])
        swapped = p.op("Transpose", w, perm=[1, 0, 2, 3])
        reverse = p.const([-1, -1], np.int64)
        flipped = p.op("Slice", swapped, reverse, p.const([np.iinfo(np.int64).min] * 2, np.int64),
                       p.const([2, 3], np.int64), reverse)
        back_pads = [kh - 1 - pads[0], kw - 1 - pads[1], kh - 1 - pads[2], kw - 1 - pads[3]]
        dx = p.op("Conv", dys[0], flipped, kernel_shape=[kh, kw], pads=back_pads)
    return [dx] + [None] * (len(node.input) - 1)


@adjoint("MaxPool")
def _max_pool(p: _Pass, node, dys):
    # Route each gradient to the position that won the max, using MaxPool's own indices.
    if len(node.output) < 2:
        node.output.append(p.b.fresh(f"{node.output[0]}.argmax"))
    dy = dys[0]
    relu = p.producer.get(node.input[0])
    if relu is not None and relu.op_type == "Relu" and _pool_of_relu(p, relu) is node:
        dy = _positive_part(p, node.output[0], dy)
    dx = p.op(
        "MaxUnpool", dy, node.output[1], p.shape_of(node.input[0]),
        kernel_shape=list(_attr(node, "kernel_shape")), strides=list(_attr(node, "strides")),
    )
    return [dx]


@adjoint("AveragePool")
def _average_pool(p: _Pass, node, dys):
    kernel = list(_attr(node, "kernel_shape"))
    if list(_attr(node, "strides", [1, 1])) != kernel or any(_attr(node, "pads", [0, 0, 0, 0])):
        raise NotImplementedError("AveragePool adjoint supports kernel == stride without padding")
    kh, kw = kernel
    # Each input pixel gets 1/(kh*kw) of its window's gradient: repeat every gradient
    # kh x kw times, then zero-pad rows/columns the pooling dropped (odd sizes).
    dy = p.op("Mul", dys[0], p.const(1.0 / (kh * kw)))
    grown = p.op("Unsqueeze", dy, p.const([3, 5], np.int64))  # (N, C, h, 1, w, 1)
    shape = p.shape_of(dys[0])
    n_c = p.op("Slice", shape, p.const([0], np.int64), p.const([2], np.int64))
    h = p.op("Slice", shape, p.const([2], np.int64), p.const([3], np.int64))
    w = p.op("Slice", shape, p.const([3], np.int64), p.const([4], np.int64))
    kh_c, kw_c = p.const([kh], np.int64), p.const([kw], np.int64)
    tiled = p.op("Expand", grown, p.op("Concat", n_c, h, kh_c, w, kw_c, axis=0))
    up = p.op("Reshape", tiled, p.op("Concat", n_c, p.op("Mul", h, kh_c), p.op("Mul", w, kw_c), axis=0))
    x_hw = p.op("Slice", p.shape_of(node.input[0]), p.const([2], np.int64), p.const([4], np.int64))
    up_hw = p.op("Slice", p.shape_of(up), p.const([2], np.int64), p.const([4], np.int64))
    pads = p.op("Concat", p.const([0] * 6, np.int64), p.op("Sub", x_hw, up_hw), axis=0)  # begins, then ends
    return [p.op("Pad", up, pads)]


@adjoint("MatMul")
def _matmul(p: _Pass, node, dys):
    a, b = node.input
    if len(p.shapes.get(a) or ()) != 2 or len(p.shapes.get(b) or ()) != 2:
        raise NotImplementedError("MatMul adjoint supports 2-D operands only")
    src = p.producer.get(b)
    if (p.flavours.gram == "single" and src is not None and src.op_type == "Transpose"
            and src.input[0] == a and list(_attr(src, "perm", [1, 0])) == [1, 0]):
        # A Gram product G = F F^T: dF = dG F + dG^T F = (dG + dG^T) F, one (N, N) x (N, M)
        # product instead of two plus an (M, N) transpose. The symmetrization costs O(N^2)
        # and keeps the rule exact whether or not dG is symmetric. b (= F^T) gets no
        # gradient of its own, so its Transpose is never differentiated.
        sym = p.op("Add", dys[0], p.op("Transpose", dys[0], perm=[1, 0]))
        return [p.op("MatMul", sym, a), None]
    da = p.op("MatMul", dys[0], p.op("Transpose", b, perm=[1, 0])) if p.needs(a) else None
    db = p.op("MatMul", p.op("Transpose", a, perm=[1, 0]), dys[0]) if p.needs(b) else None
    return [da, db]


def _reduced_axes(p: _Pass, node) -> list[int] | None:
    """A reduction's axes, from the attribute (old opsets) or a constant input (new ones)."""
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in p.constants:
            raise NotImplementedError(f"{node.op_type} with computed axes is not supported")
        return [int(a) for a in p.constants[node.input[1]].ravel()]
    axes = _attr(node, "axes")
    return None if axes is None else list(axes)


def _expand_reduced(p: _Pass, node, dy: str) -> str:
    """Bring a reduction's output gradient back to a shape that broadcasts over its input."""
    axes = _reduced_axes(p, node)
    if _attr(node, "keepdims", 1) == 0 and axes:
        rank = len(p.shapes[node.input[0]])
        dy = p.op("Unsqueeze", dy, p.const(sorted(a % rank for a in axes), np.int64))
    return dy


@adjoint("ReduceSum")
def _reduce_sum(p: _Pass, node, dys):
    dx = p.op("Expand", _expand_reduced(p, node, dys[0]), p.shape_of(node.input[0]))
    return [dx] + [None] * (len(node.input) - 1)


@adjoint("ReduceSumSquare")
def _reduce_sum_square(p: _Pass, node, dys):
    dy = _expand_reduced(p, node, dys[0])
    return [p.op("Mul", node.input[0], p.op("Mul", dy, p.const(2.0)))] + [None] * (len(node.input) - 1)


# --- the pass ---------------------------------------------------------------------

#: Inputs through which a value can carry gradient, by op type (default: all inputs).
_DIFFERENTIABLE_INPUTS = {
    "Reshape": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Expand": (0,), "Slice": (0,),
    "Gather": (0,), "Pad": (0,), "Shape": (), "Cast": (), "Greater": (), "Where": (1, 2),
    "ReduceProd": (),
}


def _depends_on(graph: onnx.GraphProto, wrt: str) -> set[str]:
    """Values that depend differentiably on `wrt` (forward reachability)."""
    live = {wrt}
    for node in graph.node:
        allowed = _DIFFERENTIABLE_INPUTS.get(node.op_type, range(len(node.input)))
        if any(i < len(node.input) and node.input[i] in live for i in allowed):
            live.update(o for o in node.output if o)
    return live


def add_gradient(model: onnx.ModelProto, of: str, wrt: str, grad_name: str,
                 flavours: Flavours = FASTEST) -> onnx.ModelProto:
    """Append d`of`/d`wrt` to `model` (in place) as output `grad_name`; return the model.

    `flavours` picks among exact adjoint rules: `FASTEST` (the default) or the plain
    `REFERENCE` graph that every optimization is tested against.
    """
    p = _Pass(model, flavours)
    graph = model.graph
    live = p.live = _depends_on(graph, wrt)
    if of not in live:
        raise ValueError(f"{of} does not depend on {wrt}")
    forward_nodes = list(graph.node)
    grads: dict[str, list[str]] = {of: [p.const(1.0)]}

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            grads[name] = [p.op("Sum", *parts)]
        return grads[name][0]

    for node in reversed(forward_nodes):
        if not any(o in live for o in node.output):
            continue
        dys = [total(o) for o in node.output]
        if all(d is None for d in dys):
            continue
        rule = ADJOINTS.get(node.op_type)
        if rule is None:
            raise NotImplementedError(f"no adjoint rule for ONNX op {node.op_type}")
        for x, dx in zip(node.input, rule(p, node, dys), strict=False):
            if dx is not None and x in live:
                grads.setdefault(x, []).append(dx)

    result = total(wrt)
    if result is None:
        raise ValueError(f"no gradient reached {wrt}")
    p.b.op("Identity", result, outputs=[grad_name])
    wrt_info = next(vi for vi in graph.input if vi.name == wrt)
    out = onnx.ValueInfoProto()
    out.CopyFrom(wrt_info)
    out.name = grad_name
    graph.output.append(out)
    return model
