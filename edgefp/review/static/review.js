"use strict";
// The review page: one sample at a time, most out of distribution first; a key per class. Labels go to
// the server at once; those it has not confirmed wait in localStorage and are sent again until it does.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let state = null; // GET /api/queue
let position = 0; // in state.queue: the sample on show
let wanted = 0; // the sample asked for last (shown once it has loaded)
const AHEAD = 5; // samples loaded ahead, so that labelling goes on while the server is away
const samples = new Map(); // sample index -> GET /api/sample/N
let pending = []; // labels not yet confirmed: [{id, label}]
let pendingKey = "";
let flushing = false;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(path, options); // a TypeError when the server cannot be reached
  const content = await response.json();
  if (!response.ok) {
    const refusal = new Error(content.error || response.statusText);
    refusal.refused = true;
    throw refusal;
  }
  return content;
}

function setStatus(kind, text) {
  const status = $("status");
  status.className = kind;
  status.textContent = text;
}

// ------------------------------------------------------------------ labels, saved as they go
function storePending() {
  localStorage.setItem(pendingKey, JSON.stringify(pending));
}

function label(change) {
  const item = state.queue[position];
  if (!item) return;
  if (change.kind === "clear") delete state.labels[item.id];
  else state.labels[item.id] = change.kind === "noise" ? {kind: "noise"} : change;
  pending.push({id: item.id, label: change});
  storePending();
  renderQueueItem(position);
  if (change.kind !== "clear") {
    const next = nextUnlabelled(position);
    if (next !== null) show(next); else renderChoices();
  } else {
    renderChoices();
  }
  flush();
}

async function flush() {
  if (flushing) return;
  flushing = true;
  try {
    while (pending.length) {
      setStatus("saving", `saving ${pending.length} label${pending.length > 1 ? "s" : ""}`);
      let answer;
      try {
        answer = await api("/api/label", pending[0]);
      } catch (error) {
        if (!error.refused) {
          setStatus("failed", `NOT SAVED (${pending.length} waiting): the server is unreachable; retrying`);
          return;
        }
        pending.shift();
        storePending();
        setStatus("failed", `refused: ${error.message}`);
        continue;
      }
      pending.shift();
      storePending();
      state.classes = answer.classes;
      state.counts = answer.counts;
      if (answer.label) state.labels[answer.id] = answer.label; else delete state.labels[answer.id];
      const at = state.queue.findIndex((item) => item.id === answer.id);
      if (at >= 0) renderQueueItem(at);
      renderChoices();
    }
    setStatus("saved", `all labels saved (${state.counts.labelled})`);
  } finally {
    flushing = false;
  }
}

async function exportData() {
  try {
    const report = await api("/api/export", {});
    setStatus("saved", `wrote ${report.out}: ${report.samples} samples`);
  } catch (error) {
    setStatus("failed", `export: ${error.message}`);
  }
}

// ------------------------------------------------------------------ moving through the queue
function nextUnlabelled(from) {
  for (let step = 1; step <= state.queue.length; step++) {
    const at = (from + step) % state.queue.length;
    if (!state.labels[state.queue[at].id]) return at;
  }
  return null;
}

function sampleAt(at) {
  const index = state.queue[at].index;
  if (!samples.has(index)) {
    samples.set(index, api(`/api/sample/${index}`).catch((error) => {
      samples.delete(index); // asked again next time
      throw error;
    }));
  }
  return samples.get(index);
}

async function show(at) {
  if (at < 0 || at >= state.queue.length) return;
  wanted = at;
  let sample;
  try {
    sample = await sampleAt(at);
  } catch (error) {
    if (wanted === at) setStatus("failed", `cannot load sample ${at + 1}: ${error.message}`);
    return;
  }
  if (wanted !== at) return; // moved on meanwhile
  const previous = position;
  position = at;
  renderQueueItem(previous);
  renderQueueItem(at);
  $("queue").children[at].scrollIntoView({block: "nearest"});
  renderSample(sample);
  for (let step = 1, loaded = 0; step < state.queue.length && loaded < AHEAD; step++) {
    const next = (at + step) % state.queue.length;
    if (!state.labels[state.queue[next].id]) {
      sampleAt(next).catch(() => {});
      loaded++;
    }
  }
}

// ------------------------------------------------------------------ drawing
function flat(x) {
  return Array.isArray(x) ? x.flat(Infinity) : [x];
}

function channelRanges(arrays, channels) {
  const lo = new Array(channels).fill(Infinity), hi = new Array(channels).fill(-Infinity);
  for (const values of arrays) {
    values.forEach((v, i) => {
      const c = i % channels;
      lo[c] = Math.min(lo[c], v);
      hi[c] = Math.max(hi[c], v);
    });
  }
  return lo.map((l, c) => [l, hi[c] > l ? hi[c] : l + 1]);
}

function drawImage(values, shape, ranges, pixel) {
  const [h, w, c] = shape;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  canvas.style.width = `${w * pixel}px`;
  canvas.style.height = `${h * pixel}px`;
  const context = canvas.getContext("2d");
  const image = context.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) {
      const channel = c === 3 ? k : 0;
      const [lo, hi] = ranges[channel];
      image.data[4 * p + k] = Math.round(255 * (values[p * c + channel] - lo) / (hi - lo));
    }
    image.data[4 * p + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function drawSequence(values, shape, ranges, width, rowHeight) {
  const [t, c] = shape.length === 2 ? shape : [shape[0], 1];
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", rowHeight * c);
  for (let k = 0; k < c; k++) {
    const [lo, hi] = ranges[k];
    const points = [];
    for (let i = 0; i < t; i++) {
      const x = (i / Math.max(1, t - 1)) * (width - 4) + 2;
      const y = k * rowHeight + 2 + (1 - (values[i * c + k] - lo) / (hi - lo)) * (rowHeight - 4);
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    }
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "line");
    line.setAttribute("points", points.join(" "));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `channel ${k}`;
    line.appendChild(title);
    svg.appendChild(line);
  }
  return svg;
}

function draw(values, ranges, large) {
  const shape = state.shape;
  if (state.kind === "image") return drawImage(values, shape, ranges, large ? 24 : 10);
  const rows = state.kind === "sequence" ? shape[1] : 1;
  return drawSequence(values, shape, ranges, large ? 420 : 200, Math.max(large ? 36 : 18, (large ? 240 : 110) / rows));
}

function figure(content, caption) {
  const element = document.createElement("figure");
  element.appendChild(content);
  const text = document.createElement("figcaption");
  text.textContent = caption;
  element.appendChild(text);
  return element;
}

function className(value) {
  const found = state.classes.find((c) => c.value === value);
  return found ? found.name : String(value);
}

function renderSample(sample) {
  $("sample").dataset.id = sample.id;
  const values = flat(sample.x);
  const near = sample.neighbours.map((n) => flat(n.x));
  const channels = state.kind === "vector" ? 1 : state.shape[state.shape.length - 1];
  const ranges = channelRanges([values, ...near], channels);
  const score = sample.score === null ? "no score" : `OOD score ${sample.score.toFixed(3)}`;
  const threshold = state.threshold === null ? "" : ` (threshold ${state.threshold.toFixed(3)})`;
  $("facts").innerHTML = "";
  const facts = [`${position + 1} of ${state.queue.length}`, `sample ${sample.id}`,
    `${score}${threshold}`, sample.pred === null ? "" : `the model says ${sample.pred}`];
  facts.filter(Boolean).forEach((text, i) => {
    const span = document.createElement("span");
    span.textContent = (i ? " · " : "") + text;
    if (i === 2 && sample.ood) span.className = "ood";
    $("facts").appendChild(span);
  });
  $("view").replaceChildren(...figure(draw(values, ranges, true), "this sample").childNodes);
  const neighbours = $("neighbours");
  neighbours.innerHTML = "";
  if (sample.neighbours.length) {
    const heading = document.createElement("h3");
    heading.textContent = `nearest in-distribution examples (${state.reference})`;
    neighbours.appendChild(heading);
  }
  sample.neighbours.forEach((n, i) => {
    neighbours.appendChild(figure(draw(near[i], ranges, false), `${n.label}, distance ${n.distance}`));
  });
  const evidence = $("evidence");
  evidence.innerHTML = "";
  const top = Math.max(1, ...(sample.evidence || []).map((e) => e.z));
  (sample.evidence || []).forEach((e) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = "<span></span><span class=\"fill\"></span><span></span>";
    row.children[0].textContent = e.layer;
    row.children[1].style.width = `${(12 * e.z) / top}em`;
    row.children[2].textContent = `z ${e.z.toFixed(2)}`;
    evidence.appendChild(row);
  });
  renderChoices();
}

function renderChoices() {
  const item = state.queue[position];
  const current = item ? state.labels[item.id] : null;
  const choices = $("choices");
  choices.innerHTML = "";
  const button = (key, text, chosen, action) => {
    const element = document.createElement("button");
    element.type = "button";
    if (key) {
      element.dataset.key = key;
      const kbd = document.createElement("kbd");
      kbd.textContent = key;
      element.appendChild(kbd);
    }
    element.appendChild(document.createTextNode(text));
    if (chosen) element.className = "chosen";
    element.addEventListener("click", action);
    choices.appendChild(element);
  };
  state.classes.forEach((c, i) => {
    const key = i < 9 ? String(i + 1) : i === 9 ? "0" : "";
    const chosen = current && current.kind === "class" && (current.value === c.value || current.name === c.name);
    button(key, c.new ? `${c.name} (new)` : c.name, chosen, () => label({kind: "class", value: c.value}));
  });
  button("n", "new class…", false, openNewClass);
  button("x", "noise", current && current.kind === "noise", () => label({kind: "noise"}));
  const counts = state.counts;
  $("progress").textContent = `${counts.labelled} of ${state.queue.length} labelled`;
}

function renderQueue() {
  const queue = $("queue");
  queue.innerHTML = "";
  state.queue.forEach((item, at) => {
    const element = document.createElement("button");
    element.type = "button";
    element.addEventListener("click", () => show(at));
    queue.appendChild(element);
    renderQueueItem(at);
  });
}

function renderQueueItem(at) {
  const element = $("queue").children[at];
  const item = state.queue[at];
  if (!element || !item) return;
  const given = state.labels[item.id];
  const score = item.score === null ? "" : item.score.toFixed(2);
  element.textContent = `${at + 1}. ${score} ${item.pred === null ? "" : item.pred}`;
  element.className = at === position ? "current" : "";
  if (given) {
    const tag = document.createElement("span");
    tag.className = given.kind === "noise" ? "tag noise" : "tag";
    tag.textContent = given.kind === "noise" ? "noise" : given.name || className(given.value);
    element.appendChild(tag);
  }
}

// ------------------------------------------------------------------ keys
function openNewClass() {
  const form = $("new-class");
  form.hidden = false;
  $("new-name").value = "";
  $("new-name").focus();
}

$("new-class").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("new-name").value.trim();
  $("new-class").hidden = true;
  if (name) label({kind: "class", name});
});

$("new-name").addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    $("new-class").hidden = true;
    event.preventDefault();
  }
});

document.addEventListener("keydown", (event) => {
  if (!state || !$("new-class").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (/^[0-9]$/.test(key)) {
    const at = key === "0" ? 9 : Number(key) - 1;
    if (at < state.classes.length) label({kind: "class", value: state.classes[at].value});
  } else if (key === "n") openNewClass();
  else if (key === "x") label({kind: "noise"});
  else if (key === "ArrowRight" || key === "j") show(position + 1);
  else if (key === "ArrowLeft" || key === "k") show(position - 1);
  else if (key === "Backspace") label({kind: "clear"});
  else if (key === "e") exportData();
  else if (key === "?") $("help").hidden = !$("help").hidden;
  else return;
  event.preventDefault();
});

$("export").addEventListener("click", exportData);

// ------------------------------------------------------------------ start
async function start() {
  try {
    state = await api("/api/queue");
  } catch (error) {
    setStatus("failed", `cannot reach the review server: ${error.message}`);
    return;
  }
  pendingKey = `edgefp-review-pending-${state.data_sha256}`;
  pending = JSON.parse(localStorage.getItem(pendingKey) || "[]");
  $("source").textContent = `${state.data}: ${state.samples} samples, ${state.queue.length} to review`;
  renderQueue();
  if (!state.queue.length) {
    setStatus("saved", "nothing to review");
    return;
  }
  setStatus("saved", pending.length ? "sending labels kept from before" : "ready");
  setInterval(() => { if (pending.length) flush(); }, 2000);
  flush();
  const first = state.labels[state.queue[0].id] ? nextUnlabelled(0) : 0;
  show(first === null ? 0 : first);
}

start();
