"""Images in and out: every input goes through `load_image`, every output through `save_image`.

Arrays are ``(H, W, 3)`` float32 RGB in 0..255, the layout the exported model takes.
Decoding is bounded (Pillow's decompression-bomb limit, enforced as an error) and writing
is atomic (a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

#: Largest image decoded, in pixels (Pillow's default bomb limit is ~89 Mpx).
MAX_PIXELS = 64_000_000
#: Smallest side the network takes: five 2x2 poolings need 32 pixels to leave 1.
MIN_SIDE = 32

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file into an RGB PIL image, with EXIF orientation applied."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.seek(0)
                img = ImageOps.exif_transpose(img)
                img.load()
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{path}: image is larger than the {MAX_PIXELS:,} pixel safety limit "
            "(set stylerun.images.MAX_PIXELS to raise it)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from None


def as_image(source) -> Image.Image:
    """A path, a PIL image or an (H, W, 3) array in 0..255, as an RGB PIL image."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(to_uint8(source))
    return open_image(source)


def fit_longest_side(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is `longest`."""
    w, h = size
    scale = longest / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to (width, height), or return the image untouched when it already is."""
    return img if img.size == tuple(size) else img.resize(size, Image.Resampling.LANCZOS)


def to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32).copy()


def to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"image array must have shape (H, W, 3), got {array.shape}")
    if array.dtype == np.uint8:
        return array
    return np.clip(np.rint(np.nan_to_num(array, nan=0.0)), 0, 255).astype(np.uint8)


def check_size(width: int, height: int, what: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{what} is {width}x{height}; the network needs at least {MIN_SIDE} pixels on each side")


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Write atomically: readers never see a half-written file, a crash leaves the old one."""
    path = Path(path)
    img = Image.fromarray(to_uint8(array))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        img.save(tmp, format=_format_for(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    formats = Image.registered_extensions()
    if ext not in formats or formats[ext] not in Image.SAVE:
        raise InputError(f"cannot write images with extension '{path.suffix}'; use .png, .jpg, .webp, .tif, ...")
    return formats[ext]


def check_output_path(path: str | Path) -> Path:
    """Refuse an output that cannot be written before any work starts."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as out.png")
    _format_for(path)
    return path
