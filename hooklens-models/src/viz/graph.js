(function () {
  "use strict";
  window.addEventListener("error", function (e) { document.body.setAttribute("data-errors", String(e.message)); });
  var data = JSON.parse(document.getElementById("graph-data").textContent);
  var svg = document.getElementById("graph");
  var NS = svg.namespaceURI;
  var nodes = data.nodes;
  var incoming = nodes.map(function () { return []; });
  var outgoing = nodes.map(function () { return []; });
  data.links.forEach(function (l) {
    outgoing[l[0]].push([l[1], l[2]]);
    incoming[l[1]].push([l[0], l[2]]);
  });

  // Text as it reads: line breaks and tabs shown, each token isolated in a <bdi> so a
  // right-to-left override in it cannot reverse what follows.
  function shown(t) { return String(t).replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5").replace(/\r/g, "\\r"); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function bdi(t) { return el("bdi", "t", shown(t)); }
  function num(x) {
    if (x === null || x === undefined) { return "\u2014"; }
    if (x === 0) { return "0"; }
    var a = Math.abs(x);
    return a >= 0.01 && a < 1e4 ? x.toFixed(3) : x.toExponential(2);
  }
  // What a node is, as a line of text with its token text isolated.
  function describe(n) {
    var s = el("span");
    function add(x) { s.appendChild(typeof x === "string" ? document.createTextNode(x) : x); }
    if (n.kind === "feature") {
      add("layer " + n.layer + ", feature " + n.feature + ", position " + n.pos);
    } else if (n.kind === "error") {
      add("error, layer " + n.layer + ", position " + n.pos);
    } else if (n.kind === "token") {
      add("token ");
      add(bdi(n.token === null ? "?" : n.token));
      add(" at position " + n.pos);
    } else {
      add("logit ");
      if (n.token !== null) { add(bdi(n.token)); } else { add(bdi(n.clerp)); }
      add(" p=" + num(n.prob));
    }
    return s;
  }
  // The same as plain text (for a tooltip), each token between U+2068 and U+2069, the
  // plain-text form of <bdi>.
  function iso(t) { return "\u2068" + t + "\u2069"; }
  function label(n) {
    var s = "";
    describe(n).childNodes.forEach(function (c) { s += c.nodeName === "BDI" ? iso(c.textContent) : c.textContent; });
    return s;
  }

  // The header: title, metadata, prompt, legend.
  document.getElementById("title").textContent = data.title;
  var meta = document.getElementById("meta");
  var counts = { feature: 0, error: 0, token: 0, logit: 0 };
  nodes.forEach(function (n) { counts[n.kind]++; });
  [["scan", data.scan],
   ["node threshold", data.node_threshold === null ? "none" : String(data.node_threshold)],
   ["schema", data.schema_version === null ? "?" : String(data.schema_version)],
   ["nodes", nodes.length + " (" + counts.feature + " features, " + counts.error + " errors, " +
     counts.token + " tokens, " + counts.logit + " logits)"],
   ["links", String(data.links.length)]].forEach(function (kv) {
    meta.appendChild(el("span", "", kv[0] + ": " + kv[1]));
  });
  if (data.transcoders.length) { meta.appendChild(el("span", "", "transcoders: " + data.transcoders.join(", "))); }
  if (data.duplicates) {
    meta.appendChild(el("span", "warn", data.duplicates + " node ids repeat; their links go to the first node of the id"));
  }
  document.getElementById("prompt").textContent = shown(data.prompt);
  var legend = document.getElementById("legend");
  [["feature", "#f6b26b", "transcoder feature"], ["error", "#c8c8c8", "reconstruction error"],
   ["token", "#a8d08d", "input token"], ["logit", "#b4a7d6", "output logit"]].forEach(function (k) {
    var key = el("span", "key");
    key.style.background = k[1];
    if (k[0] === "feature") { key.style.borderRadius = "50%"; }
    legend.appendChild(key);
    legend.appendChild(document.createTextNode(k[2]));
  });
  legend.appendChild(el("span", "gap", "edges: "));
  legend.appendChild(el("span", "pos", "positive"));
  legend.appendChild(document.createTextNode(" / "));
  legend.appendChild(el("span", "neg", "negative"));

  // The layout: a row per layer (tokens at the bottom, logits at the top), a column per
  // position, as wide as its fullest cell.
  var LEFT = 56, TOP = 10, ROW_H = 64, SP = 14, MIN_COL = 64, PAD = 14;
  var nRows = data.n_layers + 2, nPos = data.n_pos;
  var cells = {};
  nodes.forEach(function (n, i) {
    var key = n.row + "," + n.pos;
    (cells[key] = cells[key] || []).push(i);
  });
  var colW = [], colX = [], x = LEFT;
  for (var p = 0; p < nPos; p++) {
    var most = 0;
    for (var r = 0; r < nRows; r++) { most = Math.max(most, (cells[r + "," + p] || []).length); }
    colW.push(Math.max(MIN_COL, most * SP + PAD));
    colX.push(x);
    x += colW[p];
  }
  var width = x + 8, height = TOP + nRows * ROW_H;
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  function rowY(r) { return TOP + (nRows - 1 - r) * ROW_H + ROW_H / 2; }
  function svgEl(tag, attrs) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  var grid = svgEl("g", {});
  svg.appendChild(grid);
  for (var r2 = 0; r2 < nRows; r2++) {
    var y = rowY(r2);
    grid.appendChild(svgEl("line", { x1: LEFT, x2: width, y1: y + ROW_H / 2, y2: y + ROW_H / 2, "class": "grid" }));
    var lab = svgEl("text", { x: 6, y: y + 4, "class": "rowlab" });
    lab.textContent = r2 === 0 ? "tokens" : r2 === nRows - 1 ? "logits" : "L" + (r2 - 1);
    grid.appendChild(lab);
  }
  colX.forEach(function (cx) { grid.appendChild(svgEl("line", { x1: cx, x2: cx, y1: TOP, y2: height, "class": "grid" })); });
  var edgeLayer = svgEl("g", {});
  svg.appendChild(edgeLayer);
  var nodeLayer = svgEl("g", {});
  svg.appendChild(nodeLayer);

  var pos = [];
  Object.keys(cells).forEach(function (key) {
    var list = cells[key];
    list.forEach(function (i, k) {
      var n = nodes[i];
      pos[i] = [colX[n.pos] + colW[n.pos] / 2 + (k - (list.length - 1) / 2) * SP, rowY(n.row)];
    });
  });
  var shapes = nodes.map(function (n, i) {
    var cx = pos[i][0], cy = pos[i][1], shape;
    if (n.kind === "feature") {
      shape = svgEl("circle", { cx: cx, cy: cy, r: 5 });
    } else if (n.kind === "error") {
      shape = svgEl("rect", { x: cx - 4.5, y: cy - 4.5, width: 9, height: 9 });
    } else if (n.kind === "token") {
      shape = svgEl("rect", { x: cx - 5.5, y: cy - 5, width: 11, height: 10, rx: 2 });
    } else {
      shape = svgEl("polygon", { points: cx + "," + (cy - 7) + " " + (cx + 6) + "," + cy + " " + cx + "," + (cy + 7) + " " + (cx - 6) + "," + cy });
    }
    shape.setAttribute("class", "node " + n.kind + (n.target ? " target" : ""));
    shape.setAttribute("data-node-id", n.id);
    shape.setAttribute("data-index", String(i));
    var tip = svgEl("title", {});
    tip.textContent = label(n);
    shape.appendChild(tip);
    shape.addEventListener("mouseenter", function () { show(i); });
    shape.addEventListener("mouseleave", function () { show(selected); });
    shape.addEventListener("click", function () { select(i); });
    nodeLayer.appendChild(shape);
    return shape;
  });

  // The prompt's tokens under their columns.
  var tokens = document.getElementById("tokens");
  tokens.style.width = width + "px";
  for (var q = 0; q < nPos; q++) {
    var t = q < data.tokens.length ? data.tokens[q] : "";
    var cell = el("div", "tok");
    cell.style.left = colX[q] + "px";
    cell.style.width = colW[q] + "px";
    cell.title = q + ": " + iso(JSON.stringify(t));
    cell.appendChild(el("div", "hint", String(q)));
    cell.appendChild(bdi(t));
    tokens.appendChild(cell);
  }

  function strongest(list) {
    return list.slice().sort(function (a, b) { return Math.abs(b[1]) - Math.abs(a[1]); }).slice(0, 10);
  }
  function edgeTable(title, which, list) {
    var panel = document.getElementById("panel");
    panel.appendChild(el("h3", "", title + " (" + Math.min(10, list.length) + " of " + list.length + ")"));
    if (!list.length) { panel.appendChild(el("div", "hint", "none")); return; }
    var table = el("table");
    strongest(list).forEach(function (e) {
      var other = nodes[e[0]];
      var tr = el("tr", "edge-row");
      tr.setAttribute("data-edge", which);
      tr.setAttribute("data-node-id", other.id);
      tr.setAttribute("data-weight", String(e[1]));
      tr.appendChild(el("td", "w " + (e[1] >= 0 ? "pos" : "neg"), (e[1] >= 0 ? "+" : "") + num(e[1])));
      var td = el("td");
      td.appendChild(describe(other));
      tr.appendChild(td);
      tr.addEventListener("click", function () { select(e[0]); });
      table.appendChild(tr);
    });
    panel.appendChild(table);
  }
  function drawEdges(i) {
    while (edgeLayer.firstChild) { edgeLayer.removeChild(edgeLayer.firstChild); }
    var all = incoming[i].map(function (e) { return [e[0], i, e[1]]; })
      .concat(outgoing[i].map(function (e) { return [i, e[0], e[1]]; }));
    var max = all.reduce(function (m, e) { return Math.max(m, Math.abs(e[2])); }, 0) || 1;
    all.sort(function (a, b) { return Math.abs(a[2]) - Math.abs(b[2]); });
    all.forEach(function (e) {
      edgeLayer.appendChild(svgEl("line", {
        x1: pos[e[0]][0], y1: pos[e[0]][1], x2: pos[e[1]][0], y2: pos[e[1]][1], "class": "edge",
        stroke: e[2] >= 0 ? "#1f5fbf" : "#c0392b", "stroke-opacity": 0.7,
        "stroke-width": (0.75 + 4.25 * Math.abs(e[2]) / max).toFixed(2)
      }));
    });
  }
  var selected = null;
  // The panel and the edges of node i (null: nothing).
  function show(i) {
    var panel = document.getElementById("panel");
    while (panel.firstChild) { panel.removeChild(panel.firstChild); }
    shapes.forEach(function (s) { s.classList.remove("faded"); s.classList.remove("selected"); });
    while (edgeLayer.firstChild) { edgeLayer.removeChild(edgeLayer.firstChild); }
    if (i === null) {
      panel.removeAttribute("data-node-id");
      panel.appendChild(el("div", "hint", "Hover or click a node."));
      return;
    }
    var n = nodes[i];
    panel.setAttribute("data-node-id", n.id);
    var h = el("h2");
    h.appendChild(describe(n));
    panel.appendChild(h);
    var dl = el("dl");
    function row(k, v) { dl.appendChild(el("dt", "", k)); var dd = el("dd"); if (typeof v === "string") { dd.textContent = v; } else { dd.appendChild(v); } dl.appendChild(dd); }
    row("type", n.type);
    row("node id", n.id);
    if (n.kind === "token" || n.kind === "logit") { row("token", bdi(n.token === null ? "?" : n.token)); }
    if (n.kind === "logit") { row("probability", num(n.prob)); row("target", n.target ? "yes" : "no"); }
    if (n.kind === "feature") { row("layer", n.layer); row("feature", String(n.feature)); }
    if (n.kind === "error") { row("layer", n.layer); }
    var at = el("span", "", n.pos + " ");
    at.appendChild(bdi(n.pos < data.tokens.length ? data.tokens[n.pos] : "?"));
    row("position", at);
    row("activation", num(n.act));
    row("influence", num(n.infl));
    if (n.clerp && n.kind !== "logit") { row("label", bdi(n.clerp)); }
    panel.appendChild(dl);
    edgeTable("Strongest inputs", "in", incoming[i]);
    edgeTable("Strongest outputs", "out", outgoing[i]);
    var near = {};
    near[i] = true;
    incoming[i].forEach(function (e) { near[e[0]] = true; });
    outgoing[i].forEach(function (e) { near[e[0]] = true; });
    shapes.forEach(function (s, j) { if (!near[j]) { s.classList.add("faded"); } });
    shapes[i].classList.add("selected");
    drawEdges(i);
  }
  function select(i) {
    selected = i;
    show(i);
    document.body.setAttribute("data-selected", i === null ? "" : nodes[i].id);
  }
  function indexOf(id) {
    for (var i = 0; i < nodes.length; i++) { if (nodes[i].id === id) { return i; } }
    return null;
  }
  var want = data.selected;
  var m = /^#select=(.*)$/.exec(window.location.hash);
  if (m) {
    try { want = decodeURIComponent(m[1]); } catch (err) { want = m[1]; }
  }
  var start = want === null ? null : indexOf(want);
  if (m && start === null) { document.body.setAttribute("data-select-missing", want); }
  select(start);
  document.body.setAttribute("data-nodes", String(shapes.length));
  document.body.setAttribute("data-links", String(data.links.length));
  document.body.setAttribute("data-ready", "1");
})();
