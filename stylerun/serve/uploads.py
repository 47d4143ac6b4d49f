"""A job's uploaded pictures, bounded before any is decoded and stored at the size the job will use.

One request once took the server to 4.3 GB: a 7900x7900 single-colour PNG (a few hundred
kilobytes) as content and fifteen copies as styles, every one decoded before a bad file at
the end was refused. Here a request is refused, in this order, before a pixel is decoded:
more than `MAX_PAINTINGS` paintings; an upload over `MAX_UPLOAD` bytes; any header that is
not an image of an `ACCEPTED` format; headers whose pixels add up to more than
`MAX_REQUEST_PIXELS`. Only then are the pictures decoded, one at a time across the whole
server (`_DECODING`), each scaled down to what the job will use and written atomically:
a job is queued only once its pictures are in place, and a 5.6 MB photo for a 512 px job
is stored as a 512 px PNG, not as a 128 MB one.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import HTTPException
from PIL import Image

from stylerun.errors import StylerunError
from stylerun.files.atomic import write_bytes
from stylerun.images.codec import MIN_SIDE, fit_longest_side, image_header, open_image, resize

#: Paintings one job may carry (a request with more is refused before any is read).
MAX_PAINTINGS = 8
#: Bytes of one uploaded file.
MAX_UPLOAD = 50 * 1024 * 1024
#: Pixels all the pictures of one request may decode to, together (by their headers): a 45 MP photo passes, a
#: 7900x7900 one (62 million) does not. Decoded one at a time, the largest takes about 200 MB as Pillow holds RGB.
MAX_REQUEST_PIXELS = 50_000_000
#: Formats a photo or a painting comes in; anything else Pillow could open (PSD, ICNS, EPS, ...) is refused.
ACCEPTED = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")
#: Decodes at once across the server: concurrent requests never hold more than this many full pictures.
_DECODING = threading.BoundedSemaphore(1)


@dataclass
class Upload:
    """One uploaded file, its header read: `field` is the form field (content, style), `name` the stored one."""

    field: str
    name: str
    data: bytes
    format: str
    width: int
    height: int


def refuse(status: int, field: str, error: str) -> HTTPException:
    return HTTPException(status, {"field": field, "error": error})


def read_uploads(content: Any, styles: list[Any]) -> list[Upload]:
    """Every upload read (bounded) and its header checked, before anything is decoded; 4xx naming the field."""
    if len(styles) > MAX_PAINTINGS:
        raise refuse(422, "style", f"{len(styles)} paintings; a job takes at most {MAX_PAINTINGS}")
    files = [("content", "content", content)] + [("style", f"style{i}", s) for i, s in enumerate(styles)]
    uploads, pixels = [], 0
    for field, name, upload in files:
        data = _read(upload.file, field)
        try:
            fmt, width, height = image_header(data, f"{field} image")
        except StylerunError as exc:
            raise refuse(400, field, str(exc)) from exc
        if fmt not in ACCEPTED:
            raise refuse(400, field, f"{field} image is {fmt}; send {', '.join(ACCEPTED[:-1])} or {ACCEPTED[-1]}")
        pixels += width * height
        if pixels > MAX_REQUEST_PIXELS:
            raise refuse(413, field, f"the pictures of this job add up to more than {MAX_REQUEST_PIXELS:,} pixels; "
                                     "send smaller ones (the job scales them to its size anyway)")
        uploads.append(Upload(field, name, data, fmt, width, height))
    return uploads


def _read(stream: BinaryIO, field: str) -> bytes:
    data = stream.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise refuse(413, field, f"upload over {MAX_UPLOAD >> 20} MB")
    return data


def content_shape(upload: Upload, size: int | None) -> tuple[int, int]:
    """(width, height) the job paints at: the content scaled so its longest side is `size`."""
    return (upload.width, upload.height) if size is None else fit_longest_side((upload.width, upload.height), size)


def store_uploads(uploads: list[Upload], options: dict[str, Any], path: Any) -> list[Path]:
    """Decode each upload, scale it down to what the job uses, write it atomically at `path(name)`; the paths.

    The content is stored at the job's `size`; a painting at the content's size (the job stretches it
    to that), or at `style_scale` times it; nothing is ever enlarged here (the job does that itself).
    """
    written: list[Path] = []
    shape = content_shape(uploads[0], options.get("size"))
    for upload in uploads:
        with _DECODING:
            try:
                image = open_image(upload.data, background=tuple(options.get("background") or (255, 255, 255)))
            except StylerunError as exc:
                raise refuse(400, upload.field, str(exc)) from exc
            target = shape if upload.field == "content" else _style_target(image.size, shape, options)
            written.append(_write(image, target, path(upload.name)))
    return written


def _style_target(size: tuple[int, int], shape: tuple[int, int], options: dict[str, Any]) -> tuple[int, int]:
    scale = options.get("style_scale")
    if scale is None:
        return shape
    return fit_longest_side(size, max(MIN_SIDE, round(scale * max(shape))))


def _write(image: Image.Image, target: tuple[int, int], path: Path) -> Path:
    """`image` as a PNG at `target`, where that is smaller (each side); as it is otherwise."""
    if target[0] < image.width and target[1] < image.height:
        image = resize(image, target)
    out = io.BytesIO()
    image.save(out, "PNG")
    write_bytes(path, out.getvalue())
    return path
