// L-BFGS with box bounds by projection, for the pixels of an image (0..255).
//
// Each iteration takes the usual two-loop L-BFGS direction on the free variables (a pixel at a
// bound whose gradient pushes it outward is held there), then a backtracking (Armijo) search
// along the projected path P(x + t d), P clipping into the box, from t = 1. The first iteration
// (and any after the history is reset) has no curvature yet: see `firstStep`.
// Iterations count accepted steps, as SciPy's do; evaluations are what cost.

const dot = (a, b) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};

// A pixel is held when it sits on a bound and the gradient pushes it out of the box.
function heldMask(x, g, lower, upper) {
  const held = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) held[i] = (x[i] <= lower && g[i] > 0) || (x[i] >= upper && g[i] < 0) ? 1 : 0;
  return held;
}

// d = -H g over the free variables, by the two-loop recursion on the stored pairs.
function direction(g, held, pairs) {
  const q = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) q[i] = held[i] ? 0 : g[i];
  const a = new Float64Array(pairs.length);
  for (let k = pairs.length - 1; k >= 0; k--) {
    const { s, y, rho } = pairs[k];
    a[k] = rho * dot(s, q);
    for (let i = 0; i < q.length; i++) q[i] -= a[k] * y[i];
  }
  if (pairs.length) {
    const { s, y } = pairs[pairs.length - 1];
    const gamma = dot(s, y) / dot(y, y);
    for (let i = 0; i < q.length; i++) q[i] *= gamma;
  }
  for (let k = 0; k < pairs.length; k++) {
    const { s, y, rho } = pairs[k];
    const b = rho * dot(y, q);
    for (let i = 0; i < q.length; i++) q[i] += s[i] * (a[k] - b);
  }
  for (let i = 0; i < q.length; i++) q[i] = held[i] ? 0 : -q[i];
  return q;
}

function projected(x, d, t, lower, upper) {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = Math.min(upper, Math.max(lower, x[i] + t * d[i]));
  return out;
}

// Armijo's sufficient decrease along the projected path: f(x_t) <= f + c1 g.(x_t - x).
function armijo(f, g, x, xt, ft) {
  let slope = 0;
  for (let i = 0; i < x.length; i++) slope += g[i] * (xt[i] - x[i]);
  return ft <= f + 1e-4 * slope && slope < 0;
}

// The first step, with no curvature yet: from t = 1 / |d|, jump to where the directional derivative
// would reach zero if it changed linearly (the secant of its two values), at most 1000-fold, while
// Armijo holds and the derivative has not yet fallen to 0.9 of its start (Wolfe's curvature test).
async function firstStep(evaluate, x, f, g, d, lower, upper) {
  const slope0 = dot(g, d);
  let t = 1 / Math.sqrt(dot(d, d));
  let best = null;
  for (let trial = 0; trial < 8; trial++) {
    const xt = projected(x, d, t, lower, upper);
    const r = await evaluate(xt);
    if (!(Number.isFinite(r.loss) && armijo(f, g, x, xt, r.loss)) || (best && r.loss >= best.r.loss)) {
      if (best) return best;
      t *= 0.1;
      continue;
    }
    best = { x: xt, r };
    const slope = dot(r.grad, d);
    if (slope >= 0.9 * slope0) return best;
    t *= Math.min(1000, slope0 - slope > 0 ? slope0 / (slope0 - slope) : 1000);
  }
  return best;
}

async function lineSearch(evaluate, x, f, g, d, t, lower, upper) {
  for (let trial = 0; trial < 20; trial++) {
    const xt = projected(x, d, t, lower, upper);
    const r = await evaluate(xt);
    if (Number.isFinite(r.loss) && armijo(f, g, x, xt, r.loss)) return { x: xt, r };
    t *= 0.5;
  }
  return null;
}

// Minimize `evaluate` (async x -> {loss, grad}) from x0 for `iterations` accepted steps.
// onIteration(k, x, result) follows each; shouldStop() is asked before each iteration.
export async function minimize(evaluate, x0, { iterations, memory = 10, lower = 0, upper = 255,
  onIteration = () => {}, shouldStop = () => false } = {}) {
  let x = x0;
  let r = await evaluate(x);
  onIteration(0, x, r);
  const pairs = [];
  for (let k = 1; k <= iterations && !shouldStop(); k++) {
    const held = heldMask(x, r.grad, lower, upper);
    let d = direction(r.grad, held, pairs);
    let slope = dot(d, r.grad);
    if (!(slope < 0)) { // not a descent direction: forget the curvature and go down the gradient
      pairs.length = 0;
      d = direction(r.grad, held, pairs);
      slope = dot(d, r.grad);
      if (!(slope < 0)) break; // a stationary point within the box
    }
    const step = pairs.length ? await lineSearch(evaluate, x, r.loss, r.grad, d, 1, lower, upper)
      : await firstStep(evaluate, x, r.loss, r.grad, d, lower, upper);
    if (!step) break; // no decrease along the direction: as far as float32 goes
    const s = new Float32Array(x.length);
    const y = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      s[i] = step.x[i] - x[i];
      y[i] = step.r.grad[i] - r.grad[i];
    }
    const sy = dot(s, y);
    if (sy > 1e-10 * dot(y, y)) {
      pairs.push({ s, y, rho: 1 / sy });
      if (pairs.length > memory) pairs.shift();
    }
    x = step.x;
    r = step.r;
    onIteration(k, x, r);
  }
  return { x, result: r };
}
