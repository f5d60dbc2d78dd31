// rstar tree explorer: lists trees from /api/trees and draws one (/api/trees/{id}) as an SVG tree.
// Plain browser JavaScript, no build step. All data goes into the page through textContent or
// SVG attributes, never innerHTML, so step text from a model cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PAGE = 50;
const state = { offset: 0, total: 0, filters: {}, tree: null, nodes: [], selected: null };

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, text = null, ns = null) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}

async function getJSON(path) {
  const resp = await fetch(path);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

async function loadStats() {
  const s = await getJSON("/api/stats");
  $("#stats").textContent = `${s.problems} problems · ${s.trees} trees (${s.solved_trees} solved) · ` +
    `${s.nodes} nodes · ${s.solved_problems} problems solved`;
}

async function loadTrees() {
  const q = new URLSearchParams({ limit: PAGE, offset: state.offset });
  for (const [k, v] of Object.entries(state.filters)) if (v !== "") q.set(k, v);
  const tbody = $("#trees tbody");
  try {
    const page = await getJSON(`/api/trees?${q}`);
    state.total = page.total;
    tbody.replaceChildren(...page.items.map(treeRow));
    const last = Math.min(state.offset + PAGE, page.total);
    $("#page").textContent = page.total ? `${state.offset + 1}–${last} of ${page.total}` : "no trees";
  } catch (err) {
    const tr = el("tr");
    tr.append(el("td", { colspan: 4 }, `error: ${err.message}`));
    tbody.replaceChildren(tr);
  }
}

function treeRow(t) {
  const tr = el("tr", { "data-id": t.id });
  tr.append(el("td", {}, String(t.round)), el("td", {}, t.solved ? "✓" : "✗"), el("td", {}, String(t.n_nodes)),
            el("td", { class: "q", title: t.question }, t.question));
  tr.addEventListener("click", () => { location.hash = `tree=${encodeURIComponent(t.id)}`; });
  if (state.tree && state.tree.id === t.id) tr.classList.add("sel");
  return tr;
}

async function showTree(id) {
  const data = await getJSON(`/api/trees/${encodeURIComponent(id)}`);
  state.tree = data.tree;
  state.nodes = data.nodes;
  state.selected = null;
  const t = data.tree;
  const head = $("#tree-head");
  head.replaceChildren(
    el("h2", {}, t.question),
    el("p", {}, `tree ${t.id} · problem ${t.problem_id} · round ${t.round} · ${t.source} · ` +
      `policy ${t.policy_version || "–"} · ppm ${t.ppm_version || "–"} · ${t.n_nodes} nodes · ` +
      `${t.solved ? "solved" : "unsolved"} · best answer ${t.best_answer ?? "–"} · gold ${t.gold ?? "–"}`));
  for (const tr of document.querySelectorAll("#trees tbody tr"))
    tr.classList.toggle("sel", tr.dataset.id === t.id);
  draw();
  $("#detail").replaceChildren(el("p", { class: "hint" }, "Click a node to read its step."));
}

// Layout: leaves take consecutive columns in depth-first order; a parent sits over the middle
// of its children; depth gives the row.
function layout(nodes) {
  const kids = new Map(nodes.map((n) => [n.idx, []]));
  for (const n of nodes) if (n.parent_idx !== null && kids.has(n.parent_idx)) kids.get(n.parent_idx).push(n.idx);
  const pos = new Map();
  let column = 0;
  const visit = (idx) => {  // recursion depth = tree depth, which MCTS caps (max_depth)
    const ch = kids.get(idx);
    if (!ch.length) { pos.set(idx, column++); return; }
    ch.forEach(visit);
    pos.set(idx, (pos.get(ch[0]) + pos.get(ch[ch.length - 1])) / 2);
  };
  if (kids.has(0)) visit(0);
  return { pos, columns: Math.max(column, 1), kids };
}

function qColor(q) {
  const t = Math.max(-1, Math.min(1, q ?? 0));
  const hue = 60 + 60 * t;  // -1 → red (0), 0 → yellow (60), +1 → green (120)
  return `hsl(${hue}, 75%, 55%)`;
}

function draw() {
  const compact = $("#compact").checked;
  const dx = compact ? 18 : 62, dy = compact ? 40 : 78, pad = 30;
  const { pos, columns } = layout(state.nodes);
  const byIdx = new Map(state.nodes.map((n) => [n.idx, n]));
  const maxDepth = Math.max(0, ...state.nodes.map((n) => n.depth));
  const maxVisits = Math.max(1, ...state.nodes.map((n) => n.visits));
  const svg = el("svg", { width: columns * dx + 2 * pad, height: (maxDepth + 1) * dy + 2 * pad }, null, SVG);
  const xy = (n) => [pad + pos.get(n.idx) * dx + dx / 2, pad + n.depth * dy];
  const onPath = new Set(state.selected ? state.selected.path.split(".").map(Number) : []);
  for (const n of state.nodes) {
    const p = byIdx.get(n.parent_idx);
    if (!p || !pos.has(n.idx)) continue;
    const [x1, y1] = xy(p), [x2, y2] = xy(n);
    const hl = onPath.has(n.idx) ? { class: "hl" } : {};
    svg.append(el("line", { x1, y1, x2, y2, ...hl }, null, SVG));
  }
  for (const n of state.nodes) {
    if (!pos.has(n.idx)) continue;
    const [x, y] = xy(n);
    const r = 4 + 6 * Math.sqrt(n.visits / maxVisits);
    const cls = [n.terminal ? (n.correct === true ? "correct" : n.correct === false ? "wrong" : "") : "",
                 state.selected && state.selected.idx === n.idx ? "sel" : ""].join(" ").trim();
    const c = el("circle", { cx: x, cy: y, r, fill: qColor(n.q), class: cls }, null, SVG);
    c.append(el("title", {}, `#${n.idx}  Q ${fmt(n.q)}  visits ${n.visits}  PPM ${fmt(n.ppm_score)}`, SVG));
    c.addEventListener("click", () => select(n));
    svg.append(c);
    if (!compact) {
      svg.append(el("text", { x, y: y + r + 10, "text-anchor": "middle" }, `#${n.idx} Q${fmt(n.q)}`, SVG));
      svg.append(el("text", { x, y: y + r + 20, "text-anchor": "middle" }, `N${n.visits} P${fmt(n.ppm_score)}`, SVG));
    }
  }
  $("#canvas").replaceChildren(svg);
}

function select(n) {
  state.selected = n;
  draw();
  const dl = el("dl");
  const rows = [["node", `#${n.idx} (depth ${n.depth}, parent ${n.parent_idx ?? "–"})`], ["path", n.path],
    ["Q", fmt(n.q, 4)], ["visits", n.visits], ["PPM", fmt(n.ppm_score, 4)],
    ["terminal", n.terminal ? "yes" : "no"], ["correct", n.correct === null ? "–" : n.correct ? "yes" : "no"],
    ["answer", n.answer ?? "–"], ["policy", n.policy_version || "–"], ["ppm", n.ppm_version || "–"],
    ["tokens", n.gen_tokens]];
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  const parts = [el("h3", {}, `Step ${n.depth}`), dl];
  if (n.idx === 0) parts.push(el("p", {}, "The root: the question, no step."));
  parts.push(el("h4", {}, "step"), el("pre", {}, n.text || "(empty)"));
  parts.push(el("h4", {}, "output"), el("pre", {}, n.code_output || "(none)"));
  $("#detail").replaceChildren(...parts);
}

function route() {
  const m = location.hash.match(/^#tree=(.+)$/);
  if (m) showTree(decodeURIComponent(m[1])).catch((err) => {
    $("#tree-head").replaceChildren(el("p", { class: "hint" }, `error: ${err.message}`));
    $("#canvas").replaceChildren();
  });
}

$("#filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.filters = Object.fromEntries(new FormData(ev.target));
  state.offset = 0;
  loadTrees();
});
$("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadTrees(); });
$("#next").addEventListener("click", () => {
  if (state.offset + PAGE < state.total) { state.offset += PAGE; loadTrees(); }
});
$("#compact").addEventListener("change", () => { if (state.tree) draw(); });
window.addEventListener("hashchange", route);

loadStats().catch((err) => { $("#stats").textContent = `stats unavailable: ${err.message}`; });
loadTrees().then(route);
