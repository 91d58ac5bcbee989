// A served model's page: performance (over all windows and the newest ones) and drift
// per feature of the newest judged window, refreshed every few seconds. Text only.
"use strict";

(function () {
  const { api, el } = window.SS;
  const model = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("model-id").textContent = model;
  const METRICS = ["predictions", "labeled", "label_coverage", "accuracy", "precision", "recall",
    "f1", "auc", "mse", "mae", "ctr", "conversion_rate"];

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
    return String(v);
  }

  function fill(table, header, rows) {
    table.replaceChildren();
    table.append(el("tr", {}, ...header.map((h) => el("th", {}, h))));
    for (const row of rows) table.append(el("tr", {}, ...row.map((c) => el("td", {}, fmt(c)))));
  }

  function query() {
    const p = new URLSearchParams();
    const version = document.getElementById("version").value.trim();
    const segment = document.getElementById("segment").value.trim();
    if (version) p.set("version", version);
    if (segment) p.set("segment", segment);
    return p.toString() ? "?" + p.toString() : "";
  }

  async function refresh() {
    const error = document.getElementById("error");
    try {
      const q = query();
      const name = encodeURIComponent(model);
      const [perf, drift] = await Promise.all([
        api(`/models/${name}/performance${q}`),
        api(`/models/${name}/drift${q.replace(/segment=[^&]*&?/, "")}`),
      ]);
      const columns = [];
      if (perf.total) columns.push(["all windows", perf.total]);
      for (const w of perf.windows.slice(-6)) columns.push([new Date(w.start * 1000).toLocaleTimeString(), w]);
      fill(document.getElementById("performance"), ["metric", ...columns.map((c) => c[0])],
        METRICS.map((m) => [m, ...columns.map((c) => c[1][m])]));
      document.getElementById("outcomes").textContent =
        `version ${perf.version} · segment ${perf.segment} · segments: ${perf.segments.join(", ") || "–"} · ` +
        `outcomes: ${Object.entries(perf.outcomes).map(([k, v]) => k + " " + v).join(", ") || "–"}`;
      const latest = drift.latest;
      const rows = [];
      if (latest) {
        const features = Object.entries(latest.features);
        if (latest.score) features.push(["(score)", latest.score]);
        for (const [name, f] of features) {
          const q = f.quality || {};
          rows.push([name, f.kind, f.n, f.psi, f.js, f.threshold,
            f.ks ? `${fmt(f.ks.value)} ± ${fmt(f.ks.error_bound)}` : "–",
            f.wasserstein ? `${fmt(f.wasserstein.value)} ± ${fmt(f.wasserstein.error_bound)}` : "–",
            f.drift ? "DRIFT" : "",
            ["missing", "type", "range", "unseen"].map((k) => q[k] || 0).join("/")]);
        }
        document.getElementById("drift-title").textContent =
          `window at ${new Date(latest.start * 1000).toLocaleTimeString()} · ${latest.predictions} predictions · ` +
          `reference: ${latest.reference} · firing: ${drift.firing.join(", ") || "none"}`;
      }
      fill(document.getElementById("drift"), ["feature", "kind", "n", "PSI", "JS", "threshold",
        "KS ± bound", "W1 ± bound", "drift", "missing/type/range/unseen"], rows);
      fill(document.getElementById("history"), ["window", "predictions", "drifted"],
        drift.history.slice(-12).reverse().map((h) =>
          [new Date(h.start * 1000).toLocaleTimeString(), h.predictions, h.drifted.join(", ") || "–"]));
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      error.hidden = true;
    } catch (e) {
      error.textContent = String(e.message || e);
      error.hidden = false;
    }
  }

  for (const id of ["version", "segment"]) document.getElementById(id).addEventListener("change", refresh);
  refresh();
  setInterval(refresh, 5000);
})();
