"""The optimizer loop on its own (`engine.optimizers`): Adam's steps, what `optimize` checks and returns, the
L-BFGS-B state a checkpoint keeps. Stand-in objectives (`helpers.Quadratic`) take milliseconds; the real loss
is exercised by test_robustness.py and test_controls.py."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from helpers import Quadratic

from stylerun.engine.optimizers import LbfgsState, optimize
from stylerun.errors import EvaluationStopped, InputError, OptionError


class Gentle:
    """sum w (x - t)^2 with small weights: gradients near 1, so Adam's epsilon and bias corrections show."""

    def __init__(self, shape=(4, 5, 3)):
        rng = np.random.default_rng(7)
        self.shape = shape
        self.target = rng.uniform(60, 200, shape).astype(np.float32)
        self.weight = rng.uniform(1e-3, 1e-2, shape).astype(np.float32)
        self.seen: list[np.ndarray] = []
        self.last_terms = (math.nan, math.nan)

    def loss_and_grad(self, x):
        self.seen.append(np.array(x))
        d = np.asarray(x, np.float64) - self.target
        self.last_terms = (1.0, 2.0)
        return float((self.weight * d * d).sum()), (2 * self.weight * d).astype(np.float32)


def adam_reference(objective, x0, steps, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as Kingma and Ba write it (float64, bias-corrected moments), each step clipped to 0..255."""
    x = np.asarray(x0, np.float64).ravel()
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t in range(1, steps + 1):
        _, g = objective.loss_and_grad(x.reshape(objective.shape).astype(np.float32))
        g = np.asarray(g, np.float64).ravel()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = np.clip(x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), 0, 255)
    return x.reshape(objective.shape)


def test_adam_takes_the_textbook_steps():
    loss, start = Gentle(), np.full((4, 5, 3), 128, np.float32)
    seen = []
    result = optimize(loss, start, 6, seen.append, optimizer="adam", learning_rate=3.0)
    assert result.iterations == 6 and result.evaluations == 6 and not result.interrupted and result.error is None
    assert [p.iteration for p in seen] == [1, 2, 3, 4, 5, 6] and all(p.iterations == 6 for p in seen)
    assert result.history == [p.loss for p in seen]
    # each evaluation is at the point the textbook's steps reach (the result is the best of them, not a 7th)
    for k in range(1, 6):
        np.testing.assert_allclose(loss.seen[k], adam_reference(Gentle(), start, k, 3.0), rtol=0, atol=2e-4)
    assert np.array_equal(loss.seen[0], start)
    assert result.image.dtype == np.float32 and result.lbfgs is None


def test_adam_moves_by_its_learning_rate_and_stays_in_the_box():
    loss = Gentle()
    high = np.arange(loss.target.size).reshape(loss.shape) % 2 == 0
    loss.target[:] = np.where(high, 300.0, -50.0)  # minima outside 0..255: the steps push against the box
    start = np.where(high, 254.5, 0.5).astype(np.float32)
    result = optimize(loss, start, 4, optimizer="adam", learning_rate=0.25)
    np.testing.assert_allclose(loss.seen[1], np.where(high, 254.75, 0.25), atol=1e-5)  # the first step: the rate
    assert np.array_equal(loss.seen[3], np.where(high, 255.0, 0.0))  # clipped to the box
    assert np.array_equal(result.image, loss.seen[3])


def test_an_equal_loss_later_does_not_replace_the_best_image():
    class Flat(Gentle):  # the same loss everywhere, and a gradient that keeps Adam moving
        def loss_and_grad(self, x):
            super().loss_and_grad(x)
            return 5.0, np.ones(self.shape, np.float32)

    loss, start = Flat(), np.full((4, 5, 3), 100, np.float32)
    result = optimize(loss, start, 4, optimizer="adam")
    assert not np.array_equal(loss.seen[-1], start)  # it did move
    assert result.loss == 5.0 and np.array_equal(result.image, start)  # the first image with that loss


def test_a_non_finite_image_is_named_with_its_evaluation():
    class Exploding(Gentle):  # a finite loss with a gradient that overflows Adam's float32 moments
        def loss_and_grad(self, x):
            super().loss_and_grad(x)
            return 1.0, np.full(self.shape, 1e300)

    with np.errstate(all="ignore"):
        result = optimize(Exploding(), np.full((4, 5, 3), 9, np.float32), 5, optimizer="adam")
    assert result.error == "the image became non-finite at evaluation 2"
    assert result.iterations == 1 and result.evaluations == 1 and result.loss == 1.0


@pytest.mark.parametrize("options,needle", [
    ({"iterations": -1}, "iterations must be a whole number"),
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
    ({"optimizer": "adam", "learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
    ({"lbfgs_memory": 0}, "lbfgs_memory must be a whole number >= 1"),
])
def test_bad_settings_are_refused_before_any_evaluation(options, needle):
    loss = Quadratic(shape=(2, 2, 3))
    iterations = options.pop("iterations", 3)
    with pytest.raises(OptionError, match=needle):
        optimize(loss, np.zeros(loss.shape, np.float32), iterations, **options)
    assert loss.calls == 0


def test_bad_starts_and_first_iterations_are_refused():
    loss = Quadratic(shape=(2, 2, 3))
    good = np.zeros(loss.shape, np.float32)
    with pytest.raises(InputError, match=r"^first iteration 4 is outside 0\.\.3$"):
        optimize(loss, good, 3, first_iteration=4)
    with pytest.raises(InputError, match=r"^first iteration -1 is outside 0\.\.3$"):
        optimize(loss, good, 3, first_iteration=-1)
    for bad in (np.zeros((2, 3, 3), np.float32), np.full(loss.shape, np.nan, np.float32)):
        with pytest.raises(InputError, match=r"^the starting image must be a finite array of shape \(2, 2, 3\)$"):
            optimize(loss, bad, 3)
    assert loss.calls == 0


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_run_resumed_at_its_last_iteration_does_nothing(optimizer):
    loss = Quadratic(shape=(2, 2, 3))
    start = np.full(loss.shape, 50.0)  # float64: the result is float32 all the same
    result = optimize(loss, start, 5, first_iteration=5, init_loss=123.0, optimizer=optimizer)
    assert (result.iterations, result.evaluations, result.history, loss.calls) == (5, 0, [], 0)
    assert result.loss == 123.0 and result.image.dtype == np.float32 and np.array_equal(result.image, start)


def test_no_iterations_gives_the_loss_of_the_start():
    loss = Quadratic(shape=(2, 2, 3))
    start = np.full(loss.shape, 50, np.uint8)
    expected, _ = Quadratic(shape=(2, 2, 3)).loss_and_grad(start.astype(np.float32))
    result = optimize(loss, start, 0)
    assert result.loss == expected and result.iterations == 0 and result.evaluations == 0
    assert result.image.dtype == np.float32 and np.array_equal(result.image, start)


def test_the_start_counts_as_seen_with_its_loss():
    loss = Quadratic(shape=(2, 2, 3))
    start = np.full(loss.shape, 50, np.float32)
    # a resumed run's best image is its start: nothing it finds that is worse (here: anything) replaces it
    kept = optimize(loss, start, 4, init_loss=-1.0)
    assert kept.loss == -1.0 and np.array_equal(kept.image, start) and kept.iterations == 4
    # a start loss that is not a number counts as none
    fresh = optimize(loss, start, 4, init_loss=math.nan)
    assert fresh.loss <= min(fresh.history) and not np.array_equal(fresh.image, start)


def test_a_finished_run_costs_one_evaluation_each_and_keeps_no_state():
    loss = Quadratic(shape=(3, 3, 3))
    seen, states = [], []  # each iteration's state, taken then: what a checkpoint written there would keep
    before = time.perf_counter()
    result = optimize(loss, np.zeros(loss.shape, np.float32), 6,
                      lambda p: (seen.append(p), states.append(p.lbfgs_state())), lbfgs_memory=4)
    took = time.perf_counter() - before
    assert loss.calls == result.evaluations  # no evaluation beyond the optimizer's own
    assert result.lbfgs is None and not result.interrupted
    assert result.history == [p.loss for p in seen] and all(p.iterations == 6 for p in seen)
    assert 0 <= seen[0].elapsed <= seen[-1].elapsed <= result.elapsed <= took  # seconds since the start
    assert all(s is not None and s.m == 4 and int(s.task[0]) == LbfgsState.NEW_X for s in states)
    assert not np.array_equal(states[0].x, states[-1].x)  # each a copy of the state then


def test_the_first_evaluation_is_at_the_start():
    loss = Gentle()
    start = np.random.default_rng(3).uniform(0, 255, loss.shape).astype(np.float32)
    optimize(loss, start, 2)
    assert np.array_equal(loss.seen[0], start)


def test_stopped_inside_every_evaluation_no_loss_is_known():
    class Stopping(Gentle):
        def loss_and_grad(self, x):
            raise EvaluationStopped

    result = optimize(Stopping(), np.zeros((4, 5, 3), np.float32), 3)
    assert result.interrupted and math.isnan(result.loss) and result.evaluations == 0


def test_stopped_before_any_evaluation_a_start_that_is_not_finite_has_no_loss():
    class Infinite(Gentle):
        def loss_and_grad(self, x):
            super().loss_and_grad(x)
            return math.inf, np.zeros(self.shape, np.float32)

    result = optimize(Infinite(), np.zeros((4, 5, 3), np.float32), 3, stop=lambda: True)
    assert result.interrupted and result.error is None and math.isnan(result.loss)


# --- the L-BFGS-B state a checkpoint keeps ----------------------------------------------------


def test_state_sizes_are_scipys_workspace():
    """The sizes SciPy's L-BFGS-B allocates (wa = 2mn + 5n + 11m^2 + 8m): a checkpoint's arrays are checked
    against them, so a change here refuses every checkpoint written before it."""
    assert LbfgsState.sizes(12, 3) == {"x": 12, "f": 1, "g": 12, "wa": 72 + 60 + 99 + 24, "iwa": 36,
                                       "task": 2, "ln_task": 2, "lsave": 4, "isave": 44, "dsave": 29}
    # float64 x, f, g, wa, dsave; int32 iwa, task, ln_task, lsave, isave
    assert LbfgsState.nbytes(12, 3) == 8 * (12 + 1 + 12 + 255 + 29) + 4 * (36 + 2 + 2 + 4 + 44)
    assert LbfgsState.nbytes(1000, 10) == 8 * (1000 + 1 + 1000 + 26180 + 29) + 4 * (3000 + 52)


def test_state_round_trips_through_plain_arrays_of_any_dtype():
    state = LbfgsState.fresh(np.arange(12.0), 3)
    state.task[0] = LbfgsState.FG
    stored = {name: np.asarray(array).tolist() for name, array in state.arrays().items()}  # plain lists
    stored["f"] = [0.0]
    stored["x"] = np.asarray(stored["x"], np.float32)
    stored["iwa"] = np.asarray(stored["iwa"], np.int64)
    back = LbfgsState.from_arrays(stored, 12, 3)
    for name in LbfgsState.ARRAYS:
        original, got = getattr(state, name), getattr(back, name)
        assert got.dtype == original.dtype and got.shape == original.shape and np.array_equal(got, original), name
    assert back.m == 3 and state.arrays()["m"].dtype == np.int64


def test_states_that_do_not_fit_are_refused_by_name():
    state = LbfgsState.fresh(np.zeros(12), 3)
    state.task[0] = LbfgsState.NEW_X
    with pytest.raises(ValueError, match=r"^L-BFGS-B memory 3, the run uses 5$"):
        LbfgsState.from_arrays(state.arrays(), 12, 5)
    with pytest.raises(ValueError, match=r"^L-BFGS-B state 'x' has 12 values, expected 13$"):
        LbfgsState.from_arrays(state.arrays(), 13, 3)
    between = "^L-BFGS-B state is not between two iterations or evaluations$"
    state.task[0] = LbfgsState.START
    with pytest.raises(ValueError, match=between):
        LbfgsState.from_arrays(state.arrays(), 12, 3)
    state.task[0] = LbfgsState.NEW_X
    state.x[3] = np.nan
    with pytest.raises(ValueError, match=between):
        LbfgsState.from_arrays(state.arrays(), 12, 3)
