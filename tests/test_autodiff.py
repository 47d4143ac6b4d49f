"""Each adjoint rule against central finite differences, one op at a time.

Every test graph is ``loss = sum(c * op(x))`` with a random probe `c`, so the exported
gradient must equal the probe pulled back through the op.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from stylerun.network import autodiff
from stylerun.network.autodiff import add_gradient
from stylerun.network.graph import GraphBuilder, make_model


def _session(model: onnx.ModelProto, check: bool = True) -> ort.InferenceSession:
    if check:
        onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _probe_gradient_check(build, x: np.ndarray, rng: np.random.Generator, eps: float = 1e-2,
                          flavours: autodiff.Flavours = autodiff.FASTEST) -> None:
    """Export d(sum(c * build(x)))/dx and compare it with central differences everywhere."""

    def graph(with_probe: np.ndarray | None):
        b = GraphBuilder(onnx.GraphProto(name="t"))
        b.add_input("x", list(x.shape))
        y = build(b, "x")
        if with_probe is None:
            b.op("Identity", y, outputs=["y"])
            b.add_output("y", None)
        else:
            b.op("ReduceSum", b.op("Mul", y, b.const(with_probe, "probe")), keepdims=0, outputs=["loss"])
            b.add_output("loss", [])
        return make_model(b.graph, {})

    y = _session(graph(None), check=False).run(None, {"x": x})[0]
    probe = rng.standard_normal(y.shape).astype(np.float32)
    model = add_gradient(graph(probe), of="loss", wrt="x", grad_name="grad", flavours=flavours)
    session = _session(model)
    grad = session.run(["grad"], {"x": x})[0]
    assert grad.shape == x.shape

    def f(v: np.ndarray) -> float:
        return float(session.run(["loss"], {"x": np.asarray(v, dtype=np.float32)})[0])

    numeric = np.zeros(x.size)
    for i in range(x.size):
        step = np.zeros(x.size, dtype=np.float64)
        step[i] = eps
        step = step.reshape(x.shape)
        numeric[i] = (f(x + step) - f(x - step)) / (2 * eps)
    np.testing.assert_allclose(grad.ravel(), numeric, rtol=2e-2, atol=2e-3 * max(1.0, np.abs(numeric).max()))


def _away_from_zero(rng, shape):
    """Values at least 0.2 from 0 (and from each other in practice), so kinks are not crossed."""
    magnitude = rng.uniform(0.2, 1.0, shape)
    return (magnitude * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 0, 0, 0]])
@pytest.mark.parametrize("flavour", ["conv", "conv_transpose"])
def test_conv(rng, pads, flavour):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)

    def build(b, x):
        return b.op("Conv", x, b.const(w, "w"), b.const(bias, "b"), kernel_shape=[3, 3], pads=pads)

    _probe_gradient_check(build, rng.standard_normal((1, 3, 6, 5)).astype(np.float32), rng,
                          flavours=autodiff.Flavours(conv=flavour))


def test_relu(rng):
    _probe_gradient_check(lambda b, x: b.op("Relu", x), _away_from_zero(rng, (2, 3, 4)), rng)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pooling_odd_sizes(rng, op):
    # distinct values spaced wider than the finite-difference step: the argmax never flips
    x = rng.permutation(2 * 5 * 7).reshape(1, 2, 5, 7).astype(np.float32) * 0.1

    def build(b, v):
        return b.op(op, v, kernel_shape=[2, 2], strides=[2, 2])

    _probe_gradient_check(build, x, rng)


def test_slice_keeps_a_box(rng):
    to_end = np.iinfo(np.int64).max

    def build(b, x):
        axis0 = b.const([0], "a", np.int64)
        later = b.op("Slice", x, b.const([1], "s", np.int64), b.const([to_end], "e", np.int64), axis0)
        earlier = b.op("Slice", x, b.const([0], "s0", np.int64), b.const([-1], "e0", np.int64), axis0)
        diff = b.op("Sub", later, earlier)  # (3, 3, 5)
        box = b.op("Slice", diff, b.const([1, 1], "s2", np.int64), b.const([-1, -2], "e2", np.int64),
                   b.const([1, 2], "a2", np.int64))  # (3, 1, 2)
        return b.op("Mul", box, box)

    _probe_gradient_check(build, rng.standard_normal((4, 3, 5)).astype(np.float32), rng)


def test_gram_matmul(rng):
    def build(b, x):
        return b.op("MatMul", x, b.op("Transpose", x, perm=[1, 0]))

    _probe_gradient_check(build, rng.standard_normal((3, 5)).astype(np.float32), rng)


def test_matmul_with_constant(rng):
    m = rng.standard_normal((4, 2)).astype(np.float32)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    _probe_gradient_check(lambda b, v: b.op("MatMul", v, b.const(m, "m")), x, rng)


def test_reshape_transpose_unsqueeze(rng):
    def build(b, x):
        y = b.op("Transpose", x, perm=[2, 0, 1])
        y = b.op("Unsqueeze", y, b.const([0], "ax", np.int64))
        return b.op("Reshape", y, b.const([4, -1], "shape", np.int64))

    _probe_gradient_check(build, rng.standard_normal((3, 2, 4)).astype(np.float32), rng)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_broadcast_elementwise(rng, op):
    other = rng.uniform(0.5, 1.5, (3, 1)).astype(np.float32)

    def build(b, x):
        mixed = b.op(op, x, b.const(other, "other"))  # constant broadcast along the last axis
        return b.op(op, mixed, b.op("Relu", x))  # both operands depend on x

    _probe_gradient_check(build, rng.uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32), rng)


def test_scalar_operand_gets_summed_gradient(rng):
    # x is a scalar multiplied into a tensor: its gradient is the sum over the broadcast
    t = rng.standard_normal((3, 4)).astype(np.float32)

    def build(b, x):
        return b.op("Mul", b.const(t, "t"), x)

    _probe_gradient_check(build, np.asarray(0.7, dtype=np.float32), rng)


@pytest.mark.parametrize("shape,other", [((3, 1), (2, 3, 4)), ((1, 3, 1), (2, 3, 1)), ((2, 1, 4), (2, 5, 4))])
def test_a_broadcast_operand_gets_the_sum_over_its_broadcast_axes(rng, shape, other):
    """x itself is broadcast: leading axes it lacks and its 1s facing a longer axis are summed, and only those
    (a 1 facing a 1 is not broadcast)."""
    t = rng.standard_normal(other).astype(np.float32)

    def build(b, x):
        return b.op("Mul", b.const(t, "t"), b.op("Add", x, b.const(np.float32(0.5), "half")))

    _probe_gradient_check(build, rng.uniform(0.5, 1.5, shape).astype(np.float32), rng)


def test_reductions_sum_neg(rng):
    def build(b, x):
        s = b.op("ReduceSumSquare", x, axes=[1], keepdims=0)  # (2, 4)
        r = b.op("ReduceSum", x, b.const([1], "axes", np.int64), keepdims=1)  # (2, 1, 4)
        both = b.op("Sum", b.op("Unsqueeze", s, b.const([1], "ax1", np.int64)), r, b.op("Neg", r))
        return b.op("Identity", both)

    _probe_gradient_check(build, rng.standard_normal((2, 3, 4)).astype(np.float32), rng)


def test_only_paths_from_wrt_are_differentiated():
    """Inputs that do not depend on the image get no gradient nodes at all."""
    b = GraphBuilder(onnx.GraphProto(name="t"))
    b.add_input("x", [2])
    b.add_input("target", [2])
    diff = b.op("Sub", "x", "target")
    b.op("ReduceSumSquare", diff, keepdims=0, outputs=["loss"])
    b.add_output("loss", [])
    model = add_gradient(make_model(b.graph, {}), of="loss", wrt="x", grad_name="grad")
    assert not any(n.op_type == "Neg" for n in model.graph.node)  # d/d target of Sub was never built
    session = _session(model)
    grad = session.run(["grad"], {"x": np.array([3, 1], np.float32), "target": np.array([1, 1], np.float32)})[0]
    np.testing.assert_allclose(grad, [4, 0])


def test_unsupported_op_is_reported():
    b = GraphBuilder(onnx.GraphProto(name="t"))
    b.add_input("x", [2])
    b.op("ReduceSum", b.op("Sin", "x"), keepdims=0, outputs=["loss"])
    b.add_output("loss", [], TensorProto.FLOAT)
    with pytest.raises(NotImplementedError, match="Sin"):
        add_gradient(make_model(b.graph, {}), of="loss", wrt="x", grad_name="grad")


def test_exported_graph_uses_standard_ops_only(bundled_weights):
    from helpers import shallow_layers

    from stylerun.network.export import build_models

    loss, targets = build_models(bundled_weights, shallow_layers("avg"))
    for model in (loss, targets):
        assert {o.domain for o in model.opset_import} == {""}
        assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)


def _relu_pool_graph() -> onnx.ModelProto:
    """loss = sum(MaxPool(Relu(x))) + sum(Relu(x2)): one Relu feeding only a MaxPool, one feeding the loss."""
    b = GraphBuilder(onnx.GraphProto(name="t"))
    b.add_input("x", [1, 2, 4, 4])
    pooled = b.op("MaxPool", b.op("Relu", "x"), kernel_shape=[2, 2], strides=[2, 2])
    plain = b.op("Relu", b.op("Mul", "x", b.const(np.float32(2.0), "two")))
    total = b.op("Add", b.op("ReduceSum", pooled, keepdims=0), b.op("ReduceSum", plain, keepdims=0))
    b.op("Identity", total, outputs=["loss"])
    b.add_output("loss", [])
    return make_model(b.graph, {})


@pytest.mark.parametrize("relu,mask", [("sign", "Sign"), ("hardsigmoid", "HardSigmoid"), ("where", "Where")])
@pytest.mark.parametrize("pool", ["fused", "separate"])
def test_each_flavour_builds_the_graph_it_names(relu, mask, pool):
    """The flavours give one gradient (test_perf_equivalence.py) but not one speed: the one asked for is built.
    A fused pooling takes the Relu's mask at the pooled size, from the MaxPool's output."""
    model = add_gradient(_relu_pool_graph(), of="loss", wrt="x", grad_name="grad",
                         flavours=autodiff.Flavours(relu=relu, pool=pool))
    made_by = {out: node for node in model.graph.node for out in node.output}
    kinds = {node.op_type for node in model.graph.node}
    assert mask in kinds and not ({"Sign", "HardSigmoid", "Where"} - {mask}) & kinds, kinds

    def source(node: onnx.NodeProto) -> str:  # what a mask is taken from: Sign(y), HardSigmoid(y), Where(y > 0, ..)
        y = made_by[node.input[0]].input[0] if node.op_type == "Where" else node.input[0]
        return made_by[y].op_type

    masked = {source(node) for node in model.graph.node if node.op_type == mask}
    assert masked == ({"MaxPool", "Relu"} if pool == "fused" else {"Relu"}), masked


def test_flavours_name_their_choices():
    assert autodiff.Flavours(gram="generic", pool="separate").gram == "generic"
    for name in ("conv", "relu", "gram", "pool"):
        with pytest.raises(ValueError, match=rf"^{name} adjoint flavour must be one of \(.*\), got 'nope'$"):
            autodiff.Flavours(**{name: "nope"})
