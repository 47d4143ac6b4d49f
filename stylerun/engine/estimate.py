"""How long a run will take, from its own first iteration: no extra evaluation is spent on it.

The first L-BFGS-B iteration takes about three evaluations (its first line search), the
later ones about one each; an evaluation's time is proportional to the pixels. So the
first iteration gives the seconds per evaluation, and the rest of the run is that times
the evaluations still to come, each later (finer) scale scaled by its pixels. The engine
uses the same model for the ETA of the progress display and for the up-front `Estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from stylerun.engine.optimizers import Progress
from stylerun.images.codec import MIN_SIDE

#: Evaluations per iteration after the first. L-BFGS-B, measured on chelsea.jpg and
#: starry_night.jpg (whole runs, the first iteration's three included): 1.02 (128 px, 200
#: iterations), 1.03 (192 px, 150), 1.08 (256 px, 100) and 1.06 (384 px, 150) from the
#: photo, 1.03 from noise (128 px, 300); Adam evaluates once per step.
EVALUATIONS_PER_ITERATION = {"lbfgs": 1.05, "adam": 1.0}
#: What each scale of a coarse-to-fine run costs besides its iterations, in evaluations at its size: the
#: content and style targets and the two far-end terms of a style strength (four forward passes, about
#: one and a half evaluations) and the first iteration's line search (about two more).
STAGE_SETUP_EVALUATIONS = 3.5
#: A run estimated longer than this gets a hint for faster settings.
LONG_S = 120.0


@dataclass(frozen=True)
class Estimate:
    """The up-front estimate of a run, made after its first iteration.

    `seconds` is the whole optimization (loading not included); `faster` is, for a long
    run, a smaller longest side (the `size` option) and its estimated seconds.
    """

    seconds: float
    device: str
    side: int
    faster: tuple[int, float] | None = None


def iteration_seconds(p: Progress, optimizer: str) -> float:
    """Seconds per iteration after the first, from the first iteration's evaluations."""
    return p.elapsed / max(1, p.evaluations) * EVALUATIONS_PER_ITERATION.get(optimizer, 1.0)


def seconds_left(per: float, iteration: int, ends: list[int], stage: int, costs: list[float]) -> float:
    """Seconds left after `iteration`, in stage `stage` of a run whose stages end at `ends`, at `per`
    seconds an iteration of this stage: each later stage's iterations and setup
    (`STAGE_SETUP_EVALUATIONS`), scaled by its evaluation cost (`costs`, any unit) over this stage's."""
    left = per * (ends[stage] - iteration)
    for k in range(stage + 1, len(ends)):
        left += per * costs[k] / costs[stage] * (ends[k] - ends[k - 1] + STAGE_SETUP_EVALUATIONS)
    return left


def device_name(provider: str, threads: int) -> str:
    """``CPU (2 threads)``, ``CUDA``: where the evaluations run, in a person's words."""
    name = provider.removesuffix("ExecutionProvider")
    return f"{name} ({threads} thread{'s' if threads != 1 else ''})" if name == "CPU" else name


def estimate(seconds: float, device: str, shape: tuple[int, ...]) -> Estimate:
    """The estimate of a run of `seconds` on an output of `shape` (H, W, ...), with a hint if it is long.

    The hint halves the longest side, which takes a quarter of the time: the time of an
    evaluation is proportional to the pixels.
    """
    side, short = max(shape[:2]), min(shape[:2])
    faster = None
    if seconds > LONG_S and short // 2 >= MIN_SIDE:
        faster = (side // 2, seconds * ((side // 2) / side) ** 2)
    return Estimate(seconds, device, side, faster)
