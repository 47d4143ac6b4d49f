"""The models a browser downloads: the export's two graphs with their weights as 8-bit codes.

The bundled weights are k-means codes (one byte per weight, a 256-entry table per layer);
the exported graphs hold them decoded, as float32, which a browser would have to download
at four bytes a weight. `coded` puts the codes back: every large initializer that takes at
most 256 distinct values becomes a uint8 code tensor and a float32 table, decoded in the
graph by ``Cast`` (to int32, since ``Gather`` wants integer indices) and ``Gather``.
onnxruntime folds the two constant nodes when it builds the session, so the decoding costs
nothing per evaluation and the weights it runs on are the float32 values, bit for bit.

Coding by distinct values rather than by reading the npz keeps this independent of how the
graph uses a kernel (conv1_1 folded with the channel order, the gradient's copies): any
tensor that is a lookup into 256 values is stored as one. Weights from another file (not
k-means coded) stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stylerun.files.atomic import atomic_write
from stylerun.network.autodiff import FASTEST
from stylerun.network.export import build_models
from stylerun.network.loss_graph import LayerSet
from stylerun.weights.formats import load_weights

#: Tensors smaller than this stay float32: a table and a Cast node would outweigh the saving.
MIN_CODED = 4096
LOSS_FILE, TARGETS_FILE = "loss.onnx", "targets.onnx"


@dataclass(frozen=True)
class BrowserModels:
    loss: Path
    targets: Path
    layers: LayerSet
    coded_tensors: int


def lookup_codes(array: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 codes, float32 table) with ``table[codes] == array`` exactly, or None if over 256 values."""
    if array.dtype != np.float32 or array.size < MIN_CODED:
        return None
    table, codes = np.unique(array, return_inverse=True)
    if table.size > 256:
        return None
    return codes.reshape(array.shape).astype(np.uint8), table.astype(np.float32)


def coded(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with each 256-valued float32 initializer stored as codes + table, decoded in the graph."""
    graph = model.graph
    kept, decoders, count = [], [], 0
    for init in graph.initializer:
        found = lookup_codes(numpy_helper.to_array(init))
        if found is None:
            kept.append(init)
            continue
        codes, table = found
        name = init.name
        kept += [numpy_helper.from_array(codes, f"{name}.codes"), numpy_helper.from_array(table, f"{name}.table")]
        decoders += [helper.make_node("Cast", [f"{name}.codes"], [f"{name}.index"], to=TensorProto.INT32),
                     helper.make_node("Gather", [f"{name}.table", f"{name}.index"], [name], axis=0)]
        count += 1
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    nodes = decoders + list(out.graph.node)  # decoders first: the graph stays topologically sorted
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, count


def export_browser_models(outdir: str | Path, layers: LayerSet, weights: str | Path | None = None) -> BrowserModels:
    """Write ``loss.onnx`` and ``targets.onnx`` for `layers` into `outdir`, weights coded (see module doc)."""
    outdir = Path(outdir)
    loss, targets = build_models(load_weights(weights), layers, FASTEST)
    count = 0
    for model, name in ((targets, TARGETS_FILE), (loss, LOSS_FILE)):
        small, n = coded(model)
        count += n
        with atomic_write(outdir / name) as f:
            f.write(small.SerializeToString())
    return BrowserModels(outdir / LOSS_FILE, outdir / TARGETS_FILE, layers, count)
