"""The image loader and saver: every mode, every broken file, atomic writes (no model needed)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import png_claiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from stylerun.errors import InputError
from stylerun.images import codec as images
from stylerun.images.codec import MIN_SIDE, load_image, open_image, save_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F")
# formats Pillow writes, and which of the modes above each takes as they are
WRITERS = {
    "PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16"},
    "TIFF": {"1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"},
    "JPEG": {"L", "RGB", "CMYK"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"1", "L", "P", "RGB"},
    "GIF": {"L", "P"},
}
SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (height, width)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(0, 1000, (height, width)).astype(np.float32))
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (height, width)).astype(np.uint8), "L").convert("P")
        img.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tobytes())
        return img
    bands = Image.getmodebands(mode)
    array = rng.integers(0, 256, (height, width, bands)).astype(np.uint8)
    return Image.fromarray(array[:, :, 0] if bands == 1 else array, mode)


def check_loaded(result: np.ndarray, size: int | None, source_size: tuple[int, int]) -> None:
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert result.ndim == 3 and result.shape[2] == 3
    assert np.isfinite(result).all() and result.min() >= 0 and result.max() <= 255
    h, w = result.shape[:2]
    if size is not None:
        assert max(h, w) == size
        assert (w, h) == images.fit_longest_side(source_size, size)
    assert min(h, w) >= MIN_SIDE


def load_or_refuse(data, size):
    """The property: an RGB float array of the requested size, or InputError; nothing else."""
    try:
        return load_image(data, size)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None


# --- property-based -------------------------------------------------------------------


@SETTINGS
@given(data=st.binary(max_size=2048), size=st.integers(32, 96))
def test_random_bytes_load_or_refuse(data, size):
    result = load_or_refuse(data, size)
    if result is not None:
        check_loaded(result, size, Image.open(io.BytesIO(data)).size)


@SETTINGS
@given(
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(sorted(WRITERS)),
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    size=st.integers(32, 96),
    seed=st.integers(0, 2**16),
)
def test_every_mode_and_size_loads_or_is_refused(mode, fmt, width, height, size, seed):
    img = random_image(mode, width, height, seed)
    assert img.mode == mode
    # the image object itself, and the same image written in a format that takes its mode
    for source in [img] + ([encode(img, fmt)] if mode in WRITERS[fmt] else []):
        result = load_or_refuse(source, size)
        small = min(images.fit_longest_side((width, height), size)) < MIN_SIDE
        assert (result is None) == small, (mode, fmt, width, height, size)
        if result is not None:
            check_loaded(result, size, (width, height))


@pytest.fixture(scope="module")
def real_files() -> list[bytes]:
    photo = Image.open(EXAMPLES / "chelsea.jpg").convert("RGB").resize((96, 64))
    rgba = photo.convert("RGBA")
    return [
        encode(photo, "JPEG", quality=85),
        encode(photo, "JPEG", progressive=True),
        encode(photo, "PNG"),
        encode(rgba, "PNG"),
        encode(photo.convert("P"), "GIF"),
        encode(photo, "WEBP"),
        encode(photo, "TIFF"),
        encode(photo, "BMP"),
    ]


@SETTINGS
@given(which=st.integers(0, 7), cut=st.floats(0.0, 1.0, exclude_max=True), size=st.integers(32, 80))
def test_truncated_files_load_or_refuse(real_files, which, cut, size):
    data = real_files[which]
    truncated = data[: int(len(data) * cut)]
    result = load_or_refuse(truncated, size)
    if result is not None:
        check_loaded(result, size, (96, 64))


@SETTINGS
@given(which=st.integers(0, 7), where=st.floats(0.0, 1.0, exclude_max=True), byte=st.integers(0, 255))
def test_corrupted_files_load_or_refuse(real_files, which, where, byte):
    data = bytearray(real_files[which])
    data[int(len(data) * where)] = byte
    result = load_or_refuse(bytes(data), 48)
    if result is not None:
        check_loaded(result, 48, (96, 64))


# --- conversions ------------------------------------------------------------------------


def test_pillow_truncated_images_stay_errors(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = (EXAMPLES / "chelsea.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg: cannot read image \(image file is truncated"):
        open_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_exif_orientation_is_applied():
    array = np.zeros((40, 60, 3), np.uint8)
    array[:, :30] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(Image.fromarray(array), "JPEG", exif=exif, quality=95)
    img = open_image(data)
    assert img.size == (40, 60)  # turned upright
    top, bottom = np.asarray(img)[:20].mean(), np.asarray(img)[-20:].mean()
    assert top > 200 and bottom < 50  # the white left half is now on top


def test_alpha_is_composited_on_the_background():
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 40))  # opaque blue left half
    on_white = np.asarray(open_image(encode(rgba, "PNG")))
    assert tuple(on_white[0, 0]) == (0, 0, 255) and tuple(on_white[0, 39]) == (255, 255, 255)
    on_black = np.asarray(open_image(encode(rgba, "PNG"), background="black"))
    assert tuple(on_black[0, 39]) == (0, 0, 0)
    on_grey = np.asarray(images.as_image(rgba, background="#808080"))
    assert tuple(on_grey[0, 39]) == (128, 128, 128)
    la = Image.new("LA", (40, 40), (0, 0))
    assert tuple(np.asarray(open_image(encode(la, "PNG"), background=(10, 20, 30)))[5, 5]) == (10, 20, 30)


def test_palette_transparency_is_composited():
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 1
    out = np.asarray(open_image(encode(img, "PNG", transparency=1), background="white"))
    assert tuple(out[0, 0]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], np.uint16).repeat(40, 0).repeat(14, 1)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    for source in (img, encode(img, "PNG"), encode(img, "TIFF")):
        out = np.asarray(images.as_image(source))
        assert out.dtype == np.uint8 and out.shape == (40, 42, 3)
        assert out[0, 0].tolist() == [0, 0, 0] and out[0, 14].tolist() == [100] * 3 and out[0, 41].tolist() == [255] * 3


def test_float_and_int_images_are_scaled():
    unit = Image.fromarray(np.full((40, 40), 0.5, np.float32))
    assert np.asarray(open_image(encode(unit, "TIFF")))[0, 0].tolist() == [128] * 3
    wide = Image.fromarray(np.linspace(-5e6, 5e6, 1600).reshape(40, 40).astype(np.int32))
    out = np.asarray(images.as_image(wide))
    assert out.min() == 0 and out.max() == 255


def test_cmyk_becomes_rgb():
    cyan = Image.new("CMYK", (40, 40), (255, 0, 0, 0))
    for source in (cyan, encode(cyan, "JPEG", quality=100), encode(cyan, "TIFF")):
        r, g, b = np.asarray(images.as_image(source))[20, 20].tolist()
        assert r < 40 and g > 200 and b > 200


def test_animated_image_uses_first_frame_with_a_warning(caplog):
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for fmt in ("GIF", "PNG", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stylerun"):
            out = np.asarray(open_image(data))
        r, g, b = out[20, 20].tolist()
        assert r > 200 and g < 60 and b < 60, fmt
        assert "several frames; using the first" in caplog.text, fmt


def test_pillow_warnings_become_one_line_log_records(caplog):
    broken_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01"
    data = encode(Image.new("RGB", (40, 40), "green"), "JPEG", exif=broken_exif)
    with caplog.at_level(logging.WARNING, logger="stylerun"):
        assert open_image(data).size == (40, 40)
    assert [r.getMessage() for r in caplog.records] == [
        "image data: Corrupt EXIF data. Expecting to read 12 bytes but only got 8."
    ]


# --- refusals -----------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder, not an image"):
        open_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(InputError, match="notes.png: not an image file"):
        open_image(path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg"):
        open_image(empty)


def test_decompression_bomb_is_refused_with_the_limit_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(images.MAX_PIXELS_ENV, raising=False)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(InputError) as info:
        open_image(path)
    message = str(info.value)
    assert "bomb.png" in message and "100000x100000" in message and f"{images.MAX_PIXELS:,}" in message
    assert "decompression bomb" in message and "`max_pixels`" in message and "STYLERUN_MAX_PIXELS" in message


def test_pixel_limit_can_be_raised_and_lowered(monkeypatch):
    data = encode(Image.new("RGB", (50, 40)), "PNG")
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "1999")
    with pytest.raises(InputError, match="50x40 = 2,000 pixels, over the 1,999 pixel limit"):
        open_image(data)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "2000")
    assert open_image(data).size == (50, 40)
    assert open_image(data, limit=5000).size == (50, 40)
    with pytest.raises(InputError, match="over the 100 pixel limit"):
        open_image(data, limit=100)  # an explicit limit (--max-pixels) wins over the environment
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "10")
    with pytest.raises(InputError, match="over the 10 pixel limit that guards against decompression bombs"):
        open_image(data)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match="STYLERUN_MAX_PIXELS must be a whole number"):
        open_image(data)
    assert Image.MAX_IMAGE_PIXELS != 10  # Pillow's global limit is restored


def test_too_small_after_resizing_says_why():
    long_thin = Image.new("RGB", (1000, 20))
    with pytest.raises(InputError) as info:
        load_image(long_thin, 64, what="the content image")
    assert str(info.value) == (
        "the content image is 1000x20, which is 64x1 at `size` 64; the network needs at least 32 pixels on each "
        "side; use a larger `size` or a less elongated image"
    )
    assert load_image(long_thin, 1600).shape == (32, 1600, 3)


def test_requested_size_is_checked():
    for bad in (0, -3):
        with pytest.raises(InputError, match="size must be a positive number"):
            images.check_requested_size(bad)
    with pytest.raises(InputError, match="size 100000 means a 100000x100000 image, over the"):
        images.check_requested_size(100_000)


def test_arrays_are_checked():
    with pytest.raises(InputError, match="NaN or infinite"):
        images.as_image(np.full((40, 40, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="shape"):
        images.as_image(np.zeros((40, 40, 5)))
    assert images.as_image(np.zeros((40, 40))).mode == "RGB"


def test_colours():
    assert images.parse_color("white") == (255, 255, 255)
    assert images.parse_color("#0a0B0c") == (10, 11, 12)
    assert images.parse_color("rgb(1, 2, 3)") == (1, 2, 3)
    with pytest.raises(InputError, match="unknown colour 'blurple'"):
        images.parse_color("blurple")


# --- writing --------------------------------------------------------------------------------


def test_save_is_atomic_and_refuses_nan(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(np.full((40, 40, 3), 7.0), path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="NaN or infinite"):
        save_image(np.full((40, 40, 3), np.nan), path)

    def broken_save(self, fp, format=None, **params):
        fp.write(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.zeros((40, 40, 3)), path)
    assert path.read_bytes() == before  # the old image is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # and no temporary file is left


def test_output_paths_are_checked_before_work(tmp_path):
    with pytest.raises(InputError, match="output folder .* does not exist"):
        images.check_output_path(tmp_path / "missing" / "out.png")
    with pytest.raises(InputError, match="cannot write images with extension '.xyz'; use .png"):
        images.check_output_path(tmp_path / "out.xyz")
    with pytest.raises(InputError, match="cannot write images with extension ''"):
        images.check_output_path(tmp_path / "out")
    with pytest.raises(InputError, match="is a folder"):
        (tmp_path / "dir.png").mkdir()
        images.check_output_path(tmp_path / "dir.png")
    for ok in ("a.png", "b.JPG", "c.webp", "d.tif", "e.bmp"):
        images.check_output_path(tmp_path / ok)


def test_same_file(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(a)
    assert images.same_file(a, tmp_path / "." / "a.png")
    assert images.same_file(a, tmp_path / "link.png")
    assert not images.same_file(a, tmp_path / "b.png")
