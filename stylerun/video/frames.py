"""Frames in and out: a video file (PyAV) or a folder of images, read one frame at a time.

Video files come from outside, so decoding is bounded: the stream's frame size is checked
against the pixel limit before any frame is decoded (and every decoded frame again), at
most `MAX_FRAMES` frames are read, and anything PyAV cannot open is one `InputError`.
Each frame is scaled as `stylerun transfer` scales its content (`load_image`). Output goes
to a folder of PNG frames, and for a video output those are encoded at the end (H.264 in
.mp4/.mkv/.mov, VP9 in .webm, GIF), with the input's audio copied when the container
takes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from stylerun.errors import InputError, OptionError
from stylerun.files.atomic import atomic_write
from stylerun.images.codec import load_image, max_pixels

log = logging.getLogger("stylerun")

#: The most frames one run reads from an input (a bound on a crafted file's frame count).
MAX_FRAMES = 100_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
VIDEO_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9", ".gif": "gif"}
#: The container each suffix names (PyAV needs it spelled out when writing to a file object).
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".gif": "gif"}
FOLDER_FPS = 24.0


def av_module():
    """PyAV, or a one-line error naming the extra that brings it."""
    try:
        import av
    except ImportError:
        raise InputError("video needs PyAV and OpenCV: pip install 'stylerun[video]'") from None
    return av


def parse_range(text: str | None) -> tuple[int, int | None]:
    """``A:B`` (frames A..B-1, counted from 0; either may be left out) as (first, end or None)."""
    if text is None:
        return 0, None
    first, colon, end = text.partition(":")
    try:
        a = int(first) if first.strip() else 0
        b = int(end) if end.strip() else None
    except ValueError:
        a, b = -1, None
    if not colon or a < 0 or (b is not None and b <= a):
        raise OptionError("frames", f"must be A:B with 0 <= A < B (frames A to B-1, from 0), e.g. 0:48; got {text!r}")
    return a, b


@dataclass
class Source:
    """An input clip: a video file or a folder of frames."""

    path: Path
    folder: bool
    fps: float
    files: tuple[Path, ...] = ()

    @classmethod
    def open(cls, path: str | Path, limit: int | None = None) -> Source:
        path = Path(path)
        if path.is_dir():
            files = tuple(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
            if not files:
                raise InputError(f"folder {path} has no frames ({', '.join(IMAGE_SUFFIXES)})")
            return cls(path, True, FOLDER_FPS, files[:MAX_FRAMES])
        if not path.is_file():
            raise InputError(f"{path} not found")
        with _container(path) as container:
            stream = _video_stream(container, path, limit)
            rate = stream.average_rate or stream.guessed_rate or Fraction(FOLDER_FPS)
            return cls(path, False, float(rate))

    def frames(self, size: int | None, limit: int | None, first: int = 0, end: int | None = None,
               background: str = "white") -> Iterator[tuple[int, np.ndarray]]:
        """(index, RGB float32 frame scaled to `size`) for frames first..end-1."""
        stop = min(MAX_FRAMES, end if end is not None else MAX_FRAMES)
        if self.folder:
            for index in range(first, min(stop, len(self.files))):
                yield index, load_image(self.files[index], size, background=background, limit=limit,
                                        what=f"frame {self.files[index].name}")
            return
        with _container(self.path) as container:
            stream = _video_stream(container, self.path, limit)
            cap = max_pixels(limit)
            for index, frame in enumerate(container.decode(stream)):
                if index >= stop:
                    break
                if frame.width * frame.height > cap:
                    raise InputError(f"{self.path}: frame {index} is {frame.width}x{frame.height}, over the "
                                     f"{cap:,} pixel limit")
                if index >= first:
                    rgb = frame.to_ndarray(format="rgb24")
                    yield index, load_image(rgb, size, limit=limit, what=f"frame {index} of {self.path.name}")


class _container:
    """``av.open`` as a context manager whose failures are one `InputError`."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        av = av_module()
        try:
            self.container = av.open(str(self.path), "r")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{self.path} is not a video stylerun can read ({exc.__class__.__name__})") from None
        return self.container

    def __exit__(self, *exc) -> None:
        self.container.close()


def _video_stream(container, path: Path, limit: int | None = None):
    if not container.streams.video:
        raise InputError(f"{path} has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    cap = max_pixels(limit)
    if width * height > cap:
        raise InputError(f"{path}: frames are {width}x{height}, over the {cap:,} pixel limit (`max_pixels`)")
    return stream


def frame_name(index: int) -> str:
    return f"frame_{index:05d}.png"


def check_video_output(path: Path) -> str:
    """The codec for a video output path, or an error naming the suffixes that work."""
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise InputError(f"output {path}: give a folder for PNG frames, or a video file ending in "
                         f"{', '.join(VIDEO_CODECS)}")
    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} does not exist; create it first")
    return codec


def encode(frames: list[Path], output: Path, fps: float, audio_from: Path | None = None,
           span: tuple[float, float | None] = (0.0, None)) -> Path:
    """Encode PNG `frames` into `output` (written atomically, see `atomic`), with the
    audio of `audio_from` between `span` seconds when the container takes it."""
    av = av_module()
    codec = check_video_output(output)
    with atomic_write(output) as f, av.open(f, "w", format=CONTAINERS[output.suffix.lower()]) as out, \
            contextlib.ExitStack() as inputs:
        audio = _audio_streams(av, out, audio_from, inputs) if audio_from is not None else None
        _write_frames(av, out, codec, frames, fps)  # every stream is added before the first packet
        if audio is not None:
            _copy_audio(av, out, *audio, span)
    return output


def _write_frames(av, out, codec: str, frames: list[Path], fps: float) -> None:
    from PIL import Image

    first = np.asarray(Image.open(frames[0]).convert("RGB"))
    h, w = first.shape[:2]
    even = codec != "gif"  # 4:2:0 needs even sides: a row or column is cut
    h, w = (h - h % 2, w - w % 2) if even else (h, w)
    stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = w, h
    stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    for path in frames:
        rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:h, :w])
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _audio_streams(av, out, source: Path, inputs: contextlib.ExitStack):
    """(input container, its first audio stream, the output's copy of it), or None when there is
    none or the output container cannot take it (a warning says so)."""
    try:
        inp = inputs.enter_context(av.open(str(source), "r"))
        if not inp.streams.audio:
            return None
        audio = inp.streams.audio[0]
        return inp, audio, out.add_stream_from_template(audio)
    except (av.FFmpegError, ValueError) as exc:
        log.warning("could not copy the audio of %s (%s); the video has none", source, exc)
        return None


def _copy_audio(av, out, inp, audio, stream, span: tuple[float, float | None]) -> None:
    """The audio packets within `span` seconds, copied without re-encoding."""
    start, end = span
    shift = round(start / audio.time_base)
    for packet in inp.demux(audio):
        if packet.dts is None or packet.pts is None:
            continue
        t = float(packet.pts * audio.time_base)
        if t < start or (end is not None and t >= end):
            continue
        packet.pts -= shift
        packet.dts -= shift
        packet.stream = stream
        out.mux(packet)
