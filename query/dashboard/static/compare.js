// The comparison page: 2-6 runs side by side, one chart per metric with a line per run
// (the mean over ranks at each step, or one chosen rank), metrics in the run page's
// sections. Everything it shows is in its URL (?runs=a,b&rank=3&metrics=loss), so the
// URL can be shared. Live: a notice that one of these runs was written re-fetches the
// charts on screen (at most every 2 s).
"use strict";

(function () {
  const { api, el, globToRegExp, events, throttle } = window.SS;
  const { Chart } = window.StepChart;
  const $ = (id) => document.getElementById(id);
  const q = new URLSearchParams(location.search);
  const runs = (q.get("runs") || "").split(",").map((r) => r.trim()).filter(Boolean);
  const ui = { glob: $("metric-glob"), mode: $("rank-mode"), rank: $("rank"), log: $("logscale") };
  ui.glob.value = q.get("metrics") || "";
  const rankParam = q.get("rank");
  ui.mode.value = rankParam == null || rankParam === "mean" ? "mean" : "rank";
  ui.rank.value = ui.mode.value === "rank" ? rankParam : "0";
  $("rank-box").hidden = ui.mode.value !== "rank";
  $("run-list").textContent = runs.join(" vs ");
  document.title = "stepstream · compare " + runs.join(", ");

  const charts = new Map(); // metric -> card
  let doc = null;

  function showError(msg) { $("error").textContent = msg; $("error").hidden = !msg; }
  const runsParam = () => runs.join(",");

  async function fetchChart(card) {
    const p = new URLSearchParams({ runs: runsParam(), metric: card.metric, points: String(Math.max(200, Math.round((card.chart.root.clientWidth || 600) * 1.5))) });
    if (ui.mode.value === "rank") p.set("rank", ui.rank.value || "0");
    const d = await api("/ui/api/compare/chart?" + p.toString());
    // line.rank is the run's index: it picks the colour and what the legend toggles
    card.chart.setData(d.lines.map((l) => ({ rank: l.rank, run: l.run, x: l.x, y: l.y.map(Number) })));
    card.loaded = true;
  }

  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const card = charts.get(entry.target.dataset.metric);
      if (card && entry.isIntersecting && !card.loaded && !card.loading) {
        card.loading = true;
        fetchChart(card).catch((e) => showError(e.message)).finally(() => { card.loading = false; });
      }
    }
  }, { rootMargin: "200px" });

  function makeCard(metric, container) {
    const box = el("div", { class: "chart-card", dataset: { metric } }, el("div", { class: "chart-head" }, el("h3", { class: "chart-title", title: metric }, metric)));
    container.append(box);
    const card = { metric, box, loaded: false };
    card.chart = new Chart(box, { by: "step", log: ui.log.checked, band: false, label: (line) => line.run });
    observer.observe(box);
    return card;
  }

  function layout() {
    const re = globToRegExp(ui.glob.value);
    const root = $("sections");
    for (const card of charts.values()) observer.unobserve(card.box);
    charts.clear();
    root.replaceChildren();
    for (const sec of doc.sections) {
      // internal series and per-layer families are left out unless a glob asks for them
      const names = doc.metrics.filter((m) => m.section === sec.id && (re ? re.test(m.name) : !sec.collapsed && !m.per_layer)).map((m) => m.name);
      if (!names.length) continue;
      const body = el("div", { class: "charts" });
      root.append(el("section", { class: "metric-section", dataset: { section: sec.id } }, el("h2", {}, `${sec.title} (${names.length})`), body));
      for (const name of names) charts.set(name, makeCard(name, body));
    }
    document.body.dataset.charts = String(charts.size);
  }

  function syncUrl() {
    const p = new URLSearchParams({ runs: runsParam() });
    if (ui.mode.value === "rank") p.set("rank", ui.rank.value || "0");
    if (ui.glob.value.trim()) p.set("metrics", ui.glob.value.trim());
    if (ui.log.checked) p.set("log", "1");
    history.replaceState(null, "", location.pathname + "?" + p.toString());
  }

  function refetch() { for (const c of charts.values()) { c.loaded = false; if (c.box.isConnected) fetchChart(c).catch((e) => showError(e.message)); } }

  let typing = null;
  ui.glob.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { syncUrl(); layout(); }, 200); });
  ui.mode.addEventListener("change", () => { $("rank-box").hidden = ui.mode.value !== "rank"; syncUrl(); refetch(); });
  ui.rank.addEventListener("change", () => { syncUrl(); refetch(); });
  ui.log.checked = q.get("log") === "1";
  ui.log.addEventListener("change", () => { syncUrl(); for (const c of charts.values()) c.chart.setOptions({ log: ui.log.checked }); });

  (async function start() {
    try {
      doc = await api("/ui/api/compare?" + new URLSearchParams({ runs: runsParam() }).toString());
    } catch (e) { showError("Could not compare: " + e.message); return; }
    layout();
    document.body.dataset.loaded = "1";
    const onUpdate = throttle(() => {
      for (const c of charts.values()) if (c.loaded) fetchChart(c).catch((e) => showError(e.message));
    }, 2000);
    // one stream for all runs (a stream per run would take 6 of the browser's 6
    // connections to this host); notices name their run
    events(null, {
      update: (notice) => { if (notice && runs.includes(notice.run)) onUpdate(); },
      reload: onUpdate,
    });
  })();
})();
