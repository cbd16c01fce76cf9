// The p2pai dashboard: plain JavaScript, no dependencies. It talks only to the node that served it.
// Everything the swarm announces (names, models) is untrusted: it is shown with textContent, never as HTML.
"use strict";

const SWARM_EVERY_MS = 1000;
const MODELS_EVERY_MS = 3000;
const METRICS_EVERY_MS = 2000;
const CHART_POINTS = 60;

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("p2pai-key") || "";
let nodeNames = {};

function headers(extra) {
  const all = Object.assign({}, extra || {});
  if (apiKey) all.Authorization = "Bearer " + apiKey;
  return all;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) $("key-box").hidden = false;
  return response;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function short(id) {
  return id && id.length > 14 ? id.slice(0, 6) + "…" + id.slice(-6) : id || "";
}

function age(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!isFinite(seconds)) return "?";
  return seconds < 2 ? "now" : seconds < 120 ? seconds.toFixed(0) + " s ago" : (seconds / 60).toFixed(0) + " min ago";
}

// The swarm

function nodeRow(node, role, models, load, decode) {
  const row = el("tr", null, { "data-node-id": node.id, "data-online": String(Boolean(node.online)) });
  const state = el("td");
  state.appendChild(el("span", null, { class: "dot", title: node.online ? "online" : "offline" }));
  row.appendChild(state);
  row.appendChild(el("td", node.name + (node.self ? " (this node)" : "")));
  row.appendChild(el("td", short(node.id), { title: node.id }));
  row.appendChild(el("td", role));
  row.appendChild(models);
  row.appendChild(el("td", load));
  row.appendChild(el("td", decode));
  row.appendChild(el("td", age(node.lastSeen)));
  return row;
}

function modelCell(names, loaded) {
  const cell = el("td");
  if (!names.length) cell.textContent = "-";
  names.forEach((name, i) => {
    if (i) cell.appendChild(document.createTextNode(", "));
    cell.appendChild(el(loaded.has(name) ? "b" : "span", name));
  });
  return cell;
}

function renderSwarm(swarm) {
  const rows = [];
  nodeNames = {};
  for (const node of swarm.federated_nodes || []) {
    nodeNames[node.id] = node.name;
    const capacity = node.capacity || {};
    const tps = (node.model_stats || []).reduce((sum, m) => sum + (m.decode_tps || 0), 0);
    const roles = (node.roles || []).join(", ") || "node";
    rows.push(nodeRow(node, roles, modelCell(node.models || [], new Set(node.loaded || [])),
      `${capacity.in_flight || 0} running, ${capacity.queued || 0} queued / ${capacity.slots || 0} slots`,
      tps ? tps.toFixed(1) + " tok/s" : "-"));
  }
  for (const node of swarm.llama_cpp_nodes || []) {
    nodeNames[node.id] = node.name;
    const free = ((node.free_memory || 0) / 2 ** 30).toFixed(1) + " GiB free";
    const cell = el("td", free);
    rows.push(nodeRow(node, "llama.cpp worker", cell,
      node.in_use_by ? "used by " + (nodeNames[node.in_use_by] || short(node.in_use_by)) : "idle", "-"));
  }
  $("nodes").replaceChildren(...rows);
  if (swarm.self) $("self-name").textContent = swarm.self.name + " · " + short(swarm.self.id);
}

async function pollSwarm() {
  try {
    const response = await api("/api/p2p");
    if (response.ok) {
      renderSwarm(await response.json());
      $("status").textContent = "";
    } else {
      $("status").textContent = "/api/p2p: " + response.status;
    }
  } catch (err) {
    $("status").textContent = "the node does not answer";
  }
  setTimeout(pollSwarm, SWARM_EVERY_MS);
}

// Models, and the playground's choice of them

function names(ids) {
  return (ids || []).map((id) => nodeNames[id] || short(id)).join(", ") || "-";
}

async function pollModels() {
  try {
    const response = await api("/v1/models");
    if (response.ok) {
      const models = (await response.json()).data || [];
      $("model-rows").replaceChildren(...models.map((m) => {
        const row = el("tr", null, { "data-model": m.id });
        [m.id, (m.tasks || []).join(", "), names(m.loaded_on), names(m.nodes)].forEach((t) => row.appendChild(el("td", t)));
        return row;
      }));
      const select = $("chat-model");
      const chat = models.filter((m) => (m.tasks || []).includes("chat")).map((m) => m.id);
      const current = [...select.options].map((o) => o.value);
      if (chat.join("\n") !== current.join("\n")) {
        const chosen = select.value;
        select.replaceChildren(...chat.map((id) => el("option", id, { value: id })));
        if (chat.includes(chosen)) select.value = chosen;
      }
    }
  } catch (err) { /* shown by the swarm poll */ }
  setTimeout(pollModels, MODELS_EVERY_MS);
}

// Charts of this node's metrics, from its Prometheus text

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function total(samples, name, keep) {
  return samples.filter((s) => s.name === name && (!keep || keep(s.labels))).reduce((sum, s) => sum + s.value, 0);
}

const CHARTS = [
  { id: "requests", title: "requests/s", rate: true,
    read: (s) => total(s, "api_call_count", (l) => l.method === "POST") },
  { id: "tokens", title: "generated tokens/s", rate: true, read: (s) => total(s, "p2pai_model_completion_tokens_total") },
  { id: "forwarded", title: "forwarded/s", rate: true, read: (s) => total(s, "p2pai_peer_forwarded_requests_total") },
  { id: "busy", title: "slots in use + queued", rate: false,
    read: (s) => total(s, "p2pai_model_slots_in_use") + total(s, "p2pai_model_queue_depth") },
  { id: "ttft", title: "mean time to first token (ms)", rate: false, read: (s, prev) => {
    const sum = total(s, "p2pai_model_time_to_first_token_seconds_sum");
    const count = total(s, "p2pai_model_time_to_first_token_seconds_count");
    if (!prev) return 0;
    const n = count - prev.count;
    return n > 0 ? (1000 * (sum - prev.sum)) / n : 0;
  }, keep: (s) => ({ sum: total(s, "p2pai_model_time_to_first_token_seconds_sum"),
                     count: total(s, "p2pai_model_time_to_first_token_seconds_count") }) },
  { id: "members", title: "members online", rate: false, read: (s) => 1 + total(s, "p2pai_overlay_members_online") },
];
const series = {};
let lastScrape = null;

function setupCharts() {
  const grid = $("chart-grid");
  for (const chart of CHARTS) {
    const box = el("div", null, { class: "chart", id: "chart-" + chart.id });
    box.appendChild(el("div", chart.title, { class: "dim" }));
    box.appendChild(el("div", "-", { class: "value" }));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${CHART_POINTS - 1} 100`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
    box.appendChild(svg);
    grid.appendChild(box);
    series[chart.id] = [];
  }
}

function draw(chart, value) {
  const points = series[chart.id];
  points.push(value);
  if (points.length > CHART_POINTS) points.shift();
  const box = $("chart-" + chart.id);
  box.querySelector(".value").textContent = Number.isInteger(value) ? String(value) : value.toFixed(2);
  const top = Math.max(...points, 1e-9);
  const offset = CHART_POINTS - points.length;
  box.querySelector("polyline").setAttribute("points",
    points.map((v, i) => `${offset + i},${(100 - (96 * v) / top - 2).toFixed(1)}`).join(" "));
}

async function pollMetrics() {
  try {
    const response = await api("/metrics");
    if (response.ok) {
      const samples = parseMetrics(await response.text());
      const now = performance.now();
      const scrape = { at: now, values: {}, kept: {} };
      for (const chart of CHARTS) {
        const previous = lastScrape && lastScrape.kept[chart.id];
        const value = chart.read(samples, previous);
        scrape.values[chart.id] = value;
        scrape.kept[chart.id] = chart.keep ? chart.keep(samples) : value;
        if (chart.rate) {
          if (lastScrape) draw(chart, Math.max(0, (value - lastScrape.values[chart.id]) / ((now - lastScrape.at) / 1000)));
        } else {
          draw(chart, value);
        }
      }
      lastScrape = scrape;
    }
  } catch (err) { /* shown by the swarm poll */ }
  setTimeout(pollMetrics, METRICS_EVERY_MS);
}

// The playground: a streamed chat completion, and which node served it

async function chat(event) {
  event.preventDefault();
  const output = $("chat-output");
  const served = $("chat-served");
  const button = $("chat-send");
  output.textContent = "";
  served.textContent = "";
  button.disabled = true;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("chat-model").value, stream: true, max_tokens: Number($("chat-max").value) || 64,
        messages: [{ role: "user", content: $("chat-input").value }] }),
    });
    const by = response.headers.get("X-P2PAI-Served-By");
    if (by) {
      served.textContent = "served by " + (nodeNames[by] || short(by)) + (response.headers.get("X-P2PAI-Entry") ? " (forwarded)" : "");
      served.setAttribute("data-node-id", by);
    }
    if (!response.ok || !response.body) {
      const body = await response.json().catch(() => ({}));
      output.textContent = "error " + response.status + ": " + ((body.error && body.error.message) || "");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const item of events) {
        if (!item.startsWith("data: ")) continue;
        const data = item.slice(6);
        if (data === "[DONE]") { output.setAttribute("data-done", "true"); continue; }
        const chunk = JSON.parse(data);
        if (chunk.error) { output.textContent += "\n[error: " + chunk.error.message + "]"; continue; }
        for (const choice of chunk.choices || []) output.textContent += (choice.delta && choice.delta.content) || "";
      }
    }
  } catch (err) {
    output.textContent += "\n[" + err + "]";
  } finally {
    button.disabled = false;
  }
}

// Joining: the token is given to an admin (or, without keys, to this machine) only

async function showJoin() {
  const response = await api("/api/p2p/token").catch(() => null);
  if (!response || !response.ok) return;
  const token = (await response.text()).trim();
  const swarm = await (await api("/api/p2p")).json().catch(() => ({}));
  const reachable = ((swarm.self && swarm.self.addrs) || []).find((a) => !a.startsWith("/ip4/127.") && !a.startsWith("/ip6/::1/"));
  $("join-command").textContent = "p2pai start --token " + token + (reachable ? " --bootstrap " + reachable : "");
  $("join").hidden = false;
}

async function copyJoin() {
  const text = $("join-command").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {  // no clipboard API (plain HTTP from another machine): select it for Ctrl+C
    const range = document.createRange();
    range.selectNodeContents($("join-command"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  $("join-copy").textContent = "Copied";
  setTimeout(() => { $("join-copy").textContent = "Copy"; }, 1500);
}

function start() {
  $("key-save").addEventListener("click", () => {
    apiKey = $("key").value;
    sessionStorage.setItem("p2pai-key", apiKey);
    $("key-box").hidden = true;
    showJoin();
  });
  $("chat-form").addEventListener("submit", chat);
  $("join-copy").addEventListener("click", copyJoin);
  setupCharts();
  pollSwarm();
  pollModels();
  pollMetrics();
  showJoin();
}

document.addEventListener("DOMContentLoaded", start);
