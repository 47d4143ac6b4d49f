"""Style strength: one number for "this much of the painting" that means the same at every size.

α/β alone means nothing across runs: the content term grows with the pixels, pooling and
weights rescale both terms, and so the α/β that balances a picture moves by decades (see
docs/loss.md, "Content vs style weight"). A run with a style strength S measures the two terms
at their far ends, on its own inputs and settings:

* ``content_far``: the content term of the painting (resized to the output) against the
  photo, the content loss a pure style picture would have;
* ``style_far``: the style term of the photo against the painting, the style loss of
  doing nothing.

α·content_far = β·style_far is where the two pulls are equally strong, so the run uses
``α/β = f(S) · style_far / content_far`` with β = 1. Everything that scales one term
(size, pooling, weights, masks, layer weights, luminance mode) is in the measured ratio;
what is left for `f` is how far the optimizer travels, which the calibration below
measured (`tools/strength_sweep.py`).
"""

from __future__ import annotations

import math

#: log10 f(0.5) at `REFERENCE_PIXELS`, per initial image: the balance measured by `tools/strength_sweep.py`.
CENTRE = {"content": -1.3, "style": -1.05, "white": -1.05, "random": -1.05}
#: Decades log10 f(0.5) falls each time the side doubles: a larger picture keeps more of the photo at
#: the same normalized weights (the strokes stay the same size in pixels while the objects grow).
SLOPE = 0.25
REFERENCE_PIXELS = 256 * 192
#: Decades of α/β from S = 0.5 to either end (S = 0: nearly the photo; S = 1: nearly the painting).
SPAN = 2.0


def factor(strength: float, init: str = "content", pixels: int = REFERENCE_PIXELS) -> float:
    """f(S): the multiple of style_far / content_far that `strength` asks for, for a picture of `pixels`."""
    doublings = 0.5 * math.log2(max(pixels, 1) / REFERENCE_PIXELS)
    return 10.0 ** (CENTRE.get(init, CENTRE["random"]) - SLOPE * doublings + SPAN * (1.0 - 2.0 * strength))


def weights(strength: float, content_far: float, style_far: float, init: str = "content",
            pixels: int = REFERENCE_PIXELS) -> tuple[float, float]:
    """(α, β) for `strength`, given the two far-end terms measured on the run's inputs."""
    if not (math.isfinite(content_far) and math.isfinite(style_far)) or content_far <= 0 or style_far <= 0:
        # identical images (or no content/style layers): no balance to find; the seed's weighting is as good as any
        return 1e-6, 1.0
    return factor(strength, init, pixels) * style_far / content_far, 1.0
