// The Web Worker that runs a transfer: onnxruntime-web sessions of the two models, the
// targets and the style-strength weights as stylerun's Python loss object makes them
// (stylerun/engine/loss.py), and L-BFGS (lbfgs.js), so the page stays responsive.
import * as ort from './ort/ort.wasm.min.mjs';
import { minimize } from './lbfgs.js';
import { fitted, plan } from './plan.js';

let config = null;
let sessions = null;
let stopRequested = false;

const tensor = (data, dims) => new ort.Tensor('float32', data, dims);
const scalar = (x) => tensor(Float32Array.of(x), []); // the contract's scalars are 0-d
const imageTensor = (img) => tensor(img.data, [img.height, img.width, 3]);

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function init({ threads }) {
  config = await (await fetch('./config.json')).json();
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  const t0 = performance.now();
  const [loss, targets] = await Promise.all([fetchBytes(config.models.loss), fetchBytes(config.models.targets)]);
  const t1 = performance.now();
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  sessions = { targets: await ort.InferenceSession.create(targets, options) };
  sessions.loss = await ort.InferenceSession.create(loss, options);
  return { type: 'ready', config, threads: ort.env.wasm.numThreads, bytes: loss.length + targets.length,
    downloadSeconds: (t1 - t0) / 1000, startSeconds: (performance.now() - t1) / 1000 };
}

// ---- the loss, bound to its targets (stylerun.engine.loss.StyleLoss) --------------------------

const names = (prefix, layers) => layers.map((l) => `${prefix}.${l}`);

// Content features of the photo; style Grams of each painting (already at the output's size, so
// no M_l rescaling), summed with the blend weights in float32 as numpy does.
async function targets(content, styles, blend) {
  const fixed = await sessions.targets.run({ image: imageTensor(content) },
    names('content_target', config.content_layers));
  const sums = {};
  for (let k = 0; k < styles.length; k++) {
    if (!config.style_layers.length || blend[k] === 0) continue;
    const grams = await sessions.targets.run({ image: imageTensor(styles[k]) },
      names('style_target', config.style_layers));
    const w = Math.fround(blend[k]);
    for (const [name, gram] of Object.entries(grams)) {
      const scaled = new Float32Array(gram.data.length);
      for (let i = 0; i < scaled.length; i++) scaled[i] = gram.data[i] * w;
      if (sums[name]) for (let i = 0; i < scaled.length; i++) sums[name].data[i] += scaled[i];
      else sums[name] = tensor(scaled, gram.dims);
    }
  }
  return { ...fixed, ...sums };
}

function feeds(fixed, weights) {
  return { ...fixed, content_weights: tensor(Float32Array.from(weights.content), [weights.content.length]),
    style_weights: tensor(Float32Array.from(weights.style), [weights.style.length]),
    alpha: scalar(weights.alpha), beta: scalar(weights.beta), tv_weight: scalar(weights.tv) };
}

async function evaluate(bound, img) {
  const out = await sessions.loss.run({ ...bound, image: imageTensor(img) });
  return { loss: out.loss.data[0], content: out.content_loss.data[0], style: out.style_loss.data[0],
    tv: out.tv_loss.data[0], grad: out.grad.data };
}

// strength.factor: the multiple of style_far / content_far that strength S asks for.
function factor(s, init, pixels) {
  const c = config.strength;
  const doublings = 0.5 * Math.log2(Math.max(pixels, 1) / c.reference_pixels);
  return 10 ** ((c.centre[init] ?? c.centre.random) - c.slope * doublings + c.span * (1 - 2 * s));
}

// The model bound with unit weights and no TV: the far terms are measured with it.
function unitFeeds(fixed, layerWeights) {
  return feeds(fixed, { ...layerWeights, alpha: 1, beta: 1, tv: 0 });
}

// α, β from the style strength and the two far terms, measured with the same model (strength.weights).
async function strengthWeights(fixed, content, styles, blend, s, layerWeights) {
  const unit = unitFeeds(fixed, layerWeights);
  const styleFar = (await evaluate(unit, content)).style;
  let contentFar = 0;
  for (let k = 0; k < styles.length; k++) {
    if (blend[k] > 0) contentFar += blend[k] * (await evaluate(unit, styles[k])).content;
  }
  const ok = Number.isFinite(contentFar) && Number.isFinite(styleFar) && contentFar > 0 && styleFar > 0;
  const pixels = content.width * content.height;
  return { alpha: ok ? factor(s, config.defaults.init, pixels) * styleFar / contentFar : 1e-6, beta: 1,
    far: [contentFar, styleFar] };
}

// smoothness.roughness: the photo's TV term (squared neighbour differences, summed).
function roughness({ width, height, data }) {
  let tv = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const i = (y * width + x) * 3 + c;
        if (y + 1 < height) tv += (data[i + width * 3] - data[i]) ** 2;
        if (x + 1 < width) tv += (data[i + 3] - data[i]) ** 2;
      }
    }
  }
  return tv;
}

// The TV weight: as given, or the one a smoothness asks for (smoothness.tv_weight).
async function tvWeight(fixed, content, weights, balance, layerWeights) {
  if (weights.tv !== undefined && weights.tv !== null) return weights.tv;
  const s = weights.smoothness ?? 0;
  if (!(s > 0)) return 0;
  let styleFar = balance.far ? balance.far[1] : NaN;
  if (!Number.isFinite(styleFar)) {
    styleFar = (await evaluate(unitFeeds(fixed, layerWeights), content)).style;
  }
  const rough = roughness(content);
  const ok = Number.isFinite(styleFar) && Number.isFinite(rough) && styleFar > 0 && rough > 0;
  return ok ? s * balance.beta * styleFar / rough : 0;
}

async function bind(content, styles, blend, weights) {
  const fixed = await targets(content, styles, blend);
  const layerWeights = { content: config.content_weights, style: config.style_weights, ...weights };
  const balance = weights.strength === undefined ? { alpha: weights.alpha, beta: weights.beta, far: null }
    : await strengthWeights(fixed, content, styles, blend, weights.strength, layerWeights);
  const tv = await tvWeight(fixed, content, weights, balance, layerWeights);
  return { bound: feeds(fixed, { ...layerWeights, ...balance, tv }), balance, tv };
}

// ---- a transfer ---------------------------------------------------------------------------------

// An ImageBitmap drawn at width x height, as the model's (H, W, 3) RGB floats.
function pixels(bitmap, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(bitmap, 0, 0, width, height);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const data = new Float32Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    data[j] = rgba[i]; data[j + 1] = rgba[i + 1]; data[j + 2] = rgba[i + 2];
  }
  return { width, height, data };
}

// A float image resized bilinearly (the last stage's result, to start the next).
function resized(img, width, height) {
  const data = new Float32Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(img.height - 1, Math.max(0, (y + 0.5) * img.height / height - 0.5));
    const y0 = Math.floor(sy); const y1 = Math.min(img.height - 1, y0 + 1); const fy = sy - y0;
    for (let x = 0; x < width; x++) {
      const sx = Math.min(img.width - 1, Math.max(0, (x + 0.5) * img.width / width - 0.5));
      const x0 = Math.floor(sx); const x1 = Math.min(img.width - 1, x0 + 1); const fx = sx - x0;
      for (let c = 0; c < 3; c++) {
        const at = (yy, xx) => img.data[(yy * img.width + xx) * 3 + c];
        const top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx;
        const bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx;
        data[(y * width + x) * 3 + c] = top * (1 - fy) + bottom * fy;
      }
    }
  }
  return { width, height, data };
}

function rgba(img) {
  const out = new Uint8ClampedArray(img.width * img.height * 4);
  for (let i = 0, j = 0; j < img.data.length; i += 4, j += 3) {
    out[i] = img.data[j]; out[i + 1] = img.data[j + 1]; out[i + 2] = img.data[j + 2]; out[i + 3] = 255;
  }
  return out;
}

function post(img, message) {
  const data = rgba(img);
  postMessage({ ...message, width: img.width, height: img.height, rgba: data }, [data.buffer]);
}

async function run({ content, styles, blend, size, iterations, strength }) {
  stopRequested = false;
  const total = blend.reduce((a, b) => a + b, 0);
  blend = blend.map((w) => w / total);
  const stages = plan(size, config.defaults.scales, iterations, [content.width, content.height], config.schedule_settings);
  let x = null; let best = null; let lossFirst = null; let evaluations = 0; let seconds = 0; let done = 0;
  for (const [index, [side, end]] of stages.entries()) {
    const [width, height] = fitted(content.width, content.height, side);
    const photo = pixels(content, width, height);
    const paintings = styles.map((s) => pixels(s, width, height));
    // smoothing at the finest scale only, as the run engine does
    const smoothness = index === stages.length - 1 ? config.defaults.smoothness : 0;
    const { bound } = await bind(photo, paintings, blend, { strength, smoothness });
    x = x ? resized(x, width, height) : { width, height, data: photo.data.slice() };
    best = null;
    const timed = async (data) => {
      await new Promise((resolve) => setTimeout(resolve, 0)); // let a stop message in
      const t0 = performance.now();
      const r = await evaluate(bound, { width, height, data });
      seconds += (performance.now() - t0) / 1000; evaluations += 1;
      return r;
    };
    const first = done;
    await minimize(timed, x.data, { iterations: end - first, memory: config.defaults.lbfgs_memory,
      shouldStop: () => stopRequested,
      onIteration: (k, data, r) => {
        if (lossFirst === null) lossFirst = r.loss;
        if (!best || r.loss < best.loss) best = { loss: r.loss, data: data.slice() };
        done = first + k;
        const perEval = seconds / evaluations;
        const later = stages.slice(index + 1).reduce((sum, [sd, e], j) =>
          sum + (e - stages[index + j][1]) * (sd / side) ** 2, 0); // later stages cost as their pixels
        const eta = perEval * (evaluations / Math.max(done, 1)) * (end - done + later);
        post({ width, height, data }, { type: 'progress', iteration: done, iterations, loss: r.loss,
          content: r.content, style: r.style, secondsPerEvaluation: perEval, evaluations, eta });
      } });
    x = { width, height, data: best.data };
    if (stopRequested) break;
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  post(x, { type: stopRequested ? 'stopped' : 'done', lossFirst, lossLast: best.loss, iteration: done,
    iterations, evaluations, secondsPerEvaluation: seconds / evaluations });
}

// One evaluation of given inputs (the tests compare it with Python): loss, terms, gradient, and the
// α that a style strength would choose, from the far terms.
async function check({ image, content, style, weights }) {
  const { bound, balance, tv } = await bind(content, [style], [1], weights);
  const r = await evaluate(bound, image);
  const strength = weights.strength === undefined ? null : balance;
  return { type: 'checked', loss: r.loss, content_loss: r.content, style_loss: r.style, tv_loss: r.tv,
    grad: Array.from(r.grad), strength, tv_weight: tv };
}

const handlers = { init, run, check, stop: () => { stopRequested = true; } };

self.onmessage = async (event) => {
  try {
    const reply = await handlers[event.data.type](event.data);
    if (reply) postMessage(reply);
  } catch (err) {
    postMessage({ type: 'error', message: String(err?.message ?? err) });
  }
};
