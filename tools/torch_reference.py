"""The Gatys loss and its gradient in PyTorch: a development-only reference for tools/bench.py.

Not part of the package and never imported by it: this file and the tests are the only
places torch may appear. It rebuilds exactly what `stylerun.forward` exports:

* VGG19 from the same bundled weights (`stylerun.weights.load_bundled()`), truncated at
  the deepest requested layer;
* the same input convention: RGB 0..255 minus `forward.rgb_mean`, with channel order and
  scale folded into conv1_1's kernel (`forward._first_conv_folded`);
* the same loss formulas (see forward.py's docstring), with the gradient from autograd.

`TorchLoss` has the duck type `stylerun.optimizers.optimize` needs (``shape``,
``loss_and_grad``, ``last_terms``), so the very same L-BFGS-B loop runs on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from stylerun.network.loss_graph import LayerSet, _first_conv_folded, rgb_mean
from stylerun.vgg import truncated
from stylerun.weights.bundled import load_bundled
from stylerun.weights.vgg19 import VGG19Weights


class TorchVGG:
    def __init__(self, weights: VGG19Weights, layers: LayerSet):
        self.layers = layers
        self.plan = []
        for layer in truncated(layers.content + layers.style):
            if layer.kind == "conv":
                kernel, bias = _first_conv_folded(weights) if layer.name == "conv1_1" else weights.convs[layer.name]
                self.plan.append((layer.name, "conv", torch.from_numpy(np.ascontiguousarray(kernel)),
                                  torch.from_numpy(np.ascontiguousarray(bias))))
            else:
                self.plan.append((layer.name, layer.kind, None, None))
        self.mean = torch.from_numpy(rgb_mean(weights))

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(H, W, 3) RGB 0..255 -> every wanted layer's (1, C, h, w) output."""
        wanted = set(self.layers.content) | set(self.layers.style)
        x = image.permute(2, 0, 1).unsqueeze(0) - self.mean
        out = {}
        for name, kind, kernel, bias in self.plan:
            if kind == "conv":
                x = F.conv2d(x, kernel, bias, padding=1)
            elif kind == "relu":
                x = F.relu(x)
            elif self.layers.pooling == "max":
                x = F.max_pool2d(x, 2, 2)
            else:
                x = F.avg_pool2d(x, 2, 2)
            if name in wanted:
                out[name] = x
        return out


def gram(feature: torch.Tensor) -> torch.Tensor:
    flat = feature.reshape(feature.shape[1], -1)
    return flat @ flat.t()


class TorchLoss:
    """Same constructor arguments as the parts of `stylerun.StyleLoss` the bench uses."""

    def __init__(self, content: np.ndarray, style: np.ndarray, content_layers: dict[str, float],
                 style_layers: dict[str, float], alpha: float = 1e-6, beta: float = 1.0, pooling: str = "max",
                 threads: int | None = None, weights: VGG19Weights | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.layers = LayerSet.of(content_layers, style_layers, pooling)
        self.net = TorchVGG(weights if weights is not None else load_bundled(), self.layers)
        self.content_weights = dict(content_layers)
        self.style_weights = dict(style_layers)
        self.alpha, self.beta = alpha, beta
        with torch.no_grad():
            cf = self.net.features(torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32)))
            sf = self.net.features(torch.from_numpy(np.ascontiguousarray(style, dtype=np.float32)))
            self.content_targets = {n: cf[n].clone() for n in self.layers.content}
            self.style_targets = {n: gram(sf[n]) for n in self.layers.style}
        self.shape = tuple(content.shape)
        self.last_terms = (math.nan, math.nan)

    def terms(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.net.features(image)
        content = image.new_zeros(())
        for n in self.layers.content:
            sq = ((feats[n] - self.content_targets[n]) ** 2).sum()
            content = content + self.content_weights.get(n, 0.0) * 0.5 * sq
        style = image.new_zeros(())
        for n in self.layers.style:
            f = feats[n]
            channels, m = f.shape[1], f.shape[2] * f.shape[3]
            diff = (gram(f) - self.style_targets[n]) * (1.0 / (m * 2.0 * channels))
            style = style + self.style_weights.get(n, 0.0) * (diff**2).sum()
        return self.alpha * content + self.beta * style, content, style

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        image = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).requires_grad_(True)
        loss, content, style = self.terms(image)
        loss.backward()
        self.last_terms = (float(content.detach()), float(style.detach()))
        return float(loss.detach()), image.grad.numpy()
