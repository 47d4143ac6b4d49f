"""The pixel optimizers: SciPy's L-BFGS-B driven one step at a time, and Adam.

`stylize.optimize` runs one of them over a loss. L-BFGS-B is driven through SciPy's own
reverse-communication routine rather than `scipy.optimize.minimize`, so that its complete
state (`LbfgsState`: iterate, curvature pairs, line-search counters) can be checkpointed and
a resumed run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, minimize


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

    @classmethod
    def fresh(cls, x0: np.ndarray, m: int) -> LbfgsState:
        n = x0.size
        i32 = np.int32
        return cls(m, np.array(x0, dtype=np.float64).ravel(), np.array(0.0), np.zeros(n),
                   np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m), np.zeros(3 * n, i32), np.zeros(2, i32),
                   np.zeros(2, i32), np.zeros(4, i32), np.zeros(44, i32), np.zeros(29))

    def copy(self) -> LbfgsState:
        return LbfgsState(self.m, *(getattr(self, name).copy() for name in self.ARRAYS))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"m": np.array(self.m, dtype=np.int64), **{name: getattr(self, name) for name in self.ARRAYS}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n: int, m: int) -> LbfgsState:
        """The state stored by `arrays`, checked against `n` variables and memory `m` (ValueError if not)."""
        if int(arrays["m"]) != m:
            raise ValueError(f"L-BFGS-B memory {int(arrays['m'])}, the run uses {m}")
        expected = {"x": n, "f": 1, "g": n, "wa": 2 * m * n + 5 * n + 11 * m * m + 8 * m, "iwa": 3 * n,
                    "task": 2, "ln_task": 2, "lsave": 4, "isave": 44, "dsave": 29}
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
    """Adam on the pixels, each step clipped back into 0..255."""
    x = np.asarray(x0, dtype=np.float64).ravel().copy()
    m, v = np.zeros_like(x), np.zeros_like(x)
    b1, b2 = betas
    for t in range(1, steps + 1):
        _, grad = fun(x)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        x = np.clip(x - lr * step, 0.0, 255.0)
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
