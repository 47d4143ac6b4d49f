// The coarse-to-fine plan of a run, as the engine makes it (stylerun.engine.run.scale_plan), and the
// size of the picture at each stage (the photo's longest side scaled to the stage's side).

// Python's round(): halves go to the even neighbour (12.5 -> 12), where Math.round goes up.
export function round(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

// (longest side, last iteration) of each of `scales` stages: sides size / 2^(scales-1) ... size, the
// iterations split evenly with the remainder to the finest. A stage whose short side (at `aspect`,
// short / long) would be under `minSide` is left out and its iterations go to the next.
export function plan(size, scales, iterations, aspect = 1, minSide = 32) {
  const per = Math.floor(iterations / scales);
  const stages = [];
  for (let k = 0; k < scales; k++) {
    const side = Math.max(1, round(size / 2 ** (scales - 1 - k)));
    stages.push([side, k === scales - 1 ? iterations : per * (k + 1)]);
  }
  return stages.filter(([side], k) => k === scales - 1 || round(side * aspect) >= minSide);
}

// [width, height] of a width x height picture whose longest side becomes `side`.
export function fitted(width, height, side) {
  const k = side / Math.max(width, height);
  return [Math.max(1, round(width * k)), Math.max(1, round(height * k))];
}
