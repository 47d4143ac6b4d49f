"""The VGG19 network as data: its layers, their names, and how a request truncates it.

Layer names follow the Caffe prototxt: ``conv1_1`` ... ``conv5_4``,
``relu1_1`` ... ``relu5_4``, ``pool1`` ... ``pool5``. Nothing here touches ONNX or weights;
`network/loss_graph.py` turns this description into a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from stylerun.errors import InputError

#: Convolutions per block, and output channels of each block.
_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv", "relu" or "pool"
    channels: int  # channels of this layer's output
    in_channels: int = 0  # conv only


def _build_layers() -> tuple[Layer, ...]:
    layers: list[Layer] = []
    channels = 3
    for block, (n_convs, width) in enumerate(_BLOCKS, start=1):
        for i in range(1, n_convs + 1):
            layers.append(Layer(f"conv{block}_{i}", "conv", width, channels))
            layers.append(Layer(f"relu{block}_{i}", "relu", width))
            channels = width
        layers.append(Layer(f"pool{block}", "pool", width))
    return tuple(layers)


LAYERS: tuple[Layer, ...] = _build_layers()
LAYER_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS)
CONV_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS if layer.kind == "conv")
#: Expected weight shape (OIHW) of every convolution.
CONV_SHAPES: dict[str, tuple[int, int, int, int]] = {
    layer.name: (layer.channels, layer.in_channels, 3, 3) for layer in LAYERS if layer.kind == "conv"
}
_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}

POOLINGS = ("max", "avg")
#: Each pool is 2x2 with stride 2: it halves both sides of the feature maps.
POOL = 2
DEFAULT_CONTENT_LAYERS = {"relu4_2": 1.0}
DEFAULT_STYLE_LAYERS = {f"relu{b}_1": 0.2 for b in range(1, 6)}


def check_layer(name: str) -> str:
    if name not in _INDEX:
        raise InputError(
            f"unknown layer '{name}'; VGG19 layers are conv1_1..conv5_4, relu1_1..relu5_4 and pool1..pool5"
        )
    return name


def layer_by_name(name: str) -> Layer:
    return LAYERS[_INDEX[check_layer(name)]]


def truncated(names: list[str] | tuple[str, ...]) -> tuple[Layer, ...]:
    """The prefix of VGG19 that ends at the deepest of `names`: nothing deeper is exported."""
    if not names:
        raise InputError("no layers requested")
    deepest = max(_INDEX[check_layer(n)] for n in names)
    return LAYERS[: deepest + 1]


def sort_layers(names) -> list[str]:
    """Layer names in network order, so that one layer set always gives one model."""
    return sorted(set(names), key=lambda n: _INDEX[check_layer(n)])


def parse_layer_weights(spec: str, what: str = "layers") -> dict[str, float]:
    """Parse ``"relu1_1:0.2,relu2_1:0.2"``; a layer given without ``:w`` gets 1/N of N layers.

    The 1/N default makes ``relu1_1,relu2_1,relu3_1,relu4_1,relu5_1`` mean the default's
    0.2 each, and a single bare layer mean weight 1.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise InputError(f"{what}: empty layer list; give e.g. 'relu4_2:1' or 'relu1_1,relu2_1'")
    result: dict[str, float] = {}
    for item in items:
        name, sep, weight_text = item.partition(":")
        name = check_layer(name.strip())
        if name in result:
            raise InputError(f"{what}: layer '{name}' is listed twice")
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                raise InputError(
                    f"{what}: weight '{weight_text}' of layer '{name}' is not a number "
                    "(use NAME:WEIGHT, e.g. relu1_1:0.2)"
                ) from None
            if not weight >= 0 or weight == float("inf"):
                raise InputError(f"{what}: weight of layer '{name}' must be a finite number >= 0, got {weight_text}")
        else:
            weight = 1.0 / len(items)
        result[name] = weight
    return result


def format_layer_weights(weights: dict[str, float]) -> str:
    return ",".join(f"{name}:{w:g}" for name, w in weights.items())


def channels(layer: str) -> int:
    """Channels of `layer`'s output."""
    return layer_by_name(layer).channels


def pools_before(layer: str) -> int:
    """Number of pools up to and including `layer`."""
    return sum(1 for previous in LAYERS[: _INDEX[check_layer(layer)] + 1] if previous.kind == "pool")


def spatial_size(layer: str, height: int, width: int) -> tuple[int, int]:
    """(height, width) of `layer`'s feature map for an input of `height` x `width`.

    Convolutions are 3x3 with padding 1 (size kept); each 2x2 stride-2 pool up to and
    including `layer` halves both sides, rounding down (ONNX pooling without ceil mode),
    which is one division by the pools' product.
    """
    scale = POOL ** pools_before(layer)
    return height // scale, width // scale
