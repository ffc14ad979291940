// The actwatch tab: every check, every layer, scrubbed by step.
//
// A plain ES module, no build step, no network but this plugin's own data API (relative URLs:
// TensorBoard's plugin iframe sets <base href="plugin/actwatch/">). Text from the logs (run
// and layer names, alert messages) only ever goes into the page as textContent, never as
// markup. The page's state is mirrored in data attributes of <body> (data-state: "loading",
// "idle"; data-pending: images still loading; data-step) for tests and benchmarks.

import { runTable } from "./runs.js";

const COLORS = [ // viridis at 0, 0.25, 0.5, 0.75, 1
  [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
];
const ROW = 16; // pixels per layer row of the heatmap (labels and canvas rows agree)
const GUTTER_RGB = [32, 64, 96]; // actwatch.grids.GUTTER_RGB
const REFRESH_MS = 30000;
// Pictures per layer and probe: CNN filter grids and heatmaps, transformers' token norms and
// attention (actwatch.events.tags.PROBE_IMAGES). A layer shows the kinds it has.
const KINDS = ["filters", "heatmap", "tokens", "attention"];
const CAPTIONS = {
  tokens: "token L2 norms on the patch grid",
  attention: "attention per head",
};

const state = {
  runs: {}, // name -> runs API entry
  selected: [], // up to two run names
  metric: "dead_fraction",
  probe: 0,
  steps: [], // union of the selected runs' check steps
  index: 0, // slider position in `steps`
  layer: null, // the selected layer
  data: {}, // run -> {scalars, images, alerts}
  history: null, // {run, layer, node} of the per-filter history shown
  closedAlerts: new Set(), // runs whose alert list the user folded (kept across renders)
};
let root = null;
let sweep = null; // the run table (runs.js): every run's final figures
let pending = 0;
let reading = 0; // per-filter histories being read (the refresh waits for them)

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function url(path, params) {
  return `${path}?${new URLSearchParams(params)}`;
}

async function api(path, params = {}) {
  const response = await fetch(url(path, params));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function setBusy(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
  document.body.dataset.state = pending > 0 ? "loading" : "idle";
}

function color(t) {
  const x = Math.min(1, Math.max(0, t)) * (COLORS.length - 1);
  const i = Math.min(COLORS.length - 2, Math.floor(x));
  const f = x - i;
  const c = COLORS[i].map((v, k) => Math.round(v + f * (COLORS[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// Data -------------------------------------------------------------------------------------

async function loadRuns() {
  state.runs = await api("runs");
  const names = Object.keys(state.runs);
  state.selected = state.selected.filter((n) => names.includes(n));
  if (state.selected.length === 0) state.selected = names.slice(0, 2);
  const metrics = allMetrics();
  if (!metrics.includes(state.metric)) {
    state.metric = metrics.includes("dead_fraction") ? "dead_fraction" : metrics[0];
  }
}

function allMetrics() {
  const set = new Set();
  for (const name of state.selected) for (const m of state.runs[name].metrics) set.add(m);
  return [...set].sort();
}

async function loadRunData() {
  const data = {};
  const selected = [...state.selected];
  await Promise.all(selected.map(async (run) => {
    const has = state.runs[run].metrics.includes(state.metric);
    const [scalars, images, alerts] = await Promise.all([
      has ? api("scalars", { run, metric: state.metric }) : null,
      api("images", { run }),
      api("alerts", { run }),
    ]);
    data[run] = { scalars, images, alerts };
  }));
  if (selected.join("\n") !== state.selected.join("\n")) return false; // picked again since
  state.data = data;
  const steps = new Set();
  for (const run of state.selected) for (const s of state.runs[run].steps) steps.add(s);
  const current = state.steps[state.index];
  state.steps = [...steps].sort((a, b) => a - b);
  const kept = state.steps.indexOf(current);
  state.index = kept >= 0 ? kept : Math.max(0, state.steps.length - 1);
  const first = state.selected.length ? state.runs[state.selected[0]] : null;
  if (first && !first.layers.includes(state.layer)) state.layer = first.layers[0] ?? null;
  return true;
}

// An image's URL; `v` (ignored by the route) changes when the run's images may have changed,
// since browsers keep an image an hour.
function imageUrl(run, tag, step) {
  return url("image", { run, tag, step, v: state.runs[run].version });
}

// The check of `run` shown at the slider's step: the last one at or before it.
function runStep(run) {
  const step = state.steps[state.index];
  const steps = state.runs[run].steps;
  let best = steps.length ? steps[0] : null;
  for (const s of steps) if (s <= step) best = s;
  return best;
}

// The step of the image `tag` shown at `step`: the last image at or before it.
function imageStep(run, tag, step) {
  const steps = state.data[run].images[tag];
  if (!steps) return null;
  let best = null;
  for (const s of steps) if (s <= step) best = s;
  return best;
}

// Rendering --------------------------------------------------------------------------------

let sliderRow = null;

// Everything but the slider is drawn again; the slider stays (it may be being dragged).
function renderAll() {
  sliderRow ??= slider();
  updateSlider();
  sweep?.draw();
  const table = sweep ? [sweep.element] : [];
  root.replaceChildren(header(), ...table, sliderRow, el("div", { className: "aw-columns" },
    ...state.selected.map((run) => runColumn(run))));
  document.body.dataset.step = String(state.steps[state.index] ?? "");
}

function header() {
  const names = Object.keys(state.runs);
  const runs = el("fieldset", { className: "aw-runs" }, el("legend", {}, "Runs (up to two)"));
  for (const name of names) {
    const box = el("input", {
      type: "checkbox", checked: state.selected.includes(name),
      onchange: async () => {
        if (box.checked) state.selected = [...state.selected, name].slice(-2);
        else state.selected = state.selected.filter((n) => n !== name);
        await reload();
      },
    });
    runs.append(el("label", { className: "aw-run-choice" }, box, name));
  }
  const metric = el("select", {
    className: "aw-metric", title: "per-layer metric of the heatmap",
    onchange: async () => { state.metric = metric.value; await reload(); },
  }, ...allMetrics().map((m) => el("option", { value: m, selected: m === state.metric }, m)));
  const probes = Math.max(1, ...state.selected.map((r) => state.runs[r].probes));
  const probe = el("select", {
    className: "aw-probe",
    onchange: () => { state.probe = Number(probe.value); state.history = null; renderAll(); },
  }, ...Array.from({ length: probes }, (_, i) =>
    el("option", { value: String(i), selected: i === state.probe }, `probe ${i}`)));
  return el("header", { className: "aw-header" },
    el("h1", {}, "actwatch"), runs,
    el("label", {}, "Metric ", metric), el("label", {}, "Probe ", probe));
}

function slider() {
  const input = el("input", {
    type: "range", className: "aw-slider", min: "0", step: "1",
    title: "every check (arrow keys step)",
    oninput: () => setIndex(Number(input.value)),
  });
  return el("div", { className: "aw-slider-row" },
    el("button", { textContent: "◀", title: "previous check", onclick: () => setIndex(state.index - 1) }),
    input,
    el("button", { textContent: "▶", title: "next check", onclick: () => setIndex(state.index + 1) }),
    el("span", { className: "aw-step-label" }));
}

function updateSlider() {
  const n = state.steps.length;
  const input = sliderRow.querySelector(".aw-slider");
  input.max = String(Math.max(0, n - 1));
  input.value = String(state.index);
  sliderRow.querySelector(".aw-step-label").textContent =
    n ? `step ${state.steps[state.index]} (check ${state.index + 1} of ${n})` : "no checks";
}

function setIndex(index) {
  const clamped = Math.max(0, Math.min(state.steps.length - 1, index));
  if (clamped === state.index) return;
  state.index = clamped;
  renderAll();
}

function runColumn(run) {
  const info = state.runs[run];
  const data = state.data[run];
  const column = el("section", { className: "aw-run", dataset: { run } },
    el("h2", {}, run, el("span", { className: "aw-muted" },
      ` · ${info.steps.length} checks · ${info.layers.length} layers · step ${runStep(run)}`)));
  if (info.tail_bytes > 0) {
    column.append(el("p", { className: "aw-note" },
      `${info.tail_bytes} bytes at the end of this run's events files are not a whole record ` +
      "yet (a run still being written, or one cut short). Every whole record before them is " +
      "shown: nothing written whole is lost."));
  }
  if (info.damaged_bytes > 0) {
    column.append(el("p", { className: "aw-error" },
      `${info.damaged_bytes} bytes of this run's events files are damaged (they failed their ` +
      "CRC check) and were skipped: what they held is missing here. Every whole record " +
      "around them is shown."));
  }
  column.append(heatmap(run, data), alertList(run, data.alerts), layerBrowser(run, data));
  return column;
}

function heatmap(run, data) {
  const box = el("div", { className: "aw-heatmap" });
  const scalars = data.scalars;
  if (!scalars) {
    box.append(el("p", { className: "aw-note" }, `No ${state.metric} in this run.`));
    return box;
  }
  const { layers, steps, values } = scalars;
  const [lo, hi] = colorRange();
  const cell = Math.max(2, Math.min(40, Math.floor(460 / Math.max(1, steps.length))));
  const mark = 8;
  const canvas = el("canvas", { className: "aw-heatmap-canvas", width: steps.length * cell, height: mark + layers.length * ROW });
  const g = canvas.getContext("2d");
  layers.forEach((layer, row) => steps.forEach((s, col) => {
    const v = values[row][col];
    g.fillStyle = v === null ? "#ddd" : color((v - lo) / (hi - lo));
    g.fillRect(col * cell, mark + row * ROW, cell, ROW - 1);
  }));
  const alertSteps = new Set(data.alerts.map((a) => a.step));
  g.fillStyle = "#d32f2f";
  steps.forEach((s, col) => {
    if (alertSteps.has(s)) {
      g.beginPath();
      g.moveTo(col * cell, 0); g.lineTo(col * cell + cell, 0); g.lineTo(col * cell + cell / 2, mark - 1);
      g.fill();
    }
  });
  const shown = runStep(run);
  let col = -1; // the metric's last step at or before the one shown
  steps.forEach((s, c) => { if (s <= shown) col = c; });
  g.strokeStyle = "#ff6d00"; g.lineWidth = 2;
  if (col >= 0) g.strokeRect(col * cell + 1, mark, cell - 2, layers.length * ROW);
  const row = layers.indexOf(state.layer);
  g.strokeStyle = "#000"; g.lineWidth = 1;
  if (row >= 0) g.strokeRect(0.5, mark + row * ROW - 0.5, steps.length * cell - 1, ROW);
  canvas.addEventListener("click", (ev) => {
    const rect = canvas.getBoundingClientRect();
    const x = (ev.clientX - rect.left) * canvas.width / rect.width;
    const y = (ev.clientY - rect.top) * canvas.height / rect.height - mark;
    const c = Math.floor(x / cell), r = Math.floor(y / ROW);
    if (c < 0 || c >= steps.length || r < 0 || r >= layers.length) return;
    state.layer = layers[r];
    // The last check at or before the cell's step (a metric may be written between checks).
    let index = -1;
    state.steps.forEach((s, i) => { if (s <= steps[c]) index = i; });
    if (index >= 0) state.index = index;
    renderAll();
  });
  canvas.title = "click a cell: select that layer and step";
  const labels = el("div", { className: "aw-labels", style: { paddingTop: `${mark}px` } },
    ...layers.map((layer) => el("div", {
      className: "aw-label" + (layer === state.layer ? " aw-selected" : ""),
      title: layer, style: { height: `${ROW}px`, lineHeight: `${ROW}px` },
      onclick: () => { state.layer = layer; renderAll(); },
    }, layer)));
  const legend = el("div", { className: "aw-legend" },
    el("span", {}, `${state.metric}: `),
    el("span", { className: "aw-swatch", style: { background: color(0) } }), ` ${fmt(lo)} `,
    el("span", { className: "aw-swatch", style: { background: color(1) } }), ` ${fmt(hi)} `,
    el("span", { className: "aw-swatch", style: { background: "#d32f2f" } }), " alert ",
    el("span", { className: "aw-swatch", style: { background: "#ddd" } }), " no value");
  const rowValue = row >= 0 && col >= 0 ? values[row][col] : null;
  const readout = el("div", { className: "aw-readout" },
    state.layer === null || col < 0 ? "" : `${state.layer} at step ${steps[col]}: ${state.metric} = ${fmt(rowValue)}`);
  box.append(el("div", { className: "aw-heatmap-body" }, labels, canvas), legend, readout);
  return box;
}

// One colour scale for the runs side by side: from the metric's lowest value (0 when none is
// negative) to its highest, over every shown run.
function colorRange() {
  let lo = 0, hi = -Infinity;
  for (const run of state.selected) {
    const scalars = state.data[run] && state.data[run].scalars;
    if (!scalars) continue;
    for (const row of scalars.values) {
      for (const v of row) {
        if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
    }
  }
  if (!(hi > lo)) hi = lo + 1;
  return [lo, hi];
}

function fmt(v) {
  if (v === null || v === undefined) return "—";
  return Math.abs(v) >= 100 || Number.isInteger(v) ? String(v) : v.toPrecision(3);
}

function alertList(run, alerts) {
  const box = el("details", {
    className: "aw-alerts", open: !state.closedAlerts.has(run),
    ontoggle: () => {
      if (box.open) state.closedAlerts.delete(run);
      else state.closedAlerts.add(run);
    },
  }, el("summary", {}, `Alerts (${alerts.length})`));
  if (!alerts.length) {
    box.append(el("p", { className: "aw-muted" }, "No alerts in this run."));
    return box;
  }
  const list = el("ol", {});
  for (const alert of alerts) {
    list.append(el("li", { className: alert.step === runStep(run) ? "aw-selected" : "" },
      el("button", {
        className: "aw-link", title: "show this step and layer",
        onclick: () => {
          const index = state.steps.indexOf(alert.step);
          if (index >= 0) state.index = index;
          if (alert.layer) state.layer = alert.layer;
          renderAll();
        },
      }, `step ${alert.step}`),
      " ", el("code", {}, alert.layer), " ", el("b", {}, alert.kind), ": ", alert.message));
  }
  box.append(list);
  return box;
}

function layerBrowser(run, data) {
  const info = state.runs[run];
  const step = runStep(run);
  const box = el("div", { className: "aw-browser" },
    el("h3", {}, `Probe ${state.probe} at step ${step}: every drawn layer, in network order`));
  if (!info.drawn.length) {
    box.append(el("p", { className: "aw-note" }, "This run has no filter grids (images=False?)."));
  }
  for (const layer of info.drawn) {
    const row = el("div", { className: "aw-layer" + (layer === state.layer ? " aw-selected" : ""), dataset: { layer } },
      el("div", { className: "aw-layer-name", title: layer, onclick: () => { state.layer = layer; renderAll(); } }, layer));
    const images = state.data[run].images;
    const kinds = KINDS.filter((kind) => Object.keys(images).some((t) => t.startsWith(`${kind}/${layer}/probe_`)));
    for (const kind of kinds) {
      const tag = `${kind}/${layer}/probe_${state.probe}`;
      const at = imageStep(run, tag, step);
      const cell = el("figure", { className: `aw-${kind}` });
      if (at === null) {
        const has = tag in state.data[run].images;
        cell.append(el("figcaption", { className: "aw-muted" },
          has ? `no ${kind} image at or before step ${step}` : `no ${kind} image for probe ${state.probe}`));
      } else {
        const img = el("img", {
          alt: `${kind} of ${layer} at step ${at}`, className: `aw-img aw-img-${kind}`,
          dataset: { tag, step: String(at) },
        });
        setBusy(1);
        const done = () => setBusy(-1);
        img.addEventListener("load", done, { once: true });
        img.addEventListener("error", done, { once: true });
        img.src = imageUrl(run, tag, at);
        if (kind === "filters") {
          img.title = "click a filter: its dead/alive history";
          img.addEventListener("click", (ev) => showHistory(run, layer, tag, img, ev));
        }
        cell.append(img);
        if (kind in CAPTIONS) cell.append(el("figcaption", { className: "aw-muted" }, CAPTIONS[kind]));
        if (at !== step) cell.append(el("figcaption", { className: "aw-muted" }, `grid of step ${at}: none at step ${step}`));
      }
      row.append(cell);
    }
    if (state.history && state.history.run === run && state.history.layer === layer) {
      row.append(state.history.node);
    }
    box.append(row);
  }
  return box;
}

// Per-filter history, from the grids' dead marks ---------------------------------------------

async function pixels(src) {
  const response = await fetch(src);
  if (!response.ok) throw new Error(`${src}: HTTP ${response.status}`);
  const bitmap = await createImageBitmap(await response.blob());
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const g = canvas.getContext("2d");
  g.drawImage(bitmap, 0, 0);
  return g.getImageData(0, 0, bitmap.width, bitmap.height);
}

function rgbAt(image, x, y) {
  const i = (y * image.width + x) * 4;
  return [image.data[i], image.data[i + 1], image.data[i + 2]];
}

function isGutter(image, x, y) {
  const [r, g, b] = rgbAt(image, x, y);
  return r === GUTTER_RGB[0] && g === GUTTER_RGB[1] && b === GUTTER_RGB[2];
}

// The tile under (x, y) of a grid: its box, the gutter and its filter index.
function tileAt(image, x, y) {
  if (isGutter(image, x, y)) return null;
  let left = x, top = y, right = x, bottom = y;
  while (left > 0 && !isGutter(image, left - 1, y)) left--;
  while (right < image.width - 1 && !isGutter(image, right + 1, y)) right++;
  while (top > 0 && !isGutter(image, x, top - 1)) top--;
  while (bottom < image.height - 1 && !isGutter(image, x, bottom + 1)) bottom++;
  let gutter = 0;
  while (gutter < image.width && isGutter(image, gutter, top)) gutter++;
  const tw = right - left + 1, th = bottom - top + 1;
  const cols = Math.max(1, Math.round((image.width - gutter) / (tw + gutter)));
  const col = Math.round((left - gutter) / (tw + gutter));
  const row = Math.round((top - gutter) / (th + gutter));
  return { left, top, tw, th, filter: row * cols + col, width: image.width, height: image.height };
}

// Dead tiles are drawn red (actwatch.grids.DEAD_RGB) with a light-red cross on the diagonals.
function isDeadTile(image, tile) {
  const [r, g, b] = rgbAt(image, tile.left + Math.floor(tile.tw / 2), tile.top);
  return r > 120 && g < 60 && b < 60;
}

async function showHistory(run, layer, tag, img, ev) {
  const x = Math.floor(ev.offsetX * img.naturalWidth / img.clientWidth);
  const y = Math.floor(ev.offsetY * img.naturalHeight / img.clientHeight);
  const node = el("div", { className: "aw-history" }, "reading the grids…");
  state.history = { run, layer, node };
  renderAll();
  reading += 1;
  try {
    const tile = tileAt(await pixels(img.src), x, y);
    if (tile === null) { node.replaceChildren("Click inside a filter's tile."); return; }
    const steps = state.data[run].images[tag];
    const states = await Promise.all(steps.map(async (s) => {
      const image = await pixels(imageUrl(run, tag, s));
      if (image.width !== tile.width || image.height !== tile.height) return null;
      return isDeadTile(image, tile);
    }));
    const strip = el("div", { className: "aw-strip" }, ...steps.map((s, i) => el("span", {
      className: states[i] === null ? "aw-unknown" : states[i] ? "aw-dead" : "aw-alive",
      title: `step ${s}: ${states[i] === null ? "unknown" : states[i] ? "dead" : "alive"}`,
    })));
    const dead = states.filter((v) => v === true).length;
    node.replaceChildren(
      el("div", {}, `Filter ${tile.filter} of ${layer} (probe ${state.probe}): dead at ${dead} of ${steps.length} checks with a grid.`),
      strip,
      el("div", { className: "aw-muted" }, "Read from the dead marks of the grids (red tiles): a filter is dead at a check " +
        "when it is <= 0 everywhere on the statistics samples. Only drawn filters have a history; the events hold per-layer counts, not per-filter values."));
  } catch (error) {
    node.replaceChildren(`Could not read the grids: ${error.message}`);
  } finally {
    reading -= 1;
  }
}

// Start ------------------------------------------------------------------------------------

async function reload() {
  setBusy(1);
  try {
    if (await loadRunData()) renderAll();
  } catch (error) {
    root.replaceChildren(el("p", { className: "aw-error" }, `actwatch: ${error.message}`));
  } finally {
    setBusy(-1);
  }
}

function onKey(ev) {
  if (ev.target instanceof HTMLSelectElement || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
    ev.preventDefault();
    setIndex(state.index + (ev.key === "ArrowRight" ? 1 : -1));
  } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    const layers = state.selected.length ? state.runs[state.selected[0]].layers : [];
    const i = layers.indexOf(state.layer) + (ev.key === "ArrowDown" ? 1 : -1);
    if (i >= 0 && i < layers.length) {
      ev.preventDefault();
      state.layer = layers[i];
      renderAll();
    }
  }
}

export async function render() {
  const style = el("link", { rel: "stylesheet", href: "style.css" });
  document.head.append(style);
  root = el("main", { className: "aw-root" });
  document.body.append(root);
  setBusy(1);
  try {
    await loadRuns();
    sweep = runTable({
      load: () => api("sweep"),
      open: async (names) => { state.selected = names; await reload(); },
      selected: () => state.selected,
    });
    await sweep.refresh().catch(() => { sweep = null; }); // the columns work without it
    if (!Object.keys(state.runs).length) {
      root.replaceChildren(el("p", { className: "aw-note" },
        "No actwatch data under this log directory yet: train with ActivationMonitor(log_dir=...) under it."));
      return;
    }
    if (await loadRunData()) renderAll();
  } catch (error) {
    root.replaceChildren(el("p", { className: "aw-error" }, `actwatch: ${error.message}`));
  } finally {
    setBusy(-1);
  }
  document.addEventListener("keydown", onKey);
  setInterval(async () => {
    if (document.hidden || reading > 0 || pending > 0) return;
    try {
      await loadRuns();
      await sweep?.refresh();
    } catch (error) {
      return; // TensorBoard restarting, say: try again at the next tick
    }
    await reload();
  }, REFRESH_MS);
}
