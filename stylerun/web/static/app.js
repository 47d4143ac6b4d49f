// The page: picks the photo and paintings, starts and stops the worker, shows its preview, loss and
// ETA, and offers the result as a PNG. `index.html?demo` runs the bundled example pair (at 128 px for
// 10 iterations; &size=N&iterations=N change them, &threads=N the WASM threads) and then sets body
// data-state="done", data-loss-first, data-loss-last, data-evaluations and data-seconds-per-evaluation.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
let config = null;
let waiting = null; // the resolve of a pending check

const state = (s) => { document.body.dataset.state = s; };
const seconds = (s) => (s >= 90 ? `${Math.round(s / 60)} min` : `${s.toFixed(s < 10 ? 1 : 0)} s`);

// Threads need cross-origin isolation (SharedArrayBuffer); ?threads=N asks for N of them.
function threads() {
  if (!self.crossOriginIsolated) return 1;
  const asked = Number(params.get('threads'));
  return asked > 0 ? asked : Math.min(4, navigator.hardwareConcurrency || 1);
}

// The preview; its data-stages lists the sizes this run has painted (coarse to fine: several).
const painted = new Set();
function paint(msg) {
  const canvas = $('preview');
  if (canvas.width !== msg.width || canvas.height !== msg.height) {
    canvas.width = msg.width;
    canvas.height = msg.height;
  }
  painted.add(`${msg.width}x${msg.height}`);
  canvas.dataset.stages = [...painted].join(',');
  canvas.getContext('2d').putImageData(new ImageData(msg.rgba, msg.width, msg.height), 0, 0);
}

function offerDownload() {
  $('preview').toBlob((blob) => {
    const link = $('download');
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.hidden = false;
  }, 'image/png');
}

function finished(msg) {
  paint(msg);
  offerDownload();
  document.body.dataset.lossFirst = msg.lossFirst;
  document.body.dataset.lossLast = msg.lossLast;
  document.body.dataset.secondsPerEvaluation = msg.secondsPerEvaluation;
  document.body.dataset.evaluations = msg.evaluations;
  $('status').textContent = `${msg.type === 'done' ? 'Done' : 'Stopped'} after ${msg.iteration} of ` +
    `${msg.iterations} iterations: loss ${msg.lossFirst.toExponential(3)} → ${msg.lossLast.toExponential(3)}, ` +
    `${msg.secondsPerEvaluation.toFixed(2)} s per evaluation`;
  $('start').disabled = false;
  $('stop').disabled = true;
  state(msg.type);
}

const onMessage = {
  ready(msg) {
    config = msg.config;
    const d = config.defaults;
    $('opt-size').max = config.max_size;
    $('opt-size').value = d.size;
    $('opt-iterations').value = d.iterations;
    $('opt-strength').value = d.style_strength;
    $('strength-value').textContent = d.style_strength;
    $('runtime').textContent = `onnxruntime-web ${config.onnxruntime_web}, WASM, ${msg.threads} thread` +
      `${msg.threads === 1 ? '' : 's'}; models ${(msg.bytes / 1e6).toFixed(1)} MB, downloaded in ` +
      `${seconds(msg.downloadSeconds)}, sessions ready in ${seconds(msg.startSeconds)}`;
    document.body.dataset.threads = msg.threads;
    document.body.dataset.startSeconds = msg.startSeconds;
    state('ready');
    $('start').disabled = false;
    if (params.has('demo')) demo();
  },
  progress(msg) {
    paint(msg);
    const eta = msg.iteration < msg.iterations ? `, about ${seconds(msg.eta)} left` : '';
    $('status').textContent = `Iteration ${msg.iteration}/${msg.iterations}: loss ${msg.loss.toExponential(4)}, ` +
      `${msg.secondsPerEvaluation.toFixed(2)} s per evaluation${eta}`;
    $('preview').dataset.iteration = msg.iteration;
  },
  done: finished,
  stopped: finished,
  checked(msg) { waiting?.(msg); },
  error(msg) {
    $('status').textContent = `Error: ${msg.message}`;
    $('start').disabled = false;
    $('stop').disabled = true;
    state('error');
  },
};
worker.onmessage = (event) => onMessage[event.data.type](event.data);
worker.onerror = (event) => onMessage.error({ message: event.message || 'the worker failed to start' });
worker.postMessage({ type: 'init', threads: threads() });

async function start(content, styles, size, iterations, strength) {
  const photo = await createImageBitmap(content);
  const paintings = await Promise.all(styles.map((s) => createImageBitmap(s)));
  state('running');
  $('start').disabled = true;
  $('stop').disabled = false;
  $('download').hidden = true;
  painted.clear();
  worker.postMessage({ type: 'run', content: photo, styles: paintings, blend: paintings.map(() => 1), size,
    iterations, strength }, [photo, ...paintings]);
}

function startFromForm() {
  const content = $('content-input').files[0];
  const styles = Array.from($('style-input').files);
  const size = Number($('opt-size').value);
  const iterations = Number($('opt-iterations').value);
  let problem = null;
  if (!content || !styles.length) problem = 'choose a photo and at least one painting';
  else if (!(size >= config.min_side && size <= config.max_size)) {
    problem = `the size must be ${config.min_side} to ${config.max_size} px`;
  } else if (!(Number.isInteger(iterations) && iterations >= 1)) problem = 'iterations must be a whole number ≥ 1';
  if (problem) {
    $('status').textContent = problem;
    return;
  }
  start(content, styles, size, iterations, Number($('opt-strength').value))
    .catch((err) => onMessage.error({ message: `cannot read the images (${err.message})` }));
}

async function demo() {
  const d = config.demo;
  const blob = async (url) => (await fetch(url)).blob();
  const size = Math.min(config.max_size, Number(params.get('size')) || d.size);
  const iterations = Number(params.get('iterations')) || d.iterations;
  $('opt-size').value = size; // the form shows what runs
  $('opt-iterations').value = iterations;
  await start(await blob(d.content), [await blob(d.style)], size, iterations, config.defaults.style_strength);
}

$('start').onclick = startFromForm;
$('stop').onclick = () => worker.postMessage({ type: 'stop' });
$('opt-strength').oninput = () => { $('strength-value').textContent = $('opt-strength').value; };

// For tests: one evaluation of given arrays in the worker ({image, content, style, weights}).
window.stylerun = {
  check: (request) => new Promise((resolve) => { waiting = resolve; worker.postMessage({ type: 'check', ...request }); }),
};
