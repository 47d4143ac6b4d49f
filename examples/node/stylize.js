#!/usr/bin/env node
// Neural style transfer (Gatys et al.) in Node.js, from a model written by
// `stylerun export-vgg -o NAME.onnx`, using nothing but the "Model contract" of stylerun's
// README: NAME.targets.onnx gives the content features and style Gram matrices once,
// NAME.onnx gives the loss and its gradient with respect to the image, and Adam moves
// the pixels. See README.md beside this file.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const ort = require('onnxruntime-node');
const { PNG } = require('pngjs');
const jpeg = require('jpeg-js');

const USAGE = `usage: node stylize.js MODEL.onnx CONTENT STYLE -o OUT.png [options]
       node stylize.js MODEL.onnx --check IN.json

  -o, --output FILE       PNG to write (the lowest-loss image seen)
  --size N                longest side of the output; 0 keeps the content's size (default 256)
  --iterations N          Adam steps (default 100)
  --lr X                  Adam learning rate in pixel units, 0..255 (default 10)
  --alpha X, --beta X     content and style weight of the loss (default 1e-3 and 1)
  --tv-weight X           total-variation weight (default 0)
  --content-weights LIST  one weight per content layer, comma-separated, in the order the
  --style-weights LIST    model lists them (printed at start); default 1/L each
  --threads N             onnxruntime intra-op threads (default: all cores)
  --check IN.json         evaluate the loss once and print it, its terms and the gradient
                          as JSON (see README.md)`;

// An expected failure: one line on stderr, exit status 2, no stack trace.
class CliError extends Error {}

// ---- the model ----------------------------------------------------------------------

// onnxruntime-node gives input and output names but not the model's metadata_props, where
// the contract keeps the layer order, so read them from the protobuf: ModelProto field 14,
// each entry a StringStringEntryProto (key = field 1, value = field 2). Only length-delimited
// fields are collected; the graph (field 7, nearly the whole file) is skipped by its length.
function protoFields(buf) {
  const fields = [];
  let pos = 0;
  const varint = () => {
    let value = 0;
    for (let shift = 1; ; shift *= 128) {
      if (pos >= buf.length) throw new CliError('truncated protobuf');
      const byte = buf[pos++];
      value += (byte & 0x7f) * shift;
      if (byte < 0x80) return value;
    }
  };
  while (pos < buf.length) {
    const tag = varint();
    const wire = tag % 8;
    if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const length = varint();
      fields.push([Math.floor(tag / 8), buf.subarray(pos, pos + length)]);
      pos += length;
    } else throw new CliError(`unexpected protobuf wire type ${wire}`);
  }
  return fields;
}

function onnxMetadata(bytes) {
  const meta = {};
  for (const [field, entry] of protoFields(bytes)) {
    if (field !== 14) continue;
    const kv = Object.fromEntries(protoFields(entry).map(([f, v]) => [f, v.toString('utf8')]));
    meta[kv[1]] = kv[2] ?? '';
  }
  return meta;
}

async function loadModel(file, threads) {
  let bytes;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new CliError(`cannot read model ${file}: ${err.code || err.message}`);
  }
  let meta;
  try {
    meta = onnxMetadata(bytes);
  } catch (err) {
    throw new CliError(`${file} is not an ONNX model (${err.message})`);
  }
  if (meta['stylerun.kind'] !== 'loss') {
    throw new CliError(`${file} is not a stylerun loss model (give NAME.onnx, not NAME.targets.onnx)`);
  }
  if (Number(meta['stylerun.regions'] || 0) > 0) {
    throw new CliError(`${file} is a guided model (style_guide input); this example handles unguided models only`);
  }
  const targetsFile = file.replace(/\.onnx$/, '') + '.targets.onnx';
  if (!fs.existsSync(targetsFile)) throw new CliError(`${targetsFile} (the targets model) not found beside ${file}`);
  const layers = (key) => (meta[key] || '').split(',').filter(Boolean);
  const options = { executionProviders: ['cpu'], ...(threads ? { intraOpNumThreads: threads } : {}) };
  return {
    loss: await ort.InferenceSession.create(bytes, options),
    targets: await ort.InferenceSession.create(targetsFile, options),
    contentLayers: layers('stylerun.content_layers'),
    styleLayers: layers('stylerun.style_layers'),
  };
}

const tensor = (data, dims) => new ort.Tensor('float32', data, dims);
// Scalars must be 0-d: a [1] tensor is not rejected but broadcast, and `loss` comes back [1].
const scalar = (x) => tensor(Float32Array.of(x), []);
// Images are { width, height, data }, data a Float32Array in the model's own layout
// (H, W, 3), RGB 0..255, which is the decoders' pixel order: the graph converts to the
// weights' convention (BGR minus the mean) itself, so nothing is transposed or normalized here.
const imageTensor = (img) => tensor(img.data, [img.height, img.width, 3]);

// Every input of the loss model except `image`. content_target.* must come from the
// content image at exactly the optimized image's size. style_target.* are unnormalized
// Gram matrices (F F^T, which grows with the style image's pixel count) compared against
// the image's Gram divided by its own size, so the style must be given at the image's size too.
async function fixedInputs(model, content, style, { alpha, beta, tvWeight, contentWeights, styleWeights }) {
  const targets = (img, prefix, layers) =>
    model.targets.run({ image: imageTensor(img) }, layers.map((l) => `${prefix}.${l}`)); // only the outputs needed
  const fromContent = await targets(content, 'content_target', model.contentLayers);
  const fromStyle = await targets(style, 'style_target', model.styleLayers);
  const weights = (given, layers, what) => {
    const w = given ?? layers.map(() => 1 / layers.length);
    if (w.length !== layers.length) {
      throw new CliError(`${w.length} ${what} weights for ${layers.length} ${what} layers (${layers.join(',')})`);
    }
    return tensor(Float32Array.from(w), [w.length]);
  };
  return {
    ...fromContent,
    ...fromStyle,
    content_weights: weights(contentWeights, model.contentLayers, 'content'),
    style_weights: weights(styleWeights, model.styleLayers, 'style'),
    alpha: scalar(alpha),
    beta: scalar(beta),
    tv_weight: scalar(tvWeight),
  };
}

async function evaluate(model, fixed, image) {
  const out = await model.loss.run({ ...fixed, image: imageTensor(image) });
  return {
    loss: out.loss.data[0],
    content: out.content_loss.data[0],
    style: out.style_loss.data[0],
    tv: out.tv_loss.data[0],
    grad: out.grad.data,
  };
}

// ---- images -------------------------------------------------------------------------

function readImage(file) {
  let bytes;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${err.code || err.message}`);
  }
  let decoded;
  try {
    if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
      decoded = PNG.sync.read(bytes); // any PNG becomes 8-bit RGBA
    } else if (bytes[0] === 0xff && bytes[1] === 0xd8) {
      decoded = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
    }
  } catch (err) {
    throw new CliError(`cannot decode ${file}: ${err.message}`);
  }
  if (!decoded) throw new CliError(`${file} is not a PNG or JPEG image`);
  const { width, height, data: rgba } = decoded;
  const data = new Float32Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    const a = rgba[4 * p + 3] / 255; // transparency is composited on white, as stylerun does
    for (let c = 0; c < 3; c++) data[3 * p + c] = rgba[4 * p + c] * a + 255 * (1 - a);
  }
  return { width, height, data };
}

function writePng(file, img) {
  const png = new PNG({ width: img.width, height: img.height });
  for (let p = 0; p < img.width * img.height; p++) {
    for (let c = 0; c < 3; c++) png.data[4 * p + c] = Math.round(Math.min(255, Math.max(0, img.data[3 * p + c])));
    png.data[4 * p + 3] = 255;
  }
  const tmp = `${file}.${process.pid}.tmp`; // a crash never leaves a half-written output
  fs.writeFileSync(tmp, PNG.sync.write(png, { colorType: 2 })); // RGB, no alpha
  fs.renameSync(tmp, file);
}

// Resampling along one axis of data laid out [outer][n][inner] to [outer][m][inner], with
// a tent filter as wide as the shrink factor (like Pillow's BILINEAR): plain bilinear
// sampling would alias when a large style image is shrunk to the output's size.
function resampleAxis(src, outer, n, inner, m) {
  const scale = n / m;
  const support = Math.max(1, scale);
  const dst = new Float32Array(outer * m * inner);
  for (let j = 0; j < m; j++) {
    const center = (j + 0.5) * scale;
    const first = Math.max(0, Math.floor(center - support));
    const last = Math.min(n, Math.ceil(center + support));
    const taps = [];
    for (let k = first; k < last; k++) taps.push(Math.max(0, 1 - Math.abs((k + 0.5 - center) / support)));
    const total = taps.reduce((a, b) => a + b, 0);
    for (let o = 0; o < outer; o++) {
      const d = (o * m + j) * inner;
      taps.forEach((w, t) => {
        const s = (o * n + first + t) * inner;
        for (let i = 0; i < inner; i++) dst[d + i] += (w / total) * src[s + i];
      });
    }
  }
  return dst;
}

function resize(img, width, height) {
  if (width === img.width && height === img.height) return img;
  const rows = resampleAxis(img.data, img.height, img.width, 3, width);
  return { width, height, data: resampleAxis(rows, 1, img.height, width * 3, height) };
}

// ---- the two modes --------------------------------------------------------------------

async function stylize(model, opts) {
  if (!fs.existsSync(path.dirname(path.resolve(opts.output)))) {
    throw new CliError(`the folder of ${opts.output} does not exist`);
  }
  let content = readImage(opts.content);
  if (opts.size > 0) {
    const k = opts.size / Math.max(content.width, content.height);
    const side = (n) => Math.max(1, Math.round(n * k));
    content = resize(content, side(content.width), side(content.height));
  }
  const { width, height } = content;
  if (width < 32 || height < 32) {
    throw new CliError(`the image is ${width}x${height}; VGG19 needs at least 32 px per side`);
  }
  const style = resize(readImage(opts.style), width, height); // stretched, as stylerun does without --style-scale
  console.error(`${width}x${height}, content layers ${model.contentLayers}, style layers ${model.styleLayers}`);
  const fixed = await fixedInputs(model, content, style, opts);

  // Adam on the pixels, each step clipped back into 0..255 (stylerun's --optimizer adam).
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  const x = { width, height, data: Float32Array.from(content.data) };
  const m = new Float32Array(x.data.length);
  const v = new Float32Array(x.data.length);
  let best = { loss: Infinity };
  const started = Date.now();
  for (let t = 0; ; t++) { // evaluate the image after t steps; the last evaluation only scores it
    const r = await evaluate(model, fixed, x);
    if (!Number.isFinite(r.loss)) throw new CliError(`the loss is ${r.loss} after step ${t}; lower the weights`);
    if (r.loss < best.loss) best = { loss: r.loss, data: x.data.slice(), step: t };
    console.error(`step ${String(t).padStart(4)}/${opts.iterations}  loss ${r.loss.toExponential(4)}  ` +
      `content ${r.content.toExponential(3)}  style ${r.style.toExponential(3)}  tv ${r.tv.toExponential(3)}`);
    if (t === opts.iterations) break;
    const c1 = 1 - b1 ** (t + 1);
    const c2 = 1 - b2 ** (t + 1);
    for (let i = 0; i < x.data.length; i++) {
      const g = r.grad[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      x.data[i] = Math.min(255, Math.max(0, x.data[i] - (opts.lr * m[i]) / c1 / (Math.sqrt(v[i] / c2) + eps)));
    }
  }
  const seconds = (Date.now() - started) / 1000;
  writePng(opts.output, { width, height, data: best.data });
  console.error(`wrote ${opts.output} (the image after step ${best.step}, loss ${best.loss.toExponential(4)}); ` +
    `${(seconds / (opts.iterations + 1)).toFixed(3)} s per iteration`);
}

// IN.json: {"image": IMG, "content": IMG, "style": IMG, "alpha": a, "beta": b, "tv_weight": t,
// "content_weights": [...], "style_weights": [...]} (weights optional), where IMG is
// {"shape": [H, W, 3], "data": [H*W*3 numbers, row-major]} or a PNG/JPEG path, decoded but
// never resized. Prints the layers, loss, its three terms and grad (same IMG form) as JSON.
async function check(model, file) {
  const input = JSON.parse(fs.readFileSync(file, 'utf8'));
  for (const key of ['alpha', 'beta']) {
    if (typeof input[key] !== 'number') throw new CliError(`${file}: "${key}" must be a number`);
  }
  const image = (value, name) => {
    if (typeof value === 'string') return readImage(value);
    const [height, width, channels] = value?.shape ?? [];
    if (channels !== 3 || value.data?.length !== height * width * 3) {
      throw new CliError(`${name}: shape must be [H, W, 3] with H*W*3 values`);
    }
    return { width, height, data: Float32Array.from(value.data) };
  };
  const x = image(input.image, 'image');
  const fixed = await fixedInputs(model, image(input.content, 'content'), image(input.style, 'style'), {
    alpha: input.alpha, beta: input.beta, tvWeight: input.tv_weight ?? 0,
    contentWeights: input.content_weights, styleWeights: input.style_weights,
  });
  const r = await evaluate(model, fixed, x);
  process.stdout.write(JSON.stringify({
    content_layers: model.contentLayers, style_layers: model.styleLayers,
    loss: r.loss, content_loss: r.content, style_loss: r.style, tv_loss: r.tv,
    grad: { shape: [x.height, x.width, 3], data: Array.from(r.grad) },
  }) + '\n');
}

// ---- command line -------------------------------------------------------------------

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      size: { type: 'string', default: '256' },
      iterations: { type: 'string', default: '100' },
      lr: { type: 'string', default: '10' },
      alpha: { type: 'string', default: '1e-3' },
      beta: { type: 'string', default: '1' },
      'tv-weight': { type: 'string', default: '0' },
      'content-weights': { type: 'string' },
      'style-weights': { type: 'string' },
      threads: { type: 'string' },
      check: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const number = (name, { integer = false } = {}) => {
    const x = Number(values[name]);
    if (values[name].trim() === '' || !Number.isFinite(x) || x < 0 || (integer && !Number.isInteger(x))) {
      throw new CliError(`--${name} must be a non-negative ${integer ? 'integer' : 'number'}, got '${values[name]}'`);
    }
    return x;
  };
  const list = (name) => values[name]?.split(',').map((s, i) => {
    const x = Number(s);
    if (s.trim() === '' || !Number.isFinite(x) || x < 0) {
      throw new CliError(`--${name}: item ${i + 1} '${s}' is not a non-negative number`);
    }
    return x;
  });
  if (values.help) return { help: true };
  if (values.check ? positionals.length !== 1 : positionals.length !== 3 || !values.output) {
    throw new CliError('expected MODEL.onnx CONTENT STYLE -o OUT.png, or MODEL.onnx --check IN.json');
  }
  return {
    model: positionals[0], content: positionals[1], style: positionals[2], output: values.output, check: values.check,
    size: number('size', { integer: true }), iterations: number('iterations', { integer: true }), lr: number('lr'),
    alpha: number('alpha'), beta: number('beta'), tvWeight: number('tv-weight'),
    contentWeights: list('content-weights'), styleWeights: list('style-weights'),
    threads: values.threads === undefined ? undefined : number('threads', { integer: true }),
  };
}

async function main() {
  if (process.argv.length <= 2) {
    console.error(USAGE);
    process.exitCode = 2;
    return;
  }
  let opts;
  try {
    opts = parseCommandLine(process.argv.slice(2));
  } catch (err) {
    throw new CliError(`${err.message} (node stylize.js --help for usage)`);
  }
  if (opts.help) return console.log(USAGE);
  const model = await loadModel(opts.model, opts.threads);
  await (opts.check ? check(model, opts.check) : stylize(model, opts));
}

main().catch((err) => {
  console.error(`stylize.js: error: ${err instanceof CliError ? err.message : err.stack}`);
  process.exitCode = err instanceof CliError ? 2 : 1;
});
