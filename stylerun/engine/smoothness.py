"""Smoothness: a total-variation weight that means the same at every size and for every pair.

The loss graph's TV term (squared neighbour differences, summed over the image) grows with
the pixels and with how much detail the picture has, and the style term it competes with
moves by decades from pair to pair, so a raw ``tv_weight`` that cleans one picture blurs the
next. A run with smoothness S measures both on its own inputs instead:

* ``style_far``: the style term of the photo against the painting (as `strength` measures it),
  the scale the style term lives on;
* the photo's roughness: its own TV at the run's size.

``tv_weight = S · β · style_far / roughness``: at S = 1 a picture with the photo's detail
costs as much as the whole style distance of the photo. Grain (pixel noise in the top octave,
docs/quality.md) appears where the content term does not hold the optimizer back, where the
photo itself is smooth: an enlarged photo, a sky. Measured against the photo's own detail,
the term is strong there and nearly absent for a detailed photo; measured against the
painting's instead, it blurred a fine line drawing that had no grain to remove (the figures
are in docs/quality.md). The run engine applies it at the finest scale only: a coarser
scale's pixels are upsampled into the next, which smooths them anyway, and a TV term there
flattens the strokes those scales lay out.
"""

from __future__ import annotations

import math

import numpy as np

from stylerun.network.tiling import total_variation


def roughness(image: np.ndarray) -> float:
    """The loss graph's TV term of `image` (the tiled loss's own computation of it)."""
    return total_variation(np.asarray(image, np.float32))[0]


def tv_weight(smoothness: float, beta: float, style_far: float, rough: float) -> float:
    """The TV weight for `smoothness`; 0 where there is nothing to compare with (a flat photo, no style)."""
    if smoothness <= 0 or not (math.isfinite(style_far) and math.isfinite(rough)) or style_far <= 0 or rough <= 0:
        return 0.0
    return smoothness * beta * style_far / rough
