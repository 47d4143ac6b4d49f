"""The coarse-to-fine schedule: which sizes a run optimizes at, and how many iterations each gets.

A single scale at 512 px paints strokes the size of VGG19's receptive field: seen whole,
the picture is the photo with a texture laid over it. Starting small and growing lets
the coarse scales lay out strokes the size of the painting's, where an iteration costs
a sixteenth as much, and the finest scale add detail. The defaults (a coarsest scale of
about `COARSEST` px, a ratio of 2 between scales, a quarter of the iterations at the finest)
were chosen by measurement on four pairs; docs/quality.md has the figures.
"""

from __future__ import annotations

import math

from stylerun.errors import OptionError, mention
from stylerun.images.codec import MIN_SIDE

#: The longest side the automatic schedule (``scales=0``) starts near: about the size at which
#: VGG19's deepest style layer sees the whole picture.
COARSEST = 128
#: The most scales a schedule has, automatic or asked for.
MAX_SCALES = 8


def auto_scales(size: int, ratio: float, shape: tuple[int, ...] | None = None) -> int:
    """How many scales put the coarsest one nearest `COARSEST` px on its longest side (at least 1);
    fewer where the coarsest would be under the network's minimum side."""
    n = 1 + max(0, round(math.log(size / COARSEST) / math.log(ratio)))
    n = min(n, MAX_SCALES)
    while n > 1 and _coarsest_short_side(size, n, ratio, shape) < MIN_SIDE:
        n -= 1
    return n


def _coarsest_short_side(size: int, n: int, ratio: float, shape: tuple[int, ...] | None) -> int:
    coarsest = max(1, round(size / ratio ** (n - 1)))
    return coarsest if shape is None else round(min(shape[:2]) * coarsest / max(shape[:2]))


def split_iterations(iterations: int, n: int, split: float) -> list[int]:
    """Iterations per scale, coarse to fine: `split` of them at the finest, the rest shared equally
    by the coarser ones (what cannot be shared equally goes to the finest)."""
    if n == 1:
        return [iterations]
    finest = round(iterations * split)
    per = (iterations - finest) // (n - 1)
    return [per] * (n - 1) + [iterations - per * (n - 1)]


def scale_plan(size: int, scales: int, iterations: int, shape: tuple[int, ...] | None = None, *,
               ratio: float, split: float) -> list[tuple[int, int]]:
    """Coarse to fine: (longest side, last iteration) of each stage.

    Sizes are ``size / ratio^(n-1), ..., size / ratio, size``, n being `scales`, or with
    ``scales=0`` `auto_scales`. Stage k runs iterations ``previous last + 1 .. its last``,
    so the count runs on across stages; a coarse stage left with no iterations is dropped.
    `ratio` and `split` have no defaults here: the option model holds them (`engine.run.plan_of`).
    With `shape` (the finest image's), a coarsest image under the network's minimum side is
    refused when the scales were asked for.
    """
    if not 0 <= scales <= MAX_SCALES:
        raise OptionError("scales", f"must be 0 (automatic) to {MAX_SCALES}, got {scales}")
    n = auto_scales(size, ratio, shape) if scales == 0 else scales
    short = _coarsest_short_side(size, n, ratio, shape)
    if n > 1 and short < MIN_SIDE:
        raise OptionError("scales", f"{n} makes the coarsest image {short} px on its short side; the network "
                                    f"needs at least {MIN_SIDE}: use fewer {mention('scales')} or a larger "
                                    f"{mention('size')}")
    sizes = [max(1, round(size / ratio ** (n - 1 - k))) for k in range(n)]
    plan, end = [], 0
    for k, (side, count) in enumerate(zip(sizes, split_iterations(iterations, n, split), strict=True)):
        end += count
        if count > 0 or k == n - 1:
            plan.append((side, end))
    return plan
