// The coarse-to-fine plan of a run, as the engine makes it (stylerun.engine.schedule.scale_plan), and the
// size of the picture at each stage (the photo's longest side scaled to the stage's side).

// Python's round(): halves go to the even neighbour (12.5 -> 12), where Math.round goes up.
export function round(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

// The short side of the coarsest of `n` stages for a [width, height] photo (or a square without one).
function coarsestShort(size, n, ratio, shape) {
  const coarsest = Math.max(1, round(size / ratio ** (n - 1)));
  return shape ? round(Math.min(...shape) * coarsest / Math.max(...shape)) : coarsest;
}

// How many stages put the coarsest one nearest `coarsest` px (schedule.auto_scales).
export function autoScales(size, ratio, shape, { coarsest = 128, maxScales = 8, minSide = 32 } = {}) {
  let n = Math.min(1 + Math.max(0, round(Math.log(size / coarsest) / Math.log(ratio))), maxScales);
  while (n > 1 && coarsestShort(size, n, ratio, shape) < minSide) n -= 1;
  return n;
}

// (longest side, last iteration) of each stage: sides size / ratio^(n-1) ... size, `split` of the
// iterations at the finest and the rest shared equally by the coarser ones; `scales` 0 is automatic.
// `shape` is the photo's [width, height]; `settings` carries the engine's constants from config.json.
export function plan(size, scales, iterations, shape = null, settings = {}) {
  const { ratio = 2, split = 0.5, minSide = 32 } = settings;
  const n = scales === 0 ? autoScales(size, ratio, shape, settings) : scales;
  if (n > 1 && coarsestShort(size, n, ratio, shape) < minSide) {
    throw new Error(`${n} scales make the coarsest image too small; use fewer scales or a larger size`);
  }
  const finest = n === 1 ? iterations : round(iterations * split);
  const per = n === 1 ? 0 : Math.floor((iterations - finest) / (n - 1));
  const stages = [];
  let end = 0;
  for (let k = 0; k < n; k++) {
    const count = k === n - 1 ? iterations - per * (n - 1) : per;
    end += count;
    if (count > 0 || k === n - 1) stages.push([Math.max(1, round(size / ratio ** (n - 1 - k))), end]);
  }
  return stages;
}

// [width, height] of a width x height picture whose longest side becomes `side`.
export function fitted(width, height, side) {
  const k = side / Math.max(width, height);
  return [Math.max(1, round(width * k)), Math.max(1, round(height * k))];
}
