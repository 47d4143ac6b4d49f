"""The optimizer: minimize a loss over the pixels with SciPy's L-BFGS-B (or Adam).

`optimize` runs one of them over a loss object. L-BFGS-B is driven through SciPy's own
reverse-communication routine rather than `scipy.optimize.minimize`, so that its complete
state (`LbfgsState`: iterate, curvature pairs, line-search counters) can be checkpointed and
a resumed run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.optimize import Bounds, minimize

from stylerun.errors import EvaluationStopped, InputError, NumericError, mention
from stylerun.options import ADAM_LEARNING_RATE, TransferOptions


@dataclass
class LbfgsState:
    """SciPy's L-BFGS-B between two calls of its reverse-communication routine ``setulb``.

    The current point, the last loss and gradient, the curvature pairs and every counter
    of the line search: with these the run goes on exactly as if it had never stopped.
    ``task[0]`` says what the routine asked for last: a new iterate was accepted
    (`NEW_X`), or the loss and gradient at ``x`` are wanted (`FG`, the state of a run
    stopped in the middle of an iteration).
    """

    m: int
    x: np.ndarray
    f: np.ndarray
    g: np.ndarray
    wa: np.ndarray
    iwa: np.ndarray
    task: np.ndarray
    ln_task: np.ndarray
    lsave: np.ndarray
    isave: np.ndarray
    dsave: np.ndarray

    START, NEW_X, FG = 0, 1, 3
    ARRAYS = ("x", "f", "g", "wa", "iwa", "task", "ln_task", "lsave", "isave", "dsave")
    _DTYPES = {"iwa": np.int32, "task": np.int32, "ln_task": np.int32, "lsave": np.int32, "isave": np.int32}

    @staticmethod
    def sizes(n: int, m: int) -> dict[str, int]:
        """How many values each array holds for `n` variables and memory `m`."""
        return {"x": n, "f": 1, "g": n, "wa": 2 * m * n + 5 * n + 11 * m * m + 8 * m, "iwa": 3 * n,
                "task": 2, "ln_task": 2, "lsave": 4, "isave": 44, "dsave": 29}

    @classmethod
    def nbytes(cls, n: int, m: int) -> int:
        """Bytes of the whole state for `n` variables and memory `m` (what the memory planner counts)."""
        return sum(count * np.dtype(cls._DTYPES.get(name, np.float64)).itemsize
                   for name, count in cls.sizes(n, m).items())

    @classmethod
    def fresh(cls, x0: np.ndarray, m: int) -> LbfgsState:
        sizes = cls.sizes(x0.size, m)
        arrays = [np.zeros(sizes[name], cls._DTYPES.get(name, np.float64)) for name in cls.ARRAYS]
        arrays[0] = np.array(x0, dtype=np.float64).ravel()
        arrays[1] = np.array(0.0)
        return cls(m, *arrays)

    def copy(self) -> LbfgsState:
        return LbfgsState(self.m, *(getattr(self, name).copy() for name in self.ARRAYS))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"m": np.array(self.m, dtype=np.int64), **{name: getattr(self, name) for name in self.ARRAYS}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n: int, m: int) -> LbfgsState:
        """The state stored by `arrays`, checked against `n` variables and memory `m` (ValueError if not)."""
        if int(arrays["m"]) != m:
            raise ValueError(f"L-BFGS-B memory {int(arrays['m'])}, the run uses {m}")
        expected = cls.sizes(n, m)
        values = []
        for name in cls.ARRAYS:
            array = np.array(arrays[name], dtype=cls._DTYPES.get(name, np.float64))
            if array.size != expected[name]:
                raise ValueError(f"L-BFGS-B state '{name}' has {array.size} values, expected {expected[name]}")
            values.append(array.reshape(()) if name == "f" else array.ravel())
        state = cls(m, *values)
        if int(state.task[0]) not in (cls.NEW_X, cls.FG) or not np.isfinite(state.x).all():
            raise ValueError("L-BFGS-B state is not between two iterations or evaluations")
        return state


@functools.lru_cache(maxsize=1)
def lbfgsb_driver() -> Callable | None:
    """SciPy's reverse-communication L-BFGS-B routine, if this SciPy has the one we drive.

    It is private API (SciPy >= 1.15), so it is used only after checking, on a small
    problem, that driving it gives exactly what `scipy.optimize.minimize` gives; otherwise
    `optimize` falls back to `minimize`, and a resumed run restarts the curvature history.
    """
    try:
        from scipy.optimize import _lbfgsb

        setulb = _lbfgsb.setulb
        rng = np.random.default_rng(0)
        a = rng.normal(size=(6, 6))
        a = a @ a.T + np.eye(6)
        b = rng.normal(size=6) * 4

        def fg(x):
            return float(0.5 * x @ a @ x - b @ x), a @ x - b

        expected: list[float] = []
        minimize(fg, np.ones(6), jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 2.0),
                 callback=lambda xk: expected.append(fg(xk)[0]),
                 options={"maxiter": 5, "maxcor": 3, "ftol": 0.0, "gtol": 0.0})
        got: list[float] = []
        state = LbfgsState.fresh(np.ones(6), 3)
        low, high, nbd = np.zeros(6), np.full(6, 2.0), np.full(6, 2, np.int32)
        for _ in range(200):
            setulb(3, state.x, low, high, nbd, state.f, state.g, 0.0, 0.0, state.wa,
                   state.iwa, state.task, state.lsave, state.isave, state.dsave, 20, state.ln_task)
            if state.task[0] == LbfgsState.FG:
                value, grad = fg(state.x)
                state.f, state.g = np.array(value), np.asarray(grad, dtype=np.float64)
            elif state.task[0] == LbfgsState.NEW_X and len(got) < len(expected):
                got.append(float(state.f))
            else:
                break
        return setulb if got and got == expected else None
    except Exception:  # not there, another signature, another behaviour: use minimize()
        return None


def adam(fun, on_iteration, x0: np.ndarray, steps: int, lr: float,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """Adam on the pixels, each step clipped back into 0..255.

    Float32 state updated in place: four image-sized arrays in all, which is what lets
    `max_memory` fit print sizes (float64 with temporaries took about eight).
    """
    x = np.array(x0, dtype=np.float32).ravel()
    m, v, scratch = np.zeros_like(x), np.zeros_like(x), np.empty_like(x)
    b1, b2 = betas
    for t in range(1, steps + 1):
        _, grad = fun(x)
        np.multiply(grad, 1 - b1, out=scratch, casting="unsafe")
        m *= b1
        m += scratch
        np.multiply(grad, grad, out=scratch, casting="unsafe")
        scratch *= 1 - b2
        v *= b2
        v += scratch
        np.multiply(v, 1 / (1 - b2**t), out=scratch)
        np.sqrt(scratch, out=scratch)
        scratch += eps
        np.divide(m, scratch, out=scratch)
        scratch *= lr / (1 - b1**t)
        x -= scratch
        np.clip(x, 0.0, 255.0, out=x)
        on_iteration()


def start_state(resume: LbfgsState | None, x0: np.ndarray, m: int) -> LbfgsState:
    if resume is not None and resume.m == m and resume.x.size == x0.size:
        return resume.copy()
    return LbfgsState.fresh(x0, m)


def drive_lbfgsb(setulb, st: LbfgsState, fun, on_iteration, done: Callable[[], bool]) -> None:
    """SciPy's own L-BFGS-B loop (as in `scipy.optimize.minimize`), over a state that can be kept.

    The pixels are boxed to 0..255; ftol and gtol are 0, so only `done`, a stop or a
    failed line search end it.
    """
    n = st.x.size
    low, high, nbd = np.zeros(n), np.full(n, 255.0), np.full(n, 2, np.int32)

    def step() -> None:
        setulb(st.m, st.x, low, high, nbd, st.f, st.g, 0.0, 0.0, st.wa, st.iwa, st.task, st.lsave, st.isave,
               st.dsave, 20, st.ln_task)

    if st.task[0] in (LbfgsState.START, LbfgsState.NEW_X):
        step()  # a fresh start, or a state saved right after an iteration: ask for the next point
    while True:
        if st.task[0] == LbfgsState.FG:
            value, grad = fun(st.x)
            st.f, st.g = np.array(value, dtype=np.float64), grad
        elif st.task[0] == LbfgsState.NEW_X:
            on_iteration(st.copy)
            if done():
                return
        else:  # converged, or the line search could not go on
            return
        step()


# --- the loop ------------------------------------------------------------------------------------


class Objective(Protocol):
    """What `optimize` minimizes: a `StyleLoss`, its luminance `objective`, or anything alike."""

    shape: tuple[int, ...]
    last_terms: tuple[float, float]

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]: ...


@dataclass
class Progress:
    """What a progress callback sees after each iteration.

    `image` is the best variable so far as the optimizer holds it ((H, W, 1) luminance in
    luminance mode); `rgb()` gives it as an (H, W, 3) RGB image in 0..255 in every mode.
    `eta_s` is the estimated seconds left (the run engine fills it in for the whole run,
    scales included), `stage`/`stages` the scale being optimized.
    """

    iteration: int
    iterations: int
    loss: float
    content_loss: float
    style_loss: float
    evaluations: int
    elapsed: float
    image: np.ndarray = field(repr=False)
    #: A copy of the optimizer's state now (None where SciPy's routine cannot be driven): for checkpoints.
    lbfgs_state: Callable[[], LbfgsState | None] = field(default=lambda: None, repr=False)
    eta_s: float = math.nan
    stage: int = 1
    stages: int = 1
    to_rgb: Callable[[np.ndarray], np.ndarray] = field(default=lambda x: x, repr=False)

    def rgb(self) -> np.ndarray:
        return self.to_rgb(self.image)


@dataclass
class Result:
    image: np.ndarray  # the best image seen, as the optimizer's variable, float32
    loss: float
    iterations: int
    evaluations: int
    elapsed: float
    interrupted: bool = False
    error: str | None = None
    history: list[float] = field(default_factory=list)
    #: Where the optimizer stood when it stopped (when interrupted), to go on exactly from there.
    lbfgs: LbfgsState | None = field(default=None, repr=False)


class _Stopped(Exception):
    """Raised inside the optimizer loop when a stop was requested (signal, caller)."""


class _Tracker:
    """The bookkeeping around the objective: best image, counters, history, stop and NaN checks."""

    def __init__(self, loss: Objective, x0: np.ndarray, init_loss: float, first: int, iterations: int,
                 callback: Callable[[Progress], None] | None, stop: Callable[[], bool] | None):
        self.loss, self.shape, self.callback, self.stop = loss, loss.shape, callback, stop
        self.best_loss, self.best_x = (init_loss if math.isfinite(init_loss) else math.inf), x0.copy()
        self.evals, self.iteration, self.iterations, self.value = 0, first, iterations, math.nan
        self.history: list[float] = []
        self.lbfgs: LbfgsState | None = None  # the L-BFGS-B state being driven, kept for an interrupted run
        self.start = time.perf_counter()

    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if self.stop is not None and self.stop():
            raise _Stopped
        image = x.reshape(self.shape).astype(np.float32)
        if not np.isfinite(image).all():
            raise NumericError(f"the image became non-finite at evaluation {self.evals + 1}")
        try:
            value, grad = self.loss.loss_and_grad(image)
        except EvaluationStopped:
            raise _Stopped from None
        self.evals += 1
        hint = f"try a smaller {mention('alpha')}/{mention('beta')} or layer weights, or check the model file"
        if not math.isfinite(value):
            raise NumericError(f"the loss became {value} at evaluation {self.evals} "
                               f"(iteration {self.iteration + 1}); {hint}")
        if not np.isfinite(grad).all():
            raise NumericError(f"the gradient became non-finite at evaluation {self.evals} "
                               f"(iteration {self.iteration + 1}) while the loss was finite; {hint}")
        if value < self.best_loss:
            self.best_loss, self.best_x = value, image
        self.value = value
        return value, grad.ravel().astype(np.float64)

    def on_iteration(self, lbfgs_state: Callable[[], LbfgsState | None] = lambda: None) -> None:
        self.iteration += 1
        self.history.append(self.value)
        if self.callback is not None:
            content, style = self.loss.last_terms
            self.callback(Progress(self.iteration, self.iterations, self.value, content, style, self.evals,
                                   time.perf_counter() - self.start, self.best_x, lbfgs_state))
        if self.stop is not None and self.stop():
            raise _Stopped


def optimize(
    loss: Objective,
    init: np.ndarray,
    iterations: int,
    callback: Callable[[Progress], None] | None = None,
    lbfgs_memory: int = 10,
    *,
    first_iteration: int = 0,
    stop: Callable[[], bool] | None = None,
    resume: LbfgsState | None = None,
    init_loss: float = math.inf,
    optimizer: str = "lbfgs",
    learning_rate: float = ADAM_LEARNING_RATE,
) -> Result:
    """Minimize `loss` from `init` with L-BFGS-B (or Adam) until iteration `iterations`.

    `loss` is anything with ``shape``, ``loss_and_grad`` and ``last_terms``: a
    `StyleLoss`, or its `StyleLoss.objective`. With ``optimizer="adam"`` each iteration
    is one evaluation and one Adam step of `learning_rate` (0..255 pixel units), clipped
    to 0..255; Adam's moments are not kept in `Result` (a resumed run restarts them).

    `first_iteration` is where a resumed run starts counting (iterations
    ``first_iteration + 1 .. iterations`` are run). With `resume`, the optimizer state of
    an earlier `Result.lbfgs` or `Progress.lbfgs_state()`, the run goes on exactly where
    that one stood; `init` is then that run's best image and `init_loss` its loss. Without
    it (or where SciPy's routine cannot be driven) the curvature history starts afresh.

    `stop` is polled before every evaluation and after every iteration; when it returns
    True the run ends as if interrupted. Ctrl-C (KeyboardInterrupt), `stop` and a
    non-finite loss or gradient end the run early; in every case the best image seen so
    far is returned, never a NaN one (`Result.interrupted` or `Result.error` says why it
    ended). When not a single evaluation was finite, `Result.loss` is NaN and
    `Result.image` is `init`.
    """
    TransferOptions(iterations=iterations, optimizer=optimizer, learning_rate=learning_rate,
                    lbfgs_memory=lbfgs_memory)  # the option model's checks, before any work
    if not 0 <= first_iteration <= iterations:
        raise InputError(f"first iteration {first_iteration} is outside 0..{iterations}")
    x0 = np.asarray(init, dtype=np.float32)
    if x0.shape != loss.shape or not np.isfinite(x0).all():
        raise InputError(f"the starting image must be a finite array of shape {loss.shape}")
    track = _Tracker(loss, x0, init_loss, first_iteration, iterations, callback, stop)
    interrupted, error = False, None
    try:
        _run(track, x0, iterations - first_iteration, optimizer, learning_rate, lbfgs_memory, resume)
    except (KeyboardInterrupt, _Stopped):
        interrupted = True
    except NumericError as exc:
        error = str(exc)
    if not math.isfinite(track.best_loss) and error is None:
        try:
            value, _ = loss.loss_and_grad(track.best_x)  # no evaluation finished: the loss of the start
        except EvaluationStopped:  # stopped inside the first evaluation, and again: no loss is known
            value = math.nan
        track.best_loss = value if math.isfinite(value) else math.nan
    elif not math.isfinite(track.best_loss):
        track.best_loss = math.nan
    return Result(track.best_x, track.best_loss, track.iteration, track.evals, time.perf_counter() - track.start,
                  interrupted, error, track.history, track.lbfgs if interrupted else None)


def _run(track: _Tracker, x0: np.ndarray, remaining: int, optimizer: str, learning_rate: float, memory: int,
         resume: LbfgsState | None) -> None:
    """Run the chosen optimizer for `remaining` iterations (or until stopped)."""
    if remaining <= 0:
        return
    if optimizer == "adam":
        adam(track.fun, track.on_iteration, x0, remaining, float(learning_rate))
        return
    maxfun = remaining * 20 + 20
    setulb = lbfgsb_driver()
    if setulb is None:
        minimize(track.fun, x0.astype(np.float64).ravel(), jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 255.0),
                 callback=lambda intermediate_result=None: track.on_iteration(),
                 options={"maxiter": remaining, "maxfun": maxfun, "maxcor": memory, "ftol": 0.0, "gtol": 0.0})
        return
    track.lbfgs = start_state(resume, x0, memory)
    drive_lbfgsb(setulb, track.lbfgs, track.fun, track.on_iteration,
                 lambda: track.iteration >= track.iterations or track.evals > maxfun)
