"""How painted a result is, how much of the photo it keeps, and how grainy it is (docs/quality.md).

Usage:
  python tools/quality.py OUTPUT PHOTO PAINTING [PAINTING...]

prints, for one output of a transfer of PHOTO in the style of PAINTING(s):

* ``style``: the Gatys style loss (relu1_1..relu5_1, 0.2 each) of the output seen whole (resized to
  `VIEW` px on its longest side), divided by that of the photo at the same view, with the painting
  placed as a transfer places it (stretched to the view). Lower means more painted; 1 is the photo.
* ``content``: the relu4_2 content loss of the output at that view, divided by that of the painting
  (stretched to the view). Lower keeps more of the photo; 1 is as far from it as the painting.
* ``product``: style x content, the compromise between the two without punishing a strength.
* ``grain``: the share of luminance energy in the top octave (0.25-0.5 cycles/pixel) of the output at
  its own size, divided by that share of the painting stretched to the output's size. 1 is the
  painting's own texture; above 1 is pixel noise the painting does not have.

`Judge` loads the network once and is what tools/schedule_sweep.py calls for every run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from stylerun.engine.loss import StyleLoss
from stylerun.images import color
from stylerun.images.codec import decode, fit, load_image
from stylerun.network.sessions import ModelCache

#: The longest side at which a picture is seen whole.
VIEW = 256
#: The top octave of a picture's spatial frequencies, in cycles per pixel (0.5 is Nyquist).
GRAIN_BAND = (0.25, 0.5)


@dataclass(frozen=True)
class Scores:
    style: float
    content: float
    grain: float

    @property
    def product(self) -> float:
        return self.style * self.content

    def as_dict(self) -> dict[str, float]:
        return {"style": round(self.style, 4), "content": round(self.content, 4), "product": round(self.product, 4),
                "grain": round(self.grain, 3)}


def top_octave_share(rgb: np.ndarray) -> float:
    """The share of the luminance's energy (its mean removed) in `GRAIN_BAND`."""
    y = color.luminance(np.asarray(rgb, np.float32)).astype(np.float64)
    power = np.abs(np.fft.rfft2(y - y.mean())) ** 2
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.rfftfreq(y.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    band = (radius >= GRAIN_BAND[0]) & (radius <= GRAIN_BAND[1])
    total = power.sum()
    return float(power[band].sum() / total) if total > 0 else 0.0


class Judge:
    """The three measures, with one network session for every picture judged."""

    def __init__(self, threads: int | None = None):
        self.models, self.threads = ModelCache(1), threads
        self._losses: dict[tuple, StyleLoss] = {}

    def _loss(self, photo: Any, paintings: tuple[Any, ...]) -> StyleLoss:
        key = tuple(str(p) for p in (photo, *paintings))
        if key not in self._losses:
            self._losses.clear()  # a loss is valid only until the session is rebound
            self._losses[key] = StyleLoss(photo, list(paintings), size=VIEW, alpha=1.0, beta=1.0, device="cpu",
                                          threads=self.threads, models=self.models)
        return self._losses[key]

    def judge(self, output: Any, photo: Any, *paintings: Any) -> Scores:
        loss = self._loss(photo, paintings)
        h, w, _ = loss.shape
        seen = fit(decode(output), (w, h))
        _, style = loss.model.terms(seen)
        _, style_photo = loss.model.terms(loss.content_image)
        content = loss.model.terms(seen)[0]
        painting_content = sum(loss.model.terms(fit(decode(p), (w, h)))[0] for p in paintings) / len(paintings)
        full = load_image(output)
        oh, ow, _ = full.shape
        grain_out = top_octave_share(full)
        grain_painting = np.mean([top_octave_share(fit(decode(p), (ow, oh))) for p in paintings])
        return Scores(style / style_photo, content / painting_content, grain_out / float(grain_painting))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("photo")
    parser.add_argument("paintings", nargs="+")
    args = parser.parse_args(argv)
    scores = Judge().judge(args.output, args.photo, *args.paintings)
    print("  ".join(f"{k} {v:g}" for k, v in scores.as_dict().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
