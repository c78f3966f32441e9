// Viridian web console: a few pages over the JSON API (/api/v1). No framework, no build.
// Every string from the API (names, reasons, console output) reaches the page as a text
// node (textContent / createTextNode), never as HTML.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "viridian-token";
let pageGeneration = 0;          // bumped on every navigation: old timers and streams stop
const cleanups = [];

// ---- DOM helpers --------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(hash, text) {
  return el("a", { href: hash }, text);
}

function flash(text, ok) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

// ---- formatting ---------------------------------------------------------------------------

function enumName(value, prefix) {
  const text = String(value || "").replace(prefix, "");
  return text.toLowerCase().split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join("");
}
const phaseOf = (p) => enumName(p.status && p.status.phase, "PARTITION_PHASE_");
const nodeState = (n) => enumName(n.status && n.status.state, "NODE_STATE_");

function bytes(value) {
  let n = Number(value || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return `${d}d${h}h`;
  if (h) return `${h}h${m}m`;
  if (m) return `${m}m${s}s`;
  return `${s}s`;
}

function uptime(p) {
  const phase = phaseOf(p);
  const started = p.status && p.status.started_at;
  if (!started || !["Running", "Paused"].includes(phase)) return "-";
  return duration((Date.now() - Date.parse(started)) / 1000);
}

function when(ts) {
  return ts ? new Date(ts).toLocaleString() : "-";
}

function phaseBadge(text) {
  return el("span", { class: `phase ${text}`, "data-phase": text }, text || "-");
}

function bar(used, total, label) {
  const u = Number(used || 0), t = Number(total || 0);
  const pct = t > 0 ? Math.min(100, (100 * u) / t) : 0;
  const fill = el("div", { class: pct > 90 ? "fill high" : "fill" });
  fill.style.width = `${pct}%`;
  return el("div", { class: "bar", role: "meter", "aria-valuenow": u, "aria-valuemax": t,
                     title: label },
            fill, el("div", { class: "label" }, label));
}

// Console bytes: show control characters other than newline and tab as visible escapes.
function printable(text) {
  return text.replace(/\r\n/g, "\n").replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g,
    (c) => {
      const code = c.charCodeAt(0);
      return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}`
                          : `\\u${code.toString(16).padStart(4, "0")}`;
    });
}

// ---- API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({ headers: headers() }, options || {});
  const response = await fetch(API + path, opts);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

async function errorOf(response) {
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  const err = new ApiError(response.status, body.code || "UNKNOWN",
                           body.message || response.statusText);
  if (response.status === 401) showLogin(err.message);
  return err;
}

function post(path, body) {
  return api(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }),
                     body: JSON.stringify(body || {}) });
}

async function allPages(path, key) {
  const items = [];
  let token = "";
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(token ? `${path}${sep}page_token=${encodeURIComponent(token)}` : path);
    items.push(...(page[key] || []));
    token = page.next_page_token || "";
  } while (token);
  return items;
}

// A streamed response read with fetch (EventSource cannot send the Authorization header).
async function stream(path, onChunk, generation) {
  const controller = new AbortController();
  cleanups.push(() => controller.abort());
  const response = await fetch(API + path, { headers: headers(), signal: controller.signal });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.getReader();
  while (generation === pageGeneration) {
    const { value, done } = await reader.read();
    if (done) return;
    onChunk(value);
  }
}

// Server-Sent Events over stream(): calls onEvent(data object) per `data:` line.
function watch(path, onEvent, generation) {
  const decoder = new TextDecoder();
  let buffer = "";
  const live = document.getElementById("live");
  live.textContent = "● live";
  return stream(path, (chunk) => {
    buffer += decoder.decode(chunk, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (!data.length) continue;
      const parsed = JSON.parse(data.join("\n"));
      if (event === "error") flash(`${parsed.code}: ${parsed.message}`);
      else onEvent(parsed);
    }
  }, generation).finally(() => {
    if (generation === pageGeneration) live.textContent = "○ reconnecting";
  });
}

// Keep a watch open: reconnect after a pause when it ends or fails.
function keepWatching(path, onEvent, generation) {
  const again = () => {
    if (generation !== pageGeneration) return;
    watch(path, onEvent, generation).catch(() => {}).finally(() => {
      if (generation === pageGeneration) setTimeout(again, 2000);
    });
  };
  again();
}

function every(ms, fn, generation) {
  const run = () => {
    if (generation !== pageGeneration) return;
    Promise.resolve(fn()).catch(showError).finally(() => {
      if (generation === pageGeneration) cleanups.push(clearTimeout.bind(null, setTimeout(run, ms)));
    });
  };
  run();
}

function showError(err) {
  if (err && err.name === "AbortError") return;
  flash(err instanceof ApiError ? `${err.code}: ${err.message}` : String(err));
}

// ---- login --------------------------------------------------------------------------------

function showLogin(message) {
  pageGeneration += 1;
  stopPage();
  const main = document.getElementById("main");
  main.replaceChildren(document.getElementById("login-template").content.cloneNode(true));
  const error = document.getElementById("login-error");
  if (message && sessionStorage.getItem(TOKEN_KEY)) {
    error.textContent = message;
    error.hidden = false;
  }
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    route();
  });
  document.getElementById("token").focus();
}

// ---- pages --------------------------------------------------------------------------------

function actionButtons(actions, run) {
  return el("div", { class: "actions" }, actions.map(([label, path, body, confirmText]) =>
    el("button", { type: "button", id: `btn-${label.toLowerCase()}`, onclick: async (ev) => {
      if (confirmText && !window.confirm(confirmText)) return;
      ev.target.disabled = true;
      try {
        await post(path, body);
        flash(`${label}: requested`, true);
        if (run) await run();
      } catch (err) { showError(err); } finally { ev.target.disabled = false; }
    } }, label)));
}

function nodeRow(n) {
  const st = n.status || {}, spec = n.spec || {};
  const state = nodeState(n) + (spec.cordoned ? " (cordoned)" : "");
  return el("tr", { "data-node": n.name },
    el("td", {}, link(`#/nodes/${encodeURIComponent(n.name)}`, n.name)),
    el("td", {}, phaseBadge(nodeState(n)), spec.cordoned ? " cordoned" : ""),
    el("td", { class: "num" }, st.partitions || 0),
    el("td", {}, bar(st.allocated_vcpus, st.allocatable_vcpus,
                     `${st.allocated_vcpus || 0} / ${st.allocatable_vcpus || 0} vCPUs`)),
    el("td", {}, bar(st.allocated_memory_bytes, st.allocatable_memory_bytes,
                     `${bytes(st.allocated_memory_bytes)} / ${bytes(st.allocatable_memory_bytes)}`)),
    el("td", {}, spec.agent_version || "-"),
    el("td", { title: state }, when(st.last_heartbeat)));
}

async function nodesPage(main, generation) {
  const body = el("tbody");
  main.replaceChildren(el("h1", {}, "Nodes"),
    el("table", { id: "nodes" }, el("thead", {}, el("tr", {},
      ["Name", "State", "Partitions", "vCPUs (allocated / allocatable)",
       "Memory (allocated / allocatable)", "Agent", "Last heartbeat"].map((h) => el("th", {}, h)))),
      body),
    el("p", { class: "muted" }, "Refreshed every 2 s (there is no node watch API)."));
  every(2000, async () => {
    const nodes = await allPages("/nodes", "nodes");
    if (generation === pageGeneration) body.replaceChildren(...nodes.map(nodeRow));
  }, generation);
}

function partitionRow(p) {
  const spec = p.spec || {}, st = p.status || {};
  return el("tr", { "data-partition": p.name },
    el("td", {}, link(`#/partitions/${encodeURIComponent(p.name)}`, p.name)),
    el("td", {}, phaseBadge(phaseOf(p))),
    el("td", {}, st.node ? link(`#/nodes/${encodeURIComponent(st.node)}`, st.node) : "-"),
    el("td", { class: "num uptime", "data-started": st.started_at || "" }, uptime(p)),
    el("td", { class: "num" }, spec.vcpus || 0),
    el("td", { class: "num" }, bytes(spec.memory_bytes)),
    el("td", { class: "num cpu" }, "-"),
    el("td", { class: "num mem" }, "-"),
    el("td", {}, spec.image || "-"));
}

// Fill the CPU and Mem used cells from a WatchStats snapshot (partitions measured on their
// nodes every ~2 s; "-" while not running or not measured yet).
function showStats(body, snapshot) {
  const byName = new Map((snapshot.partitions || []).map((s) => [s.name, s]));
  for (const tr of body.querySelectorAll("tr[data-partition]")) {
    const s = byName.get(tr.getAttribute("data-partition"));
    const measured = s && s.measured;
    tr.querySelector("td.cpu").textContent =
      measured ? `${Number(s.cpu_cores || 0).toFixed(2)} cores` : "-";
    tr.querySelector("td.mem").textContent = measured ? bytes(s.resident_bytes) : "-";
  }
}

function partitionTable(id) {
  const body = el("tbody");
  const table = el("table", { id }, el("thead", {}, el("tr", {},
    ["Name", "Phase", "Node", "Uptime", "vCPUs", "Memory", "CPU", "Mem used", "Image"]
      .map((h) => el("th", {}, h)))), body);
  return { table, body };
}

async function partitionsPage(main, generation) {
  const { table, body } = partitionTable("partitions");
  const known = new Map();
  main.replaceChildren(el("h1", {}, "Partitions"), table,
    el("p", { class: "muted" }, "Live: Server-Sent Events from WatchPartitions; CPU and " +
       "memory use from WatchStats, measured on the nodes every 2 s."));
  let lastStats = null;
  const render = () => {
    body.replaceChildren(...[...known.keys()].sort().map((name) => partitionRow(known.get(name))));
    if (lastStats) showStats(body, lastStats);
  };
  for (const p of await allPages("/partitions", "partitions")) known.set(p.name, p);
  render();
  keepWatching("/watch/partitions", (ev) => {
    if (ev.type === "TYPE_DELETED") known.delete(ev.partition.name);
    else known.set(ev.partition.name, ev.partition);
    render();
  }, generation);
  keepWatching("/watch/stats?interval_ms=2000", (snapshot) => {
    lastStats = snapshot;
    showStats(body, snapshot);
  }, generation);
  every(1000, () => {
    for (const cell of body.querySelectorAll("td.uptime")) {
      const tr = cell.parentElement;
      const p = known.get(tr.getAttribute("data-partition"));
      if (p) cell.textContent = uptime(p);
    }
  }, generation);
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function partitionPage(main, generation, name) {
  const path = `/partitions/${encodeURIComponent(name)}`;
  const title = el("h1", {}, "Partition ", el("span", { id: "partition-name" }, name), " ");
  const badge = el("span", { id: "phase" });
  title.append(badge);
  const info = el("div", { class: "card", id: "facts" });
  const checkpoints = el("tbody");
  const events = el("tbody");
  const explain = el("div", { class: "card", id: "explain" });
  const consoleBox = el("pre", { class: "console", id: "console" });
  const buttons = actionButtons([
    ["Start", `${path}/start`], ["Stop", `${path}/stop`], ["Pause", `${path}/pause`],
    ["Resume", `${path}/resume`], ["Save", `${path}/save`], ["Checkpoint", `${path}/checkpoint`],
  ], () => refresh());
  main.replaceChildren(title, buttons, info,
    el("h2", {}, "Console"), consoleBox,
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "Events"), el("table", { id: "events" },
        el("thead", {}, el("tr", {}, ["Time", "Type", "Reason", "Message"].map((h) => el("th", {}, h)))),
        events)),
      el("div", {}, el("h2", {}, "Checkpoints"), el("table", { id: "checkpoints" },
        el("thead", {}, el("tr", {}, ["Name", "Taken", "In phase"].map((h) => el("th", {}, h)))),
        checkpoints),
        el("h2", {}, "Placement"), explain)));

  function show(p) {
    const spec = p.spec || {}, st = p.status || {};
    badge.replaceChildren(phaseBadge(phaseOf(p)));
    info.replaceChildren(facts([
      ["Node", st.node ? link(`#/nodes/${encodeURIComponent(st.node)}`, st.node) : "-"],
      ["Image", spec.image || "-"],
      ["vCPUs / memory", `${spec.vcpus || 0} / ${bytes(spec.memory_bytes)}`],
      ["Uptime", uptime(p)],
      ["Reason", st.reason || "-"],
      ["Exit code", st.has_exit_code ? String(st.exit_code) : "-"],
      ["Restarts", String(st.restarts || 0)],
      ["Created", when(st.created_at)],
    ]));
    checkpoints.replaceChildren(...(st.checkpoints || []).map((c) => el("tr", {},
      el("td", {}, c.name), el("td", {}, when(c.created_at)),
      el("td", {}, enumName(c.taken_in, "PARTITION_PHASE_")))));
    if (!(st.checkpoints || []).length) {
      checkpoints.replaceChildren(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "none")));
    }
  }

  async function refresh() {
    const [evs, why] = await Promise.all([
      api(`${path}/events?limit=50`), api(`${path}/explain`).catch((e) => e)]);
    if (generation !== pageGeneration) return;
    events.replaceChildren(...(evs.events || []).slice().reverse().map((e) => el("tr", {},
      el("td", {}, when(e.time)), el("td", {}, e.type), el("td", {}, e.reason),
      el("td", {}, e.message))));
    if (why instanceof Error) explain.replaceChildren(el("p", { class: "error" }, why.message));
    else explain.replaceChildren(el("p", {}, why.summary || "-"),
      el("ul", {}, (why.verdicts || []).map((v) => el("li", {},
        `${v.node}: ${v.passed ? "fits" : "does not fit"}${v.chosen ? " (chosen)" : ""}`,
        (v.filters || []).filter((f) => !f.passed).map((f) => ` — ${f.reason_code}: ${f.detail}`)))));
  }

  show(await api(path));
  await refresh();
  let lastRevision = "";
  let consoleRunning = false;
  let offset = 0;
  const decoder = new TextDecoder();
  const followConsole = () => {
    if (consoleRunning || generation !== pageGeneration) return;
    consoleRunning = true;
    stream(`${path}/logs?follow=true&offset=${offset}`, (chunk) => {
      offset += chunk.length;
      const atBottom = consoleBox.scrollTop + consoleBox.clientHeight >= consoleBox.scrollHeight - 4;
      consoleBox.append(document.createTextNode(printable(decoder.decode(chunk, { stream: true }))));
      if (atBottom) consoleBox.scrollTop = consoleBox.scrollHeight;
    }, generation).catch(showError).finally(() => { consoleRunning = false; });
  };
  followConsole();
  keepWatching(`/watch/partitions?name=${encodeURIComponent(name)}`, (ev) => {
    if (ev.type === "TYPE_DELETED") { flash(`partition ${name} was deleted`); return; }
    show(ev.partition);
    if (ev.partition.revision !== lastRevision) {
      lastRevision = ev.partition.revision;
      refresh().catch(showError);
      followConsole();  // a (re)started guest: its console continues from our offset
    }
  }, generation);
}

async function nodePage(main, generation, name) {
  const path = `/nodes/${encodeURIComponent(name)}`;
  const info = el("div", { class: "card", id: "facts" });
  const { table, body } = partitionTable("node-partitions");
  const reload = async () => {
    const [n, parts] = await Promise.all([
      api(path), allPages(`/partitions?node=${encodeURIComponent(name)}`, "partitions")]);
    if (generation !== pageGeneration) return;
    const st = n.status || {}, spec = n.spec || {};
    const drain = st.drain && st.drain.state ? enumName(st.drain.state, "STATE_") : "";
    info.replaceChildren(facts([
      ["State", [phaseBadge(nodeState(n)), spec.cordoned ? " cordoned" : ""]],
      ["vCPUs", bar(st.allocated_vcpus, st.allocatable_vcpus,
                    `${st.allocated_vcpus || 0} / ${st.allocatable_vcpus || 0} vCPUs`)],
      ["Memory", bar(st.allocated_memory_bytes, st.allocatable_memory_bytes,
                     `${bytes(st.allocated_memory_bytes)} / ${bytes(st.allocatable_memory_bytes)}`)],
      ["Reason", st.reason || "-"],
      ["Drain", drain ? `${drain}: ${st.drain.message || ""}` : "-"],
      ["Address", spec.address || "-"],
      ["Agent version", spec.agent_version || "-"],
      ["Last heartbeat", when(st.last_heartbeat)],
    ]));
    body.replaceChildren(...parts.map(partitionRow));
  };
  main.replaceChildren(el("h1", {}, "Node ", el("span", { id: "node-name" }, name)),
    actionButtons([["Cordon", `${path}/cordon`], ["Uncordon", `${path}/uncordon`],
                   ["Drain", `${path}/drain`, {}, "Drain moves every partition off this node. Go on?"]],
                  reload),
    info, el("h2", {}, "Partitions on this node"), table);
  every(2000, reload, generation);
}

// ---- routing ------------------------------------------------------------------------------

function stopPage() {
  while (cleanups.length) {
    try { cleanups.pop()(); } catch (e) { /* already stopped */ }
  }
  document.getElementById("live").textContent = "";
}

async function route() {
  pageGeneration += 1;
  const generation = pageGeneration;
  stopPage();
  flash("");
  const hash = location.hash || "#/nodes";
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  const main = document.getElementById("main");
  for (const id of ["nav-nodes", "nav-partitions"]) {
    document.getElementById(id).classList.toggle("active", hash.startsWith(`#/${id.slice(4)}`));
  }
  document.getElementById("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  try {
    await api("/nodes?page_size=1");  // asks for a token if the cluster wants one
    if (generation !== pageGeneration) return;
    if (parts[0] === "partitions" && parts[1]) await partitionPage(main, generation, parts[1]);
    else if (parts[0] === "partitions") await partitionsPage(main, generation);
    else if (parts[0] === "nodes" && parts[1]) await nodePage(main, generation, parts[1]);
    else await nodesPage(main, generation);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  route();
});
