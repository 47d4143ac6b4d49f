"""How much a VGG19 weights file may make stylerun read: the caps derived from the layer table.

A weights file is untrusted (see `files.limits`); these caps say what a real one can
need, so a crafted file that claims more is refused before anything is allocated:

* one array read from a weights file holds at most `MAX_TENSOR_BYTES` (VGG19's largest
  convolution kernel, 512 x 512 x 3 x 3, at 8 bytes a value), and all arrays read from one
  file at most `MAX_WEIGHTS_BYTES` (every VGG19 convolution at 8 bytes a value, read and copied);
* fully connected layers are never read, except in the formats read whole (a MATLAB
  variable, tensorflow-vgg's pickled dict), which may take `MAX_WHOLE_NET_BYTES` (the
  whole VGG19 net, fc6 included, at 4 bytes a value, plus a quarter).

`budget` and `walk` are the generic guards of `files.limits` with these caps, `WeightsError`
and words that say why.
"""

from __future__ import annotations

import math

from stylerun.errors import WeightsError
from stylerun.files.limits import Budget, Walk
from stylerun.vgg import CONV_SHAPES

#: Elements of VGG19's largest convolution kernel (conv4_2 ... conv5_4: 512 x 512 x 3 x 3).
LARGEST_CONV_ELEMENTS = max(math.prod(shape) for shape in CONV_SHAPES.values())
#: Kernels and biases of all 16 convolutions: what a weights file must provide.
CONV_PARAMETERS = sum(math.prod(shape) + shape[0] for shape in CONV_SHAPES.values())
#: Parameters of the whole VGG19, its three fully connected layers included (fc6 is 25088 x 4096).
VGG19_PARAMETERS = CONV_PARAMETERS + 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
#: The most bytes one array read from a weights file may hold (float64 of the largest kernel).
MAX_TENSOR_BYTES = LARGEST_CONV_ELEMENTS * 8
#: The most bytes all arrays read from one weights file may hold together: every convolution at
#: 8 bytes a value, twice (a torch storage as read, and the tensor copied out of it).
MAX_WEIGHTS_BYTES = 2 * CONV_PARAMETERS * 8
#: The most bytes the formats read whole (MATLAB variables, tensorflow-vgg's pickled dict) may
#: take: their fully connected layers are read too.
MAX_WHOLE_NET_BYTES = VGG19_PARAMETERS * 4 * 5 // 4
#: What an encrypted zip member is refused as (no weights file is ever encrypted).
KIND = "weights file"


def budget(source: str, limit: int = MAX_WEIGHTS_BYTES) -> Budget:
    """The bytes the arrays read from one weights file may take together."""
    return Budget(limit, source, WeightsError, "more than VGG19 needs")


def walk(source: str) -> Walk:
    """A capped walk over the objects unpickled from one weights file."""
    return Walk(source, error=WeightsError, verdict="not VGG19")
