"""Colour controls (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer").

* ``luminance``: the network sees only luminance (Y of YIQ, replicated to three channels)
  and the optimizer's variable *is* that luminance channel, one value per pixel; the
  content's chroma (I, Q) is put back at the end. The colours of the result are the
  photo's, exactly, wherever the pixels are not clipped.
* ``histogram``: the style image's colours are mapped, by an affine transform, onto the
  content's mean and covariance before anything else, so that the style's textures arrive
  in the photo's palette.
"""

from __future__ import annotations

import numpy as np

# NTSC YIQ; Y weights are the Rec. 601 luma weights.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], dtype=np.float64
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) @ _RGB_TO_YIQ.T


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    return np.asarray(yiq, dtype=np.float64) @ _YIQ_TO_RGB.T


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) luma in the same 0..255 units."""
    return rgb_to_yiq(rgb)[..., 0]


def gray(rgb: np.ndarray) -> np.ndarray:
    """The luminance replicated to three channels: what the network sees in luminance mode."""
    return np.repeat(luminance(rgb)[..., None], 3, axis=2).astype(np.float32)


def recombine(y: np.ndarray, chroma_source: np.ndarray) -> np.ndarray:
    """Luminance `y` (H, W) with the I and Q channels of `chroma_source`, as RGB 0..255."""
    yiq = rgb_to_yiq(chroma_source)
    yiq[..., 0] = np.asarray(y).reshape(yiq.shape[:2])
    return np.clip(yiq_to_rgb(yiq), 0, 255).astype(np.float32)


def _sqrtm(cov: np.ndarray, inverse: bool = False) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, 1e-6)
    power = -0.5 if inverse else 0.5
    return (vectors * values**power) @ vectors.T


def match_color(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`source`'s pixels mapped affinely to `reference`'s colour mean and covariance.

    x' = C_r^(1/2) C_s^(-1/2) (x - mu_s) + mu_r, with symmetric matrix square roots
    (the "image analogies" variant of the 2017 paper), which rotates colours least.
    """
    src = np.asarray(source, dtype=np.float64).reshape(-1, 3)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    mu_s, mu_r = src.mean(0), ref.mean(0)
    cov_s = np.cov(src, rowvar=False) + 1e-3 * np.eye(3)
    cov_r = np.cov(ref, rowvar=False) + 1e-3 * np.eye(3)
    transform = _sqrtm(cov_r) @ _sqrtm(cov_s, inverse=True)
    out = (src - mu_s) @ transform.T + mu_r
    return np.clip(out, 0, 255).reshape(np.shape(source)).astype(np.float32)


class LuminanceObjective:
    """A loss over RGB images seen as a loss over one luminance channel.

    The variable is y of shape (H, W, 1); the network gets (y, y, y). Since each RGB channel
    is y itself, d loss / d y is the sum of the three channel gradients.
    """

    def __init__(self, rgb_loss):
        self.rgb_loss = rgb_loss
        h, w, _ = rgb_loss.shape
        self.shape = (h, w, 1)

    @property
    def last_terms(self) -> tuple[float, float]:
        return self.rgb_loss.last_terms

    def loss_and_grad(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        y = np.asarray(y, dtype=np.float32).reshape(self.shape)
        value, grad = self.rgb_loss.loss_and_grad(np.repeat(y, 3, axis=2))
        return value, grad.sum(axis=2, keepdims=True)
