"""Presets: named sets of option values, each one function with a docstring saying where its values come from.

A preset supplies values for other options; options given explicitly win over it (the CLI
knows which flags were given, the Python API which keywords, and a checkpoint or a JSON
job stores the resolved options). `resolve` is the one place that applies a preset;
`options.TransferOptions.replace` and `from_dict` call it.

There is no ``paper`` preset (Gatys et al. 2016): the paper's average pooling, layers and
white-noise start are stated, but its network is a VGG19 normalized to mean activation 1
(not the bundled Caffe weights), so its α/β values mean something else here, and its
image sizes and iteration counts are not given; a preset would claim a fidelity it lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stylerun.vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS


def seed() -> dict[str, Any]:
    """The original project's configuration: ryanchankh/style_transfer at its last commit.

    Where each value comes from (its main.py and VGG builder):

    * ``pooling="avg"``: VGG19 from MatConvNet's imagenet-vgg-verydeep-19.mat, built with
      average pooling (the builder's default). MatConvNet's file holds the Caffe network
      with conv1_1's input channels in RGB order; stylerun's bundled Caffe weights are the
      same network.
    * ``swap_red_blue=True``: it subtracts [103.939, 116.779, 123.68] in R, G, B order and
      then flips the channels to B, G, R, but the MatConvNet network expects R, G, B: it
      sees red and blue swapped. With the Caffe weights that is R − 103.939, G − 116.779,
      B − 123.68 in the network's channels 0, 1, 2 (Caffe's mean, RGB order instead of BGR).
    * ``size=None``: the image at the content photo's own size (1024×768 for its Tübingen
      photo); the style image is stretched to it (stylerun's default, no `style_scale`).
    * ``init="random"``, ``iterations=1000``, ``scales=1``: a uniform random initial image and
      1000 L-BFGS-B iterations (TensorFlow's ScipyOptimizerInterface) at the one size, not
      stylerun's coarse-to-fine schedule.
    * ``smoothness=0``: no total-variation term.
    * ``alpha=1e-6``, ``beta=1``, content relu4_2, style relu1_1…relu5_1 at 0.2: its README's
      values; the content and style terms are stylerun's (½·Σ(F−P)² and Σ w/(4N²M²)·Σ(G−A)²).

    What differs from the original: stylerun's L-BFGS-B keeps every pixel in 0..255 (the
    original had no bounds); the random start is stylerun's uniform 0..255 noise with
    `seed` 0, not TensorFlow's; the optimizer is SciPy's L-BFGS-B driven by stylerun
    (float32 network, float64 optimizer, history 10), not TensorFlow's interface to it;
    and the bundled Caffe weights are 8-bit quantized. Its Figure 3 images were committed a
    day before the README first claimed 1e-6: the main.py of that day had α = 1e-3, the
    same layers (named conv4_2 and conv1_1…conv5_1, outputs after the ReLU) and a 512×512
    shape. For those, add ``alpha=1e-3`` and resize the photo to 512×512 first (`size`
    keeps the aspect ratio).
    """
    return {
        "pooling": "avg",
        "swap_red_blue": True,
        "size": None,
        "init": "random",
        "iterations": 1000,
        "scales": 1,
        "smoothness": 0.0,
        "alpha": 1e-6,
        "beta": 1.0,
        "content_layers": dict(DEFAULT_CONTENT_LAYERS),
        "style_layers": dict(DEFAULT_STYLE_LAYERS),
    }


#: Every preset by name; the name is what `--preset` and ``preset=`` take.
PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"seed": seed}


def resolve(given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` options with their preset's values beneath them: what is given wins.

    A style strength given with a preset replaces the preset's α and β, and a TV weight its
    smoothness (a measured and an explicit weighting cannot both apply). An unknown preset name is left for the option's
    own check to refuse.
    """
    name = given.get("preset")
    if not isinstance(name, str) or name not in PRESETS:
        return dict(given)
    values = PRESETS[name]()
    if given.get("style_strength") is not None:
        values = {k: v for k, v in values.items() if k not in ("alpha", "beta")}
    if given.get("tv_weight") is not None:
        values.pop("smoothness", None)
    return {**values, **given}
