// The run page: one chart per metric (a line per rank, the cross-rank band, alert
// markers, a legend), in sections in the order people look (the user's metrics,
// performance, gradients, system, GPU; internal series only in the collapsed diagnostics
// panel), the alert list with silence actions, the rank grid and quality panels.
// Which sections are open is kept in the URL (?closed=...&open=...).
// Pushed notices trigger delta fetches of the charts on screen: points after the last
// step each chart holds, for every rank in one request.
"use strict";

(function () {
  const { api, el, num, fmtAge, fmtTime, events, throttle, download, csvCell, globToRegExp } = window.SS;
  const { Chart, fmt } = window.StepChart;
  const run = decodeURIComponent(location.pathname.replace(/^\/run\//, ""));
  const enc = encodeURIComponent(run);
  const $ = (id) => document.getElementById(id);
  const q = new URLSearchParams(location.search);
  const ui = {
    glob: $("metric-glob"), xaxis: $("xaxis"), log: $("logscale"), smoothing: $("smoothing"),
  };
  ui.glob.value = q.get("metrics") || "";
  ui.xaxis.value = q.get("x") === "time" ? "time" : "step";
  ui.log.checked = q.get("log") === "1";
  ui.smoothing.value = q.get("smooth") || "0";
  $("smoothing-val").textContent = Number(ui.smoothing.value).toFixed(2);
  $("run-id").textContent = run;
  document.title = "stepstream · " + run;

  const charts = new Map(); // metric -> card state
  // Sections (from the overview) and the per-layer small multiples inside gradients.
  // `flipped` holds the ids whose open/closed state differs from their default.
  const LAYERS = "layers";
  const flipped = new Set([...(q.get("closed") || "").split(","), ...(q.get("open") || "").split(",")].filter(Boolean));
  const sectionBoxes = new Map(); // id -> {box, body, count, defaultClosed}
  let overview = null;
  let incidents = [];
  let fetchedAt = 0;

  function showError(msg) { $("error").textContent = msg; $("error").hidden = !msg; }

  function points(card) { return Math.max(200, Math.round((card.chart.root.clientWidth || 600) * 1.5)); }

  function toLines(doc) {
    return doc.lines.map((l) => ({ rank: l.rank, x: l.x, y: l.y.map(num) }));
  }

  async function fetchFull(card) {
    const p = new URLSearchParams({ metric: card.metric, by: ui.xaxis.value, points: String(points(card)) });
    // the ranks the overview listed: the server need not read the run's series index
    if (card.ranks && card.ranks.length) p.set("ranks", card.ranks.join(","));
    if (card.zoom) { p.set("from", String(card.zoom[0])); p.set("to", String(card.zoom[1])); }
    const doc = await api(`/ui/api/runs/${enc}/chart?` + p.toString());
    card.lines = toLines(doc);
    card.by = doc.by;
    card.loaded = true;
    card.chart.setXRange(card.zoom);
    card.chart.setData(card.lines);
  }

  // Points after the newest step the chart holds, appended per rank.
  async function fetchDelta(card) {
    if (card.zoom) return; // a zoomed chart holds its range; reset follows the run again
    if (!card.loaded || card.by !== "step") return fetchFull(card);
    // From the rank that is furthest behind: ranks flush on their own, so one rank's
    // step 60 can reach Redis after another's step 61.
    let last = Infinity;
    for (const l of card.lines) last = Math.min(last, l.x.length ? l.x[l.x.length - 1] : -Infinity);
    if (!Number.isFinite(last)) return fetchFull(card);
    const p = new URLSearchParams({ metric: card.metric, by: "step", from: String(last + 1) });
    if (card.ranks && card.ranks.length) p.set("ranks", card.ranks.join(","));
    const doc = await api(`/ui/api/runs/${enc}/chart?` + p.toString());
    const byRank = new Map(card.lines.map((l) => [l.rank, l]));
    let grown = 0;
    for (const nl of toLines(doc)) {
      const l = byRank.get(nl.rank);
      if (!l) { card.lines.push(nl); byRank.set(nl.rank, nl); continue; }
      for (let i = 0; i < nl.x.length; i++) {
        if (l.x.length && nl.x[i] <= l.x[l.x.length - 1]) continue;
        l.x.push(nl.x[i]); l.y.push(nl.y[i]);
      }
      grown = Math.max(grown, l.x.length);
    }
    if (grown > points(card) * 3) return fetchFull(card); // re-downsample a long tail
    card.lines.sort((a, b) => a.rank - b.rank);
    card.chart.setData(card.lines);
  }

  function csv(card) {
    const rows = card.chart.rows();
    const head = ["rank", card.by === "time" ? "time" : "step", "value", "smoothed"];
    const text = [head.join(",")].concat(rows.map((r) => r.map(csvCell).join(","))).join("\n") + "\n";
    download(`${run}-${card.metric.replace(/[^A-Za-z0-9._-]+/g, "_")}.csv`, text);
  }

  function makeCard(metric, container) {
    const title = el("h3", { class: "chart-title", title: metric }, metric);
    const reset = el("button", { type: "button", class: "small", title: "reset zoom" }, "reset");
    const csvBtn = el("button", { type: "button", class: "small csv" }, "CSV");
    const stats = el("span", { class: "muted small" });
    const head = el("div", { class: "chart-head" }, title, stats, reset, csvBtn);
    const entry = overview.metrics.find((m) => m.name === metric);
    const box = el("div", { class: "chart-card" + (entry && entry.per_layer ? " multiple" : ""), dataset: { metric } }, head);
    container.append(box);
    const card = { metric, ranks: ranksOf(metric), lines: [], loaded: false, zoom: null, by: ui.xaxis.value, visible: false, box, stats };
    card.chart = new Chart(box, {
      legend: !(entry && entry.per_layer),
      by: ui.xaxis.value,
      log: ui.log.checked,
      smoothing: Number(ui.smoothing.value),
      onZoom: (range) => { card.zoom = range; fetchFull(card).catch((e) => showError(e.message)); },
    });
    reset.addEventListener("click", () => { card.zoom = null; fetchFull(card).catch((e) => showError(e.message)); });
    csvBtn.addEventListener("click", () => csv(card));
    observer.observe(box);
    return card;
  }

  // Charts fetch when scrolled into view: a run of 30 metrics opens with the first few.
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const card = charts.get(entry.target.dataset.metric);
      if (!card) continue;
      card.visible = entry.isIntersecting;
      if (card.visible && !card.loaded && !card.loading) {
        card.loading = true;
        fetchFull(card).catch((e) => showError(e.message)).finally(() => { card.loading = false; applyAlerts(); });
      }
    }
  }, { rootMargin: "200px" });

  function ranksOf(metric) {
    const m = overview && overview.metrics.find((x) => x.name === metric);
    return m ? m.ranks : [];
  }

  function metricNames() {
    if (!overview) return [];
    const re = globToRegExp(ui.glob.value);
    return overview.metrics.map((m) => m.name).filter((n) => !re || re.test(n));
  }

  function isClosed(id, defaultClosed) { return defaultClosed !== flipped.has(id); }

  // One collapsible block: a heading button and a body; toggling it updates the URL and
  // creates the charts it holds (a closed block fetches nothing).
  function sectionBox(id, title, defaultClosed, parent, cls) {
    let s = sectionBoxes.get(id);
    if (s) return s;
    const count = el("span", { class: "muted small count" });
    const btn = el("button", { type: "button", class: "fold", "aria-expanded": "true" }, el("span", { class: "caret" }), title, " ", count);
    const body = el("div", { class: cls });
    const box = el("section", { class: "metric-section", dataset: { section: id } }, el("h2", {}, btn), body);
    parent.append(box);
    s = { id, box, body, btn, count, defaultClosed };
    btn.addEventListener("click", () => {
      if (flipped.has(id)) flipped.delete(id); else flipped.add(id);
      syncUrl();
      layoutCharts();
      applyAlerts();
    });
    sectionBoxes.set(id, s);
    return s;
  }

  function renderFold(s) {
    const closed = isClosed(s.id, s.defaultClosed);
    s.box.dataset.collapsed = closed ? "1" : "0";
    s.btn.setAttribute("aria-expanded", closed ? "false" : "true");
    s.body.hidden = closed;
  }

  function layoutCharts() {
    const names = metricNames();
    const entries = new Map(overview.metrics.map((m) => [m.name, m]));
    const sections = overview.sections || [{ id: "user", title: "Metrics", collapsed: false }];
    const root = $("sections");
    const where = new Map(); // metric -> the block it is charted in
    const counts = new Map();
    for (const sec of sections) {
      const s = sectionBox(sec.id, sec.title, sec.collapsed, root, "charts");
      root.append(s.box); // section order as the server gives it
    }
    for (const name of names) {
      const m = entries.get(name) || {};
      const sec = sectionBoxes.get(m.section) || sectionBoxes.get(sections[0].id);
      let block = sec;
      if (m.per_layer) {
        // per-layer norms: small multiples in their own block, collapsed by default
        block = sectionBox(LAYERS, "Per-layer (small multiples)", true, sec.body, "charts multiples");
        sec.body.append(block.box);
        counts.set(LAYERS, (counts.get(LAYERS) || 0) + 1);
      }
      counts.set(sec.id, (counts.get(sec.id) || 0) + 1);
      where.set(name, [sec, block]);
    }
    for (const s of sectionBoxes.values()) {
      const n = counts.get(s.id) || 0;
      s.count.textContent = `(${n})`;
      s.box.hidden = n === 0;
      renderFold(s);
    }
    const wanted = new Set();
    for (const name of names) {
      const [sec, block] = where.get(name);
      if (!isClosed(sec.id, sec.defaultClosed) && !isClosed(block.id, block.defaultClosed)) wanted.add(name);
    }
    for (const [metric, card] of charts) {
      if (!wanted.has(metric)) { observer.unobserve(card.box); card.box.remove(); charts.delete(metric); }
    }
    for (const name of names) {
      if (!wanted.has(name)) continue;
      const body = where.get(name)[1].body;
      if (charts.has(name)) { charts.get(name).ranks = ranksOf(name); }
      else charts.set(name, makeCard(name, body));
      body.append(charts.get(name).box); // keep DOM order = section order
    }
    // the per-layer block sits after the gradients section's other charts
    const layers = sectionBoxes.get(LAYERS);
    if (layers) layers.box.parentNode.append(layers.box);
    document.body.dataset.charts = String(charts.size);
  }

  function applyAlerts() {
    // Ranks an open (firing or pending, not silenced) alert names: highlighted in every
    // chart's legend and drawn on top.
    const named = incidents.filter((i) => i.rank != null && !i.silenced && (i.state === "firing" || i.state === "pending")).map((i) => i.rank);
    for (const card of charts.values()) {
      card.chart.setHighlight(named);
      const marks = [];
      for (const inc of incidents) {
        const mine = inc.metric === card.metric || (!inc.metric || !charts.has(inc.metric));
        if (!mine) continue;
        const x = card.by === "time" ? inc.fired_t : inc.fired_step;
        if (x == null) continue;
        marks.push({
          x, rule: inc.rule, severity: inc.severity, state: inc.silenced ? "silenced" : inc.state,
          label: inc.rule + (inc.rank == null ? "" : " r" + inc.rank),
          title: inc.summary || inc.rule,
        });
      }
      card.chart.setAlerts(marks);
    }
  }

  function renderAlerts(doc) {
    incidents = doc.incidents;
    const list = $("alerts");
    if (!incidents.length) list.replaceChildren(el("li", { class: "muted" }, "no alerts"));
    else list.replaceChildren(...incidents.map(alertItem));
    const sil = $("silences");
    if (!doc.silences.length) sil.replaceChildren(el("li", { class: "muted" }, "none active"));
    else sil.replaceChildren(...doc.silences.map(silenceItem));
    applyAlerts();
  }

  function alertItem(inc) {
    const state = inc.silenced ? "silenced" : inc.state;
    const evidence = Object.entries(inc.evidence || {}).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}=${typeof v === "number" ? fmt(v) : v}`).join("  ");
    const silenceBtn = el("button", { type: "button", class: "small silence-btn", onclick: () => silence(inc) }, "Silence 1h");
    return el(
      "li",
      { class: `alert-item state-${state} sev-${inc.severity}`, dataset: { fingerprint: inc.fingerprint, rule: inc.rule, state } },
      el("div", { class: "alert-head" },
        el("span", { class: `badge sev-${inc.severity}` }, inc.severity),
        el("span", { class: `badge state-${state}` }, state),
        el("strong", {}, inc.rule),
        inc.rank == null ? null : el("span", {}, ` rank ${inc.rank}`),
        inc.fired_step == null ? null : el("span", { class: "muted" }, ` step ${inc.fired_step}`),
        el("span", { class: "muted" }, " " + fmtTime(inc.t)),
        // pending: its rule's condition holds, `for` has not elapsed; nobody was notified
        inc.state === "pending" && inc.active_since != null
          ? el("span", { class: "pending-for", title: "condition holding since " + fmtTime(inc.active_since) + "; fires when the rule's `for` elapses" },
            " pending for " + fmtAge(Math.max(0, Date.now() / 1000 - inc.active_since)))
          : null,
      ),
      el("div", { class: "alert-summary" }, inc.summary || ""),
      evidence ? el("div", { class: "alert-evidence muted" }, evidence) : null,
      inc.silenced ? null : silenceBtn,
    );
  }

  function silenceItem(s) {
    const matchers = Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(", ");
    const ends = new Date(s.ends_at * 1000).toLocaleString();
    return el("li", { dataset: { silence: s.id } },
      el("code", {}, s.id), " ", matchers, el("span", { class: "muted" }, ` until ${ends}`), " ",
      el("button", { type: "button", class: "small expire-btn", onclick: () => expire(s.id) }, "Expire"));
  }

  async function silence(inc) {
    try {
      await api("/ui/api/silences", { method: "POST", body: { run, fingerprint_of: inc.fingerprint, duration_s: 3600, comment: "from the dashboard" } });
      await loadAlerts();
    } catch (e) { showError("Silence failed: " + e.message); }
  }

  async function expire(id) {
    try {
      await api(`/ui/api/silences/${encodeURIComponent(id)}/expire`, { method: "POST", body: {} });
      await loadAlerts();
    } catch (e) { showError("Expire failed: " + e.message); }
  }

  async function loadAlerts() { renderAlerts(await api(`/ui/api/runs/${enc}/alerts`)); }

  function renderGrid() {
    if (!overview) return;
    const since = Date.now() / 1000 - fetchedAt;
    const byNode = new Map();
    for (const r of overview.ranks) {
      if (!byNode.has(r.node)) byNode.set(r.node, []);
      byNode.get(r.node).push(r);
    }
    const groups = [];
    for (const [node, ranks] of byNode) {
      const cells = ranks.map((r) => {
        const age = r.age_s == null ? null : r.age_s + since;
        const problems = r.problems.slice();
        if (age != null && age > overview.stale_after_s && !["closing", "crashed"].includes(r.status) && !problems.includes("stale")) problems.push("stale");
        const cls = ["rank-cell"].concat(problems.map((p) => "p-" + p));
        if (r.status === "closing") cls.push("p-closed");
        return el("div", { class: cls.join(" "), dataset: { rank: String(r.rank), problems: problems.join(" ") }, title: `rank ${r.rank} on ${node}: ${r.status || "?"}${problems.length ? " · " + problems.join(", ") : ""}` },
          el("div", { class: "rank-no" }, "r" + r.rank),
          el("div", { class: "small" }, r.step == null ? "–" : "step " + r.step),
          el("div", { class: "small muted" }, (r.lag ? "lag " + r.lag + " · " : "") + fmtAge(age)),
          problems.length ? el("div", { class: "small problem" }, problems.join(" ")) : null);
      });
      groups.push(el("div", { class: "node-group" }, el("div", { class: "node-name" }, node), el("div", { class: "cells" }, ...cells)));
    }
    $("grid").replaceChildren(...groups);
  }

  async function loadOverview() {
    overview = await api(`/ui/api/runs/${enc}/overview`);
    fetchedAt = Date.now() / 1000;
    const st = $("run-state");
    st.textContent = overview.state;
    st.className = "state state-" + overview.state;
    const nodes = new Set(overview.ranks.map((r) => r.node));
    $("run-info").textContent = `world ${overview.world ?? "?"} · ${nodes.size} node${nodes.size === 1 ? "" : "s"} · ${overview.metrics.length} metrics`;
    layoutCharts();
    renderGrid();
  }

  async function loadPanels() {
    const doc = await api(`/ui/api/runs/${enc}/panels`);
    // Goodput: ETTR and badput by cause, the slowest ranks' share by rank (live: the
    // panels refresh with the run's updates, at most every 2 s).
    const g = doc.goodput;
    $("ettr").textContent = g && g.ettr != null ? `ETTR ${(g.ettr * 100).toFixed(1)} % at step ${g.step}` : "";
    const wall = g && g.wall_s > 0 ? g.wall_s : 1;
    const share = (s) => ((s / wall) * 100).toFixed(1);
    const grows = g ? [
      ...Object.entries(g.badput_s).map(([cause, s]) => el("tr", {}, el("td", {}, cause), el("td", { class: "num" }, fmt(s)), el("td", { class: "num" }, share(s)))),
      ...Object.entries(g.slowest_by_rank).map(([rank, s]) => el("tr", {}, el("td", {}, `slowest rank ${rank}`), el("td", { class: "num" }, fmt(s)), el("td", { class: "num" }, share(s)))),
    ] : [];
    $("goodput").tBodies[0].replaceChildren(...(grows.length ? grows : [el("tr", {}, el("td", { colspan: "3", class: "muted" }, "no goodput yet"))]));
    const qrows = doc.quality.map((r) => el("tr", {}, el("td", {}, r.window), el("td", {}, r.metric), el("td", { class: "num" }, fmt(num(r.stats.last))), el("td", { class: "num" }, fmt(num(r.stats.mean)))));
    $("quality").tBodies[0].replaceChildren(...(qrows.length ? qrows : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "no quality metrics logged"))]));
    const crows = doc.crossrank.map((r) => el("tr", {}, el("td", {}, r.metric), el("td", { class: "num" }, r.step), el("td", { class: "num" }, fmt(num(r.mean))), el("td", { class: "num" }, `${fmt(num(r.min))} (r${r.argmin})`), el("td", { class: "num" }, `${fmt(num(r.max))} (r${r.argmax})`)));
    $("crossrank").tBodies[0].replaceChildren(...(crows.length ? crows : [el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no cross-rank stats yet"))]));
  }

  function refreshVisibleCharts() {
    for (const card of charts.values()) {
      if (card.visible && card.loaded && !card.loading) {
        card.loading = true;
        fetchDelta(card).catch((e) => showError(e.message)).finally(() => { card.loading = false; });
      }
    }
  }

  function syncUrl() {
    const p = new URLSearchParams();
    const closed = [], opened = [];
    for (const s of sectionBoxes.values()) {
      if (!flipped.has(s.id)) continue;
      (s.defaultClosed ? opened : closed).push(s.id);
    }
    if (closed.length) p.set("closed", closed.join(","));
    if (opened.length) p.set("open", opened.join(","));
    if (ui.glob.value.trim()) p.set("metrics", ui.glob.value.trim());
    if (ui.xaxis.value === "time") p.set("x", "time");
    if (ui.log.checked) p.set("log", "1");
    if (Number(ui.smoothing.value)) p.set("smooth", ui.smoothing.value);
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  }

  let typing = null;
  ui.glob.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { syncUrl(); layoutCharts(); applyAlerts(); }, 200); });
  ui.xaxis.addEventListener("change", () => {
    syncUrl();
    for (const card of charts.values()) {
      card.zoom = null; card.loaded = false; card.chart.setOptions({ by: ui.xaxis.value });
      if (card.visible) fetchFull(card).then(applyAlerts).catch((e) => showError(e.message));
    }
  });
  ui.log.addEventListener("change", () => { syncUrl(); for (const c of charts.values()) c.chart.setOptions({ log: ui.log.checked }); });
  ui.smoothing.addEventListener("input", () => {
    $("smoothing-val").textContent = Number(ui.smoothing.value).toFixed(2);
    syncUrl();
    for (const c of charts.values()) c.chart.setOptions({ smoothing: Number(ui.smoothing.value) });
  });
  window.addEventListener("resize", throttle(() => { for (const c of charts.values()) c.chart.draw(); }, 200));

  const onUpdate = throttle(refreshVisibleCharts, 250);
  const onOverview = throttle(() => loadOverview(), 1000);
  const onPanels = throttle(() => loadPanels(), 2000);
  const onAlerts = throttle(() => loadAlerts(), 200);
  const reloadAll = () => { for (const c of charts.values()) c.loaded = false; refreshVisibleCharts(); onOverview(); onAlerts(); };

  (async function start() {
    try {
      await loadOverview();
      document.body.dataset.loaded = "1";
    } catch (e) { showError("Could not load run: " + e.message); return; }
    loadAlerts().catch((e) => showError(e.message));
    loadPanels().catch((e) => showError(e.message));
    if (!window.SS.token()) {
      $("write-note").textContent = "Read-only: open the URL `stepstream serve` printed (with ?token=) to silence alerts.";
      $("write-note").hidden = false;
    }
    if (overview.live) {
      events(run, {
        update: () => { onUpdate(); onOverview(); onPanels(); },
        alert: () => { onAlerts(); onOverview(); },
        reload: reloadAll,
        status: (ok) => { $("live").className = "live " + (ok ? "on" : "off"); $("live").title = ok ? "live" : "reconnecting"; },
      });
    }
    setInterval(renderGrid, 1000); // heartbeat ages grow without any write
  })();
})();
