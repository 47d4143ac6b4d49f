"""Smoothness: a total-variation weight that means the same at every size and for every pair.

The loss graph's TV term (squared neighbour differences, summed over the image) grows with
the pixels and with how rough the painting is, and the style term it competes with moves by
decades from pair to pair, so a raw ``tv_weight`` that cleans one picture blurs the next. A
run with smoothness S measures both on its own inputs instead:

* ``style_far``: the style term of the photo against the painting (as `strength` measures it),
  the scale the style term lives on;
* the painting's own roughness: its TV per pixel, times the output's pixels, the TV a picture
  with the painting's texture would have at this size.

``tv_weight = S · β · style_far / roughness``: at S = 1 the painting's own texture costs as
much as the whole style distance of the photo. What the optimizer adds beyond the painting's
texture (pixel noise in the top octave, "grain" in docs/quality.md) is what the term then
pays for. The run engine applies it at the finest scale only: a coarser scale's pixels are
upsampled into the next, which smooths them anyway, and a TV term there flattens the strokes
those scales lay out (measured in docs/quality.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def roughness(paintings: Sequence[np.ndarray], blend: Sequence[float], pixels: int) -> float:
    """The blend of the paintings' TV per pixel, times `pixels`: the TV of their texture at the output's size."""
    total = 0.0
    for weight, image in zip(blend, paintings, strict=True):
        if weight <= 0:
            continue
        x = np.asarray(image, np.float32)
        tv = sum(float(np.square(np.diff(x, axis=axis)).sum(dtype=np.float64)) for axis in (0, 1))
        total += weight * tv / (x.shape[0] * x.shape[1])
    return total * pixels


def tv_weight(smoothness: float, beta: float, style_far: float, rough: float) -> float:
    """The TV weight for `smoothness`; 0 where there is nothing to compare with (a flat painting, no style)."""
    if smoothness <= 0 or not (math.isfinite(style_far) and math.isfinite(rough)) or style_far <= 0 or rough <= 0:
        return 0.0
    return smoothness * beta * style_far / rough
