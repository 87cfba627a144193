/* The queue page, live: DAG (layout by the vendored dagre), timeline (Gantt), cells, edges and buttons.
   Everything is drawn from the live JSON (console/admin/live.py); the server renders the same cells on load. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLOURS = {
    waiting: "#6c757d", pending: "#6c757d", launching: "#0d6efd", running: "#0d6efd", stopping: "#d97706",
    stopped: "#92400e", succeeded: "#198754", failed: "#dc3545", lost: "#dc3545"
  };
  var NODE_W = 236, NODE_H = 58;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function text(parent, x, y, value, attrs) {
    var t = el("text", Object.assign({x: x, y: y}, attrs || {}), parent);
    t.textContent = value;
    return t;
  }
  function clip(value, max) { return value.length > max ? value.slice(0, max - 1) + "…" : value; }
  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) { return h + "h " + String(m).padStart(2, "0") + "m"; }
    return m ? m + "m " + String(s).padStart(2, "0") + "s" : s + "s";
  }
  function structure(data) {
    return data.steps.map(function (s) { return s.id; }).join(",") + "|" +
      data.edges.map(function (e) { return e.upstream + ">" + e.downstream; }).join(",");
  }

  /* --- DAG --- */
  function Dag(container) { this.container = container; this.key = null; }
  Dag.prototype.layout = function (data) {
    var g = new dagre.graphlib.Graph();
    g.setGraph({rankdir: "LR", nodesep: 18, ranksep: 60, marginx: 10, marginy: 10});
    g.setDefaultEdgeLabel(function () { return {}; });
    data.steps.forEach(function (s) { g.setNode(String(s.id), {width: NODE_W, height: NODE_H}); });
    data.edges.forEach(function (e) { g.setEdge(String(e.upstream), String(e.downstream)); });
    dagre.layout(g);
    return g;
  };
  Dag.prototype.draw = function (data) {
    var key = structure(data);
    if (key !== this.key) { this.build(data); this.key = key; }
    this.update(data);
  };
  Dag.prototype.build = function (data) {
    var g = this.layout(data), info = g.graph();
    this.container.textContent = "";
    var svg = el("svg", {width: Math.ceil(info.width), height: Math.ceil(info.height), role: "img",
      "aria-label": "Dependency graph of the queue's steps"}, this.container);
    var defs = el("defs", {}, svg);
    ["met", "unmet"].forEach(function (kind) {
      var marker = el("marker", {id: "sf-arrow-" + kind, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
        markerHeight: 7, orient: "auto-start-reverse"}, defs);
      el("path", {d: "M0,0 L10,5 L0,10 z", fill: kind === "met" ? "#198754" : "#9ca3af"}, marker);
    });
    this.edges = {};
    this.nodes = {};
    var self = this;
    data.edges.forEach(function (e) {
      var points = g.edge(String(e.upstream), String(e.downstream)).points;
      var d = points.map(function (p, i) { return (i ? "L" : "M") + p.x.toFixed(1) + "," + p.y.toFixed(1); }).join(" ");
      var path = el("path", {d: d, "class": "sf-edge sf-" + e.kind, "data-sf-dag-edge": e.upstream + "-" + e.downstream}, svg);
      el("title", {}, path);
      self.edges[e.upstream + "-" + e.downstream] = path;
    });
    data.steps.forEach(function (s) {
      var n = g.node(String(s.id)), x = n.x - NODE_W / 2, y = n.y - NODE_H / 2;
      var link = el("a", {href: s.url, "class": "sf-node", "data-sf-dag-node": s.id, tabindex: 0}, svg);
      var title = el("title", {}, link);
      el("rect", {x: x, y: y, width: NODE_W, height: NODE_H, rx: 8, "class": "sf-node-box"}, link);
      el("rect", {x: x, y: y, width: 6, height: NODE_H, rx: 3, "class": "sf-node-stripe"}, link);
      text(link, x + 14, y + 18, clip(s.name, 33), {"font-size": 12, "font-weight": 600});
      var sub = text(link, x + 14, y + 34, "", {"font-size": 11, "class": "sf-node-sub"});
      el("rect", {x: x + 14, y: y + 42, width: NODE_W - 28, height: 7, rx: 3, "class": "sf-node-track"}, link);
      var fill = el("rect", {x: x + 14, y: y + 42, width: 0, height: 7, rx: 3, "class": "sf-node-fill"}, link);
      self.nodes[s.id] = {link: link, title: title, sub: sub, fill: fill, x: x};
    });
  };
  Dag.prototype.update = function (data) {
    var self = this, byId = {};
    data.steps.forEach(function (s) { byId[s.id] = s; });
    data.steps.forEach(function (s) {
      var node = self.nodes[s.id], colour = COLOURS[s.state] || "#6c757d";
      node.link.setAttribute("data-sf-state", s.state);
      node.link.querySelector(".sf-node-box").setAttribute("stroke", colour);
      node.link.querySelector(".sf-node-stripe").setAttribute("fill", colour);
      var fraction = s.fraction;
      var live = fraction === null && (s.state === "running" || s.state === "stopping");
      var width = (NODE_W - 28) * (live ? 1 : (fraction || 0));
      node.fill.setAttribute("width", width.toFixed(1));
      node.fill.setAttribute("fill", live ? "#6ea8fe" : colour);
      var pct = fraction === null ? "" : " · " + Math.round(fraction * 100) + "%";
      node.sub.textContent = clip(s.state + " · " + s.records_written.toLocaleString("en") + " records" + pct, 38);
      node.title.textContent = s.name + " (" + s.target + ", " + s.type + ", " + (s.streaming ? "streaming" : "batch") +
        ")\nstate: " + s.state + (s.waiting_for.length ? "\nwaits for: " + s.waiting_for.join(", ") : "") +
        (s.message ? "\n" + s.message : "") + "\nclick to open the step";
    });
    data.edges.forEach(function (e) {
      var path = self.edges[e.upstream + "-" + e.downstream];
      if (!path) { return; }
      path.setAttribute("class", "sf-edge sf-" + e.kind + (e.met ? " sf-edge-met" : " sf-edge-unmet"));
      path.setAttribute("marker-end", "url(#sf-arrow-" + (e.met ? "met" : "unmet") + ")");
      path.setAttribute("data-sf-met", e.met ? "yes" : "no");
      path.querySelector("title").textContent = byId[e.downstream].name + " waits until " + byId[e.upstream].name +
        (e.kind === "ready" ? " is running" : " has succeeded") + " (" + e.reason + "): " + (e.met ? "met" : "not yet");
    });
  };

  /* --- Timeline (Gantt): waiting → launching → running → end, per step, in run order. --- */
  function Timeline(container, summary) { this.container = container; this.summary = summary; }
  Timeline.prototype.draw = function (data) {
    var t0 = Date.parse(data.created_at), now = Date.parse(data.now);
    var end = data.finished_at ? Date.parse(data.finished_at) : now;
    var span = Math.max(end - t0, 1000), labelW = 190, width = Math.max(this.container.clientWidth - 4, 480);
    var plotW = width - labelW - 70, rowH = 20, top = 22;
    var height = top + data.steps.length * rowH + 6;
    var x = function (ms) { return labelW + plotW * Math.min(Math.max((ms - t0) / span, 0), 1); };
    this.container.textContent = "";
    var svg = el("svg", {width: width, height: height, role: "img", "aria-label": "Timeline of the queue's steps"},
      this.container);
    for (var i = 0; i <= 4; i++) {
      var gx = labelW + plotW * i / 4;
      el("line", {x1: gx, x2: gx, y1: top - 4, y2: height, "class": "sf-grid"}, svg);
      text(svg, gx, 12, "+" + duration(span * i / 4000), {"font-size": 10, "text-anchor": i ? "middle" : "start"});
    }
    data.steps.forEach(function (s, row) {
      var y = top + row * rowH;
      var group = el("g", {"data-sf-timeline-row": s.id, "data-sf-state": s.state}, svg);
      var label = el("a", {href: s.url}, group);
      text(label, 4, y + 13, clip(s.name, 28), {"class": "sf-row-label"});
      var since = Math.max(Date.parse(s.created_at), t0), segments = [];
      // A retried step's ended runs first, faded: the time before its retry was not spent waiting.
      (s.past_runs || []).forEach(function (p) {
        var pLaunched = p.launched_at ? Date.parse(p.launched_at) : null;
        var pStarted = p.started_at ? Date.parse(p.started_at) : null;
        var pEnd = Date.parse(p.finished_at || p.retried_at), name = "run " + p.run;
        segments.push([name + " waiting", since, pLaunched || pEnd, "#9ca3af", 0.25]);
        if (pLaunched) { segments.push([name + " launching", pLaunched, pStarted || pEnd, "#6ea8fe", 0.4]); }
        if (pStarted) { segments.push([name + " " + p.state, pStarted, pEnd, COLOURS[p.state] || "#6b7280", 0.45]); }
        since = Math.max(since, Date.parse(p.retried_at));
      });
      var launched = s.launched_at ? Date.parse(s.launched_at) : null;
      var started = s.started_at ? Date.parse(s.started_at) : null;
      var finished = s.finished_at ? Date.parse(s.finished_at) : null;
      var stop = finished || end;
      segments.push(["waiting", since, launched || finished || stop, "#9ca3af", 0.5]);
      if (launched) { segments.push(["launching", launched, started || finished || stop, "#6ea8fe", 0.9]); }
      if (started) { segments.push([s.state === "running" ? "running" : s.state, started, stop,
        COLOURS[s.state] || "#0d6efd", 1]); }
      segments.forEach(function (seg) {
        var x1 = x(seg[1]), x2 = Math.max(x(seg[2]), x1 + 1.5);
        var bar = el("rect", {x: x1, y: y + 4, width: x2 - x1, height: rowH - 8, fill: seg[3], "fill-opacity": seg[4],
          rx: 2, "data-sf-segment": seg[0]}, group);
        el("title", {}, bar).textContent = s.name + " — " + seg[0] + " for " + duration((seg[2] - seg[1]) / 1000);
      });
      var total = started ? duration(((finished || end) - started) / 1000) : "";
      text(group, labelW + plotW + 6, y + 13, total, {"font-size": 10});
      el("title", {}, group).textContent = s.name + ": " + s.state + "\nlaunched " + (s.times.launched_at || "—") +
        "\nstarted " + (s.times.started_at || "—") + "\nfinished " + (s.times.finished_at || "—");
    });
    if (this.summary) {
      this.summary.textContent = "Total " + duration(span / 1000) + (data.finished_at ? "" : " so far") +
        " · " + data.counts.running + " running · " + data.counts.failed + " failed · " +
        data.counts.succeeded + "/" + data.counts.total + " succeeded";
    }
  };

  /* --- Live page --- */
  function show(node, visible) { if (node) { node.hidden = !visible; } }
  function replace(node, html) { if (html !== undefined && node.innerHTML !== html) { node.innerHTML = html; } }

  function QueuePage(options) {
    this.url = options.url;
    this.note = document.getElementById("sf-live-note");
    this.dag = new Dag(document.getElementById("sf-dag"));
    this.timeline = new Timeline(document.getElementById("sf-timeline"), document.getElementById("sf-timeline-summary"));
    this.failures = 0;
    this.active = true;
  }
  QueuePage.prototype.apply = function (data) {
    document.querySelectorAll("[data-sf-queue-cell]").forEach(function (node) {
      replace(node, data.cells[node.dataset.sfQueueCell]);
    });
    data.steps.forEach(function (step) {
      document.querySelectorAll('[data-sf-step="' + step.id + '"][data-sf-cell]').forEach(function (node) {
        replace(node, step.cells[node.dataset.sfCell]);
      });
      show(document.querySelector('[data-sf-stop-step="' + step.id + '"]'), step.can_stop);
    });
    data.edges.forEach(function (edge) {
      var node = document.querySelector('[data-sf-edge="' + edge.upstream + "-" + edge.downstream + '"]');
      if (node) { replace(node, edge.met ? '<span class="sf-met">✔ met</span>' : '<span class="sf-unmet">… not yet</span>'); }
    });
    show(document.querySelector('[data-sf-queue-button="stop"]'), data.can_stop);
    show(document.querySelector('[data-sf-queue-button="retry"]'), data.can_retry);
    this.dag.draw(data);
    this.timeline.draw(data);
    document.body.setAttribute("data-sf-queue-status", data.status);
  };
  QueuePage.prototype.poll = function () {
    var self = this;
    return fetch(this.url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        self.failures = 0;
        self.apply(data);
        self.active = data.active;
        self.note.textContent = data.active ? "Live: updated every 2 s — last update " +
          new Date().toLocaleTimeString("en-GB", {hour12: false}) + "." :
          "The queue is " + data.status + "; live updates stopped.";
      })
      .catch(function (err) {
        self.failures += 1;
        self.note.textContent = "Live update failed (" + err.message + "); retrying…";
      })
      .then(function () {
        if (self.active && self.failures < 30) { setTimeout(function () { self.poll(); }, self.failures ? 5000 : 2000); }
      });
  };

  window.SFConsole = {
    Dag: Dag, Timeline: Timeline, duration: duration,
    queuePage: function (options) {
      var page = new QueuePage(options);
      page.poll();  // the first poll draws the DAG and the timeline, later ones keep them current
      return page;
    }
  };
})();
