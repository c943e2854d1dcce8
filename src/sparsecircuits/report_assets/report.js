"use strict";
// The report page. Everything shown comes from the JSON in #data, and every piece of it reaches
// the DOM through textContent or setAttribute, never innerHTML: prompts are source code and may
// contain HTML tags, which must appear as text. (This file is inlined in a script element, so it
// must never contain the closing tag of one, nor an HTML comment opener.)
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, not something fetched
  const SITES = DATA.sites; // node sites of one layer, in forward order
  const SITE_COLORS = [
    "#4c78a8", "#72b7b2", "#54a24b", "#eeca3b", "#f58518", "#b279a2", "#e45756", "#9d755d",
  ];
  const WIDTH_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2"];
  const DEFAULT_EDGES = 2000; // edges drawn when a circuit is first shown
  const MAX_DRAWN_EDGES = 5000; // one SVG path per edge: more than this makes the page sluggish
  const COLLAPSE_ABOVE = 400; // more nodes than this and individual circles become unreadable

  const modelsById = new Map(DATA.models.map((m) => [m.id, m]));
  // Repeat-run stability (the stability analysis's section carries it on a table):
  // "model|task" -> {runs, frequency: {node: share of runs that kept it}, core: Set}.
  const STABILITY = new Map();
  for (const sec of DATA.sections || []) {
    for (const t of sec.tables || []) {
      for (const [key, s] of Object.entries(t.node_frequency || {})) {
        STABILITY.set(key, { runs: s.runs, frequency: s.frequency || {}, core: new Set(s.core || []) });
      }
    }
  }

  // ---------- small helpers ----------

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svgEl(tag, attrs, parent) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function isNum(x) {
    return typeof x === "number" && Number.isFinite(x);
  }

  function fmt(x, digits = 4) {
    if (!isNum(x)) return "n/a";
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
    return String(Number(x.toPrecision(digits)));
  }

  function fmtInt(x) {
    return isNum(x) ? Math.round(x).toLocaleString("en-US") : "n/a";
  }

  function modelLabel(id) {
    const m = modelsById.get(id);
    return m ? m.label : id;
  }

  // ---------- header and answer ----------

  function renderHeader() {
    const s = DATA.study || {};
    const parts = [];
    if (s.preset) parts.push(`preset ${s.preset}`);
    if (s.tasks) parts.push(`tasks: ${s.tasks.join(", ")}`);
    if (s.seeds) parts.push(`seeds: ${s.seeds.join(", ")}`);
    if (isNum(s.target_loss)) parts.push(`circuit target task loss ${s.target_loss}`);
    if (s.targets) {
      const t = Object.entries(s.targets).map(([name, v]) => `${name} ${v}`);
      parts.push(`target task loss: ${t.join(", ")}`);
    }
    if (s.frontier_tasks) parts.push(`in the frontier: ${s.frontier_tasks.join(", ") || "none"}`);
    parts.push(`${DATA.models.length} models, ${DATA.circuits.length} circuits`);
    document.getElementById("study").textContent = parts.join(" · ");
  }

  function renderAnswer() {
    const a = DATA.answer || {};
    document.getElementById("answer-sentence").textContent = a.sentence || "No answer recorded.";
    const lines = [];
    if (a.ratio) {
      const r = a.ratio;
      const iv = isNum(r.low)
        ? `95% t-interval ${fmt(r.low, 3)}–${fmt(r.high, 3)} across ${r.n} seeds`
        : `n = ${r.n}, no interval`;
      lines.push(`Dense/sparse circuit edges at matched held-out loss: ${fmt(r.value, 3)}× (${iv})`);
    }
    if (a.fixed_loss) lines.push(a.fixed_loss);
    if (a.density_trend) lines.push(a.density_trend);
    if (a.width_effect) lines.push(a.width_effect);
    if (a.controls) lines.push(`Controls: ${a.controls}`);
    if (a.seeds) lines.push(a.seeds);
    if (a.legibility) lines.push(a.legibility);
    if (a.legibility_outside) lines.push(a.legibility_outside);
    for (const d of a.details || []) lines.push(d);
    const ul = document.getElementById("answer-details");
    for (const line of lines) ul.appendChild(el("li", {}, line));
  }

  // ---------- frontier plot ----------

  // About five round numbers spanning [lo, hi].
  function linearTicks(lo, hi) {
    const raw = (hi - lo) / 5;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => raw <= s);
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
      ticks.push(Number(t.toPrecision(12)));
    }
    return ticks;
  }

  // Powers of ten, with 2x and 5x added when the range spans few decades.
  function logTicks(lo, hi) {
    const ticks = [];
    const mults = Math.log10(hi / lo) < 2.5 ? [1, 2, 5] : [1];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of mults) {
        const t = m * Math.pow(10, e);
        if (t >= lo && t <= hi) ticks.push(t);
      }
    }
    return ticks;
  }

  function renderFrontier() {
    const host = document.getElementById("frontier-plot");
    const tip = document.getElementById("frontier-tip");
    const note = document.getElementById("frontier-note");
    const points = DATA.frontier.filter((p) => p.geomean_edges > 0 && isNum(p.heldout_loss));
    const missing = DATA.frontier.filter((p) => !points.includes(p));
    if (missing.length) {
      note.textContent =
        `Not plotted (no circuit on every task): ${missing.map((p) => p.label).join("; ")}.`;
    }
    if (!points.length) {
      host.appendChild(el("p", { class: "muted" }, "No model has circuits on every task yet."));
      return;
    }

    const W = 760, H = 420;
    const M = { left: 64, right: 170, top: 14, bottom: 50 };
    const pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    const xs = points.map((p) => Math.log10(p.geomean_edges));
    const ys = points.map((p) => p.heldout_loss);
    // Pad the ranges so no point sits on an axis; a single point still gets a visible span.
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const xpad = Math.max((x1 - x0) * 0.08, 0.15);
    [x0, x1] = [x0 - xpad, x1 + xpad];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const ypad = Math.max((y1 - y0) * 0.08, 0.05);
    [y0, y1] = [y0 - ypad, y1 + ypad];
    const sx = (v) => M.left + ((Math.log10(v) - x0) / (x1 - x0)) * pw;
    const sy = (v) => M.top + (1 - (v - y0) / (y1 - y0)) * ph;

    const svg = svgEl("svg", {
      viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", id: "frontier-svg",
    });
    const axis = svgEl("g", { class: "axis" }, svg);
    for (const t of logTicks(Math.pow(10, x0), Math.pow(10, x1))) {
      const x = sx(t);
      svgEl("line", { class: "grid", x1: x, x2: x, y1: M.top, y2: M.top + ph }, axis);
      svgEl("text", { x, y: M.top + ph + 16, "text-anchor": "middle" }, axis).textContent =
        t >= 1e6 ? t.toExponential(0) : fmtInt(t);
    }
    for (const t of linearTicks(y0, y1)) {
      const y = sy(t);
      svgEl("line", { class: "grid", x1: M.left, x2: M.left + pw, y1: y, y2: y }, axis);
      svgEl("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, axis).textContent = fmt(t, 3);
    }
    svgEl("path", { d: `M${M.left},${M.top}V${M.top + ph}H${M.left + pw}`, fill: "none" }, axis);
    svgEl("text", { x: M.left + pw / 2, y: H - 8, "text-anchor": "middle" }, axis).textContent =
      "circuit edges (geometric mean over tasks, log scale)";
    svgEl("text", {
      x: 14, y: M.top + ph / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${M.top + ph / 2})`,
    }, axis).textContent = "held-out pretraining loss (nats/token)";

    // One curve per width, through its models in order of density.
    const widths = [...new Set(points.map((p) => p.d_model))].sort((a, b) => a - b);
    const legend = svgEl("g", { class: "plot-legend" }, svg);
    widths.forEach((w, i) => {
      const color = WIDTH_COLORS[i % WIDTH_COLORS.length];
      const pts = points.filter((p) => p.d_model === w).sort((a, b) => a.density - b.density);
      const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p.geomean_edges)},${sy(p.heldout_loss)}`);
      svgEl("path", { d: d.join(""), fill: "none", stroke: color, "stroke-width": 2 }, svg);
      for (const p of pts) drawPoint(svg, p, sx(p.geomean_edges), sy(p.heldout_loss), color);
      const ly = M.top + 10 + i * 20;
      svgEl("line", {
        x1: W - M.right + 20, x2: W - M.right + 44, y1: ly, y2: ly, stroke: color, "stroke-width": 2,
      }, legend);
      svgEl("text", { x: W - M.right + 50, y: ly + 4 }, legend).textContent = `d_model ${w}`;
    });
    const ly = M.top + 20 + widths.length * 20;
    svgEl("circle", { cx: W - M.right + 32, cy: ly, r: 5, fill: "#888" }, legend);
    svgEl("text", { x: W - M.right + 50, y: ly + 4 }, legend).textContent = "sparse";
    svgEl("rect", { x: W - M.right + 27, y: ly + 15, width: 10, height: 10, fill: "#888" }, legend);
    svgEl("text", { x: W - M.right + 50, y: ly + 24 }, legend).textContent = "dense";
    host.insertBefore(svg, tip);

    function drawPoint(parent, p, x, y, color) {
      const attrs = { class: "point", fill: color, "data-model": p.model };
      const shape = p.kind === "dense"
        ? svgEl("rect", { ...attrs, x: x - 6, y: y - 6, width: 12, height: 12 }, parent)
        : svgEl("circle", { ...attrs, cx: x, cy: y, r: 6 }, parent);
      shape.addEventListener("mouseenter", () => showTip(p, shape));
      shape.addEventListener("mouseleave", () => { tip.hidden = true; });
    }

    function showTip(p, shape) {
      const m = modelsById.get(p.model) || {};
      tip.replaceChildren(el("div", { class: "tip-title" }, p.label));
      const lines = [
        `held-out loss ${fmt(p.heldout_loss)}`,
        `geomean circuit edges ${fmt(p.geomean_edges, 4)} (${p.n_tasks} tasks)`,
        `nonzero params ${fmtInt(m.nonzero_params)} of ${fmtInt(m.total_params)}`,
        `nonzero block weights ${fmtInt(m.matrix_nonzero)}`,
        `density ${fmt(p.density)} · ${p.kind} · d_model ${p.d_model}`,
      ];
      for (const line of lines) tip.appendChild(el("div", {}, line));
      tip.hidden = false;
      const hostBox = host.getBoundingClientRect();
      const box = shape.getBoundingClientRect();
      tip.style.left = `${box.right - hostBox.left + 8}px`;
      tip.style.top = `${box.top - hostBox.top - 8}px`;
    }
  }

  // ---------- tables ----------

  function fillTable(table, headers, rows) {
    const head = el("tr");
    for (const h of headers) head.appendChild(el("th", {}, h));
    table.appendChild(el("thead")).appendChild(head);
    const body = table.appendChild(el("tbody"));
    for (const r of rows) body.appendChild(r);
  }

  function cell(text, cls) {
    return el("td", cls ? { class: cls } : {}, text);
  }

  function renderModelsTable() {
    const rows = DATA.models.map((m) => {
      const tr = el("tr");
      tr.append(
        cell(m.label), cell(m.kind), cell(fmtInt(m.d_model), "num"), cell(fmt(m.density), "num"),
        cell(fmtInt(m.total_params), "num"), cell(fmtInt(m.nonzero_params), "num"),
        cell(fmtInt(m.matrix_nonzero), "num"), cell(fmt(m.heldout_loss), "num")
      );
      return tr;
    });
    fillTable(document.getElementById("models-table"),
      // Nonzero params include the dense bigram table; the block weights are what sparsity cuts.
      ["model", "kind", "d_model", "density", "params", "nonzero", "nonzero block weights",
        "held-out loss"], rows);
  }

  function renderCircuitsTable() {
    const rows = DATA.circuits.map((c, i) => {
      const tr = el("tr");
      // A circuit outside the frontier (a task not every model reaches) is not in the size comparison.
      const status = c.in_frontier === false && c.status !== "not_eligible" && c.status !== "trivial"
        ? `${c.status}, outside the frontier` : c.status;
      tr.append(cell(modelLabel(c.model)), cell(c.task), cell(status, `status-${c.status}`));
      if (c.status !== "ok" || c.view_error) {
        // Message instead of numbers: why there is no circuit, or why it cannot be shown.
        const msg = c.status === "ok" ? `circuit file: ${c.view_error}` : c.message || "";
        const td = cell(msg, "error");
        td.setAttribute("colspan", "9");
        tr.appendChild(td);
        return tr;
      }
      const m = c.metrics || {};
      const g = (part, key) => (m[part] || {})[key];
      const rnd = `${fmt(g("random", "loss_mean"))} ± ${fmt(g("random", "loss_std"), 2)}`;
      // The controls beside the real size: edges when the control validates, else its status.
      const ctl = (name) => {
        const x = (c.controls || {})[name];
        if (!x) return cell("–");
        return cell(isNum(x.n_edges) ? `${fmtInt(x.n_edges)} (${x.status})` : x.status, "num");
      };
      tr.append(
        cell(fmtInt(c.n_nodes), "num"), cell(fmtInt(c.n_edges), "num"),
        cell(fmt(g("full", "loss_calibrated")), "num"),
        cell(fmt(g("circuit", "loss_calibrated")), "num"),
        cell(fmt(g("ablated", "loss")), "num"), cell(rnd, "num"),
        ctl("nonsense"), ctl("random_init"), cell(explainedCell(c.legibility), "num")
      );
      tr.className = "viewable";
      tr.title = "show in the circuit viewer";
      tr.addEventListener("click", () => {
        selectCircuit(i);
        document.getElementById("viewer").scrollIntoView();
      });
      return tr;
    });
    fillTable(document.getElementById("circuits-table"),
      ["model", "task", "status", "nodes", "edges", "full", "circuit", "ablated", "random",
        "nonsense task", "random init", "explained nodes"], rows);
  }

  function explainedCell(leg) {
    if (!leg) return "–";
    if (leg.error) return "error";
    return `${fmtInt(leg.explained_nodes)} of ${fmtInt(leg.nodes)} (${fmt(leg.node_fraction, 2)})`;
  }

  // ---------- legibility: dense vs sparse ----------

  function renderLegibility() {
    const leg = DATA.legibility;
    const note = document.getElementById("legibility-criterion");
    if (!leg) {
      note.textContent = "Not measured: this study ran with --no-legibility (or before it existed).";
      return;
    }
    note.textContent = `A node counts as explained when ${leg.criterion || "(no criterion)"}; ` +
      `${fmtInt(leg.n_circuits)} circuits explained.`;
    const iv = (x) => {
      if (!x) return "n/a";
      const core = `${fmt(x.value, 2)} (n = ${x.n})`;
      return isNum(x.low) ? `${core} [${fmt(x.low, 2)}, ${fmt(x.high, 2)}]` : core;
    };
    const rows = [["node_fraction", "nodes"], ["effect_fraction", "ablation effect"]].map(([f, what]) => {
      const x = leg[f] || {};
      const tr = el("tr");
      tr.append(cell(what), cell(iv(x.dense), "num"), cell(iv(x.sparse), "num"),
        cell(iv(x.sparse_minus_dense), "num"), cell(x.verdict || ""));
      return tr;
    });
    fillTable(document.getElementById("legibility-table"),
      ["share explained", "dense", "sparse", "sparse − dense", "verdict"], rows);
  }

  // ---------- circuit viewer ----------

  const viewer = {
    view: null, // its compact circuit (see report.py: _compact_circuit)
    k: 0, // how many of the strongest edges pass the threshold
    collapsed: false,
    pinned: false, // a clicked node or group stays in the panel until the background is clicked
    edgesOf: null, // per drawn node/group: the SVG edges touching it, for highlighting
    shapeOf: null, // per drawn node/group: its SVG shape
    selectedKey: null,
    colorByAuc: false, // fill nodes by their explanation's AUC instead of their site
    stability: null, // the circuit's repeat runs (STABILITY), if the analysis ran
  };
  const graphHost = document.getElementById("graph");
  const panel = document.getElementById("panel");
  const select = document.getElementById("circuit-select");
  const slider = document.getElementById("edge-slider");
  const collapseBox = document.getElementById("collapse");
  const aucBox = document.getElementById("color-auc");
  const stabilityBox = document.getElementById("by-stability");

  // A node's explanation, and whether one feature explains it (the criterion of explain.py).
  function explanationOf(i) {
    const ex = viewer.view.explanations;
    return ex ? ex[i] : null;
  }

  function isExplained(e) {
    const t = DATA.legible;
    return !!e && isNum(e.auc) && e.auc >= t.auc &&
      e.precision >= t.precision_recall && e.recall >= t.precision_recall;
  }

  // "(low)": the node is low, not high, where the feature holds.
  function featureText(e) {
    return e.direction === -1 ? `${e.feature} (low)` : e.feature;
  }

  // AUC 0.5 (chance) pale yellow to 1.0 dark green; grey where no feature was scored.
  function aucColor(e) {
    if (!e || !isNum(e.auc)) return "#c4c8cc";
    const t = Math.max(0, Math.min(1, (e.auc - 0.5) / 0.5));
    return `hsl(${(45 + 95 * t).toFixed(0)}, ${(90 - 25 * t).toFixed(0)}%, ${(85 - 55 * t).toFixed(0)}%)`;
  }

  function renderSiteLegend() {
    const legend = document.getElementById("site-legend");
    SITES.forEach((s, i) => {
      const item = el("span");
      const sw = el("span", { class: "swatch" });
      sw.style.background = SITE_COLORS[i];
      item.append(sw, document.createTextNode(s));
      legend.appendChild(item);
    });
    const sign = el("span", { class: "muted" },
      "edges: blue = positive weight, orange = negative; thicker = larger |weight|");
    legend.appendChild(sign);
    const auc = el("span", { id: "auc-legend", class: "muted" });
    auc.append(document.createTextNode("node fill: AUC 0.5"), el("span", { class: "ramp" }),
      document.createTextNode("1.0; grey = not explained"));
    auc.hidden = true;
    legend.appendChild(auc);
  }

  function initViewer() {
    let any = false;
    DATA.circuits.forEach((c, i) => {
      if (c.status !== "ok") return;
      const suffix = (c.in_frontier === false ? " (outside the frontier)" : "") +
        (c.view_error ? " (file error)" : "");
      select.appendChild(el("option", { value: String(i) }, `${modelLabel(c.model)} — ${c.task}${suffix}`));
      any = true;
    });
    if (!any) {
      select.appendChild(el("option", { value: "" }, "no circuits found"));
      select.disabled = slider.disabled = collapseBox.disabled = aucBox.disabled = true;
      return;
    }
    select.addEventListener("change", () => selectCircuit(Number(select.value)));
    collapseBox.addEventListener("change", () => {
      viewer.collapsed = collapseBox.checked;
      configureSlider();
      draw();
    });
    stabilityBox.addEventListener("change", () => draw());
    aucBox.addEventListener("change", () => {
      viewer.colorByAuc = aucBox.checked;
      document.getElementById("auc-legend").hidden = !aucBox.checked;
      draw();
    });
    let pending = false; // redraw at most once per frame while the slider is dragged
    slider.addEventListener("input", () => {
      viewer.k = Number(slider.value);
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; draw(); });
    });
    selectCircuit(Number(select.value));
  }

  function selectCircuit(i) {
    const row = DATA.circuits[i];
    select.value = String(i);
    viewer.view = row.view;
    viewer.stability = STABILITY.get(`${row.model}|${row.task}`) || null;
    document.getElementById("stability-control").hidden = !viewer.stability;
    viewer.pinned = false;
    viewer.selectedKey = null;
    const err = document.getElementById("viewer-error");
    resetPanel();
    if (!row.view) {
      err.hidden = false;
      err.textContent = `Cannot show this circuit: ${row.view_error}`;
      graphHost.replaceChildren();
      document.getElementById("edge-info").textContent = "";
      document.getElementById("circuit-summary").textContent = "";
      return;
    }
    err.hidden = true;
    const v = row.view;
    const nNodes = v.nodes.name.length;
    document.getElementById("circuit-summary").textContent =
      `${fmtInt(nNodes)} of ${fmtInt(v.n_nodes_total)} nodes, ` +
      `${fmtInt(v.edges.weight.length)} edges · method ${v.method} · ` +
      `target task loss ${fmt(v.target_loss)}`;
    viewer.collapsed = nNodes > COLLAPSE_ABOVE;
    collapseBox.checked = viewer.collapsed;
    viewer.k = Math.min(v.edges.weight.length, DEFAULT_EDGES);
    configureSlider();
    draw();
  }

  // The slider counts the strongest edges kept; edges arrive sorted by |weight|, so that count
  // is a weight threshold. Collapsed, all edges fold into few site-to-site links, so all may pass.
  function configureSlider() {
    const n = viewer.view ? viewer.view.edges.weight.length : 0;
    const max = viewer.collapsed ? n : Math.min(n, MAX_DRAWN_EDGES);
    viewer.k = Math.min(viewer.k, max);
    slider.max = String(max);
    slider.value = String(viewer.k);
    slider.disabled = n === 0;
  }

  function updateEdgeInfo(nLinks) {
    const v = viewer.view;
    const n = v.edges.weight.length;
    const k = viewer.k;
    const info = document.getElementById("edge-info");
    if (n === 0) {
      info.textContent = "This circuit has no edges.";
      return;
    }
    const threshold = k > 0 ? `|weight| ≥ ${fmt(Math.abs(v.edges.weight[k - 1]), 3)}` : "none";
    let text = k === n
      ? `All ${fmtInt(n)} edges`
      : `The ${fmtInt(k)} strongest of ${fmtInt(n)} edges (${threshold}); ${fmtInt(n - k)} hidden`;
    if (viewer.collapsed) text += `, summed into ${fmtInt(nLinks)} site-to-site links`;
    if (!viewer.collapsed && n > MAX_DRAWN_EDGES) {
      text += ` (at most ${fmtInt(MAX_DRAWN_EDGES)} drawn individually; collapse to include all)`;
    }
    info.textContent = `${text}.`;
  }

  // Columns: for each layer, its sites in forward order.
  function columnLayout(v) {
    let nLayer = v.n_layer || 0;
    for (const l of v.nodes.layer) nLayer = Math.max(nLayer, l + 1);
    const nCols = nLayer * SITES.length;
    const colW = Math.max(46, Math.floor((graphHost.clientWidth - 60) / Math.max(nCols, 1)));
    const colOf = (i) => v.nodes.layer[i] * SITES.length + SITES.indexOf(v.nodes.site[i]);
    const xOf = (col) => 40 + (col + 0.5) * colW;
    return { nLayer, nCols, colW, colOf, xOf, width: 60 + nCols * colW };
  }

  function drawColumnHeaders(svg, L, height) {
    const top = 62;
    for (let l = 0; l < L.nLayer; l++) {
      const x = L.xOf(l * SITES.length) - L.colW / 2;
      const w = L.colW * SITES.length;
      if (l % 2 === 0) {
        svgEl("rect", { class: "layer-band", x, y: 0, width: w, height }, svg);
      }
      svgEl("text", { class: "layer-label", x: x + 6, y: 14 }, svg).textContent = `layer ${l}`;
      SITES.forEach((s, j) => {
        const cx = L.xOf(l * SITES.length + j);
        svgEl("text", {
          class: "col-label", x: cx, y: top - 6, transform: `rotate(-40 ${cx} ${top - 6})`,
        }, svg).textContent = s;
      });
    }
  }

  function draw() {
    const v = viewer.view;
    if (!v) return;
    const L = columnLayout(v);
    const svg = svgEl("svg", { class: "graph" });
    svg.addEventListener("click", (e) => {
      if (e.target === svg || e.target.classList.contains("layer-band")) {
        viewer.pinned = false;
        highlight(null);
      }
    });
    viewer.edgesOf = new Map();
    viewer.shapeOf = new Map();
    const nLinks = viewer.collapsed ? drawCollapsed(svg, v, L) : drawNodes(svg, v, L);
    graphHost.replaceChildren(svg);
    updateEdgeInfo(nLinks);
    // Keep the panel's node highlighted across redraws (slider moves, collapse toggles).
    if (viewer.selectedKey !== null && viewer.shapeOf.has(viewer.selectedKey)) {
      highlight(viewer.selectedKey);
    } else {
      viewer.selectedKey = null;
    }
  }

  // Square root: |weight| spans orders of magnitude, and linear scaling hides all but the top few.
  function edgeStyle(absW, maxAbs) {
    const t = maxAbs > 0 ? Math.sqrt(absW / maxAbs) : 1;
    return { "stroke-width": (0.4 + 2.6 * t).toFixed(2), "stroke-opacity": (0.15 + 0.7 * t).toFixed(2) };
  }

  function addEdgeRef(key, path) {
    if (!viewer.edgesOf.has(key)) viewer.edgesOf.set(key, []);
    viewer.edgesOf.get(key).push(path);
  }

  // One circle per node, one curve per edge among the k strongest.
  function drawNodes(svg, v, L) {
    const n = v.nodes.name.length;
    const byCol = new Map();
    for (let i = 0; i < n; i++) {
      const c = L.colOf(i);
      if (!byCol.has(c)) byCol.set(c, []);
      byCol.get(c).push(i);
    }
    const maxCount = Math.max(1, ...[...byCol.values()].map((a) => a.length));
    const step = Math.min(16, Math.max(3, 560 / maxCount)); // vertical spacing within a column
    const radius = Math.min(5, Math.max(1.2, step * 0.38));
    const height0 = 80;
    const plotH = maxCount * step;
    const height = height0 + plotH + 20;
    svg.setAttribute("width", L.width);
    svg.setAttribute("height", height);
    drawColumnHeaders(svg, L, height);

    const x = new Float64Array(n), y = new Float64Array(n);
    for (const [c, idx] of byCol) {
      idx.sort((a, b) => v.nodes.index[a] - v.nodes.index[b]);
      const y0 = height0 + (plotH - idx.length * step) / 2 + step / 2;
      idx.forEach((i, j) => { x[i] = L.xOf(c); y[i] = y0 + j * step; });
    }

    const edges = svgEl("g", {}, svg);
    const k = Math.min(viewer.k, MAX_DRAWN_EDGES);
    const maxAbs = k ? Math.abs(v.edges.weight[0]) : 0;
    for (let e = 0; e < k; e++) {
      const s = v.edges.src[e], d = v.edges.dst[e], w = v.edges.weight[e];
      const dx = Math.max(18, (x[d] - x[s]) / 2);
      const path = svgEl("path", {
        class: `edge ${w >= 0 ? "pos" : "neg"}`,
        d: `M${x[s]},${y[s]}C${x[s] + dx},${y[s]} ${x[d] - dx},${y[d]} ${x[d]},${y[d]}`,
        ...edgeStyle(Math.abs(w), maxAbs),
      }, edges);
      addEdgeRef(`n${s}`, path);
      addEdgeRef(`n${d}`, path);
    }

    const nodes = svgEl("g", {}, svg);
    const labels = svgEl("g", {}, svg);
    const stab = stabilityBox.checked ? viewer.stability : null;
    for (let i = 0; i < n; i++) {
      const e = explanationOf(i);
      // With repeat runs: radius and opacity by the share of runs that kept the node.
      const f = stab ? (stab.frequency[v.nodes.name[i]] ?? 0) : 1;
      const core = stab && stab.core.has(v.nodes.name[i]);
      const circle = svgEl("circle", {
        class: core ? "node core" : "node", cx: x[i], cy: y[i],
        r: stab ? radius * (0.4 + 0.6 * f) : radius, "fill-opacity": stab ? 0.3 + 0.7 * f : 1,
        "data-frequency": stab ? String(f) : "",
        fill: viewer.colorByAuc ? aucColor(e) : SITE_COLORS[SITES.indexOf(v.nodes.site[i])],
        "data-node": v.nodes.name[i], "data-auc": e && isNum(e.auc) ? String(e.auc) : "",
      }, nodes);
      // Explained nodes carry their feature's name, where rows are tall enough to read it.
      if (isExplained(e) && step >= 8) {
        const full = featureText(e);
        const label = svgEl("text", {
          class: "node-label", x: x[i] + radius + 2, y: y[i] + 3, "data-node": v.nodes.name[i],
        }, labels);
        const short = e.feature.length > 14 ? `${e.feature.slice(0, 13)}…` : e.feature;
        label.textContent = e.direction === -1 ? `${short} (low)` : short;
        svgEl("title", {}, label).textContent = full;
      }
      const key = `n${i}`;
      viewer.shapeOf.set(key, circle);
      circle.addEventListener("mouseenter", () => { if (!viewer.pinned) showNode(i); });
      circle.addEventListener("click", () => { viewer.pinned = true; showNode(i); });
    }
    return k;
  }

  // One circle per (layer, site) sized by its node count, and one arc per pair of sites joined
  // by any of the k strongest edges, its width the sum of their |weight|.
  function drawCollapsed(svg, v, L) {
    const n = v.nodes.name.length;
    const members = new Map(); // column -> node indices
    for (let i = 0; i < n; i++) {
      const c = L.colOf(i);
      if (!members.has(c)) members.set(c, []);
      members.get(c).push(i);
    }
    const height = 440;
    const base = height - 70; // groups sit on one line; links arc above it
    svg.setAttribute("width", L.width);
    svg.setAttribute("height", height);
    drawColumnHeaders(svg, L, height);

    const links = new Map(); // "src col>dst col" -> {sum, abs, count}
    for (let e = 0; e < viewer.k; e++) {
      const key = `${L.colOf(v.edges.src[e])}>${L.colOf(v.edges.dst[e])}`;
      const w = v.edges.weight[e];
      const link = links.get(key) || { sum: 0, abs: 0, count: 0 };
      link.sum += w;
      link.abs += Math.abs(w);
      link.count += 1;
      links.set(key, link);
    }
    const maxAbs = Math.max(0, ...[...links.values()].map((l) => l.abs));
    const arcs = svgEl("g", {}, svg);
    const groupName = (c) => `layer ${Math.floor(c / SITES.length)} ${SITES[c % SITES.length]}`;
    for (const [key, link] of links) {
      const [a, b] = key.split(">").map(Number);
      const xa = L.xOf(a), xb = L.xOf(b);
      const lift = Math.min(base - 90, 20 + Math.abs(xb - xa) * 0.45);
      const path = svgEl("path", {
        class: `edge agg ${link.sum >= 0 ? "pos" : "neg"}`,
        d: `M${xa},${base}Q${(xa + xb) / 2},${base - 2 * lift} ${xb},${base}`,
        "stroke-width": (1 + 7 * (link.abs / maxAbs)).toFixed(2),
        "stroke-opacity": (0.25 + 0.6 * (link.abs / maxAbs)).toFixed(2),
      }, arcs);
      svgEl("title", {}, path).textContent =
        `${groupName(a)} → ${groupName(b)}: ${fmtInt(link.count)} edges, ` +
        `sum of weights ${fmt(link.sum)}`;
      addEdgeRef(`g${a}`, path);
      addEdgeRef(`g${b}`, path);
    }

    const groups = svgEl("g", {}, svg);
    for (const [c, idx] of members) {
      const x = L.xOf(c);
      const r = Math.min(L.colW / 2 - 3, 4 + 2.2 * Math.sqrt(idx.length));
      const shape = svgEl("circle", {
        class: "group", cx: x, cy: base, r,
        fill: SITE_COLORS[c % SITES.length], "data-group": groupName(c),
      }, groups);
      svgEl("text", { class: "group-count", x, y: base + r + 14 }, groups).textContent =
        fmtInt(idx.length);
      const key = `g${c}`;
      viewer.shapeOf.set(key, shape);
      shape.addEventListener("mouseenter", () => { if (!viewer.pinned) showGroup(c, idx); });
      shape.addEventListener("click", () => { viewer.pinned = true; showGroup(c, idx); });
    }
    return links.size;
  }

  function highlight(key) {
    const svg = graphHost.querySelector("svg");
    for (const e of graphHost.querySelectorAll(".hl")) e.classList.remove("hl");
    for (const e of graphHost.querySelectorAll(".selected")) e.classList.remove("selected");
    viewer.selectedKey = key;
    if (!svg) return;
    svg.classList.toggle("focus", key !== null);
    if (key === null) return;
    for (const e of viewer.edgesOf.get(key) || []) e.classList.add("hl");
    const shape = viewer.shapeOf.get(key);
    if (shape) shape.classList.add("selected");
  }

  function resetPanel() {
    panel.replaceChildren(el("p", { class: "muted" }, "Hover a node to see it here; click it to keep it."));
  }

  function panelHeader(title) {
    panel.replaceChildren(el("h3", {}, title));
    if (viewer.pinned) {
      panel.appendChild(el("p", { class: "muted" }, "Kept; click empty space in the graph to release."));
    }
  }

  function defList(pairs) {
    const dl = el("dl");
    for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, v));
    return dl;
  }

  function showGroup(c, idx) {
    const v = viewer.view;
    highlight(`g${c}`);
    panelHeader(`layer ${Math.floor(c / SITES.length)} · ${SITES[c % SITES.length]}`);
    const effect = (i) => v.nodes.effect[i];
    const measured = idx.filter((i) => isNum(effect(i)));
    panel.appendChild(defList([
      ["nodes", fmtInt(idx.length)],
      ["effect measured", `${fmtInt(measured.length)} nodes`],
    ]));
    // Largest ablation effect first, then score: the nodes most worth a look.
    const order = [...idx].sort((a, b) =>
      (isNum(effect(b)) ? effect(b) : -Infinity) - (isNum(effect(a)) ? effect(a) : -Infinity) ||
      v.nodes.score[b] - v.nodes.score[a]);
    const shown = order.slice(0, 60);
    panel.appendChild(el("p", { class: "muted" },
      `Top ${shown.length} by ablation effect (then score); click one for its activations.`));
    const list = panel.appendChild(el("div", { class: "node-list" }));
    for (const i of shown) {
      const b = el("button", { type: "button" },
        `${v.nodes.name[i]}  effect ${fmt(effect(i), 3)}`);
      b.addEventListener("click", () => { viewer.pinned = true; showNode(i); });
      list.appendChild(b);
    }
  }

  // Per-token colour: blue for positive, orange for negative, strength relative to the node's
  // largest |activation| over all example prompts.
  function tokenColor(a, maxAbs) {
    if (!isNum(a) || maxAbs <= 0) return "transparent";
    const t = Math.min(1, Math.abs(a) / maxAbs);
    const rgb = a >= 0 ? "47,109,181" : "217,72,15";
    return `rgba(${rgb},${(0.08 + 0.62 * t).toFixed(3)})`;
  }

  function showNode(i) {
    const v = viewer.view;
    const nodes = v.nodes;
    if (!viewer.collapsed) highlight(`n${i}`);
    panelHeader(nodes.name[i]);
    let nIn = 0, nOut = 0;
    for (let e = 0; e < v.edges.src.length; e++) {
      if (v.edges.dst[e] === i) nIn++;
      if (v.edges.src[e] === i) nOut++;
    }
    const eff = nodes.effect[i];
    panel.appendChild(defList([
      ["site", nodes.site[i]],
      ["layer", String(nodes.layer[i])],
      ["index", String(nodes.index[i])],
      ["mean", fmt(nodes.mean[i])],
      ["score", fmt(nodes.score[i])],
      ["ablation effect", isNum(eff) ? `${eff >= 0 ? "+" : ""}${fmt(eff)} task loss` : "not measured"],
      ["edges", `${fmtInt(nIn)} in, ${fmtInt(nOut)} out`],
      ...(viewer.stability ? [["repeat runs", stabilityText(nodes.name[i])]] : []),
    ]));
    panel.lastChild.title = "ablation effect: rise in task loss when this node alone is removed";
    showExplanation(explanationOf(i));

    if (!v.examples.length) {
      panel.appendChild(el("p", { class: "muted" }, "No example prompts recorded."));
      return;
    }
    const readout = el("div", { id: "tok-readout", class: "muted" }, "Hover a token for its activation.");
    panel.appendChild(readout);
    let maxAbs = 0;
    for (const ex of v.examples) {
      for (const a of ex.acts[i] || []) if (isNum(a)) maxAbs = Math.max(maxAbs, Math.abs(a));
    }
    for (const ex of v.examples) {
      const box = panel.appendChild(el("div", { class: "example" }));
      box.appendChild(el("div", { class: "example-label" }, ex.label));
      const acts = ex.acts[i];
      const pre = box.appendChild(el("div", { class: "prompt" }));
      ex.tokens.forEach((tok, t) => {
        const a = acts ? acts[t] : null;
        const span = el("span", { class: "tok", title: `${JSON.stringify(tok)}: ${fmt(a)}` }, tok);
        span.style.backgroundColor = tokenColor(a, maxAbs);
        span.addEventListener("mouseenter", () => {
          readout.textContent = `token ${t} ${JSON.stringify(tok)}: activation ${fmt(a)}`;
        });
        pre.appendChild(span);
      });
      const answers = box.appendChild(el("div", { class: "example-label" }));
      answers.append(
        document.createTextNode("correct "), el("code", { class: "answer" }, ex.correct),
        document.createTextNode("  incorrect "), el("code", { class: "answer" }, ex.incorrect)
      );
      if (!acts) box.appendChild(el("div", { class: "muted" }, "No activations recorded for this node."));
    }
  }

  function stabilityText(name) {
    const s = viewer.stability;
    const f = s.frequency[name] ?? 0;
    const kept = Math.round(f * s.runs);
    return `kept by ${kept} of ${s.runs} searches (other seeds)${s.core.has(name) ? ": core" : ""}`;
  }

  function tokenList(pairs) {
    const p = el("p");
    for (const [tok, val] of pairs || []) {
      const c = el("code", { class: "tokens", title: fmt(val) }, JSON.stringify(tok));
      p.appendChild(c);
    }
    if (!p.childNodes.length) p.textContent = "–";
    return p;
  }

  // The node's best feature with its scores, its top and bottom activating contexts, and the
  // tokens on its direct input and output paths (explain.py).
  function showExplanation(e) {
    const box = panel.appendChild(el("div", { class: "explanation", id: "explanation" }));
    box.appendChild(el("h3", {}, "Explanation"));
    if (!e) {
      box.appendChild(el("p", { class: "muted" },
        "Not explained (sparsecircuits explain CIRCUIT.json adds explanations)."));
      return;
    }
    if (e.feature === null) {
      box.appendChild(el("p", { class: "muted" }, "Constant on the text: no feature scored."));
    } else {
      box.appendChild(defList([
        ["feature", featureText(e)],
        ["AUC", fmt(e.auc, 3)],
        ["precision / recall", `${fmt(e.precision, 3)} / ${fmt(e.recall, 3)} at the best threshold`],
        ["explained", isExplained(e) ? "yes" : "no"],
      ]));
    }
    if (e.top_inputs && e.top_inputs.length) {
      box.appendChild(el("div", { class: "example-label" }, "top input tokens (direct path)"));
      box.appendChild(tokenList(e.top_inputs));
    }
    if (e.top_logits && e.top_logits.length) {
      box.appendChild(el("div", { class: "example-label" }, "top pushed logits (direct path)"));
      box.appendChild(tokenList(e.top_logits));
    }
    for (const q of e.examples || []) {
      const ex = box.appendChild(el("div", { class: "quantile" }));
      ex.appendChild(el("div", { class: "example-label" }, `${q.label}: ${fmt(q.value)}`));
      const pre = ex.appendChild(el("div", { class: "context" }));
      q.tokens.forEach((tok, t) => {
        pre.appendChild(el("span", { class: t === q.at ? "tok tok-at" : "tok" }, tok));
      });
    }
  }

  // ---------- analysis sections (activations, modularity, ...) ----------

  function renderAnalyses() {
    const host = document.getElementById("analyses");
    const nav = document.getElementById("analysis-nav");
    for (const sec of DATA.sections || []) {
      nav.append(document.createTextNode(" · "), el("a", { href: `#${sec.id}` }, sec.title));
      const box = host.appendChild(el("section", { id: sec.id }));
      box.appendChild(el("h2", {}, sec.title));
      if (sec.error) {
        box.appendChild(el("p", { class: "error" }, sec.error));
        continue;
      }
      for (const p of sec.paragraphs) box.appendChild(el("p", {}, p));
      for (const t of sec.tables) {
        if (t.caption) box.appendChild(el("p", { class: "muted" }, t.caption));
        const rows = (t.rows || []).map((r) => {
          const tr = el("tr");
          for (const v of r) tr.appendChild(cell(typeof v === "number" ? fmt(v) : String(v ?? ""),
            typeof v === "number" ? "num" : undefined));
          return tr;
        });
        fillTable(box.appendChild(el("table")), t.columns || [], rows);
      }
      for (const img of sec.images) {
        const fig = box.appendChild(el("figure"));
        fig.appendChild(el("img", { src: img.src, alt: img.caption, class: "section-img" }));
        fig.appendChild(el("figcaption", { class: "muted" }, img.caption));
      }
    }
  }

  renderHeader();
  renderAnswer();
  renderFrontier();
  renderModelsTable();
  renderCircuitsTable();
  renderLegibility();
  renderSiteLegend();
  initViewer();
  renderAnalyses();
})();
