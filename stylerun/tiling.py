"""Exact tiled loss and gradient: the whole image's Gatys loss evaluated tile by tile.

A Gram matrix is a sum over positions, so it can be gathered tile by tile. Pass 1 runs the
network forward on each tile plus a halo that covers the receptive field of the deepest
layer (tile origins and halo on the 2^pools grid, so poolings line up and a halo comes
from the real image; only the true image border meets the network's zero padding) and
sums the interior positions' F F^T per style layer and (F - P)^2 per content layer.
From the global Grams, dL/dF of every interior position is known in closed form
(w (G - A) F / (N^2 M^2) for style, α w (F - P) for content). Pass 2 back-propagates that
cotangent through each tile with a second exported model whose content layers are all the
layers used: with content target P' = F - C / k and weight k its gradient is exactly J^T C.
Each tile's image gradient is added where the tile lies. TV is computed on the whole
image (it is cheap and local). Peak memory is one tile's network, not the image's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .forward import IMAGE, LayerSet, content_target_name, style_target_name
from .runtime import LossModel
from .vgg import LAYERS, truncated

#: Each 2x2 pool halves the feature maps; tile origins sit on this multiple of the pools' product.
POOL = 2


def pools_before(layer: str) -> int:
    """Number of pools up to and including `layer`."""
    return sum(1 for lay in truncated([layer]) if lay.kind == "pool")


def halo(layers: LayerSet) -> int:
    """Pixels of context a tile needs on each side: the deepest layer's receptive-field radius,
    rounded up to the pooling grid."""
    radius, scale = 0, 1
    for lay in truncated(layers.content + layers.style):
        if lay.kind == "conv":
            radius += scale
        elif lay.kind == "pool":
            radius += scale
            scale *= POOL
    grid = grid_of(layers)
    return -(-radius // grid) * grid


def grid_of(layers: LayerSet) -> int:
    return POOL ** pools_before(layers.deepest)


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) of each tile along one side; starts on multiples of `tile`."""
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


def aligned_tile(tile_size: int, layers: LayerSet) -> int:
    """`tile_size` rounded down to the pooling grid (at least one grid step)."""
    grid = grid_of(layers)
    return max(grid, tile_size // grid * grid)


def tiles(h: int, w: int, tile: int, pad: int) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Each tile as (interior y0, y1, x0, x1) and (halo'd y0, y1, x0, x1), clipped to the image."""
    for y0, y1 in tile_spans(h, tile):
        for x0, x1 in tile_spans(w, tile):
            yield (y0, y1, x0, x1), (max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad))


def _feature_window(layer: str, inner, outer, h: int, w: int) -> tuple[slice, slice]:
    """The interior's rows and columns of `layer`'s map inside the halo'd tile's map.

    An interior that ends at the image's edge keeps the whole map to its end (floor pooling).
    """
    s = POOL ** pools_before(layer)
    y0, y1, x0, x1 = inner
    oy, _, ox, _ = outer
    ry = slice((y0 - oy) // s, None if y1 == h else (y1 - oy) // s)
    rx = slice((x0 - ox) // s, None if x1 == w else (x1 - ox) // s)
    return ry, rx


class TiledLoss:
    """A `LossModel` stand-in (`layers`, `targets`, `bind`, `loss_and_grad`) that works tile by tile.

    `aux` is a `LossModel` exported for `cotangent_layers(layers)` (every layer used as a
    content layer, unguided); `layers` are the loss's own. Nothing here ever runs the network
    on the whole image, so peak memory is one halo'd tile's.
    """

    def __init__(self, aux: LossModel, layers: LayerSet, tile_size: int):
        self.aux, self.layers = aux, layers
        self.tile = aligned_tile(tile_size, layers)
        self.pad = halo(layers)
        self.names = cotangent_layers(layers).content
        self._forward = aux.targets_session  # kept: `bind` drops the model's own handle
        self._outputs = [content_target_name(n) for n in self.names]
        self.bind({}, [0.0] * len(layers.content), [0.0] * len(layers.style), 1.0, 1.0)

    @property
    def provider(self) -> str:
        return self.aux.provider

    def bind(self, targets: dict[str, np.ndarray], content_weights, style_weights, alpha: float, beta: float,
             tv_weight: float = 0.0) -> None:
        """What stays fixed during optimization (as `LossModel.bind`)."""
        self.bound = targets
        self.content_weights = dict(zip(self.layers.content, content_weights, strict=True))
        self.style_weights = dict(zip(self.layers.style, style_weights, strict=True))
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)

    def targets(self, image: np.ndarray, guide: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Content features and style Grams of an (H, W, 3) image, as `LossModel.targets`, tile by tile."""
        if guide is not None:
            raise ValueError("tiled targets are unguided")
        x = np.ascontiguousarray(image, dtype=np.float32)
        h, w, _ = x.shape
        out = {content_target_name(n): np.zeros((1, lay_channels(n), *_map_size(n, h, w)), np.float32)
               for n in self.layers.content}
        grams = {n: 0.0 for n in self.layers.style}
        for inner, outer in tiles(h, w, self.tile, self.pad):
            feats = self._features(x[outer[0]:outer[1], outer[2]:outer[3]])
            for n in self.layers.content:
                ry, rx = _feature_window(n, inner, outer, h, w)
                ty, tx = _feature_window(n, inner, (0, h, 0, w), h, w)
                out[content_target_name(n)][0][:, ty, tx] = feats[n][:, ry, rx]
            for n in self.layers.style:
                grams[n] = grams[n] + self._interior_gram(n, feats, inner, outer, h, w)
        out.update({style_target_name(n): np.asarray(g, np.float32) for n, g in grams.items()})
        return out

    def _interior_gram(self, n: str, feats, inner, outer, h: int, w: int) -> np.ndarray:
        ry, rx = _feature_window(n, inner, outer, h, w)
        f = feats[n][:, ry, rx].reshape(feats[n].shape[0], -1).astype(np.float64)
        return f @ f.T

    def _features(self, image: np.ndarray) -> dict[str, np.ndarray]:
        values = self._forward.run(self._outputs, {IMAGE: np.ascontiguousarray(image, dtype=np.float32)})
        return {n: v[0] for n, v in zip(self.names, values, strict=True)}  # (N, h, w)

    def _pass1(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """Global Grams (float64) of the style layers and the content loss."""
        h, w, _ = x.shape
        grams = {n: 0.0 for n in self.layers.style}
        content = 0.0
        for inner, outer in tiles(h, w, self.tile, self.pad):
            feats = self._features(x[outer[0]:outer[1], outer[2]:outer[3]])
            for n in self.layers.style:
                grams[n] = grams[n] + self._interior_gram(n, feats, inner, outer, h, w)
            for n in self.layers.content:
                content += 0.5 * self.content_weights[n] * float(np.sum(self._content_residual(n, feats, inner, outer,
                                                                                              h, w) ** 2))
        return grams, content

    def _content_residual(self, n: str, feats, inner, outer, h: int, w: int) -> np.ndarray:
        ry, rx = _feature_window(n, inner, outer, h, w)
        f = feats[n][:, ry, rx].astype(np.float64)
        target = self.bound[content_target_name(n)][0]
        ty, tx = _feature_window(n, inner, (0, h, 0, w), h, w)
        return f - target[:, ty, tx]

    def _style_terms(self, grams: dict[str, np.ndarray], h: int, w: int) -> tuple[float, dict[str, np.ndarray]]:
        """The style loss and, per layer, the matrix D with dL_style/dF = D F."""
        style, slopes = 0.0, {}
        for n in self.layers.style:
            c = grams[n].shape[0]
            s = POOL ** pools_before(n)
            m = float((h // s) * (w // s))
            diff = grams[n] - self.bound[style_target_name(n)].astype(np.float64)
            weight = self.style_weights[n]
            style += weight * float(np.sum((diff / (2.0 * c * m)) ** 2))
            slopes[n] = weight * diff / (c * c * m * m)
        return style, slopes

    def loss_and_grad(self, image: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """(loss, content_loss, style_loss, d loss / d image) at an (H, W, 3) float32 image."""
        x = np.ascontiguousarray(image, dtype=np.float32)
        h, w, _ = x.shape
        grams, content = self._pass1(x)
        style, slopes = self._style_terms(grams, h, w)
        grad = np.zeros(x.shape, np.float64)
        for inner, outer in tiles(h, w, self.tile, self.pad):
            part = x[outer[0]:outer[1], outer[2]:outer[3]]
            feats = self._features(part)
            cotangents = self._cotangents(feats, slopes, inner, outer, h, w)
            grad[outer[0]:outer[1], outer[2]:outer[3]] += self._pullback(part, feats, cotangents)
        tv_loss, tv_grad = total_variation(x)
        grad += self.tv_weight * tv_grad
        loss = self.alpha * content + self.beta * style + self.tv_weight * tv_loss
        return loss, content, style, grad.astype(np.float32)

    def _cotangents(self, feats, slopes, inner, outer, h: int, w: int) -> dict[str, np.ndarray]:
        """dL/dF of the tile's interior positions per layer (zero in the halo)."""
        out = {n: np.zeros(feats[n].shape, np.float32) for n in self.names}  # float32: what the model takes
        for n in self.layers.style:
            ry, rx = _feature_window(n, inner, outer, h, w)
            f = feats[n][:, ry, rx].astype(np.float64)
            out[n][:, ry, rx] += self.beta * np.einsum("ij,jyx->iyx", slopes[n], f)
        for n in self.layers.content:
            ry, rx = _feature_window(n, inner, outer, h, w)
            out[n][:, ry, rx] += self.alpha * self.content_weights[n] * self._content_residual(n, feats, inner,
                                                                                               outer, h, w)
        return out

    def _pullback(self, part: np.ndarray, feats, cotangents) -> np.ndarray:
        """J^T C for the tile: the auxiliary content loss with target F - C/k and weight k."""
        targets, weights = {}, []
        for n in self.names:
            c = cotangents[n]
            peak = float(np.max(np.abs(c)))
            k = peak / max(float(np.max(np.abs(feats[n]))), 1e-30) if peak > 0 else 1.0
            targets[content_target_name(n)] = (feats[n][None] - c[None] / k).astype(np.float32)
            weights.append(k)
        self.aux.bind(targets, weights, [], 1.0, 0.0, 0.0)
        return self.aux.loss_and_grad(part)[3].astype(np.float64)


def lay_channels(name: str) -> int:
    return next(lay.channels for lay in LAYERS if lay.name == name)


def _map_size(name: str, h: int, w: int) -> tuple[int, int]:
    s = POOL ** pools_before(name)
    return h // s, w // s


def cotangent_layers(layers: LayerSet) -> LayerSet:
    """The auxiliary model's layers: every layer used, as a content layer, unguided."""
    names = sorted(set(layers.content) | set(layers.style), key=[lay.name for lay in LAYERS].index)
    return LayerSet.of(names, [], layers.pooling, 0, layers.swap_red_blue)


def total_variation(x: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss graph's TV term (squared neighbour differences, summed) and its gradient."""
    x = x.astype(np.float64)
    grad = np.zeros_like(x)
    loss = 0.0
    for axis in (0, 1):
        d = np.diff(x, axis=axis)
        loss += float(np.sum(d * d))
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        grad[tuple(hi)] += 2 * d
        grad[tuple(lo)] -= 2 * d
    return loss, grad


# --- memory budget (`max_memory`) ------------------------------------------------------------------
#: Measured (docs/performance.md, tools/bench_tiling.py): the process before any image (both
#: sessions, weights, Python), the network's working memory per pixel of what it is shown at
#: once (a whole image or a halo'd tile), and the run's own arrays per image pixel besides
#: L-BFGS-B's state (images, targets, float64 gradient sum, copies at the optimizer boundary).
BASE_BYTES = 420 << 20
NETWORK_BYTES_PER_PIXEL = 2600
ARRAY_BYTES_PER_PIXEL = 160
TILE_CHOICES = (1024, 768, 512, 384, 256, 192, 128)
MEMORY_CHOICES = (10, 7, 5, 3)


def lbfgs_bytes(pixels: int, m: int, channels: int = 3) -> int:
    """L-BFGS-B's float64 state for `pixels` x `channels` variables and history `m` (see `LbfgsState.sizes`)."""
    n = pixels * channels
    return 8 * ((2 * m + 5) * n + 11 * m * m + 8 * m + 2 * n) + 4 * 3 * n


def adam_bytes(pixels: int, channels: int = 3) -> int:
    """Adam's float64 iterate, two moments and the temporaries of one step (`optimizers.adam`)."""
    return 8 * 6 * pixels * channels


def estimate_bytes(h: int, w: int, tile: int | None, m: int, layers: LayerSet) -> int:
    """The process's peak for an h x w run with tiles of `tile` (None: whole image) and L-BFGS-B
    history `m` (0: Adam)."""
    shown = h * w if tile is None else min(h, tile + 2 * halo(layers)) * min(w, tile + 2 * halo(layers))
    optimizer = adam_bytes(h * w) if m == 0 else lbfgs_bytes(h * w, m)
    return BASE_BYTES + NETWORK_BYTES_PER_PIXEL * shown + ARRAY_BYTES_PER_PIXEL * h * w + optimizer


def choose(budget: int, h: int, w: int, layers: LayerSet, m: int = 10) -> tuple[int | None, int, int] | None:
    """(tile size or None for whole, L-BFGS-B history or 0 for Adam, estimated bytes) that fit `budget`;
    None if nothing does.

    The whole image at the asked history first; then the largest tile (fewest halo pixels)
    at the asked history, as long as it is 256 px or more; then shorter histories; then Adam,
    whose state is 3 float64 copies of the image against L-BFGS-B's 2m + 7.
    """
    options = [(None, m)] + [(t, m) for t in TILE_CHOICES if t >= 256]
    options += [(t, k) for k in MEMORY_CHOICES if k < m for t in TILE_CHOICES]
    options += [(t, m) for t in TILE_CHOICES if t < 256] + [(t, 0) for t in TILE_CHOICES]
    for tile, k in options:
        if tile is not None and tile >= max(h, w):
            continue
        need = estimate_bytes(h, w, tile, k, layers)
        if need <= budget:
            return tile, k, need
    return None
