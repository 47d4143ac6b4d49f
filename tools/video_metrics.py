"""Temporal consistency of `stylerun video`: warping error with and without the temporal term.

    python tools/video_metrics.py                       # both clips, 128 px, 8 frames, 60 iterations
    python tools/video_metrics.py --size 256 --frames 3 --iterations 60 --clips pan   # seconds per frame
    python tools/video_metrics.py --sheet docs/images/video_pan.png

Two clips are generated here (nothing is downloaded):

* pan: a crop window sliding `--step` px right per frame across examples/chelsea.jpg; the
  motion is known exactly, so the warp uses the true flow and the weights are 1 wherever
  the previous frame saw the pixel;
* zoom: a camera-like zoom-and-pan over examples/astronaut.jpg (a NASA photograph): each
  frame is a crop 2 % smaller than the last, its centre drifting, resampled bicubically;
  the flow is estimated (DIS) and checked forward-backward, as `stylerun video` does.

Each clip is stylized three ways: independent frames (every frame its own plain run from
the content, as `stylerun transfer` would), the temporal term off but the warped start
on (--temporal-weight 0), and the temporal term on (the default weight). Printed per way:
the mean squared warping error between consecutive output frames over the pixels whose
weight is 1 (0..255 units), the mean style term of the frames, and seconds per frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylerun.engine.run import Job, run  # noqa: E402
from stylerun.network.sessions import ModelCache  # noqa: E402
from stylerun.options import TransferOptions  # noqa: E402
from stylerun.video.flow import consistency, optical_flow, warp  # noqa: E402
from stylerun.video.run import VideoSettings, run_video  # noqa: E402


def pan_clip(frames: int, size: int, step: int) -> list[np.ndarray]:
    """Crops of chelsea.jpg, each `step` px (at output scale) right of the last: flow is exactly -step in x.

    The window is 4:3 with the photo's height; a window that runs past the photo's right
    edge sees black there (at 128 px, 8 frames, step 3: the last two frames' last 1 and 4
    columns).
    """
    photo = Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB")
    h = photo.height
    w = round(h * 4 / 3)
    scale = size / w
    full = photo.resize((round(photo.width * scale), round(h * scale)), Image.BICUBIC)
    ow, oh = round(w * scale), round(h * scale)
    return [np.asarray(full.crop((k * step, 0, k * step + ow, oh)), np.float32) for k in range(frames)]


def zoom_clip(frames: int, size: int) -> list[np.ndarray]:
    """A slow zoom in with a drifting centre over astronaut.jpg (real photo, camera-like motion)."""
    photo = Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB")
    out = []
    for k in range(frames):
        side = photo.width * 0.8 * 0.98 ** k
        cx, cy = photo.width * (0.5 + 0.006 * k), photo.height * (0.45 + 0.004 * k)
        box = (cx - side / 2, cy - side * 3 / 8, cx + side / 2, cy + side * 3 / 8)
        out.append(np.asarray(photo.resize((size, round(size * 3 / 4)), Image.BICUBIC, box=box), np.float32))
    return out


def known_flow(shape: tuple[int, ...], step: int) -> tuple[np.ndarray, np.ndarray]:
    """The pan's backward flow (current -> previous: +step in x) and its weights (1 where seen before)."""
    h, w = shape[:2]
    back = np.zeros((h, w, 2), np.float32)
    back[..., 0] = step
    weights = np.ones((h, w), np.float32)
    weights[:, w - step:] = 0
    return back, weights


def warping_error(outputs: list[np.ndarray], inputs: list[np.ndarray], step: int | None) -> float:
    """Mean squared difference between each output frame and the previous one warped to it, where trusted."""
    errors = []
    for prev, cur, prev_in, cur_in in zip(outputs, outputs[1:], inputs, inputs[1:], strict=False):
        if step is not None:
            back, weights = known_flow(cur.shape, step)
        else:
            back = optical_flow(cur_in, prev_in)
            weights = consistency(optical_flow(prev_in, cur_in), back)
        diff = (cur - warp(prev, back)) ** 2 * weights[..., None]
        errors.append(diff.sum() / (3 * weights.sum()))
    return float(np.mean(errors))


def independent(frames: list[np.ndarray], style: Path, options: TransferOptions) -> tuple[list, list, float]:
    models, images, styles = ModelCache(1), [], []
    begin = time.perf_counter()
    for frame in frames:
        outcome = run(Job(frame, (str(style),), options), models=models)
        loss = outcome.loss_object
        loss.loss_and_grad(outcome.image)
        images.append(np.clip(np.rint(outcome.image), 0, 255))
        styles.append(loss.last_terms[1])
    return images, styles, (time.perf_counter() - begin) / len(frames)


def temporal(frames: list[np.ndarray], style: Path, options: TransferOptions, weight: float
             ) -> tuple[list, list, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for k, frame in enumerate(frames):
            Image.fromarray(frame.astype(np.uint8)).save(folder / f"{k:03d}.png")
        begin = time.perf_counter()
        result = run_video(folder, (str(style),), Path(tmp) / "out", options, VideoSettings(temporal_weight=weight))
        seconds = (time.perf_counter() - begin) / len(frames)
        images = [np.asarray(Image.open(r.path).convert("RGB"), np.float32) for r in result.frames]
        return images, [r.style_loss for r in result.frames], seconds


def sheet(rows: list[tuple[str, list[np.ndarray]]], path: Path, step: int, count: int = 4) -> None:
    """Per way, `count` consecutive frames over their warping error (|frame - previous frame moved
    along the pan|, x3, dark = large; blank where the previous frame did not see the pixel)."""
    h, w = rows[0][1][0].shape[:2]
    label = 14
    canvas = np.full(((2 * h + 4 + label) * len(rows), (w + 4) * count, 3), 255, np.uint8)
    for r, (_, images) in enumerate(rows):
        top = r * (2 * h + 4 + label) + label
        for k in range(count):
            x = k * (w + 4)
            canvas[top:top + h, x:x + w] = np.clip(np.rint(images[k]), 0, 255).astype(np.uint8)
            if k:
                back, weights = known_flow(images[k].shape, step)
                error = np.abs(images[k] - warp(images[k - 1], back)) * weights[..., None]
                canvas[top + h + 4:top + 2 * h + 4, x:x + w] = 255 - np.clip(error * 3, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for r, (name, _) in enumerate(rows):
        draw.text((2, r * (2 * h + 4 + label) + 1), name, fill=(0, 0, 0))
    image.save(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--step", type=int, default=3, help="pan: px per frame at output scale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clips", default="pan,zoom")
    ap.add_argument("--style", type=Path, default=ROOT / "examples" / "starry_night.jpg")
    ap.add_argument("--temporal-weight", type=float, default=VideoSettings().temporal_weight)
    ap.add_argument("--ways", default="independent,gamma0,temporal",
                    help="independent: plain runs; gamma0: warped start only; temporal: the default video")
    ap.add_argument("--sheet", type=Path, help="write the pan's before/after sheet here")
    args = ap.parse_args(argv)
    options = TransferOptions(size=args.size, iterations=args.iterations, threads=args.threads)
    print(f"{args.size} px, {args.frames} frames, {args.iterations} iterations, {args.threads} threads, "
          f"temporal weight {args.temporal_weight:.3g}")
    for clip in args.clips.split(","):
        frames = pan_clip(args.frames, args.size, args.step) if clip == "pan" else zoom_clip(args.frames, args.size)
        step = args.step if clip == "pan" else None
        todo = args.ways.split(",")
        ways = [*([("independent", independent(frames, args.style, options))] if "independent" in todo else []),
                *([("warped start, gamma 0", temporal(frames, args.style, options, 0.0))] if "gamma0" in todo else []),
                *([("temporal term", temporal(frames, args.style, options, args.temporal_weight))]
                  if "temporal" in todo else [])]
        base = warping_error(ways[0][1][0], frames, step)
        base_style = float(np.mean(ways[0][1][1]))
        for name, (images, styles, seconds) in ways:
            error = warping_error(images, frames, step)
            print(f"{clip:5s} {name:22s} warping error {error:9.1f} ({base / error:4.1f}x less)  style "
                  f"{np.mean(styles):.4g} ({np.mean(styles) / base_style:.2f} of independent)  {seconds:.1f} s/frame")
        if args.sheet is not None and clip == "pan":
            sheet([(name, images) for name, (images, _, _) in ways], args.sheet, args.step)
            print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
