"""Optical flow between frames, warping along it, and where the flow can be trusted.

The flow comes from OpenCV (`opencv-python-headless`, the `video` extra): DIS or
Farnebäck, both dense and fast on the CPU. A flow here is an (H, W, 2) float32 array of
(dx, dy) in pixels that says, for each pixel p of one frame, where p's content is in the
other one. `consistency` is Ruder et al.'s forward–backward check: a pixel whose forward
and backward flows do not cancel out was disoccluded, a pixel where the flow changes
sharply lies on a motion boundary, and either gets weight 0 in the temporal term.
"""

from __future__ import annotations

import numpy as np

from stylerun.errors import InputError
from stylerun.images.color import luminance

FLOWS = ("dis", "farneback")


def cv2_module():
    """OpenCV, or a one-line error naming the extra that brings it."""
    try:
        import cv2
    except ImportError:
        raise InputError("video needs OpenCV and PyAV: pip install 'stylerun[video]'") from None
    return cv2


def _gray(rgb: np.ndarray) -> np.ndarray:
    """The luminance as 8-bit grey, which is what OpenCV's flow methods take."""
    return np.rint(np.clip(luminance(rgb), 0, 255)).astype(np.uint8)


def optical_flow(source: np.ndarray, target: np.ndarray, method: str = "dis") -> np.ndarray:
    """The flow from `source` to `target` (RGB 0..255, same shape): ``source[p] ≈ target[p + flow[p]]``."""
    cv2 = cv2_module()
    a, b = _gray(source), _gray(target)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(a, b, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3,
                                            poly_n=5, poly_sigma=1.2, flags=0)
    else:
        raise InputError(f"flow must be one of: {', '.join(FLOWS)}; got {method!r}")
    return np.asarray(flow, dtype=np.float32)


def sample_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) coordinates p + flow[p] for every pixel, and whether each lies inside the frame."""
    h, w, _ = flow.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return x, y, inside


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` pulled along `flow`: ``out[p] = image[p + flow[p]]`` (bilinear; borders repeated).

    To bring the previous frame's picture to the current frame, `flow` is the current
    frame's flow to the previous one (the backward flow).
    """
    cv2 = cv2_module()
    x, y, _ = sample_points(flow)
    image = np.asarray(image, dtype=np.float32)
    out = cv2.remap(image, x, y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)


def consistency(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Per-pixel weights (H, W) in {0, 1} of the current frame: 0 where `backward` (current ->
    previous) cannot be trusted.

    `forward` is previous -> current. Following Ruder et al. (2016, eq. 6-7): with
    w~(p) = forward(p + backward(p)), a pixel is disoccluded when
    |w~ + backward|^2 > 0.01 (|w~|^2 + |backward|^2) + 0.5, and on a motion boundary when
    |grad backward_x|^2 + |grad backward_y|^2 > 0.01 |backward|^2 + 0.002. A pixel whose
    backward flow leaves the frame has no previous pixel and gets 0 too.
    """
    _, _, inside = sample_points(backward)
    there = warp(forward, backward)
    mismatch = np.sum((there + backward) ** 2, axis=2)
    occluded = mismatch > 0.01 * (np.sum(there ** 2, axis=2) + np.sum(backward ** 2, axis=2)) + 0.5
    gy_u, gx_u = np.gradient(backward[..., 0])
    gy_v, gx_v = np.gradient(backward[..., 1])
    edges = gx_u ** 2 + gy_u ** 2 + gx_v ** 2 + gy_v ** 2 > 0.01 * np.sum(backward ** 2, axis=2) + 0.002
    return (inside & ~occluded & ~edges).astype(np.float32)
