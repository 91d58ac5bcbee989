// A small canvas line chart written for stepstream: one line per rank, a cross-rank
// min-max band with its mean, log scale, TensorBoard-style EMA smoothing, drag to zoom,
// non-finite values as markers (never dropped) and alert markers as DOM elements.
// A legend per chart: click a rank to hide it, shift-click to show it alone; hovering
// lists every shown rank's value at the cursor's step, sorted, as W&B's legend does.
// No library: the dashboard must work air-gapped, from the installed package alone.
"use strict";

(function () {
  const PAD = { left: 56, right: 12, top: 14, bottom: 26 };
  const BAND_BINS = 160;

  function rankColor(rank) {
    const hue = (rank * 137.508) % 360; // golden angle: neighbouring ranks differ
    return `hsl(${hue.toFixed(1)}, 65%, 45%)`;
  }

  // TensorBoard's debiased exponential moving average over the finite values.
  function smooth(ys, weight) {
    if (!weight) return ys.slice();
    const out = new Array(ys.length);
    let last = 0;
    let n = 0;
    for (let i = 0; i < ys.length; i++) {
      const y = ys[i];
      if (!Number.isFinite(y)) { out[i] = y; continue; }
      last = last * weight + (1 - weight) * y;
      n++;
      out[i] = last / (1 - Math.pow(weight, n));
    }
    return out;
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const span = hi - lo;
    const step0 = Math.pow(10, Math.floor(Math.log10(span / count)));
    const err = (count * step0) / span;
    const step = err <= 0.15 ? step0 * 10 : err <= 0.35 ? step0 * 5 : err <= 0.75 ? step0 * 2 : step0;
    const out = [];
    const first = Math.ceil(lo / step);
    // by index, not by accumulation: a step below the float spacing of lo cannot stall it
    for (let i = 0; i < 50; i++) {
      const v = (first + i) * step;
      if (v > hi + step * 1e-9) break;
      out.push(v);
    }
    return out;
  }

  function fmt(v) {
    if (!Number.isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  }

  function fmtTime(t) {
    const d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }

  class Chart {
    constructor(container, options) {
      this.options = Object.assign({ by: "step", log: false, smoothing: 0, onZoom: null, label: null, legend: true }, options || {});
      this.root = document.createElement("div");
      this.root.className = "chart";
      this.canvas = document.createElement("canvas");
      this.overlay = document.createElement("div");
      this.overlay.className = "chart-overlay";
      this.tip = document.createElement("div");
      this.tip.className = "chart-tip";
      this.tip.hidden = true;
      this.root.append(this.canvas, this.overlay, this.tip);
      this.legend = document.createElement("div");
      this.legend.className = "chart-legend";
      container.append(this.root);
      if (this.options.legend) container.append(this.legend);
      this.hidden = new Set(); // ranks (line keys) the legend turned off
      this.highlight = new Set(); // ranks an open alert names
      this.lines = [];
      this.alerts = [];
      this.xRange = null;
      this.drag = null;
      this._bindMouse();
      this.width = 0;
      this.height = 0;
    }

    setOptions(opts) { Object.assign(this.options, opts); this.draw(); }
    setData(lines) { this.lines = lines; this._legend(); this.draw(); }
    setHighlight(ranks) {
      const next = new Set(ranks);
      if (next.size === this.highlight.size && [...next].every((r) => this.highlight.has(r))) return;
      this.highlight = next;
      this._legend();
      this.draw();
    }

    // What a line is called: "r3" per rank, or the caller's label (a run id on the
    // comparison page).
    _name(line) { return this.options.label ? this.options.label(line) : "r" + line.rank; }
    _shown() { return this.lines.filter((l) => !this.hidden.has(l.rank)); }

    // Click toggles one line; shift-click shows it alone (again: shows every line).
    toggle(rank, solo) {
      if (solo) {
        const alone = this.lines.every((l) => (l.rank === rank) !== this.hidden.has(l.rank));
        this.hidden = new Set(alone ? [] : this.lines.filter((l) => l.rank !== rank).map((l) => l.rank));
      } else if (this.hidden.has(rank)) {
        this.hidden.delete(rank);
      } else {
        this.hidden.add(rank);
      }
      this._legend();
      this.draw();
    }

    _legend() {
      if (!this.options.legend) return;
      // rebuilt only when what it shows changed: live deltas call setData many times
      const key = this.lines.map((l) => l.rank).join(",") + "|" + [...this.hidden].join(",") + "|" + [...this.highlight].join(",");
      if (key === this._legendKey) return;
      this._legendKey = key;
      const items = this.lines.map((line) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "legend-item" + (this.hidden.has(line.rank) ? " off" : "") + (this.highlight.has(line.rank) ? " alerted" : "");
        b.dataset.rank = String(line.rank);
        b.title = "click: hide or show · shift-click: show only this one" + (this.highlight.has(line.rank) ? " · named by an open alert" : "");
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = rankColor(line.rank);
        b.append(sw, document.createTextNode(this._name(line)));
        b.addEventListener("click", (ev) => this.toggle(line.rank, ev.shiftKey));
        return b;
      });
      this.legend.replaceChildren(...items);
    }
    setAlerts(alerts) { this.alerts = alerts; this.draw(); }
    setXRange(range) { this.xRange = range; this.draw(); }

    // The x extent of the data (all ranks), or null.
    extent() {
      let lo = Infinity, hi = -Infinity;
      for (const line of this.lines) {
        if (line.x.length) { lo = Math.min(lo, line.x[0]); hi = Math.max(hi, line.x[line.x.length - 1]); }
      }
      return lo <= hi ? [lo, hi] : null;
    }

    // Rows of what the chart shows now: rank, x, value, smoothed value (CSV download).
    rows() {
      const out = [];
      const [lo, hi] = this._xDomain() || [-Infinity, Infinity];
      for (const line of this.lines) {
        const sm = smooth(line.y, this.options.smoothing);
        for (let i = 0; i < line.x.length; i++) {
          if (line.x[i] < lo || line.x[i] > hi) continue;
          out.push([line.rank, line.x[i], line.y[i], sm[i]]);
        }
      }
      return out;
    }

    _xDomain() {
      if (this.xRange) return this.xRange;
      const ext = this.extent();
      if (!ext) return null;
      return ext[0] === ext[1] ? [ext[0] - 1, ext[1] + 1] : ext;
    }

    _bindMouse() {
      const pos = (ev) => {
        const r = this.canvas.getBoundingClientRect();
        return [ev.clientX - r.left, ev.clientY - r.top];
      };
      this.canvas.addEventListener("mousedown", (ev) => {
        const [x] = pos(ev);
        this.drag = { x0: x, x1: x };
      });
      this.canvas.addEventListener("mousemove", (ev) => {
        const [x, y] = pos(ev);
        if (this.drag) { this.drag.x1 = x; this.draw(); return; }
        this._hover(x, y);
      });
      this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
      window.addEventListener("mouseup", () => {
        if (!this.drag) return;
        const { x0, x1 } = this.drag;
        this.drag = null;
        if (Math.abs(x1 - x0) > 4 && this.scale) {
          const a = this.scale.xInv(Math.min(x0, x1));
          const b = this.scale.xInv(Math.max(x0, x1));
          if (this.options.onZoom) this.options.onZoom([a, b]);
        } else {
          this.draw();
        }
      });
      this.canvas.addEventListener("dblclick", () => {
        if (this.options.onZoom) this.options.onZoom(null);
      });
    }

    // The step under the cursor: the data x nearest to it over every shown line; then
    // each shown line's value at that step (or its nearest point: downsampled lines need
    // not share x values), sorted high to low.
    _hover(px, py) {
      const shown = this._shown();
      if (!this.scale || !shown.length) { this.tip.hidden = true; return; }
      const x = this.scale.xInv(px);
      const near = (xs) => {
        let lo = 0, hi = xs.length - 1;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
        if (lo > 0 && Math.abs(xs[lo - 1] - x) <= Math.abs(xs[lo] - x)) lo -= 1;
        return lo;
      };
      let best = null;
      for (const line of shown) {
        if (!line.x.length) continue;
        const i = near(line.x);
        const d = Math.abs(this.scale.x(line.x[i]) - px);
        if (!best || d < best.d) best = { d, x: line.x[i] };
      }
      if (!best || best.d > 30) { this.tip.hidden = true; return; }
      const at = best.x;
      const rows = [];
      for (const line of shown) {
        if (!line.x.length) continue;
        let lo = 0, hi = line.x.length - 1;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (line.x[mid] < at) lo = mid + 1; else hi = mid; }
        if (lo > 0 && Math.abs(line.x[lo - 1] - at) < Math.abs(line.x[lo] - at)) lo -= 1;
        rows.push({ line, x: line.x[lo], y: line.y[lo] });
      }
      // high to low; non-finite values (the ones to look at) first
      const key = (y) => (Number.isFinite(y) ? y : Infinity);
      rows.sort((a, b) => key(b.y) - key(a.y) || a.line.rank - b.line.rank);
      const head = document.createElement("div");
      head.className = "tip-head";
      head.textContent = this.options.by === "time" ? fmtTime(at) : "step " + at;
      const items = rows.map((r) => {
        const row = document.createElement("div");
        row.className = "tip-row" + (this.highlight.has(r.line.rank) ? " alerted" : "");
        row.dataset.rank = String(r.line.rank);
        row.dataset.value = String(r.y);
        row.dataset.x = String(r.x);
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = rankColor(r.line.rank);
        const name = document.createElement("span");
        name.textContent = this._name(r.line) + (r.x !== at ? ` (${r.x})` : "");
        const val = document.createElement("span");
        val.className = "tip-val";
        val.textContent = fmt(r.y);
        row.append(sw, name, val);
        return row;
      });
      this.tip.replaceChildren(head, ...items);
      this.tip.dataset.x = String(at);
      this.tip.hidden = false;
      const tw = this.tip.offsetWidth || 160;
      this.tip.style.left = (px + 12 + tw > this.width ? Math.max(0, px - 12 - tw) : px + 12) + "px";
      this.tip.style.top = Math.max(py - 24, 0) + "px";
    }

    draw() {
      const dpr = window.devicePixelRatio || 1;
      const w = this.root.clientWidth || 600;
      const h = this.root.clientHeight || 220;
      if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
        this.canvas.width = Math.round(w * dpr);
        this.canvas.height = Math.round(h * dpr);
        this.canvas.style.width = w + "px";
        this.canvas.style.height = h + "px";
      }
      this.width = w; this.height = h;
      const ctx = this.canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      this.overlay.replaceChildren();
      const opts = this.options;
      const xd = this._xDomain();
      const shown = this._shown();
      const smoothed = shown.map((l) => smooth(l.y, opts.smoothing));
      // y domain over finite values in the x range (positive only on a log scale)
      let ylo = Infinity, yhi = -Infinity, nonfinite = 0;
      shown.forEach((line, li) => {
        const ys = smoothed[li];
        for (let i = 0; i < line.x.length; i++) {
          if (xd && (line.x[i] < xd[0] || line.x[i] > xd[1])) continue;
          const y = ys[i];
          if (!Number.isFinite(y)) { nonfinite++; continue; }
          if (opts.log && y <= 0) continue;
          if (y < ylo) ylo = y;
          if (y > yhi) yhi = y;
        }
      });
      this.root.dataset.lines = String(this.lines.length);
      this.root.dataset.shown = String(shown.length);
      const ext = this.extent();
      this.root.dataset.lastX = ext ? String(ext[1]) : "";
      this.root.dataset.nonfinite = String(nonfinite);
      this.root.dataset.alerts = String(this.alerts.length);
      const plotW = w - PAD.left - PAD.right, plotH = h - PAD.top - PAD.bottom;
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#666";
      if (!xd) {
        ctx.fillText("no data yet", PAD.left + 8, PAD.top + 16);
        this.scale = null;
        return;
      }
      if (!(yhi >= ylo)) { ylo = opts.log ? 1 : 0; yhi = opts.log ? 10 : 1; }
      const tf = opts.log ? Math.log10 : (v) => v;
      let ty0 = tf(ylo), ty1 = tf(yhi);
      if (ty0 === ty1) { ty0 -= 0.5; ty1 += 0.5; }
      const margin = (ty1 - ty0) * 0.05;
      ty0 -= margin; ty1 += margin;
      const sx = (x) => PAD.left + ((x - xd[0]) / (xd[1] - xd[0])) * plotW;
      const sy = (y) => PAD.top + (1 - (tf(y) - ty0) / (ty1 - ty0)) * plotH;
      this.scale = { x: sx, xInv: (px) => xd[0] + ((px - PAD.left) / plotW) * (xd[1] - xd[0]) };

      // grid and axes
      ctx.strokeStyle = "#e4e4e4";
      ctx.lineWidth = 1;
      ctx.beginPath();
      const yt = niceTicks(ty0, ty1, 4);
      for (const t of yt) {
        const py = PAD.top + (1 - (t - ty0) / (ty1 - ty0)) * plotH;
        ctx.moveTo(PAD.left, py); ctx.lineTo(w - PAD.right, py);
        ctx.fillText(fmt(opts.log ? Math.pow(10, t) : t), 4, py + 4);
      }
      const xt = niceTicks(xd[0], xd[1], 6);
      for (const t of xt) {
        const px = sx(t);
        ctx.moveTo(px, PAD.top); ctx.lineTo(px, h - PAD.bottom);
        const label = opts.by === "time" ? fmtTime(t) : fmt(t);
        ctx.fillText(label, px - ctx.measureText(label).width / 2, h - 8);
      }
      ctx.stroke();

      ctx.save();
      ctx.beginPath();
      ctx.rect(PAD.left, PAD.top, plotW, plotH);
      ctx.clip();
      if (shown.length > 1 && this.options.band !== false) this._band(ctx, shown, smoothed, xd, sx, sy, opts.log);
      // one line per rank; a non-finite value breaks the line; ranks an open alert
      // names are drawn last and thicker, so they stand out of 64 others
      const order = shown.map((_, i) => i).sort((a, b) => Number(this.highlight.has(shown[a].rank)) - Number(this.highlight.has(shown[b].rank)));
      order.forEach((li) => {
        const line = shown[li];
        const ys = smoothed[li];
        const hot = this.highlight.has(line.rank);
        ctx.strokeStyle = rankColor(line.rank);
        ctx.lineWidth = hot ? 3 : shown.length > 16 ? 1 : 1.5;
        ctx.globalAlpha = hot ? 1 : shown.length > 16 ? 0.6 : 0.95;
        ctx.beginPath();
        let pen = false;
        for (let i = 0; i < line.x.length; i++) {
          const y = ys[i];
          if (!Number.isFinite(y) || (opts.log && y <= 0)) { pen = false; continue; }
          const px = sx(line.x[i]), py = sy(y);
          if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
          pen = true;
        }
        ctx.stroke();
        // a lone point (one system sample so far) draws no line segment: a dot instead
        if (line.x.length === 1 && Number.isFinite(ys[0]) && !(opts.log && ys[0] <= 0)) {
          ctx.fillStyle = rankColor(line.rank);
          ctx.beginPath();
          ctx.arc(sx(line.x[0]), sy(ys[0]), 2.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      });
      ctx.globalAlpha = 1;
      ctx.restore();

      // non-finite markers: NaN and +Inf on top, -Inf at the bottom
      ctx.fillStyle = "#d00";
      for (const line of shown) {
        for (let i = 0; i < line.x.length; i++) {
          const y = line.y[i];
          if (Number.isFinite(y)) continue;
          if (xd && (line.x[i] < xd[0] || line.x[i] > xd[1])) continue;
          const px = sx(line.x[i]);
          const down = y === -Infinity;
          const py = down ? h - PAD.bottom - 2 : PAD.top + 2;
          ctx.beginPath();
          ctx.moveTo(px - 5, down ? py - 8 : py + 8);
          ctx.lineTo(px + 5, down ? py - 8 : py + 8);
          ctx.lineTo(px, py);
          ctx.closePath();
          ctx.fill();
          const m = document.createElement("div");
          m.className = "nonfinite-marker";
          m.style.left = px + "px";
          m.style.top = (down ? py - 22 : py + 8) + "px";
          m.textContent = Number.isNaN(y) ? "NaN" : y > 0 ? "+Inf" : "-Inf";
          m.title = `rank ${line.rank}, ${opts.by} ${line.x[i]}: ${m.textContent}`;
          this.overlay.append(m);
        }
      }

      // alert markers: a dashed rule and a labelled flag at the alert's x (flags close
      // together stack downwards instead of hiding each other)
      const placed = [];
      for (const a of this.alerts) {
        if (a.x == null || a.x < xd[0] || a.x > xd[1]) continue;
        const px = sx(a.x);
        ctx.strokeStyle = a.state === "resolved" ? "#999" : "#c0392b";
        ctx.setLineDash([4, 3]);
        ctx.beginPath(); ctx.moveTo(px, PAD.top); ctx.lineTo(px, h - PAD.bottom); ctx.stroke();
        ctx.setLineDash([]);
        const flag = document.createElement("div");
        flag.className = `alert-marker sev-${a.severity || "warning"} state-${a.state || "firing"}`;
        flag.style.left = px + "px";
        const row = placed.filter((p) => Math.abs(p - px) < 90).length;
        placed.push(px);
        flag.style.top = row * 14 + "px";
        flag.textContent = "▲ " + (a.label || "alert");
        flag.title = a.title || a.label || "";
        flag.dataset.x = String(a.x);
        if (a.rule) flag.dataset.rule = a.rule;
        this.overlay.append(flag);
      }

      if (this.drag) {
        ctx.fillStyle = "rgba(60, 120, 220, 0.15)";
        const a = Math.min(this.drag.x0, this.drag.x1), b = Math.max(this.drag.x0, this.drag.x1);
        ctx.fillRect(a, PAD.top, b - a, plotH);
      }
    }

    // Min-max band and mean across ranks, in BAND_BINS x bins (ranks' points need not
    // share x values: downsampling keeps different points per rank).
    _band(ctx, lines, smoothed, xd, sx, sy, log) {
      const bins = BAND_BINS, span = xd[1] - xd[0];
      const lo = new Array(bins).fill(Infinity), hi = new Array(bins).fill(-Infinity);
      const sum = new Array(bins).fill(0), cnt = new Array(bins).fill(0);
      lines.forEach((line, li) => {
        const ys = smoothed[li];
        for (let i = 0; i < line.x.length; i++) {
          const y = ys[i];
          if (!Number.isFinite(y) || (log && y <= 0)) continue;
          const b = Math.floor(((line.x[i] - xd[0]) / span) * bins);
          if (b < 0 || b >= bins) continue;
          if (y < lo[b]) lo[b] = y;
          if (y > hi[b]) hi[b] = y;
          sum[b] += y; cnt[b]++;
        }
      });
      const xs = [];
      for (let b = 0; b < bins; b++) if (cnt[b]) xs.push(b);
      if (xs.length < 2) return;
      const bx = (b) => sx(xd[0] + ((b + 0.5) / bins) * span);
      ctx.fillStyle = "rgba(120, 120, 120, 0.16)";
      ctx.beginPath();
      xs.forEach((b, i) => (i ? ctx.lineTo(bx(b), sy(hi[b])) : ctx.moveTo(bx(b), sy(hi[b]))));
      for (let i = xs.length - 1; i >= 0; i--) ctx.lineTo(bx(xs[i]), sy(lo[xs[i]]));
      ctx.closePath();
      ctx.fill();
      ctx.strokeStyle = "rgba(30, 30, 30, 0.7)";
      ctx.setLineDash([5, 3]);
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      xs.forEach((b, i) => (i ? ctx.lineTo(bx(b), sy(sum[b] / cnt[b])) : ctx.moveTo(bx(b), sy(sum[b] / cnt[b]))));
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }

  window.StepChart = { Chart, rankColor, smooth, fmt, fmtTime };
})();
