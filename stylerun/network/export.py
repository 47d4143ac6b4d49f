"""Export: weights + layer set -> the loss-and-gradient model and the targets model, on disk.

`export_vgg` writes ``NAME.onnx`` (loss, content_loss, style_loss and grad) and, beside
it, ``NAME.targets.onnx`` (content features and style Gram matrices). `cached_export`
does the same into a cache directory keyed by everything that defines the graph, so a
second run with the same settings starts without exporting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx

from stylerun.errors import InputError
from stylerun.files.atomic import atomic_write
from stylerun.files.hashing import file_sha256
from stylerun.network.autodiff import FASTEST, Flavours, add_gradient
from stylerun.network.cache import cache_dir, cache_limit, model_path, prune, touch
from stylerun.network.loss_graph import (
    IMAGE,
    LOSS,
    LayerSet,
    build_loss_model,
    build_targets_model,
    build_tile_loss_model,
    build_tile_targets_model,
)
from stylerun.version import __version__
from stylerun.weights.bundled import bundled_path
from stylerun.weights.formats import load_weights
from stylerun.weights.vgg19 import VGG19Weights

GRAD = "grad"
#: Bumped whenever the exported graph changes, so stale cache entries are never reused.
# 2: total-variation term and tv_weight input; 3: one-MatMul Gram adjoint; 4: guided regions;
# 5: HardSigmoid Relu mask, applied at pooled size before MaxUnpool
GRAPH_VERSION = "5"
#: The largest model file read: VGG19 to conv5_4 in float32 with its gradient graph is ~80 MB.
MAX_MODEL_BYTES = 512 << 20


@dataclass(frozen=True)
class ModelFiles:
    loss: Path
    targets: Path
    layers: LayerSet


def targets_path(loss_path: Path) -> Path:
    name = loss_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return loss_path.with_name(stem + ".targets.onnx")


def _atomic_save(model: onnx.ModelProto, path: Path) -> None:
    with atomic_write(path) as f:
        f.write(model.SerializeToString())


def build_models(weights: VGG19Weights, layers: LayerSet, flavours: Flavours = FASTEST, tiled: bool = False
                 ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(loss-and-gradient model, targets model), in memory; `tiled`: the pair a tiled evaluation
    runs on each tile (pass 2 and pass 1, see `tiling`)."""
    loss_model, targets_model = ((build_tile_loss_model, build_tile_targets_model) if tiled
                                 else (build_loss_model, build_targets_model))
    loss = add_gradient(loss_model(weights, layers), of=LOSS, wrt=IMAGE, grad_name=GRAD, flavours=flavours)
    return loss, targets_model(weights, layers)


def export_vgg(weights: VGG19Weights, layers: LayerSet, path: str | Path, flavours: Flavours = FASTEST,
               tiled: bool = False) -> ModelFiles:
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist")
    loss, targets = build_models(weights, layers, flavours, tiled)
    # targets first: a loss file on disk always has its targets file beside it
    _atomic_save(targets, targets_path(path))
    _atomic_save(loss, path)
    return ModelFiles(path, targets_path(path), layers)


def cached_export(layers: LayerSet, weights_path: str | Path | None = None, flavours: Flavours = FASTEST,
                  tiled: bool = False) -> ModelFiles:
    """The exported model for `layers`, from the cache or exported now and cached.

    The key holds everything that decides the graph: stylerun's and the graph's version,
    the weights' content, the layer set (with its pooling and `swap_red_blue`, which changes
    the folded conv1_1 and mean) and the adjoint flavours. Every use marks the
    model as used now, and the cache is then pruned to its size limit (see `cache`).
    """
    source = Path(weights_path) if weights_path is not None else bundled_path()
    if not source.is_file():
        raise InputError(f"weights file {source} not found")
    key = hashlib.sha256(
        "|".join([__version__, GRAPH_VERSION, file_sha256(source), repr(layers), repr(flavours)]
                 + (["tiled"] if tiled else [])).encode()
    ).hexdigest()[:20]
    limit = cache_limit()  # a malformed $STYLERUN_CACHE_MAX is an error before the export
    directory = cache_dir()
    path = model_path(directory, layers.deepest, layers.pooling, key)
    if path.is_file() and targets_path(path).is_file():
        touch(path, targets_path(path))
        files = ModelFiles(path, targets_path(path), layers)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        files = export_vgg(load_weights(weights_path), layers, path, flavours, tiled)
    prune(limit, keep=path, directory=directory)
    return files


def model_metadata(path: str | Path) -> dict[str, str]:
    """A model file's metadata (``stylerun.*`` keys); `InputError` if it is not an ONNX model."""
    size = Path(path).stat().st_size
    if size > MAX_MODEL_BYTES:
        raise InputError(f"{path} is {size:,} bytes; a stylerun model is at most {MAX_MODEL_BYTES:,}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path} is not an ONNX model ({exc})") from None
    return {p.key: p.value for p in model.metadata_props}


def layers_of(meta: dict[str, str], source: str | Path = "the model") -> LayerSet:
    """The layer set of a stylerun loss model, from its metadata."""

    def names(key: str) -> list[str]:
        return [n for n in meta.get(key, "").split(",") if n]

    try:
        regions = int(meta.get("stylerun.regions", "0"))
        content, style = names("stylerun.content_layers"), names("stylerun.style_layers")
        swap = meta.get("stylerun.swap_red_blue", "false") == "true"  # absent: exported before the option
        return LayerSet.of(content, style, meta.get("stylerun.pooling", "?"), regions, swap)
    except (ValueError, InputError) as exc:
        raise InputError(f"{source} has unusable stylerun metadata ({exc})") from None


def read_layers(path: str | Path) -> LayerSet:
    """The layer set a model file was exported for, from its metadata."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} not found")
    if not targets_path(path).is_file():
        raise InputError(f"model {path} has no targets model beside it ({targets_path(path).name})")
    meta = model_metadata(path)
    if meta.get("stylerun.kind") != "loss":
        raise InputError(f"{path} is not a stylerun loss model (export one with `stylerun export-vgg`)")
    return layers_of(meta, path)
