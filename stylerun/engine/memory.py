"""The memory planner: what a run holds at its peak, and what fits a budget (`max_memory`).

One model of a run's memory, and every decision made from it: the tile size and the
L-BFGS-B history a run takes under a budget (`fit`, said aloud as a notice), the smallest
run there is (`smallest_need`, for the refusal), and a served job's default budget
(`job_memory`). The optimizer's state is counted from `LbfgsState.sizes`, the one
statement of what L-BFGS-B holds. Budgets are parsed by `units.parse_bytes` (as the
`max_memory` option) and written by `units.format_bytes`.

The constants are measured (tools/bench_tiling.py; docs/performance.md): the process
before any image (both sessions, weights, Python), the network's working memory per pixel
of what it is shown at once (the whole image's model; a halo'd tile's two models, which
share one arena), and the run's own arrays per image pixel besides the optimizer's state
(images, targets, the gradient, the best image, the float64 gradient handed to the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass

from stylerun.engine.optimizers import LbfgsState
from stylerun.errors import OptionError, mention
from stylerun.network.loss_graph import LayerSet
from stylerun.network.sessions import machine_memory
from stylerun.network.tiling import halo
from stylerun.options import TransferOptions
from stylerun.units import format_bytes

BASE_BYTES = 540 << 20
NETWORK_BYTES_PER_PIXEL = 2600
TILE_NETWORK_BYTES_PER_PIXEL = 2000
ARRAY_BYTES_PER_PIXEL = 210
#: Tile sizes and L-BFGS-B histories a budget may choose, most wanted first.
TILE_CHOICES = (1024, 768, 512, 384, 256, 192, 128)
MEMORY_CHOICES = (10, 7, 5, 3)
#: Of the machine's memory, the share a server's jobs may take together by default (the rest: the server, the system).
JOBS_SHARE = 0.7
#: The least a served job's default budget is, however many workers share the machine.
MIN_JOB_BYTES = 64 << 20


def lbfgs_bytes(pixels: int, m: int, channels: int = 3) -> int:
    """L-BFGS-B's state for `pixels` x `channels` variables and history `m`."""
    return LbfgsState.nbytes(pixels * channels, m)


def adam_bytes(pixels: int, channels: int = 3) -> int:
    """Adam's float32 iterate, two moments and scratch (`optimizers.adam`), and the float64 gradient it is given."""
    return (4 * 4 + 8) * pixels * channels


def estimate_bytes(h: int, w: int, tile: int | None, m: int, layers: LayerSet) -> int:
    """The process's peak for an h x w run with tiles of `tile` (None: whole image) and L-BFGS-B
    history `m` (0: Adam)."""
    if tile is None:
        network = NETWORK_BYTES_PER_PIXEL * h * w
    else:
        network = TILE_NETWORK_BYTES_PER_PIXEL * min(h, tile + 2 * halo(layers)) * min(w, tile + 2 * halo(layers))
    optimizer = adam_bytes(h * w) if m == 0 else lbfgs_bytes(h * w, m)
    return BASE_BYTES + network + ARRAY_BYTES_PER_PIXEL * h * w + optimizer


def smallest_need(h: int, w: int, layers: LayerSet) -> int:
    """The least any plan needs at h x w: the smallest tiles and the shortest L-BFGS-B history."""
    return estimate_bytes(h, w, TILE_CHOICES[-1], MEMORY_CHOICES[-1], layers)


def choose(budget: int, h: int, w: int, layers: LayerSet, m: int = 10) -> tuple[int | None, int, int] | None:
    """(tile size or None for whole, L-BFGS-B history or 0 for Adam, estimated bytes) that fit `budget`;
    None if nothing does.

    The whole image at the asked history first; then the largest tile (fewest halo pixels)
    at the asked history, as long as it is 256 px or more; then shorter histories; then Adam,
    whose state is four float32 copies of the image against L-BFGS-B's 2m + 7 float64 ones.
    """
    options = [(None, m)] + [(t, m) for t in TILE_CHOICES if t >= 256]
    options += [(t, k) for k in MEMORY_CHOICES if k < m for t in TILE_CHOICES]
    options += [(t, m) for t in TILE_CHOICES if t < 256] + [(t, 0) for t in TILE_CHOICES]
    for tile, k in options:
        if tile is not None and tile >= max(h, w):
            continue
        need = estimate_bytes(h, w, tile, k, layers)
        if need <= budget:
            return tile, k, need
    return None


@dataclass(frozen=True)
class Fit:
    """What a budget chose for one stage: the options to run with, and the sentence that says so."""

    options: TransferOptions
    notice: str


def fit(options: TransferOptions, width: int, height: int, layers: LayerSet) -> Fit:
    """`options` with the tile size and L-BFGS-B history (or Adam) that fit `options.max_memory` at
    width x height; OptionError naming `max_memory` when even the smallest plan does not."""
    budget = format_bytes(options.max_memory)
    chosen = choose(options.max_memory, height, width, layers, options.lbfgs_memory)
    if chosen is None:
        need = smallest_need(height, width, layers)
        raise OptionError("max_memory", f"{budget} is too small for {width}x{height}: it needs about "
                                        f"{format_bytes(need)} even in small tiles; raise it or lower "
                                        f"{mention('size')}")
    tile, m, need = chosen
    how = "the whole image at once" if tile is None else f"tiles of {tile} px (halo {halo(layers)} px)"
    tile_size = tile if tile is not None else options.tile_size
    head = f"max memory {budget} at {width}x{height}: {how}"
    peak = f"estimated peak {format_bytes(need)}"
    if m == 0:
        return Fit(options.replace(tile_size=tile_size, optimizer="adam"),
                   f"{head}, Adam (L-BFGS-B's history does not fit), {peak}")
    return Fit(options.replace(tile_size=tile_size, lbfgs_memory=m), f"{head}, L-BFGS-B history {m}, {peak}")


def job_memory(workers: int) -> int | None:
    """The default memory budget of one served job: `JOBS_SHARE` of this machine's memory, shared among
    the workers (None when the machine's memory is unknown)."""
    total = machine_memory()
    return None if total is None else max(MIN_JOB_BYTES, int(total * JOBS_SHARE / workers))
