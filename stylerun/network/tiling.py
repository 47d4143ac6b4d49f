"""Exact tiled loss and gradient: the whole image's Gatys loss evaluated tile by tile.

A Gram matrix is a sum over positions, so it can be gathered tile by tile. Pass 1 runs the
network forward on each tile plus a halo that covers the receptive field of the deepest
layer (tile origins and halo on the 2^pools grid, so poolings line up and a halo comes
from the real image; only the true image border meets the network's zero padding). Its
model (`forward.build_tile_targets_model`) returns each region's Gram and mask energy over
the tile's interior, and the content features, which are summed into the whole image's.
From the global Grams G_r the style loss is known, and so is its slope
D_r = beta w (G_r - A_r) / (N^2 E_r): to first order the loss moves as 1/2 <D_r, H_r> with
H_r a tile's interior Gram. Pass 2 runs each tile through a model of that surrogate plus
the content term over the interior (`forward.build_tile_loss_model`) and adds its image
gradient where the tile lies, which is exact. TV is computed on the whole image (cheap and
local). Peak memory is one halo'd tile's network, not the image's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from stylerun.errors import EvaluationStopped
from stylerun.network.export import GRAD, ModelFiles
from stylerun.network.loss_graph import (
    CONTENT_WEIGHTS,
    IMAGE,
    INTERIOR,
    STYLE_GUIDE,
    LayerSet,
    content_target_name,
    style_energy_name,
    style_slope_name,
    style_target_name,
)
from stylerun.network.sessions import MEASURED, SessionSettings, create_session
from stylerun.vgg import POOL, channels, pools_before, spatial_size, truncated


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


#: An evaluation in tiles takes about this many times as long, per pixel the network is shown, as the
#: whole image (two passes, the first without a gradient). tools/bench_tiling.py, 512 px tiles:
#: tiled/whole 1.8x, 2.3x, 2.9x at 0.25, 1 and 4 MP, where shown/whole pixels x 4/3 is 1.7x, 2.2x, 2.4x.
TILE_TIME_FACTOR = 4 / 3


def evaluation_cost(h: int, w: int, tile: int | None, layers: LayerSet) -> float:
    """An evaluation's time in pixels of whole-image evaluation (the time is proportional to them):
    the pixels for the whole image (`tile` None), more for tiles with their halos."""
    if tile is None:
        return float(h * w)
    shown = sum((y1 - y0) * (x1 - x0) for _, (y0, y1, x0, x1) in tiles(h, w, aligned_tile(tile, layers), halo(layers)))
    return TILE_TIME_FACTOR * shown


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


def _windows(layer: str, inner, outer, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The interior in `layer`'s map: (in the halo'd tile's map, in the whole image's map)."""
    return _feature_window(layer, inner, outer, h, w), _feature_window(layer, inner, (0, h, 0, w), h, w)


class TiledLoss:
    """A `LossModel` stand-in (`layers`, `targets`, `bind`, `loss_and_grad`) that works tile by tile.

    `files` is the tile model pair (`cached_export(..., tiled=True)`). Nothing here runs the
    network on the whole image, so peak memory is one halo'd tile's.
    """

    def __init__(self, files: ModelFiles, device: str = "auto", threads: int | None = None,
                 settings: SessionSettings = MEASURED, tile_size: int = 512):
        self.layers = files.layers
        self.tile = aligned_tile(tile_size, self.layers)
        self.pad = halo(self.layers)
        self.regions = max(self.layers.regions, 1)
        settings = replace(settings, shared_arena=True)  # the passes take turns: one arena serves both
        self.statistics = create_session(files.targets, device, threads, settings)  # pass 1
        self.gradient = create_session(files.loss, device, threads, settings)  # pass 2
        #: Asked between tiles; True ends the evaluation with `EvaluationStopped` (see `StyleLoss.stop_with`).
        self.stop: Callable[[], bool] | None = None
        self.bind({}, [0.0] * len(self.layers.content), [0.0] * len(self.layers.style), 1.0, 1.0)

    @property
    def provider(self) -> str:
        return self.gradient.get_providers()[0]

    def bind(self, targets: dict[str, np.ndarray], content_weights, style_weights, alpha: float, beta: float,
             tv_weight: float = 0.0) -> None:
        """What stays fixed during optimization (as `LossModel.bind`)."""
        self.bound = targets
        self.guide = targets.get(STYLE_GUIDE)
        self.content_weights = dict(zip(self.layers.content, content_weights, strict=True))
        self.style_weights = dict(zip(self.layers.style, style_weights, strict=True))
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)

    def targets(self, image: np.ndarray, guide: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Content features and style Grams of an (H, W, 3) image, as `LossModel.targets`, tile by tile."""
        x = np.ascontiguousarray(image, dtype=np.float32)
        h, w, _ = x.shape
        out = {content_target_name(n): np.zeros((1, channels(n), *spatial_size(n, h, w)), np.float32)
               for n in self.layers.content}
        grams, energies = {}, {}
        for inner, outer, stats in self._pass1(x, guide):
            for n in self.layers.content:
                (ry, rx), (ty, tx) = _windows(n, inner, outer, h, w)
                out[content_target_name(n)][0][:, ty, tx] = stats[content_target_name(n)][0][:, ry, rx]
            _accumulate(grams, energies, stats, self.layers.style)
        for n in self.layers.style:
            gram = grams[n] / (energies[n][:, None, None] + 1e-8) if self.layers.regions else grams[n][0]
            out[style_target_name(n)] = gram.astype(np.float32)
        return out

    def _pass1(self, x: np.ndarray, guide: np.ndarray | None):
        """(interior, halo'd box, pass-1 outputs) of each tile."""
        h, w, _ = x.shape
        names = [o.name for o in self.statistics.get_outputs()]
        for inner, outer in tiles(h, w, self.tile, self.pad):
            self._check_stop()
            values = self.statistics.run(names, self._tile_feeds(x, guide, inner, outer))
            yield inner, outer, dict(zip(names, values, strict=True))

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop():
            raise EvaluationStopped

    def _tile_feeds(self, x: np.ndarray, guide: np.ndarray | None, inner, outer) -> dict[str, np.ndarray]:
        oy0, oy1, ox0, ox1 = outer
        interior = np.zeros((oy1 - oy0, ox1 - ox0), np.float32)
        interior[inner[0] - oy0:inner[1] - oy0, inner[2] - ox0:inner[3] - ox0] = 1.0
        regions = (np.ones((self.regions, *interior.shape), np.float32) if guide is None
                   else np.ascontiguousarray(guide[:, oy0:oy1, ox0:ox1], dtype=np.float32))
        return {IMAGE: np.ascontiguousarray(x[oy0:oy1, ox0:ox1]), INTERIOR: interior, STYLE_GUIDE: regions}

    def _content_residual(self, n: str, feature: np.ndarray, inner, outer, h: int, w: int) -> np.ndarray:
        (ry, rx), (ty, tx) = _windows(n, inner, outer, h, w)
        return feature[0][:, ry, rx].astype(np.float64) - self.bound[content_target_name(n)][0][:, ty, tx]

    def _style_terms(self, grams, energies) -> tuple[float, dict[str, np.ndarray]]:
        """The style loss and, per layer, the slopes D_r (R, N, N) pass 2 takes (beta included)."""
        style, slopes = 0.0, {}
        for n in self.layers.style:
            c = grams[n].shape[1]
            energy = (energies[n] + (1e-8 if self.layers.regions else 0.0))[:, None, None]
            target = self.bound[style_target_name(n)].astype(np.float64)
            target = target if self.layers.regions else target[None] / energy
            diff = grams[n] / energy - target
            style += self.style_weights[n] * float(np.sum((diff / (2.0 * c)) ** 2))
            slope = self.beta * self.style_weights[n] * diff / (c * c * energy)
            slopes[style_slope_name(n)] = slope.astype(np.float32)
        return style, slopes

    def loss_and_grad(self, image: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """(loss, content_loss, style_loss, d loss / d image) at an (H, W, 3) float32 image."""
        x = np.ascontiguousarray(image, dtype=np.float32)
        h, w, _ = x.shape
        content, style, slopes = self._statistics(x)
        tv_loss, grad = total_variation(x)
        grad *= self.tv_weight
        weights = np.asarray([self.alpha * self.content_weights[n] for n in self.layers.content], np.float32)
        for inner, outer in tiles(h, w, self.tile, self.pad):
            self._check_stop()
            feeds = {**self._tile_feeds(x, self.guide, inner, outer), **slopes, CONTENT_WEIGHTS: weights,
                     **self._content_window(inner, outer, h, w)}
            (part,) = self.gradient.run([GRAD], feeds)
            grad[outer[0]:outer[1], outer[2]:outer[3]] += part
        loss = self.alpha * content + self.beta * style + self.tv_weight * tv_loss
        return loss, content, style, grad

    def terms(self, image: np.ndarray) -> tuple[float, float]:
        """(content loss, style loss) at an (H, W, 3) image: pass 1 only, no gradient."""
        content, style, _ = self._statistics(np.ascontiguousarray(image, dtype=np.float32))
        return content, style

    def _statistics(self, x: np.ndarray) -> tuple[float, float, dict[str, np.ndarray]]:
        """Pass 1: the content and style losses and the style slopes pass 2 takes."""
        h, w, _ = x.shape
        grams, energies, content = {}, {}, 0.0
        for inner, outer, stats in self._pass1(x, self.guide):
            _accumulate(grams, energies, stats, self.layers.style)
            for n in self.layers.content:
                residual = self._content_residual(n, stats[content_target_name(n)], inner, outer, h, w)
                content += 0.5 * self.content_weights[n] * float(np.sum(residual ** 2))
        style, slopes = self._style_terms(grams, energies)
        return content, style, slopes

    def _content_window(self, inner, outer, h: int, w: int) -> dict[str, np.ndarray]:
        """Each content target over the halo'd tile: the whole image's inside the interior, 0 in the halo."""
        out = {}
        for n in self.layers.content:
            target = self.bound[content_target_name(n)]
            window = np.zeros((1, target.shape[1], *spatial_size(n, outer[1] - outer[0], outer[3] - outer[2])),
                              np.float32)
            (ry, rx), (ty, tx) = _windows(n, inner, outer, h, w)
            window[0][:, ry, rx] = target[0][:, ty, tx]
            out[content_target_name(n)] = window
        return out


def _accumulate(grams: dict, energies: dict, stats: dict[str, np.ndarray], layers) -> None:
    """Add one tile's interior Grams (R, N, N) and mask energies (R,) to the running sums, in float64."""
    for n in layers:
        grams[n] = grams.get(n, 0.0) + stats[style_target_name(n)].astype(np.float64)
        energies[n] = energies.get(n, 0.0) + stats[style_energy_name(n)].astype(np.float64)


def total_variation(x: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss graph's TV term (squared neighbour differences, summed) and its float32 gradient.

    Float32 throughout, as the graph computes it: no image-sized float64 copy.
    """
    grad = np.zeros(x.shape, np.float32)
    loss = 0.0
    for axis in (0, 1):
        d = np.diff(x.astype(np.float32, copy=False), axis=axis)
        flat = d.ravel()
        loss += float(np.dot(flat, flat))
        d *= 2
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        grad[tuple(hi)] += d
        grad[tuple(lo)] -= d
    return loss, grad
