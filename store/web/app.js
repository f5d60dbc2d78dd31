// rstar explorer: the trees (/api/trees, one drawn from /api/trees/{id} as an SVG tree) and the
// rounds (/api/rounds: the learning curve, plotted). Plain browser JavaScript, no build step,
// nothing fetched but this server's API. All data goes into the page through textContent or SVG
// attributes, never innerHTML, so step text from a model cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PAGE = 50;
const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#4b5563"];
const state = { offset: 0, total: 0, filters: {}, tree: null, nodes: [], selected: null, stats: null };

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, text = null, ns = null) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}
const svgEl = (tag, attrs = {}, text = null) => el(tag, attrs, text, SVG);

async function getJSON(path) {
  const resp = await fetch(path);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);

async function loadStats() {
  const s = await getJSON("/api/stats");
  state.stats = s;
  $("#stats").textContent = `${s.problems} problems · ${s.trees} trees (${s.solved_trees} solved) · ` +
    `${s.nodes} nodes · ${s.solved_problems} problems solved`;
  return s;
}

// --- the tree list ---------------------------------------------------------------------------------
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
    tr.append(el("td", { colspan: 5 }, `error: ${err.message}`));
    tbody.replaceChildren(tr);
  }
}

function treeRow(t) {
  const tr = el("tr", { "data-id": t.id, class: t.solved ? "solved" : "unsolved" });
  tr.append(el("td", {}, String(t.round)), el("td", {}, t.level === null || t.level === undefined ? "–" : String(t.level)),
            el("td", {}, t.solved ? "✓" : "✗"), el("td", {}, String(t.n_nodes)),
            el("td", { class: "q", title: t.question }, t.question));
  tr.addEventListener("click", () => { location.hash = `tree=${encodeURIComponent(t.id)}`; });
  if (state.tree && state.tree.id === t.id) tr.classList.add("sel");
  return tr;
}

function setFilters(filters) {
  const form = $("#filters");
  for (const input of form.elements) if (input.name) input.value = filters[input.name] ?? "";
  state.filters = filters;
  state.offset = 0;
  return loadTrees();
}

// --- one tree ----------------------------------------------------------------------------------------
// What training took from the tree: the steps of each SFT trajectory, and each PPM pair's two ends.
function training(tree, nodes) {
  const byIdx = new Map(nodes.map((n) => [n.idx, n]));
  const sftSteps = new Set(), sftLeaves = new Map(), pairsOf = new Map();
  for (const s of tree.sft || []) {
    const leaf = byIdx.get(s.leaf_idx);
    if (!leaf) continue;
    for (const i of leaf.path.split(".")) sftSteps.add(Number(i));
    if (!sftLeaves.has(s.leaf_idx)) sftLeaves.set(s.leaf_idx, []);
    sftLeaves.get(s.leaf_idx).push(s);
  }
  for (const p of tree.ppm_pairs || []) {
    for (const [idx, role] of [[p.pos_idx, "pos"], [p.neg_idx, "neg"]]) {
      if (!pairsOf.has(idx)) pairsOf.set(idx, []);
      pairsOf.get(idx).push({ ...p, role });
    }
  }
  return { sftSteps, sftLeaves, pairsOf };
}

// The model versions that wrote (policy) or scored (PPM) the nodes, in order of appearance, each
// with a colour. The root has none ("": no model wrote it), nor has a step scored without a PPM.
const NO_MODEL = "#e5e7eb";
function versionColors(nodes, key) {
  const versions = [];
  for (const n of nodes) if (n[key] && !versions.includes(n[key])) versions.push(n[key]);
  return new Map(versions.map((v, i) => [v, PALETTE[i % PALETTE.length]]));
}

async function showTree(id) {
  const data = await getJSON(`/api/trees/${encodeURIComponent(id)}`);
  state.tree = data.tree;
  state.nodes = data.nodes;
  state.selected = null;
  state.train = training(data.tree, data.nodes);
  const t = data.tree;
  const sft = t.sft || [], pairs = t.ppm_pairs || [];
  const rounds = (rows) => [...new Set(rows.map((r) => r.round))].join(", ");
  const versions = (key) => [...versionColors(state.nodes, key).keys()].join(", ") || "none";
  const kinds = ["step", "final"].map((k) => `${pairs.filter((p) => p.kind === k).length} ${k}`).join(", ");
  $("#tree-head").replaceChildren(
    el("h2", {}, t.question),
    el("p", {}, `tree ${t.id} · problem ${t.problem_id} · level ${t.level ?? "–"} · round ${t.round} · ${t.source} · ` +
      `${t.n_nodes} nodes · ${t.rollouts} rollouts · ${t.solved ? "solved" : "unsolved"} · ` +
      `best answer ${t.best_answer ?? "–"} · gold ${t.gold ?? "–"}`),
    el("p", {}, `searched with policy ${t.policy_version || "–"} and PPM ${t.ppm_version || "–"}; ` +
      `nodes written by policy ${versions("policy_version")}, scored by PPM ${versions("ppm_version")}`),
    el("p", { id: "training" }, (sft.length ? `SFT: ${sft.length} ${sft.length === 1 ? "trajectory" : "trajectories"} ` +
      `(trained on in round ${rounds(sft)})` :
      "SFT: none selected") + " · " + (pairs.length ? `PPM pairs: ${pairs.length} (${kinds}; round ${rounds(pairs)})` :
      "PPM pairs: none")));
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

function drawKey(colorBy, colors) {
  const key = $("#key");
  if (colorBy === "q") {
    key.replaceChildren(el("span", {}, "fill: Q "), el("span", { class: "qbar" }), el("span", {}, " −1 … +1 · " +
      "size: visits · ring: terminal (green correct, red wrong) · gold path: SFT trajectory · " +
      "dashed arc: PPM pair, + preferred, − rejected"));
    return;
  }
  const parts = [el("span", {}, `fill: ${colorBy === "policy" ? "policy" : "PPM"} version `)];
  const field = colorBy === "policy" ? "policy_version" : "ppm_version";
  for (const [v, c] of [...colors, ["", NO_MODEL]]) {
    const count = state.nodes.filter((n) => (n[field] || "") === v).length;
    if (count) parts.push(el("span", { class: "swatch", style: `background:${c}` }),
                          el("span", {}, `${v || "none (the root, or no PPM)"}: ${count} nodes `));
  }
  key.replaceChildren(...parts);
}

function draw() {
  if (!state.tree) return;
  const compact = $("#compact").checked, colorBy = $("#color-by").value;
  const showSft = $("#show-sft").checked, showPairs = $("#show-pairs").checked;
  const pad = 30;
  const { pos, columns } = layout(state.nodes);
  // Fit the panel's width where the leaves allow (labels need 52 px a column); compact: 18 px.
  const fit = Math.floor(($("#canvas").clientWidth - 2 * pad) / columns);
  const dx = compact ? 18 : Math.max(52, Math.min(90, fit)), dy = compact ? 40 : 78;
  const byIdx = new Map(state.nodes.map((n) => [n.idx, n]));
  const maxDepth = Math.max(0, ...state.nodes.map((n) => n.depth));
  const maxVisits = Math.max(1, ...state.nodes.map((n) => n.visits));
  const svg = svgEl("svg", { width: columns * dx + 2 * pad, height: (maxDepth + 1) * dy + 2 * pad + 20 });
  const xy = (n) => [pad + pos.get(n.idx) * dx + dx / 2, pad + n.depth * dy];
  const radius = (n) => 4 + 6 * Math.sqrt(n.visits / maxVisits);
  const onPath = new Set(state.selected ? state.selected.path.split(".").map(Number) : []);
  const { sftSteps, sftLeaves, pairsOf } = state.train;
  const colors = versionColors(state.nodes, colorBy === "ppm" ? "ppm_version" : "policy_version");
  drawKey(colorBy, colors);
  for (const n of state.nodes) {
    const p = byIdx.get(n.parent_idx);
    if (!p || !pos.has(n.idx)) continue;
    const [x1, y1] = xy(p), [x2, y2] = xy(n);
    if (showSft && sftSteps.has(n.idx)) svg.append(svgEl("line", { x1, y1, x2, y2, class: "sft" }));
    svg.append(svgEl("line", { x1, y1, x2, y2, class: onPath.has(n.idx) ? "hl" : "" }));
  }
  if (showPairs) {
    for (const p of state.tree.ppm_pairs || []) {
      const a = byIdx.get(p.pos_idx), b = byIdx.get(p.neg_idx);
      if (!a || !b || !pos.has(a.idx) || !pos.has(b.idx)) continue;
      const [x1, y1] = xy(a), [x2, y2] = xy(b);
      const d = `M ${x1} ${y1} Q ${(x1 + x2) / 2} ${Math.max(y1, y2) + dy / 2} ${x2} ${y2}`;
      const arc = svgEl("path", { d, class: `pair ${p.kind}` });
      arc.append(svgEl("title", {}, `PPM pair (round ${p.round}, ${p.kind}): #${p.pos_idx} preferred over #${p.neg_idx}`));
      svg.append(arc);
    }
  }
  for (const n of state.nodes) {
    if (!pos.has(n.idx)) continue;
    const [x, y] = xy(n);
    const r = radius(n);
    const cls = [n.terminal ? (n.correct === true ? "correct" : n.correct === false ? "wrong" : "") : "",
                 state.selected && state.selected.idx === n.idx ? "sel" : ""].join(" ").trim();
    const fill = colorBy === "q" ? qColor(n.q) :
      colors.get(colorBy === "ppm" ? n.ppm_version : n.policy_version) || NO_MODEL;
    const c = svgEl("circle", { cx: x, cy: y, r, fill, class: cls, "data-idx": n.idx });
    c.append(svgEl("title", {}, `#${n.idx}  Q ${fmt(n.q)}  visits ${n.visits}  PPM ${fmt(n.ppm_score)}  ` +
      `policy ${n.policy_version || "–"}  PPM ${n.ppm_version || "–"}`));
    c.addEventListener("click", () => select(n));
    svg.append(c);
    if (showSft && sftLeaves.has(n.idx)) svg.append(svgEl("text", { x, y: y - r - 3, "text-anchor": "middle", class: "mark sft" }, "SFT"));
    if (showPairs && pairsOf.has(n.idx)) {
      const roles = new Set(pairsOf.get(n.idx).map((p) => p.role));
      const mark = [roles.has("pos") ? "+" : "", roles.has("neg") ? "−" : ""].join("");
      svg.append(svgEl("text", { x: x + r + 2, y: y - 2, class: "mark pair" }, mark));
    }
    if (!compact) {
      svg.append(svgEl("text", { x, y: y + r + 10, "text-anchor": "middle" }, `#${n.idx} Q${fmt(n.q)}`));
      svg.append(svgEl("text", { x, y: y + r + 20, "text-anchor": "middle" }, `N${n.visits} P${fmt(n.ppm_score)}`));
    }
  }
  $("#canvas").replaceChildren(svg);
  if (state.selected)  // keep the selected node in view
    svg.querySelector(`circle[data-idx="${state.selected.idx}"]`)?.scrollIntoView({ block: "nearest", inline: "nearest" });
}

function select(n) {
  state.selected = n;
  draw();
  const dl = el("dl");
  const rows = [["node", `#${n.idx} (depth ${n.depth}, parent ${n.parent_idx ?? "–"})`], ["path", n.path],
    ["Q", fmt(n.q, 4)], ["visits", n.visits], ["PPM score", fmt(n.ppm_score, 4)],
    ["terminal", n.terminal ? "yes" : "no"], ["correct", n.correct === null ? "–" : n.correct ? "yes" : "no"],
    ["answer", n.answer ?? "–"], ["policy", n.policy_version || "–"], ["PPM", n.ppm_version || "–"],
    ["tokens", n.gen_tokens]];
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", { class: `f-${k.replace(" ", "-")}` }, String(v)));
  const parts = [el("h3", {}, `Step ${n.depth}`), dl];
  const { sftSteps, sftLeaves, pairsOf } = state.train;
  const notes = [];
  for (const s of sftLeaves.get(n.idx) || [])
    notes.push(`SFT: this trajectory trained the round ${s.round} policy (mean Q ${fmt(s.avg_q, 3)})`);
  if (!sftLeaves.has(n.idx) && sftSteps.has(n.idx)) notes.push("SFT: a step of a selected trajectory");
  for (const p of pairsOf.get(n.idx) || [])
    notes.push(p.role === "pos" ? `PPM pair (round ${p.round}, ${p.kind}): preferred over #${p.neg_idx}` :
      `PPM pair (round ${p.round}, ${p.kind}): rejected for #${p.pos_idx}`);
  if (notes.length) {
    const ul = el("ul", { class: "training" });
    ul.append(...notes.map((t) => el("li", {}, t)));
    parts.push(ul);
  }
  if (n.idx === 0) parts.push(el("p", {}, "The root: the question, no step."));
  parts.push(el("h4", {}, "step"), el("pre", { class: "code" }, n.text || "(empty)"));
  parts.push(el("h4", {}, "output"), el("pre", { class: "output" }, n.code_output || "(none)"));
  $("#detail").replaceChildren(...parts);
}

// --- the rounds ----------------------------------------------------------------------------------------
// Series of the learning curve: the pool solve rate (eval.collect, else the store's tree counts),
// each held-out set and method (eval.accuracy, else the partial figures of an evaluation still
// running), and the PPM's held-out pairwise accuracy.
function roundSeries(rounds, stats) {
  const byRound = new Map((stats?.by_round || []).map((r) => [r.round, r]));
  const series = new Map();
  const add = (name, round, value, note = "", detail = "") => {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    if (!series.has(name)) series.set(name, []);
    series.get(name).push({ round, value, note, detail });
  };
  // "12 / 30 correct; level 1: 8/10, level 2: 4/10" from a record's counts, where stored.
  const counts = (rec) => {
    if (typeof rec !== "object" || rec === null || rec.n === null || rec.n === undefined) return "";
    const levels = Object.entries(rec.by_level || {}).map(([lv, c]) => `level ${lv}: ${c.correct}/${c.n}`);
    return [`${rec.correct} / ${rec.n} correct`, levels.join(", ")].filter(Boolean).join("; ");
  };
  for (const r of rounds) {
    const ev = r.eval || {};
    const trees = byRound.get(r.round), c = ev.collect;
    const solve = c?.solve_rate ?? (trees?.problems_searched ? trees.solved_problems / trees.problems_searched : null);
    add("pool solve rate", r.round, solve, "", c ? `${c.solved_problems} / ${c.problems} problems solved` :
      trees ? `${trees.solved_problems} / ${trees.problems_searched} problems solved (from the trees)` : "");
    const figures = ev.accuracy || ev.accuracy_partial;
    const note = ev.accuracy ? "" : " (evaluation running)";
    for (const [set, figs] of Object.entries(figures?.sets || {})) {
      for (const [label, rec] of Object.entries(figs)) {
        if (label === "n") continue;
        add(`${set} ${label}`, r.round, typeof rec === "number" ? rec : rec?.accuracy, note, counts(rec));
      }
    }
    add("PPM pairwise", r.round, ev.ppm_pairwise_acc);
  }
  return series;
}

function drawCurve(rounds, series) {
  const W = 720, H = 300, left = 48, right = 190, top = 16, bottom = 36;
  const nums = rounds.map((r) => r.round);
  const lo = Math.min(...nums), hi = Math.max(...nums);
  const x = (r) => left + (hi === lo ? (W - left - right) / 2 : ((r - lo) / (hi - lo)) * (W - left - right));
  const y = (v) => top + (1 - Math.max(0, Math.min(1, v))) * (H - top - bottom);
  const svg = svgEl("svg", { width: W, height: H, class: "curve" });
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(svgEl("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(svgEl("text", { x: left - 6, y: y(v) + 3, "text-anchor": "end" }, `${100 * v} %`));
  }
  for (const r of nums) svg.append(svgEl("text", { x: x(r), y: H - bottom + 14, "text-anchor": "middle" }, String(r)));
  svg.append(svgEl("text", { x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle" }, "round"));
  let i = 0;
  for (const [name, points] of series) {
    const color = PALETTE[i % PALETTE.length];
    const g = svgEl("g", { class: "series", "data-series": name });
    if (points.length > 1)
      g.append(svgEl("polyline", { points: points.map((p) => `${x(p.round)},${y(p.value)}`).join(" "), style: `stroke:${color}`,
        class: name === "pool solve rate" ? "solve" : "" }));
    for (const p of points) {
      const c = svgEl("circle", { cx: x(p.round), cy: y(p.value), r: 3.5, fill: color, class: "pt", "data-round": p.round });
      c.append(svgEl("title", {}, `${name}, round ${p.round}: ${pct(p.value)}${p.note}${p.detail ? `\n${p.detail}` : ""}`));
      g.append(c);
    }
    const ly = top + 14 * i;
    g.append(svgEl("line", { x1: W - right + 12, x2: W - right + 28, y1: ly, y2: ly, style: `stroke:${color}`,
      class: name === "pool solve rate" ? "key solve" : "key" }));
    g.append(svgEl("text", { x: W - right + 32, y: ly + 3 }, name));
    svg.append(g);
    i++;
  }
  $("#curve").replaceChildren(svg);
}

function roundsTable(rounds, series) {
  const names = [...series.keys()];
  const value = new Map();
  for (const [name, points] of series) for (const p of points) value.set(`${name}|${p.round}`, p);
  const byRound = new Map((state.stats?.by_round || []).map((r) => [r.round, r]));
  const head = el("tr");
  for (const h of ["round", "state", "policy", "PPM", "trees", "SFT rows", "PPM pairs", ...names]) head.append(el("th", {}, h));
  $("#rounds thead").replaceChildren(head);
  $("#rounds tbody").replaceChildren(...rounds.map((r) => {
    const ev = r.eval || {};
    const tr = el("tr", { "data-round": r.round, title: "list this round's trees" });
    const trees = ev.collect?.trees ?? byRound.get(r.round)?.trees;
    for (const v of [r.round, r.state, r.policy_version || "–", r.ppm_version || "–", trees ?? "–",
                     ev.data?.sft_examples ?? "–", ev.data?.ppm_pairs ?? "–"]) tr.append(el("td", {}, String(v)));
    for (const name of names) {
      const p = value.get(`${name}|${r.round}`);
      tr.append(el("td", { class: "num", title: p?.detail || "" }, pct(p?.value) + (p?.note ? " *" : "")));
    }
    tr.addEventListener("click", () => {
      location.hash = "trees";
      setFilters({ round: String(r.round) });
    });
    return tr;
  }));
}

async function showRounds() {
  try {
    const [{ items }, stats] = await Promise.all([getJSON("/api/rounds"), loadStats()]);
    if (!items.length) {
      $("#curve").replaceChildren(el("p", { class: "hint" }, "No rounds yet."));
      $("#rounds thead").replaceChildren();
      $("#rounds tbody").replaceChildren();
      return;
    }
    const series = roundSeries(items, stats);
    drawCurve(items, series);
    roundsTable(items, series);
  } catch (err) {
    $("#curve").replaceChildren(el("p", { class: "hint" }, `error: ${err.message}`));
  }
}

// --- routing: #trees, #tree=ID, #rounds ----------------------------------------------------------
function route() {
  const rounds = location.hash === "#rounds";
  $("#trees-view").hidden = rounds;
  $("#rounds-view").hidden = !rounds;
  $("#tab-trees").classList.toggle("on", !rounds);
  $("#tab-rounds").classList.toggle("on", rounds);
  if (rounds) { showRounds(); return; }
  const m = location.hash.match(/^#tree=(.+)$/);
  if (m) showTree(decodeURIComponent(m[1])).catch((err) => {
    $("#tree-head").replaceChildren(el("p", { class: "hint" }, `error: ${err.message}`));
    $("#canvas").replaceChildren();
  });
}

$("#filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setFilters(Object.fromEntries(new FormData(ev.target)));
});
$("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadTrees(); });
$("#next").addEventListener("click", () => {
  if (state.offset + PAGE < state.total) { state.offset += PAGE; loadTrees(); }
});
for (const id of ["#compact", "#color-by", "#show-sft", "#show-pairs"]) $(id).addEventListener("change", draw);
window.addEventListener("hashchange", route);

loadStats().catch((err) => { $("#stats").textContent = `stats unavailable: ${err.message}`; });
loadTrees().then(route);
