// The rbee dashboard: GET /v2/events (a snapshot, then changes) drawn as tables, timelines and charts.
// No build step, no library, no network beyond the queen. EventSource cannot send an Authorization
// header, so the stream is read with fetch(); a key the queen asks for stays in sessionStorage.
"use strict";

const KEY_ITEM = "rbee.apiKey";
const WINDOW_MS = 15 * 60 * 1000;
const RECENT_SHOWN = 300;
const $ = (sel) => document.querySelector(sel);

const view = { workers: [], hives: [], queue: {}, queued: 0, inFlight: new Map(), recent: [], series: [],
  skew: 0 };

// ------------------------------------------------------------------ the stream

async function connect() {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  setStatus("connecting", "connecting…");
  let response;
  try {
    response = await fetch("/v2/events", { headers, cache: "no-store" });
  } catch (err) {
    return retry(`queen unreachable (${err.message})`);
  }
  if (response.status === 401 || response.status === 403) {
    const refused = Boolean(key);
    sessionStorage.removeItem(KEY_ITEM);
    return askForKey(refused ? "The queen refused that key. Check it and try again." : "");
  }
  if (!response.ok) return retry(`the queen answered ${response.status}`);
  $("#key-form").hidden = true;
  $("#board").hidden = false;
  $("#forget-key").hidden = !key;
  setStatus("live", "live");
  await read(response.body.getReader());
  retry("stream ended");
}

async function read(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      return;
    }
    if (chunk.done) return;
    buffer += decoder.decode(chunk.value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) handle(JSON.parse(data.join("\n")));
    }
  }
}

function retry(why) {
  setStatus("error", `${why}; reconnecting…`);
  setTimeout(connect, 1000);
}

function askForKey(message) {
  $("#board").hidden = true;
  $("#key-form").hidden = false;
  $("#key-error").hidden = !message;
  $("#key-error").textContent = message;
  setStatus("error", "API key needed");
  $("#key-input").focus();
}

function setStatus(state, text) {
  const el = $("#status");
  el.dataset.state = state;
  el.textContent = text;
}

// ------------------------------------------------------------------ events

function handle(event) {
  switch (event.type) {
    case "snapshot":
      view.skew = Date.now() - event.now;
      view.inFlight = new Map(event.in_flight.map((r) => [r.request_id, r]));
      view.recent = event.recent.slice().reverse();
      view.series = event.series;
      setFleet(event);
      drawRequests();
      drawCharts();
      break;
    case "fleet":
      setFleet(event);
      break;
    case "request":
      onRequest(event.request);
      break;
    case "tick":
      view.series.push(event.point);
      drawCharts();
      break;
    case "dropped":
      setStatus("error", "fell behind; reconnecting…");
      break;
  }
}

function setFleet(fleet) {
  Object.assign(view, { workers: fleet.workers, hives: fleet.hives, queue: fleet.queue, queued: fleet.queued });
  drawFleet();
}

function onRequest(r) {
  if (["done", "error", "cancelled"].includes(r.state)) {
    view.inFlight.delete(r.request_id);
    view.recent.unshift(r);
    view.recent.length = Math.min(view.recent.length, RECENT_SHOWN);
  } else {
    view.inFlight.set(r.request_id, r);
  }
  drawRequests();
}

// ------------------------------------------------------------------ drawing

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (cls) td.className = cls;
  return td;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  cells.forEach((c) => tr.appendChild(c));
  return tr;
}

function fill(selector, rows) {
  $(selector).querySelector("tbody").replaceChildren(...rows);
}

function slots(busy, total) {
  const td = document.createElement("td");
  const bar = document.createElement("span");
  bar.className = "slots";
  bar.title = `${busy} of ${total} busy`;
  for (let i = 0; i < total; i++) {
    const s = document.createElement("span");
    s.className = i < busy ? "slot busy" : "slot";
    bar.appendChild(s);
  }
  td.append(bar, ` ${busy}/${total}`);
  return td;
}

function drawFleet() {
  fill("#hives", view.hives.map((h) => row([cell(h.node_name), cell(h.live ? "live" : "silent",
    h.live ? "state-idle" : "state-offline"), cell(h.workers, "num"),
  cell(h.ram_free_bytes ? `${(h.ram_free_bytes / 2 ** 30).toFixed(1)} GiB` : null, "num"),
  cell(h.models.join(", "))], { hiveId: h.hive_id })));
  fill("#workers", view.workers.map((w) => row([cell(w.worker_id), cell(w.state, `state state-${w.state}`),
    slots(w.slots_busy, w.slots_total), cell(w.model), cell(w.hive), cell(w.tokens_per_s, "num")],
  { workerId: w.worker_id, state: w.state })));
  $("#queued").textContent = view.queued;
  $("#queue-keys").textContent = Object.entries(view.queue).map(([k, n]) => `${k.slice(0, 12)}: ${n}`).join(" · ");
}

function timeline(r) {
  const now = Date.now() - view.skew;
  const total = Math.max(1, now - r.opened_at);
  const queued = r.queued_ms ?? (r.state === "queued" ? total : 0);
  const wait = r.ttft_ms ?? (r.state === "dispatched" ? total - queued : 0);
  const stream = Math.max(0, total - queued - wait);
  const td = document.createElement("td");
  const bar = document.createElement("div");
  bar.className = "timeline";
  bar.title = `queued ${queued} ms · first token ${r.ttft_ms ?? "…"} ms · ${Math.round(total)} ms so far`;
  for (const [cls, ms] of [["seg-queued", queued], ["seg-wait", wait], ["seg-stream", stream]]) {
    const seg = document.createElement("span");
    seg.className = cls;
    seg.style.width = `${(100 * ms) / total}%`;
    bar.appendChild(seg);
  }
  td.appendChild(bar);
  return td;
}

function drawRequests() {
  fill("#in-flight", [...view.inFlight.values()].map((r) => row([cell(r.request_id), cell(r.state),
    cell(r.worker_id), cell(r.model), timeline(r)], { requestId: r.request_id, state: r.state })));
  fill("#recent", view.recent.map((r) => row([cell(r.request_id), cell(r.state, `outcome-${r.state}`),
    cell(r.worker_id), cell(r.ttft_ms, "num ttft"), cell(r.queued_ms, "num"), cell(r.tokens, "num"),
    cell(r.tokens_per_s, "num"), cell(r.duration_ms, "num")], { requestId: r.request_id, state: r.state })));
  const errors = view.recent.filter((r) => r.state === "error").slice(0, 20);
  $("#errors").replaceChildren(...errors.map((r) => {
    const li = document.createElement("li");
    li.textContent = `${new Date(r.opened_at + view.skew).toLocaleTimeString()} ${r.request_id}: ${r.error}`
      + (r.worker_id ? ` (worker ${r.worker_id})` : "");
    return li;
  }));
}

const SVG = "http://www.w3.org/2000/svg";

function chart(selector, points) {
  const svg = $(selector);
  const now = Date.now() - view.skew;
  const shown = points.filter((p) => p.y !== null && p.y !== undefined && now - p.t <= WINDOW_MS);
  // The x axis spans what there is (a minute at least), up to the last 15 minutes.
  const span = Math.min(WINDOW_MS, Math.max(60 * 1000, ...points.map((p) => now - p.t)));
  const top = Math.max(1, ...shown.map((p) => p.y));
  const [w, h] = [600, 120];
  const xy = shown.map((p) => `${(w * (1 - (now - p.t) / span)).toFixed(1)},${(h - 4 - ((h - 16) * p.y) / top).toFixed(1)}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", xy.join(" "));
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "11");
  label.textContent = `max ${Math.round(top)} · last ${Math.round(span / 60000)} min`;
  svg.replaceChildren(line, label);
  svg.dataset.points = String(shown.length);
  svg.dataset.max = String(shown.length ? Math.max(...shown.map((p) => p.y)) : 0);
}

function drawCharts() {
  chart("#throughput-chart", view.series.map((p) => ({ t: p.t, y: p.tokens_per_s })));
  chart("#ttft-chart", view.series.map((p) => ({ t: p.t, y: p.ttft_ms })));
  if (view.inFlight.size) drawRequests(); // the timelines grow
}

// ------------------------------------------------------------------ start

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("#key-input").value = "";
  connect();
});
$("#forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_ITEM);
  location.reload();
});
connect();
