/* The step page: its log streamed by offset (follow, pause, search, download) and its telemetry charts. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function LogView(pre) {
    this.pre = pre;
    this.url = pre.dataset.url;
    this.next = parseInt(pre.dataset.next, 10) || 0;
    this.source = pre.dataset.source;
    this.ended = pre.dataset.ended === "yes";
    this.text = pre.textContent;
    if (this.source === "none") { this.text = ""; }
    this.paused = false;
    this.follow = document.getElementById("sf-log-follow");
    this.pauseButton = document.getElementById("sf-log-pause");
    this.search = document.getElementById("sf-log-search");
    this.matches = document.getElementById("sf-log-matches");
    this.status = document.getElementById("sf-log-status");
    var self = this;
    this.pauseButton.addEventListener("click", function () {
      self.paused = !self.paused;
      self.pauseButton.textContent = self.paused ? "Resume" : "Pause";
      self.pauseButton.setAttribute("aria-pressed", String(self.paused));
      self.status.textContent = self.paused ? "paused" : "following";
      if (!self.paused) { self.schedule(0); }
    });
    this.search.addEventListener("input", function () { self.render(); });
    this.follow.addEventListener("change", function () { if (self.follow.checked) { self.scroll(); } });
    this.render();
    this.scroll();
    this.schedule(this.ended ? null : 0);
  }
  LogView.prototype.scroll = function () { this.pre.scrollTop = this.pre.scrollHeight; };
  LogView.prototype.render = function () {
    var term = this.search.value;
    if (!term) {
      this.pre.textContent = this.text || "—";
      this.matches.textContent = "";
    } else {
      // Highlight matches without ever treating the log as HTML.
      this.pre.textContent = "";
      var parts = this.text.split(term), count = parts.length - 1, self = this;
      parts.forEach(function (part, i) {
        self.pre.appendChild(document.createTextNode(part));
        if (i < parts.length - 1) { var mark = document.createElement("mark"); mark.textContent = term; self.pre.appendChild(mark); }
      });
      this.matches.textContent = count + " match" + (count === 1 ? "" : "es");
      var first = this.pre.querySelector("mark");
      if (first && !this.follow.checked) { first.scrollIntoView({block: "center"}); }
    }
    if (this.follow.checked) { this.scroll(); }
  };
  LogView.prototype.schedule = function (delay) {
    var self = this;
    clearTimeout(this.timer);
    if (delay === null) { return; }
    this.timer = setTimeout(function () { self.fetch(); }, delay);
  };
  LogView.prototype.fetch = function () {
    if (this.paused) { return; }
    var self = this;
    fetch(this.url + "?offset=" + this.next, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        if (data.source !== self.source || data.offset !== self.next) {
          // Another source (the step ended and its kept tail is the log now) or a moved window: start again.
          self.source = data.source;
          if (data.offset !== 0) { self.next = 0; self.text = ""; return self.schedule(0); }
          self.text = "";
        }
        if (data.text) { self.text += data.text; self.render(); }
        self.next = data.next;
        document.querySelectorAll("[data-sf-step-state]").forEach(function (node) {
          if (node.dataset.sfStepState !== data.state) { node.dataset.sfStepState = data.state; node.querySelector(".sf-badge").textContent = data.state; }
        });
        self.status.textContent = data.error ? "live log unavailable: " + data.error :
          data.ended && !data.more ? "the step is " + data.state + "; the log is complete" :
          "following · " + self.text.length.toLocaleString("en") + " characters";
        self.schedule(data.more ? 0 : data.ended ? null : 2000);
      })
      .catch(function (err) { self.status.textContent = "log update failed (" + err.message + "); retrying…"; self.schedule(5000); });
  };

  /* A small line chart: x is time (epoch seconds) or epoch numbers, y the value; labels show first/last. */
  function chart(parent, spec) {
    var w = 320, h = 120, pad = 28, pts = spec.points;
    var xs = pts.map(function (p) { return p[0]; }), ys = pts.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; } if (y1 === y0) { y1 = y0 + 1; }
    var box = document.createElement("figure"); box.className = "sf-chart"; box.style.margin = "0";
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", spec.title + " over " + spec.x);
    var d = pts.map(function (p, i) {
      var x = pad + (w - pad - 8) * (p[0] - x0) / (x1 - x0), y = h - 18 - (h - 30) * (p[1] - y0) / (y1 - y0);
      return (i ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
    var path = document.createElementNS(SVG, "path"); path.setAttribute("d", d); path.setAttribute("class", "sf-line");
    svg.appendChild(path);
    function label(x, y, value, anchor) {
      var t = document.createElementNS(SVG, "text"); t.setAttribute("x", x); t.setAttribute("y", y);
      t.setAttribute("text-anchor", anchor || "start"); t.textContent = value; svg.appendChild(t);
    }
    var fmt = function (v) { return Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") : String(+v.toPrecision(4)); };
    label(2, 12, fmt(y1)); label(2, h - 20, fmt(y0));
    label(pad, h - 4, spec.x === "epoch" ? "epoch " + x0 : "start");
    label(w - 8, h - 4, spec.x === "epoch" ? "epoch " + x1 : "+" + Math.round(x1 - x0) + " s", "end");
    var caption = document.createElement("figcaption"); caption.textContent = spec.title + " (last " + fmt(ys[ys.length - 1]) + ")";
    box.appendChild(caption); box.appendChild(svg); parent.appendChild(box);
  }

  var pre = document.getElementById("sf-logs");
  if (pre && pre.dataset.url) { window.sfLog = new LogView(pre); }
  var charts = document.getElementById("sf-chart-data"), holder = document.getElementById("sf-charts");
  if (charts && holder) { JSON.parse(charts.textContent).forEach(function (spec) { chart(holder, spec); }); }
})();
