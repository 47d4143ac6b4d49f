"""16-bit RGB PNG and TIFF, read and written at full precision.

Pillow reads a 16-bit RGB PNG or TIFF as 8-bit RGB and cannot write one, so these few
formats are handled here with numpy and zlib: PNG (colour types grey, grey+alpha, RGB,
RGBA at 16 bits, not interlaced) both ways, and uncompressed 16-bit RGB TIFF (what
`write_tiff16` writes) for reading. Values map 0..65535 <-> 0..255 as floats.
Everything read is bounded: the header's size is checked against the pixel limit before
anything is inflated, and inflating stops at the size the header implies.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from stylerun.errors import DeepImageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def to_u16(image: np.ndarray) -> np.ndarray:
    """Float RGB 0..255 -> uint16 0..65535, rounded."""
    return np.clip(np.rint(np.asarray(image, np.float64) * (65535.0 / 255.0)), 0, 65535).astype(np.uint16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(f: BinaryIO, image: np.ndarray, text: dict[str, str] | None = None) -> None:
    """An (H, W, 3) float image as a 16-bit RGB PNG (filter 0 on every row, zlib level 6), with
    `text` as Latin-1 tEXt chunks."""
    pixels = to_u16(image).astype(">u2")
    h, w, _ = pixels.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, -1).view(np.uint8)], axis=1)
    notes = b"".join(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace"))
                     for k, v in (text or {}).items())
    f.write(PNG_MAGIC + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + notes
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b""))


def write_tiff16(f: BinaryIO, image: np.ndarray, text: dict[str, str] | None = None) -> None:
    """An (H, W, 3) float image as an uncompressed little-endian 16-bit RGB TIFF, one strip (no `text`)."""
    pixels = to_u16(image).astype("<u2")
    h, w, _ = pixels.shape
    data = pixels.tobytes()
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, None),
               (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = 8
    bits = ifd + 2 + 12 * len(entries) + 4
    strip = bits + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = {258: bits, 273: strip}.get(tag, value)
        out += struct.pack("<HHI", tag, kind, count)
        out += struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16)
    f.write(bytes(out) + data)


def is_png16(head: bytes) -> bool:
    """Whether the first 33 bytes of a file are a PNG header for 16 bits per sample."""
    return len(head) >= 33 and head[:8] == PNG_MAGIC and head[12:16] == b"IHDR" and head[24] == 16


def read_png16(data: bytes, limit: int) -> np.ndarray:
    """A 16-bit PNG as float32 (H, W, C) in 0..255, C = 1..4 as stored (alpha kept)."""
    w, h, depth, kind, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 16 or kind not in _CHANNELS:
        raise DeepImageError(f"not a 16-bit grey/RGB PNG (depth {depth}, colour type {kind})")
    if interlace:
        raise DeepImageError("interlaced 16-bit PNGs are not supported; save it without interlacing")
    if w < 1 or h < 1 or w * h > limit:
        raise DeepImageError(f"image is {w}x{h}, over the {limit:,} pixel limit or empty")
    channels = _CHANNELS[kind]
    stride = w * channels * 2
    raw = _inflate(_idat(data), h * (stride + 1))
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    pixels = _unfilter(rows[:, 0], rows[:, 1:], channels * 2)
    values = pixels.view(">u2").reshape(h, w, channels).astype(np.float32)
    return values * np.float32(255.0 / 65535.0)


def _idat(data: bytes) -> bytes:
    pos, parts = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + length])
        if kind == b"IEND":
            break
        pos += 12 + length
    return b"".join(parts)


def _inflate(compressed: bytes, size: int) -> bytes:
    """Inflate at most `size` bytes: a stream that claims more is cut off, and one that gives less is refused."""
    raw = zlib.decompressobj().decompress(compressed, size)
    if len(raw) != size:
        raise DeepImageError(f"image data is {len(raw)} bytes, the header needs {size}")
    return raw


def _unfilter(kinds: np.ndarray, rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (Sub and Up vectorized; Average and Paeth byte by byte)."""
    out = np.zeros_like(rows)
    previous = np.zeros(rows.shape[1], np.uint8)
    for y in range(rows.shape[0]):
        row, kind = rows[y], int(kinds[y])
        if kind == 0:
            line = row.copy()
        elif kind == 1:
            line = np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).ravel()
        elif kind == 2:
            line = row + previous
        elif kind in (3, 4):
            line = _sequential(row, previous, bpp, kind)
        else:
            raise DeepImageError(f"unknown PNG filter type {kind} in row {y}")
        out[y] = previous = line
    return out


def _sequential(row: np.ndarray, up: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    line = bytearray(len(row))
    raw, above = row.tobytes(), up.tobytes()
    for i in range(len(raw)):
        left = line[i - bpp] if i >= bpp else 0
        if kind == 3:
            line[i] = (raw[i] + ((left + above[i]) >> 1)) & 0xFF
            continue
        corner = above[i - bpp] if i >= bpp else 0
        p = left + above[i] - corner
        pa, pb, pc = abs(p - left), abs(p - above[i]), abs(p - corner)
        predictor = left if pa <= pb and pa <= pc else above[i] if pb <= pc else corner
        line[i] = (raw[i] + predictor) & 0xFF
    return np.frombuffer(bytes(line), np.uint8)


def read_tiff16(path: Path, offset: int, rawmode: str, size: tuple[int, int]) -> np.ndarray:
    """An uncompressed 16-bit RGB TIFF strip (as Pillow's tile describes it) as float32 RGB 0..255."""
    w, h = size
    dtype = {"RGB;16L": "<u2", "RGB;16B": ">u2", "RGB;16N": "=u2"}.get(rawmode)
    if dtype is None:
        raise DeepImageError(f"16-bit TIFF layout {rawmode} is not supported")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(w * h * 6)
    if len(data) != w * h * 6:
        raise DeepImageError("the TIFF's pixel data is truncated")
    return np.frombuffer(data, dtype).reshape(h, w, 3).astype(np.float32) * np.float32(255.0 / 65535.0)
