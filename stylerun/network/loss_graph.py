"""VGG19 forward and the Gatys loss, as ONNX graphs (no gradient yet: see `network/autodiff.py`).

Two graphs are built from one description:

* the **targets** graph: image -> content features P_l and style Gram matrices A_l;
* the **loss** graph: image, targets, per-layer weights, alpha, beta -> loss terms.

Losses, exactly as implemented (F_l: the image's features at layer l, shaped N_l x M_l
with N_l channels and M_l = height * width; G_l = F_l F_l^T):

    content = sum_l  w_l * 1/2 * sum (F_l - P_l)^2
    style   = sum_l  w_l * sum ((G_l - A_l) / (2 N_l M_l))^2      (= w_l/(4 N^2 M^2) sum (G-A)^2)
    tv      = sum (x[i+1, j] - x[i, j])^2 + sum (x[i, j+1] - x[i, j])^2   (x: the image, 0..255)
    loss    = alpha * content + beta * style + tv_weight * tv

The input image is ``(H, W, 3)`` RGB in 0..255, as an image file decodes. The weights'
input convention (channel order, scale, mean, std) is applied inside the graph: the mean
as one Sub, and the channel order and per-channel scale folded exactly into conv1_1's
kernel, which costs nothing at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from stylerun.errors import InputError
from stylerun.network.graph import GraphBuilder, make_model
from stylerun.version import __version__
from stylerun.vgg import POOLINGS, channels, sort_layers, truncated
from stylerun.weights.vgg19 import VGG19Weights, swapped

IMAGE = "image"
LOSS, CONTENT_LOSS, STYLE_LOSS, TV_LOSS = "loss", "content_loss", "style_loss", "tv_loss"
CONTENT_WEIGHTS, STYLE_WEIGHTS, ALPHA, BETA = "content_weights", "style_weights", "alpha", "beta"
TV_WEIGHT = "tv_weight"
STYLE_GUIDE = "style_guide"
#: Tiled evaluation (`tiling`): the tile's own positions (1) against its halo (0), (H, W).
INTERIOR = "interior"


def content_target_name(layer: str) -> str:
    return f"content_target.{layer}"


def style_target_name(layer: str) -> str:
    return f"style_target.{layer}"


def style_energy_name(layer: str) -> str:
    return f"style_energy.{layer}"


def style_slope_name(layer: str) -> str:
    return f"style_slope.{layer}"


@dataclass(frozen=True)
class LayerSet:
    """Which layers a model reads: the export's identity, along with weights and pooling."""

    content: tuple[str, ...]
    style: tuple[str, ...]
    pooling: str = "max"
    regions: int = 0  # guided style: number of masked regions, each with its own Gram target; 0 = unguided
    #: The network sees the image with red and blue swapped (the original project's input, see `presets.seed`).
    swap_red_blue: bool = False

    @classmethod
    def of(cls, content, style, pooling: str = "max", regions: int = 0, swap_red_blue: bool = False) -> LayerSet:
        if pooling not in POOLINGS:
            raise InputError(f"unknown pooling '{pooling}'; use one of: {', '.join(POOLINGS)}")
        content_t, style_t = tuple(sort_layers(content)), tuple(sort_layers(style))
        if not content_t and not style_t:
            raise InputError("no content or style layers requested")
        if regions < 0:
            raise InputError(f"number of guided regions must be >= 0, got {regions}")
        return cls(content_t, style_t, pooling, int(regions), bool(swap_red_blue))

    @property
    def deepest(self) -> str:
        return truncated(self.content + self.style)[-1].name

    def metadata(self) -> dict[str, str]:
        return {
            "content_layers": ",".join(self.content),
            "style_layers": ",".join(self.style),
            "pooling": self.pooling,
            "regions": str(self.regions),
            "swap_red_blue": "true" if self.swap_red_blue else "false",
        }


def network_weights(weights: VGG19Weights, layers: LayerSet) -> VGG19Weights:
    """The weights with the input convention the export applies: theirs, or with red and blue swapped."""
    return replace(weights, convention=swapped(weights.convention)) if layers.swap_red_blue else weights


def _rgb_index(channel_order: str) -> list[int]:
    """For each network input channel, the RGB channel it reads."""
    return [2, 1, 0] if channel_order == "BGR" else [0, 1, 2]


def _first_conv_folded(weights: VGG19Weights) -> tuple[np.ndarray, np.ndarray]:
    """conv1_1's kernel rewritten to take RGB 0..255 minus `rgb_mean` directly.

    The network wants ``(x[order] * scale - mean) / std``; with zero padding applied after
    the mean subtraction, scaling input channel c by ``scale/std[c]`` and reordering are
    linear maps that move into the kernel exactly.
    """
    conv = weights.convention
    kernel, bias = weights.convs["conv1_1"]
    folded = np.empty_like(kernel)
    for net_c, rgb_c in enumerate(_rgb_index(conv.channel_order)):
        folded[:, rgb_c] = kernel[:, net_c] * (conv.scale / conv.std[net_c])
    return folded.astype(np.float32), bias


def rgb_mean(weights: VGG19Weights) -> np.ndarray:
    """The convention's mean in RGB order and 0..255 units, shaped for NCHW broadcast."""
    conv = weights.convention
    mean = np.zeros(3, dtype=np.float64)
    for net_c, rgb_c in enumerate(_rgb_index(conv.channel_order)):
        mean[rgb_c] = conv.mean[net_c] / conv.scale
    return mean.reshape(1, 3, 1, 1).astype(np.float32)


def _features(b: GraphBuilder, weights: VGG19Weights, layers: LayerSet) -> dict[str, str]:
    """Emit the truncated VGG19 on input IMAGE; return every layer's output value name."""
    x = b.op("Transpose", IMAGE, perm=[2, 0, 1], hint="chw")
    x = b.op("Unsqueeze", x, b.const([0], "axis0", np.int64), hint="nchw")
    x = b.op("Sub", x, b.const(rgb_mean(weights), "rgb_mean"), hint="centered")
    outputs: dict[str, str] = {}
    for layer in truncated(layers.content + layers.style):
        if layer.kind == "conv":
            if layer.name not in weights.convs:
                raise InputError(f"weights from {weights.source} stop before layer '{layer.name}'")
            kernel, bias = _first_conv_folded(weights) if layer.name == "conv1_1" else weights.convs[layer.name]
            x = b.op(
                "Conv", x, b.const(kernel, f"{layer.name}.weight"), b.const(bias, f"{layer.name}.bias"),
                kernel_shape=[3, 3], pads=[1, 1, 1, 1], hint=layer.name,
            )
        elif layer.kind == "relu":
            x = b.op("Relu", x, hint=layer.name)
        else:
            pool = "MaxPool" if layers.pooling == "max" else "AveragePool"
            x = b.op(pool, x, kernel_shape=[2, 2], strides=[2, 2], hint=layer.name)
        outputs[layer.name] = x
    return outputs


def _guides(b: GraphBuilder, layers: LayerSet) -> dict[str, str]:
    """STYLE_GUIDE (R, H, W) at every layer's resolution as (R, 1, h, w)."""
    return _pooled(b, b.op("Unsqueeze", STYLE_GUIDE, b.const([1], "axis1", np.int64), hint="guide"), layers, "guide")


def _pooled(b: GraphBuilder, mask: str, layers: LayerSet, hint: str) -> dict[str, str]:
    """An (R, 1, H, W) mask at every layer's resolution.

    Masks follow the network's poolings with average pooling, so a layer's mask value is
    the fraction of its receptive block that lies in the region.
    """
    masks = {}
    for layer in truncated(layers.content + layers.style):
        if layer.kind == "pool":
            mask = b.op("AveragePool", mask, kernel_shape=[2, 2], strides=[2, 2], hint=f"{hint}.{layer.name}")
        masks[layer.name] = mask
    return masks


def _guided_grams(b: GraphBuilder, feature: str, guide: str, layer: str, regions: int) -> list[str]:
    """Per region r, the Gram of the masked features normalized by the mask's energy.

    G_r = (F m_r)(F m_r)^T / sum(m_r^2): with a mask of ones this is G / M, so guided and
    unguided losses agree; the normalization makes regions of any area comparable.
    """
    energy = b.op("Add", _energies(b, guide), b.const(1e-8, "tiny"))
    return [b.op("Div", gram, b.op("Gather", energy, b.const(r, "index", np.int64), axis=0),
                 hint=f"{layer}.guided_gram{r}")
            for r, gram in enumerate(_region_grams(b, feature, guide, layer, regions))]


def _region_grams(b: GraphBuilder, feature: str, masks: str, layer: str, regions: int) -> list[str]:
    """Per region, the unnormalized Gram of the features under its mask (R, 1, h, w)."""
    out = []
    for r in range(regions):
        mask = b.op("Gather", masks, b.const([r], "region", np.int64), axis=0)  # (1, 1, h, w)
        out.append(_gram(b, b.op("Mul", feature, mask, hint=f"{layer}.masked{r}"), channels(layer), layer))
    return out


def _energies(b: GraphBuilder, masks: str, outputs: list[str] | int = 1) -> str:
    """Each region mask's sum of squares, (R,)."""
    return b.op("ReduceSumSquare", masks, axes=[1, 2, 3], keepdims=0, outputs=outputs)


def _gram(b: GraphBuilder, feature: str, n_channels: int, layer: str) -> str:
    flat = b.op("Reshape", feature, b.const([n_channels, -1], "shape_c_m", np.int64), hint=f"{layer}.flat")
    return b.op("MatMul", flat, b.op("Transpose", flat, perm=[1, 0]), hint=f"{layer}.gram")


def _spatial_size(b: GraphBuilder, feature: str) -> str:
    """M_l = height * width of a feature map, as a float scalar (dynamic)."""
    shape = b.op("Shape", feature)
    hw = b.op("Slice", shape, b.const([2], "i2", np.int64), b.const([4], "i4", np.int64))
    return b.op("Cast", b.op("ReduceProd", hw, keepdims=0), to=TensorProto.FLOAT, hint="m")


def _total_variation(b: GraphBuilder) -> str:
    """Squared differences of vertically and horizontally adjacent pixels of IMAGE, summed."""
    to_end = np.iinfo(np.int64).max
    terms = []
    for axis in (0, 1):
        axes = b.const([axis], f"tv_axis{axis}", np.int64)
        later = b.op("Slice", IMAGE, b.const([1], "i1", np.int64), b.const([to_end], "to_end", np.int64), axes)
        earlier = b.op("Slice", IMAGE, b.const([0], "i0", np.int64), b.const([-1], "minus1", np.int64), axes)
        terms.append(b.op("ReduceSumSquare", b.op("Sub", later, earlier), keepdims=0, hint=f"tv{axis}"))
    return b.op("Add", *terms, outputs=[TV_LOSS])


def _new_builder() -> GraphBuilder:
    b = GraphBuilder(onnx.GraphProto(name="stylerun"))
    b.add_input(IMAGE, ["height", "width", 3])
    return b


def _metadata(weights: VGG19Weights, layers: LayerSet, kind: str) -> dict[str, str]:
    return {
        "stylerun.kind": kind,
        "stylerun.version": __version__,
        **{f"stylerun.{k}": v for k, v in layers.metadata().items()},
        # the file's name only: a model shared with others must not reveal the exporter's folders
        "stylerun.weights": Path(weights.source).name,
        "stylerun.weights_sha256": weights.fingerprint,
        "stylerun.input_convention": f"{weights.convention.name}: {weights.convention.describe()}",
    }


def build_targets_model(weights: VGG19Weights, layers: LayerSet) -> onnx.ModelProto:
    """image -> content_target.<l> (1, N, h, w) and style_target.<l> (N, N).

    Guided (layers.regions = R > 0): also input style_guide (R, H, W), the style image's
    masks, and style_target.<l> is (R, N, N), each region's normalized guided Gram.
    """
    weights = network_weights(weights, layers)
    b = _new_builder()
    feats = _features(b, weights, layers)
    guides = _guides(b, layers) if layers.regions else {}
    if layers.regions:
        b.add_input(STYLE_GUIDE, [layers.regions, "height", "width"])
    for layer in layers.content:
        b.rename_output(feats[layer], content_target_name(layer))
        b.add_output(content_target_name(layer), [1, None, None, None])
    for layer in layers.style:
        n = channels(layer)
        if layers.regions:
            grams = _guided_grams(b, feats[layer], guides[layer], layer, layers.regions)
            stacked = [b.op("Unsqueeze", g, b.const([0], "axis0", np.int64)) for g in grams]
            b.op("Concat", *stacked, axis=0, outputs=[style_target_name(layer)])
            b.add_output(style_target_name(layer), [layers.regions, n, n])
        else:
            b.rename_output(_gram(b, feats[layer], n, layer), style_target_name(layer))
            b.add_output(style_target_name(layer), [n, n])
    doc = "VGG19 content features and style Gram matrices"
    return make_model(b.graph, _metadata(weights, layers, "targets"), doc=doc)


def build_loss_model(weights: VGG19Weights, layers: LayerSet) -> onnx.ModelProto:
    """The forward loss graph; `autodiff.add_gradient` later appends d loss / d image."""
    weights = network_weights(weights, layers)
    b = _new_builder()
    for layer in layers.content:
        b.add_input(content_target_name(layer), [1, channels(layer), f"{layer}_h", f"{layer}_w"])
    for layer in layers.style:
        n = channels(layer)
        b.add_input(style_target_name(layer), [layers.regions, n, n] if layers.regions else [n, n])
    if layers.regions:
        b.add_input(STYLE_GUIDE, [layers.regions, "height", "width"])
    b.add_input(CONTENT_WEIGHTS, [len(layers.content)])
    b.add_input(STYLE_WEIGHTS, [len(layers.style)])
    b.add_input(ALPHA, [])
    b.add_input(BETA, [])
    b.add_input(TV_WEIGHT, [])
    feats = _features(b, weights, layers)
    guides = _guides(b, layers) if layers.regions else {}

    def layer_weight(vector: str, i: int) -> str:
        return b.op("Gather", vector, b.const(i, "index", np.int64), axis=0)

    content_terms = []
    for i, layer in enumerate(layers.content):
        diff = b.op("Sub", feats[layer], content_target_name(layer), hint=f"{layer}.content_diff")
        sq = b.op("ReduceSumSquare", diff, keepdims=0)
        half = b.op("Mul", sq, b.const(0.5, "half"))
        content_terms.append(b.op("Mul", half, layer_weight(CONTENT_WEIGHTS, i), hint=f"{layer}.content"))
    style_terms = []
    for i, layer in enumerate(layers.style):
        n = channels(layer)
        if layers.regions:
            # sum_r ((G_r - A_r) / (2N))^2 with normalized guided Grams (see _guided_grams)
            squares = []
            for r, gram in enumerate(_guided_grams(b, feats[layer], guides[layer], layer, layers.regions)):
                target = b.op("Gather", style_target_name(layer), b.const(r, "index", np.int64), axis=0)
                diff = b.op("Mul", b.op("Sub", gram, target), b.const(0.5 / n, "half_over_n"))
                squares.append(b.op("ReduceSumSquare", diff, keepdims=0))
            sq = b.op("Sum", *squares)
        else:
            gram = _gram(b, feats[layer], n, layer)
            inv_norm = b.op("Reciprocal", b.op("Mul", _spatial_size(b, feats[layer]), b.const(2.0 * n, "two_n")))
            diff = b.op("Mul", b.op("Sub", gram, style_target_name(layer)), inv_norm, hint=f"{layer}.style_diff")
            sq = b.op("ReduceSumSquare", diff, keepdims=0)
        style_terms.append(b.op("Mul", sq, layer_weight(STYLE_WEIGHTS, i), hint=f"{layer}.style"))

    def total(terms: list[str], name: str) -> str:
        return b.op("Sum", *terms, outputs=[name]) if terms else b.op("Identity", b.const(0.0, "zero"), outputs=[name])

    content = total(content_terms, CONTENT_LOSS)
    style = total(style_terms, STYLE_LOSS)
    tv = b.op("Mul", TV_WEIGHT, _total_variation(b))
    b.op("Sum", b.op("Mul", ALPHA, content), b.op("Mul", BETA, style), tv, outputs=[LOSS])
    for name in (LOSS, CONTENT_LOSS, STYLE_LOSS, TV_LOSS):
        b.add_output(name, [])
    return make_model(b.graph, _metadata(weights, layers, "loss"), doc="Gatys et al. style-transfer loss on VGG19")


# --- tiled evaluation (see `tiling`) ---------------------------------------------------------


def _tile_graph(weights: VGG19Weights, layers: LayerSet) -> tuple[GraphBuilder, dict[str, str], dict, dict]:
    """A builder with IMAGE, INTERIOR and STYLE_GUIDE inputs: (builder, features, interior masks
    (1, 1, h, w), region masks restricted to the interior (R, 1, h, w)) per layer.

    A tile model always takes STYLE_GUIDE: unguided, it is one region of ones. Interior
    edges lie on the pooling grid, so pooling the product equals the product of the poolings
    and each pooled interior mask is 0 or 1.
    """
    b = _new_builder()
    b.add_input(INTERIOR, ["height", "width"])
    b.add_input(STYLE_GUIDE, [max(layers.regions, 1), "height", "width"])
    feats = _features(b, network_weights(weights, layers), layers)
    interior = b.op("Unsqueeze", INTERIOR, b.const([0, 1], "axes01", np.int64), hint="interior")
    regions = b.op("Mul", b.op("Unsqueeze", STYLE_GUIDE, b.const([1], "axis1", np.int64)), interior, hint="regions")
    return b, feats, _pooled(b, interior, layers, "interior"), _pooled(b, regions, layers, "guide")


def build_tile_targets_model(weights: VGG19Weights, layers: LayerSet) -> onnx.ModelProto:
    """Pass 1 of a tiled evaluation: a tile's contributions to the whole image's statistics.

    Outputs content_target.<l> (1, N, h, w), the tile's whole feature map (the caller keeps
    the interior), style_target.<l> (R, N, N), each region's unnormalized Gram over the
    interior, and style_energy.<l> (R,), each region mask's sum of squares there.
    """
    b, feats, _, masks = _tile_graph(weights, layers)
    regions = max(layers.regions, 1)
    for layer in layers.content:
        b.rename_output(feats[layer], content_target_name(layer))
        b.add_output(content_target_name(layer), [1, None, None, None])
    for layer in layers.style:
        n = channels(layer)
        stacked = [b.op("Unsqueeze", g, b.const([0], "axis0", np.int64))
                   for g in _region_grams(b, feats[layer], masks[layer], layer, regions)]
        b.op("Concat", *stacked, axis=0, outputs=[style_target_name(layer)])
        b.add_output(style_target_name(layer), [regions, n, n])
        _energies(b, masks[layer], [style_energy_name(layer)])
        b.add_output(style_energy_name(layer), [regions])
    return make_model(b.graph, _metadata(weights, layers, "tile-targets"), doc="Tiled evaluation, pass 1")


def build_tile_loss_model(weights: VGG19Weights, layers: LayerSet) -> onnx.ModelProto:
    """Pass 2 of a tiled evaluation: a surrogate loss whose image gradient on the tile is exact.

    With the whole image's Grams fixed, the Gatys loss is linear in each tile's interior Gram
    to first order: its gradient is that of 1/2 <D_r, H_r> summed over regions, H_r the
    interior's Gram and D_r = style_slope.<l> (R, N, N) computed from the global Grams
    (`tiling`). Content is the usual term over the interior with weights alpha * w_l.
    """
    b, feats, interior, masks = _tile_graph(weights, layers)
    regions = max(layers.regions, 1)
    b.add_input(CONTENT_WEIGHTS, [len(layers.content)])
    terms = []
    for i, layer in enumerate(layers.content):
        b.add_input(content_target_name(layer), [1, channels(layer), f"{layer}_h", f"{layer}_w"])
        diff = b.op("Mul", b.op("Sub", feats[layer], content_target_name(layer)), interior[layer])
        weight = b.op("Mul", b.op("Gather", CONTENT_WEIGHTS, b.const(i, "index", np.int64), axis=0),
                      b.const(0.5, "half"))
        terms.append(b.op("Mul", b.op("ReduceSumSquare", diff, keepdims=0), weight, hint=f"{layer}.content"))
    for layer in layers.style:
        n = channels(layer)
        b.add_input(style_slope_name(layer), [regions, n, n])
        for r, gram in enumerate(_region_grams(b, feats[layer], masks[layer], layer, regions)):
            slope = b.op("Gather", style_slope_name(layer), b.const(r, "index", np.int64), axis=0)
            inner = b.op("ReduceSum", b.op("Mul", slope, gram), keepdims=0)
            terms.append(b.op("Mul", inner, b.const(0.5, "half"), hint=f"{layer}.style{r}"))
    b.op("Sum", *terms, outputs=[LOSS])
    b.add_output(LOSS, [])
    return make_model(b.graph, _metadata(weights, layers, "tile-loss"), doc="Tiled evaluation, pass 2")
