"""Images in and out: every input goes through `open_image`/`as_image`, every output through `save_image`.

Arrays are ``(H, W, 3)`` float32 RGB in 0..255, the layout the exported model takes.

Reading is defensive: EXIF orientation is applied; every Pillow mode (bilevel, grey,
palette, alpha, CMYK, 16-bit, 32-bit integer and float) becomes 8-bit RGB, with
transparency composited on a background colour; an animated or multi-page file gives its
first frame (with a warning, and without counting the others); only regular files are
opened (a FIFO would block forever); and anything that cannot be decoded, or whose header
claims more than `max_pixels()` pixels (a decompression bomb), is refused with an
`InputError` naming the file and the reason. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False, so a
truncated file is an error, never a half-grey picture.

Writing is atomic: a temporary file in the same folder, flushed to disk, then a rename,
so a reader (or a crash) never sees a half-written image.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageOps, PngImagePlugin

from stylerun.errors import DeepImageError, InputError, OptionError, mention
from stylerun.files.atomic import atomic_write
from stylerun.files.limits import check_regular_file
from stylerun.images import deep as deep_images

log = logging.getLogger("stylerun")

#: Default limit on decoded pixels (width x height); raise it with STYLERUN_MAX_PIXELS or --max-pixels.
MAX_PIXELS = 64_000_000
#: Environment variable that raises (or lowers) `MAX_PIXELS`.
MAX_PIXELS_ENV = "STYLERUN_MAX_PIXELS"
#: Smallest side the network takes: five 2x2 poolings need 32 pixels to leave 1.
MIN_SIDE = 32
WHITE = (255, 255, 255)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def max_pixels(override: int | None = None) -> int:
    """The decompression-bomb limit: `override`, else $STYLERUN_MAX_PIXELS, else `MAX_PIXELS`."""
    if override is not None:
        value, source = override, "max_pixels"
    else:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return MAX_PIXELS
        source = MAX_PIXELS_ENV
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise InputError(
                f"{MAX_PIXELS_ENV} must be a whole number of pixels such as 100000000, got '{text}'"
            ) from None
    if value < 1:
        raise OptionError(source, f"must be a positive number of pixels, got {value}")
    return value


def parse_color(spec: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """'white', '#rrggbb', '#rgb', 'rgb(r, g, b)' or an (r, g, b) tuple, as an RGB tuple."""
    if isinstance(spec, tuple):
        rgb = tuple(int(c) for c in spec)
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise InputError(f"background colour must be three values in 0..255, got {spec}")
        return rgb  # type: ignore[return-value]
    try:
        color = ImageColor.getrgb(str(spec).strip())
    except ValueError:
        raise InputError(
            f"unknown colour '{spec}'; use a name (white, black, gray, ...), #rrggbb, #rgb or rgb(r, g, b)"
        ) from None
    return color[:3]  # type: ignore[return-value]


def _scaled_to_uint8(array: np.ndarray, peak: float) -> np.ndarray:
    return np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)


def _numeric_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit grey."""
    array = np.asarray(img, dtype=np.float64)
    if img.mode in _16BIT_MODES:
        return Image.fromarray(_scaled_to_uint8(array, 65535.0))
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if img.mode == "F" and low >= 0 and high <= 1:
        return Image.fromarray(_scaled_to_uint8(array, 1.0))  # float images in 0..1
    if low >= 0 and high <= 255:
        return Image.fromarray(_scaled_to_uint8(array, 255.0))
    if low >= 0 and high <= 65535:
        return Image.fromarray(_scaled_to_uint8(array, 65535.0))  # 16-bit data held as "I"
    return Image.fromarray(_scaled_to_uint8(array - low, max(high - low, 1e-12)))  # anything else: stretch


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # no littlecms, or a broken profile: Pillow's plain conversion below
            pass
    return img.convert("RGB")


def _to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow image as 8-bit RGB; transparency is composited on `background`."""
    if img.mode == "RGB":
        return img
    if img.mode in _16BIT_MODES or img.mode in ("I", "F"):
        if "transparency" in img.info:
            img.info.pop("transparency")  # a 16-bit tRNS colour: rare, and meaningless after scaling
        return _numeric_to_l(img).convert("RGB")
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    if img.mode in ("La", "RGBa"):
        img = img.convert("RGBA" if img.mode == "RGBa" else "LA")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or "image data"


def open_image(
    source, *, background: tuple[int, int, int] | str = WHITE, limit: int | None = None
) -> Image.Image:
    """Decode an image file (a path, bytes or a binary file object) into an 8-bit RGB PIL image.

    EXIF orientation is applied, transparency is composited on `background`, an animated
    file gives its first frame. Anything that cannot be used raises `InputError`.
    """
    limit = max_pixels(limit)
    background = parse_color(background)
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        fp = _readable_path(Path(source))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(source))
    else:
        fp = source

    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings(record=True) as caught:  # Pillow's multi-line warnings, kept for below
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # opening reads the header only; the check right after names the size
            with Image.open(fp) as img:
                Image.MAX_IMAGE_PIXELS = limit  # Pillow's own check guards every later step
                _check_header_size(name, *img.size, limit)  # nothing has been decoded yet
                # is_animated only looks for a second frame; n_frames would walk them all, and a TIFF
                # of 200,000 tiny pages takes minutes (Pillow checks each page against every earlier one).
                if getattr(img, "is_animated", False):
                    img.seek(0)
                    log.warning("%s: several frames; using the first", name)
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img), background)
                rgb.load()
        for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
            log.warning("%s: %s", name, message)  # e.g. corrupt EXIF data: the picture itself was fine
        return rgb
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(name, "more than that", limit) from None
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, struct.error, ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: cannot read image ({detail})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit


def image_header(data: bytes, name: str = "image data", limit: int | None = None) -> tuple[str, int, int]:
    """(format, width, height) of encoded `data` from its header alone, refused as `open_image` would refuse it
    (not an image, no pixels, over the pixel limit) before a single pixel is decoded.

    A request carrying several images checks every header first, so a bomb or a bad file among them costs
    nothing but its bytes.
    """
    limit = max_pixels(limit)
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None  # the check below names the size
            with Image.open(io.BytesIO(data)) as img:
                (width, height), fmt = img.size, img.format or "unknown"
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except Exception as exc:  # a header that ends early or lies: OSError, SyntaxError, struct.error, ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: cannot read image header ({detail})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    _check_header_size(name, width, height, limit)
    return fmt, width, height


def _check_header_size(name: str, width: int, height: int, limit: int) -> None:
    """Refuse, from the header's size alone, a picture over the pixel limit or without pixels."""
    if width * height > limit:
        raise _too_large(name, f"{width}x{height} = {width * height:,} pixels", limit)
    if width < 1 or height < 1:
        raise InputError(f"{name}: image has no pixels ({width}x{height})")


def _readable_path(path: Path) -> Path:
    """`path` when it is a readable regular file; a FIFO or device would block or never end."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    check_regular_file(path, InputError, "image file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    return path


def _too_large(name: str, what: str, limit: int) -> InputError:
    return InputError(
        f"{name}: image is {what}, over the {limit:,} pixel limit that guards against decompression bombs; "
        f"if you trust the file, raise it with {mention('max_pixels')} or {MAX_PIXELS_ENV}=N"
    )


def as_image(
    source, *, background: tuple[int, int, int] | str = WHITE, limit: int | None = None
) -> Image.Image:
    """A path, bytes, a file object, a PIL image or an (H, W[, C]) array in 0..255, as an RGB PIL image."""
    if isinstance(source, Image.Image):
        try:
            return _to_rgb(source, parse_color(background))
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot use a {source.mode} image ({exc})") from None
    if isinstance(source, np.ndarray):
        return Image.fromarray(to_uint8(_array_rgb(source)))
    return open_image(source, background=background, limit=limit)


def _array_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3) or array.size == 0:
        raise InputError(f"image array must have shape (H, W, 3) or (H, W), got {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("image array contains NaN or infinite values")
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


#: A decoded picture: an 8-bit RGB PIL image, or a float32 (H, W, 3) array when the source
#: had more precision than 8 bits (float arrays, 16-bit files), which is kept as it is.
Picture = Image.Image | np.ndarray


def decode(source, *, background: tuple[int, int, int] | str = WHITE, limit: int | None = None) -> Picture:
    """Any image source as a `Picture`: 8-bit sources as RGB PIL images, deeper ones as float arrays."""
    if isinstance(source, np.ndarray) and source.dtype != np.uint8:
        array = np.clip(_array_rgb(source), 0, 255).astype(np.float32)
        h, w, _ = array.shape
        if w * h > max_pixels(limit):
            raise _too_large("image array", f"{w}x{h} = {w * h:,} pixels", max_pixels(limit))
        return array
    if isinstance(source, (str, os.PathLike)):
        deep = _decode_deep(Path(source), parse_color(background), max_pixels(limit))
        if deep is not None:
            return deep
    return as_image(source, background=background, limit=limit)


def _decode_deep(path: Path, background: tuple[int, int, int], limit: int) -> np.ndarray | None:
    """A 16-bit PNG or uncompressed 16-bit RGB TIFF as float32 RGB, precision kept; None for other files."""
    if not path.is_file():  # missing, a folder, a FIFO...: `open_image` says which, without opening it
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(33)
            if deep_images.is_png16(head):
                return _flatten(deep_images.read_png16(head + f.read(), limit), background)
        if head[:4] not in (b"II*\x00", b"MM\x00*"):
            return None
        with Image.open(path) as img:
            tile = img.tile
            if img.mode != "RGB" or len(tile) != 1 or tile[0][0] != "raw" or not str(tile[0][3][0]).startswith(
                    "RGB;16"):
                return None
            if img.size[0] * img.size[1] > limit:
                raise _too_large(str(path), f"{img.size[0]}x{img.size[1]} pixels", limit)
            return deep_images.read_tiff16(path, tile[0][2], tile[0][3][0], img.size)
    except DeepImageError as exc:
        raise InputError(f"{path}: cannot read 16-bit image ({exc})") from None
    except (OSError, ValueError, Image.UnidentifiedImageError, struct.error):
        return None  # not readable as such: the 8-bit path below says what is wrong


def _flatten(values: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, C) grey, grey+alpha, RGB or RGBA in 0..255 as RGB, alpha composited on `background`."""
    channels = values.shape[2]
    color = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=2)
    if channels in (2, 4):
        alpha = values[..., -1:] / 255.0
        color = color * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    return np.ascontiguousarray(color, dtype=np.float32)


def picture_size(picture: Picture) -> tuple[int, int]:
    """(width, height)."""
    return picture.size if isinstance(picture, Image.Image) else (picture.shape[1], picture.shape[0])


def fit(picture: Picture, size: tuple[int, int]) -> np.ndarray:
    """`picture` at (width, height) as float32 RGB: 8-bit ones resized as 8-bit (Lanczos), deeper ones in float."""
    if isinstance(picture, Image.Image):
        return to_array(resize(picture, size))
    return resize_array(picture, size, Image.Resampling.LANCZOS)


def resize_array(image: np.ndarray, size: tuple[int, int],
                 resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """An (h, w, c) float image at (width, height), per channel in float (no rounding), clipped to 0..255."""
    image = np.asarray(image, dtype=np.float32)
    w, h = size
    if image.shape[:2] == (h, w):
        return image.copy()
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F").resize((w, h), resample))
                for c in range(image.shape[2])]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.float32)


def load_image(
    source,
    size: int | None = None,
    *,
    background: tuple[int, int, int] | str = WHITE,
    limit: int | None = None,
    what: str = "the image",
) -> np.ndarray:
    """`decode`, scaled so its longest side is `size`, as an (H, W, 3) float32 array in 0..255.

    Raises `InputError` when the result would be smaller than the network takes
    (`MIN_SIDE` on each side) or larger than the pixel limit.
    """
    picture = decode(source, background=background, limit=limit)
    shape = picture_size(picture)
    if size is None:
        check_size(*shape, what)
        return fit(picture, shape)
    check_requested_size(size, shape, limit)
    target = fit_longest_side(shape, size)
    check_size(*target, what, original=shape, longest=size)
    if size > max(shape):  # a thumbnail blown up to 512 px paints blur: say so
        log.warning("%s is %dx%d; enlarging it to %dx%d (a smaller %s keeps its own size)", what, *shape, *target,
                    mention("size"))
    return fit(picture, target)


def check_requested_size(size: int, shape: tuple[int, int] | None = None, limit: int | None = None) -> int:
    """Refuse a size that is not a positive pixel count, or that would exceed the pixel limit."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise OptionError("size", f"must be a positive number of pixels (the output's longest side), got {size}")
    width, height = fit_longest_side(shape, size) if shape else (size, size)
    cap = max_pixels(limit)
    if width * height > cap:
        raise OptionError(
            "size", f"{size} means a {width}x{height} image, over the {cap:,} pixel limit; use a smaller "
            f"{mention('size')}, or raise the limit with {mention('max_pixels')} or {MAX_PIXELS_ENV}=N"
        )
    return int(size)


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


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W, 3) image as the bytes of an 8-bit PNG file (a preview sent over the network)."""
    out = io.BytesIO()
    Image.fromarray(to_uint8(array)).save(out, "PNG")
    return out.getvalue()


def check_size(
    width: int,
    height: int,
    what: str,
    *,
    original: tuple[int, int] | None = None,
    longest: int | None = None,
) -> None:
    if min(width, height) < MIN_SIDE:
        scaled = f"{original[0]}x{original[1]}, which is {width}x{height} at {mention('size')} {longest}" \
            if original else f"{width}x{height}"
        hint = f"; use a larger {mention('size')} or a less elongated image" if original else ""
        raise InputError(f"{what} is {scaled}; the network needs at least {MIN_SIDE} pixels on each side{hint}")


#: Output formats that hold 16 bits per channel, and their writers.
DEEP_WRITERS = {".png": deep_images.write_png16, ".tif": deep_images.write_tiff16, ".tiff": deep_images.write_tiff16}


def save_image(array: np.ndarray, path: str | Path, bit_depth: int = 8, quality: int = 95,
               text: dict[str, str] | None = None) -> Path:
    """Write atomically: readers never see a half-written file, a crash leaves the old one.

    `bit_depth` 16 writes 16-bit RGB PNG or TIFF. JPEG and WebP get `quality`, JPEG with
    4:4:4 chroma (Pillow's default 75 with 4:2:0 blurs the fine colour strokes a painting
    is made of). `text` (what made the picture) goes into PNG text chunks, the JPEG
    comment or the 8-bit TIFF's description; other formats have no place for it. Refuses
    (with `InputError`) an array with NaN or infinite values rather than writing a
    silently blackened picture.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 and not np.isfinite(array).all():
        raise InputError(f"refusing to write {path}: the image has NaN or infinite pixels")
    if bit_depth == 16:
        write = check_deep_output(path)
        with atomic_write(path) as f:
            write(f, array, text)
        return path
    img = Image.fromarray(to_uint8(array))
    fmt = _format_for(path)
    with atomic_write(path) as f:
        img.save(f, format=fmt, **_save_arguments(fmt, quality, text or {}))
    return path


def _save_arguments(fmt: str, quality: int, text: dict[str, str]) -> dict[str, Any]:
    if fmt == "JPEG":
        return {"quality": quality, "subsampling": 0, **({"comment": _joined(text)} if text else {})}
    if fmt == "WEBP":
        return {"quality": quality}
    if fmt == "PNG" and text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        return {"pnginfo": info}
    if fmt == "TIFF" and text:
        return {"tiffinfo": {270: _joined(text)}}
    return {}


def _joined(text: dict[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in text.items())


def check_deep_output(path: Path):
    """The 16-bit writer for `path`'s extension; other extensions are refused."""
    write = DEEP_WRITERS.get(path.suffix.lower())
    if write is None:
        raise OptionError("bit_depth", f"16 needs a .png or .tif output, not '{path.suffix}'")
    return write


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    formats = Image.registered_extensions()
    if ext not in formats or formats[ext] not in Image.SAVE:
        raise InputError(
            f"cannot write images with extension '{path.suffix}'; use .png, .jpg, .webp, .tif, .bmp, ..."
        )
    return formats[ext]


def check_output_path(path: str | Path) -> Path:
    """Refuse an output that cannot be written before any work starts."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first")
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as out.png")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder {parent} is not writable")
    fmt = _format_for(path)
    try:  # some formats exist but cannot hold an RGB picture (e.g. .xbm is black and white only)
        Image.new("RGB", (MIN_SIDE, MIN_SIDE)).save(io.BytesIO(), format=fmt)
    except Exception as exc:
        raise InputError(
            f"cannot write an RGB image as '{path.suffix}' ({exc}); use .png, .jpg, .webp, .tif, .bmp, ..."
        ) from None
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (also through links, or different spellings of one path)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()

