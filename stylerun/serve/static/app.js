// The stylerun page: a form built from GET /api/options, a job watched through its event stream,
// a gallery from GET /api/jobs. Every request goes through `api` so a bearer token, when the server
// asks for one (401), is sent as a header; images are fetched the same way and shown as blob URLs.

const ACTIVE = ["queued", "running", "interrupted"];  // a job that is not over
// Which options the page shows up front; every other one (and its widget) comes from the option model.
const MAIN = ["size", "iterations", "style_strength", "preserve_color", "pooling", "init"];
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem("stylerun-token");
let tokenWanted = null;  // a pending promise while the token dialog is open

async function askToken() {
  if (!tokenWanted) {
    tokenWanted = new Promise((resolve) => {
      const dialog = $("token-dialog");
      dialog.addEventListener("close", () => {
        token = $("token-input").value.trim();
        sessionStorage.setItem("stylerun-token", token);
        tokenWanted = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return tokenWanted;
}

async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401) return response;
    await askToken();
  }
}

function errorText(body, status) {
  const detail = body && body.detail !== undefined ? body.detail : body;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
  if (detail && detail.error) return detail.field ? `${detail.field}: ${detail.error}` : detail.error;
  return `request failed (HTTP ${status})`;
}

// --- the form -------------------------------------------------------------------------------------

function label(name) {
  return name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function widget(opt, main) {
  let input;
  if (opt.choices) {
    input = document.createElement("select");
    if (opt.default === null) input.append(new Option("(default)", ""));
    for (const c of opt.choices) input.append(new Option(String(c), String(c), false, c === opt.default));
  } else if (opt.kind === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = opt.default === true;
  } else if (main && opt.kind === "float" && opt.max !== null) {
    input = document.createElement("input");
    input.type = "range";
    Object.assign(input, { min: opt.min, max: opt.max, step: (opt.max - opt.min) / 20 });
    input.value = opt.default ?? opt.shown_default;
  } else {
    input = document.createElement("input");
    input.type = opt.kind === "int" || opt.kind === "float" ? "number" : "text";
    if (opt.min !== null && input.type === "number") input.min = opt.min;
    if (opt.max !== null && input.type === "number") input.max = opt.max;
    if (opt.kind === "float") input.step = "any";
    if (main && opt.default !== null) input.value = opt.default;
    else input.placeholder = opt.shown_default === null ? "" : String(opt.shown_default);
  }
  input.id = `opt-${opt.name}`;
  input.name = opt.name;
  input.dataset.kind = opt.kind;
  // only what the user touched is sent: the server's defaults stay the one definition
  const touch = () => { input.dataset.touched = "1"; input.classList.remove("invalid"); };
  input.addEventListener("input", touch);
  input.addEventListener("change", touch);
  return input;
}

function field(opt, main) {
  const wrap = document.createElement("label");
  wrap.className = `field field-${opt.kind}`;
  wrap.title = opt.help;
  const name = document.createElement("span");
  name.className = "field-name";
  name.textContent = label(opt.name);
  const input = widget(opt, main);
  wrap.append(name, input);
  if (input.type === "range") {
    const out = document.createElement("output");
    out.textContent = Number(input.value).toFixed(2);
    input.addEventListener("input", () => { out.textContent = Number(input.value).toFixed(2); });
    wrap.append(out);
  }
  if (!main) {
    const help = document.createElement("small");
    help.textContent = opt.help;
    wrap.append(help);
  }
  return wrap;
}

async function buildForm() {
  const response = await api("/api/options");
  const options = await response.json();
  const byName = Object.fromEntries(options.map((o) => [o.name, o]));
  for (const name of MAIN) if (byName[name]) $("main-options").append(field(byName[name], true));
  const groups = new Map();
  for (const opt of options) {
    if (MAIN.includes(opt.name)) continue;
    if (!groups.has(opt.group)) {
      const set = document.createElement("fieldset");
      set.innerHTML = `<legend></legend>`;
      set.querySelector("legend").textContent = opt.group;
      groups.set(opt.group, set);
      $("advanced-options").append(set);
    }
    groups.get(opt.group).append(field(opt, false));
  }
}

function chosenOptions() {
  const options = {};
  for (const input of document.querySelectorAll("#job-form [name]")) {
    if (!input.dataset.touched) continue;
    const kind = input.dataset.kind;
    if (kind === "bool") { options[input.name] = input.checked; continue; }
    if (input.value === "") continue;
    options[input.name] = kind === "int" || kind === "float" ? Number(input.value) : input.value;
  }
  return options;
}

function showFiles(input, box) {
  box.replaceChildren(...[...input.files].map((file) => {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = file.name;
    return img;
  }));
  input.closest(".drop").classList.toggle("filled", input.files.length > 0);
}

function dropZone(zone, input, box) {
  input.addEventListener("change", () => showFiles(input, box));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = new DataTransfer();
    for (const f of e.dataTransfer.files) if (input.multiple || files.items.length === 0) files.items.add(f);
    input.files = files.files;
    showFiles(input, box);
  });
}

async function submit(event) {
  event.preventDefault();
  const content = $("content-input").files, style = $("style-input").files;
  $("form-error").textContent = "";
  if (!content.length || !style.length) {
    $("form-error").textContent = "Choose a photo and at least one painting.";
    return;
  }
  const body = new FormData();
  body.append("content", content[0]);
  for (const f of style) body.append("style", f);
  body.append("options", JSON.stringify(chosenOptions()));
  $("start").disabled = true;
  $("download").hidden = true;
  try {
    const response = await api("/api/jobs", { method: "POST", body });
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      $("form-error").textContent = errorText(answer, response.status);
      const field = answer && answer.detail && answer.detail.field;
      if (field && $(`opt-${field}`)) $(`opt-${field}`).classList.add("invalid");
      return;
    }
    watch(answer.id);
    refreshGallery();
  } finally {
    $("start").disabled = false;
  }
}

// --- watching one job -----------------------------------------------------------------------------

const current = { id: null, abort: null, losses: [], previewAt: -1, loading: false, url: null, galleryAt: 0 };

function setPreview(blob, iteration) {
  const img = $("preview");
  if (current.url) URL.revokeObjectURL(current.url);
  current.url = URL.createObjectURL(blob);
  img.src = current.url;
  img.dataset.iteration = iteration;
  img.hidden = false;
  $("preview-empty").hidden = true;
}

async function loadPreview(id, iteration) {
  if (current.loading) return;
  current.loading = true;
  try {
    const response = await api(`/api/jobs/${id}/preview`);
    if (response.ok && id === current.id) {
      setPreview(await response.blob(), iteration);
      current.previewAt = iteration;
    }
  } catch (error) {
    // the server is busy or away: the next event asks again
  } finally {
    current.loading = false;
  }
}

async function loadResult(job) {
  const response = await api(`/api/jobs/${job.id}/result`);
  if (!response.ok || job.id !== current.id) return;
  const blob = await response.blob();
  setPreview(blob, job.iteration);
  const link = $("download");
  link.href = current.url;
  link.download = `stylerun-${job.id.slice(0, 8)}.png`;
  link.hidden = false;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${Math.round(s)} s left`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s left`;
}

function drawPlot() {
  const svg = $("loss-plot");
  const points = current.losses.filter((p) => p[1] > 0);
  $("plot-caption").textContent = points.length < 2 ? ""
    : `loss (log scale) over iterations ${points[0][0]}–${points[points.length - 1][0]}`;
  if (points.length < 2) { svg.innerHTML = ""; return; }
  const ys = points.map((p) => Math.log10(p[1]));
  const x0 = points[0][0], x1 = points[points.length - 1][0] || 1;
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const xy = points.map((p, i) => [
    8 + 384 * (p[0] - x0) / (x1 - x0 || 1), 8 + 86 * (hi - ys[i]) / span]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  svg.innerHTML = `<polygon class="area" points="8,94 ${line} ${xy[xy.length - 1][0].toFixed(1)},94"/>`
    + `<polyline class="line" points="${line}"/>`;
}

function show(job) {
  $("job-status").textContent = job.status === "queued" && job.queue_position
    ? `queued #${job.queue_position}` : job.status;
  $("job-status").className = `badge ${job.status}`;
  const total = job.iterations || (job.options && job.options.iterations) || 0;
  const resumed = job.resumed_from ? ` (resumed from ${job.resumed_from})` : "";
  $("stat-iter").textContent = `iteration ${job.iteration} / ${total}${resumed}`;
  $("bar-fill").style.width = total ? `${Math.min(100, 100 * job.iteration / total)}%` : "0";
  $("stat-eta").textContent = job.status === "running" ? seconds(job.eta_s) : "";
  $("stat-loss").textContent = job.loss ? `loss ${job.loss.toExponential(3)}` : "";
  $("job-error").textContent = job.error || "";
  $("cancel").disabled = !ACTIVE.includes(job.status);
  const last = current.losses[current.losses.length - 1];
  if (job.loss && (!last || last[0] !== job.iteration)) {
    current.losses.push([job.iteration, job.loss]);
    drawPlot();
  }
}

async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of chunk.split("\n")) if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

async function watch(id) {
  if (current.abort) current.abort.abort();
  Object.assign(current, { id, abort: new AbortController(), losses: [], previewAt: -1 });
  $("download").hidden = true;
  $("preview").hidden = true;
  $("preview-empty").hidden = false;
  $("preview-empty").textContent = "Waiting for the first image…";
  drawPlot();
  let last = null;
  try {
    const response = await api(`/api/jobs/${id}/events`, { signal: current.abort.signal });
    await readEvents(response, (job) => {
      last = job;
      show(job);
      if (job.status === "running" && job.iteration > current.previewAt) loadPreview(id, job.iteration);
      if (Date.now() - current.galleryAt > 5000) {  // the running job's thumbnail follows, less often
        current.galleryAt = Date.now();
        refreshGallery();
      }
    });
  } catch (error) {
    if (error.name === "AbortError") return;
    // the connection dropped (server restarted, network): say so and follow the job again
    $("preview-empty").textContent = "Connection lost; reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, 2000));
    if (id === current.id) watch(id);
    return;
  }
  if (last && id === current.id) {
    if (["done", "cancelled"].includes(last.status)) await loadResult(last);
    if (last.status !== "done" && $("preview").hidden) $("preview-empty").textContent = "No image.";
    refreshGallery();
  }
}

// --- the gallery ----------------------------------------------------------------------------------

const thumbs = new Map();  // job id -> {key: "status iteration", url}, so a refresh fetches only what changed

async function thumbnail(job) {
  const key = `${job.status} ${job.status === "running" ? job.iteration : ""}`;
  const known = thumbs.get(job.id);
  if (known && known.key === key) return known.url;
  const which = ["done", "cancelled"].includes(job.status) ? "result" : "preview";
  const response = await api(`/api/jobs/${job.id}/${which}`);
  const url = response.ok ? URL.createObjectURL(await response.blob()) : null;
  if (known && known.url) URL.revokeObjectURL(known.url);
  thumbs.set(job.id, { key, url });
  return url;
}

const gallery = { busy: false, again: false };  // one refresh at a time; a call meanwhile runs once after it

async function refreshGallery() {
  if (gallery.busy) { gallery.again = true; return; }
  gallery.busy = true;
  try {
    do {
      gallery.again = false;
      await drawGallery();
    } while (gallery.again);
  } catch (error) {
    // the server is busy or away: the next refresh draws the gallery again
  } finally {
    gallery.busy = false;
  }
}

async function drawGallery() {
  const jobs = await (await api("/api/jobs?limit=30")).json();
  if (!jobs.length) return;
  const cards = await Promise.all(jobs.map(async (job) => {
    const card = document.createElement("button");
    card.type = "button";
    card.className = `tile ${job.id === current.id ? "selected" : ""}`;
    card.dataset.id = job.id;
    const url = await thumbnail(job);
    const size = job.options && job.options.size ? `${job.options.size} px · ` : "";
    card.innerHTML = `<span class="tile-img"></span><span class="tile-meta"><span class="badge"></span>`
      + `<span class="tile-text"></span></span>`;
    if (url) card.querySelector(".tile-img").style.backgroundImage = `url("${url}")`;
    card.querySelector(".badge").textContent = job.status;
    card.querySelector(".badge").classList.add(job.status);
    card.querySelector(".tile-text").textContent = `${size}${job.iteration}/${job.iterations} it`;
    card.addEventListener("click", () => watch(job.id));
    return card;
  }));
  $("gallery").replaceChildren(...cards);
}

async function start() {
  dropZone($("drop-content"), $("content-input"), $("content-thumbs"));
  dropZone($("drop-style"), $("style-input"), $("style-thumbs"));
  $("job-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => current.id && api(`/api/jobs/${current.id}`, { method: "DELETE" }));
  await buildForm();
  $("runs-on").textContent = `jobs run on ${(await (await api("/api/health")).json()).workers}`;
  await refreshGallery();
  const running = (await (await api("/api/jobs")).json()).find((j) => ACTIVE.includes(j.status));
  if (running) watch(running.id);
  document.body.dataset.ready = "1";
}

start();
