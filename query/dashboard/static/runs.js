// The runs page: every run with its state, size, progress and firing alerts; reloaded
// when the server pushes a notice (at most once a second), never polled per key.
// Ticking 2-6 runs opens the comparison page (one chart per metric, a line per run).
"use strict";

(function () {
  const { api, el, fmtAge, events, throttle } = window.SS;
  const glob = document.getElementById("glob");
  const stateSel = document.getElementById("state");
  const body = document.querySelector("#runs tbody");
  const count = document.getElementById("count");
  const error = document.getElementById("error");
  const live = document.getElementById("live");
  const q = new URLSearchParams(location.search);
  glob.value = q.get("glob") || "";
  const MAX_COMPARE = 6;
  const picked = new Set();
  const compareBtn = document.getElementById("compare");
  function syncPick() {
    compareBtn.disabled = picked.size < 2 || picked.size > MAX_COMPARE;
    compareBtn.textContent = `Compare selected (${picked.size})`;
    for (const box of body.querySelectorAll("input.pick")) box.disabled = !box.checked && picked.size >= MAX_COMPARE;
  }
  compareBtn.addEventListener("click", () => {
    location.href = "/compare?" + new URLSearchParams({ runs: [...picked].join(",") }).toString();
  });
  stateSel.value = q.get("state") || "";

  function badge(alert) {
    const where = alert.rank == null ? "" : ` r${alert.rank}`;
    const text = `${alert.rule}${where}`;
    if (alert.status === "pending")  // condition holding, `for` not elapsed: not firing yet
      return el("span", { class: "badge state-pending", dataset: { status: "pending" }, title: "pending: " + (alert.summary || text) }, "pending " + text);
    return el("span", { class: `badge sev-${alert.severity}`, dataset: { status: alert.status }, title: alert.summary || text }, text);
  }

  function row(r) {
    const link = el("a", { href: "/run/" + encodeURIComponent(r.run), class: "run-link" }, r.run);
    const nodes = r.nodes.length ? `${r.nodes.length}: ${r.nodes.slice(0, 4).join(", ")}${r.nodes.length > 4 ? "…" : ""}` : "–";
    const pick = el("input", { type: "checkbox", class: "pick", title: "compare this run", "aria-label": "compare " + r.run });
    pick.checked = picked.has(r.run);
    pick.addEventListener("change", () => { if (pick.checked) picked.add(r.run); else picked.delete(r.run); syncPick(); });
    return el(
      "tr",
      { dataset: { run: r.run, state: r.state } },
      el("td", { class: "pick" }, pick),
      el("td", {}, link),
      el("td", {}, el("span", { class: `state state-${r.state}` }, r.state)),
      el("td", { class: "num opt" }, r.world == null ? "–" : r.world),
      el("td", { class: "opt", title: r.nodes.join(", ") }, nodes),
      el("td", { class: "num" }, r.step == null ? "–" : r.step),
      el("td", { class: "num opt" }, r.step_rate == null ? "–" : r.step_rate.toFixed(2)),
      el("td", {}, fmtAge(Date.now() / 1000 - r.last_activity) + " ago"),
      el("td", { class: "badges" }, ...r.alerts.map(badge)),
    );
  }

  async function load() {
    const params = new URLSearchParams();
    if (glob.value.trim()) params.set("glob", glob.value.trim());
    try {
      let runs = await api("/ui/api/runs?" + params.toString());
      if (stateSel.value) runs = runs.filter((r) => r.state === stateSel.value);
      body.replaceChildren(...runs.map(row));
      syncPick();
      count.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}`;
      error.hidden = true;
      document.body.dataset.loaded = "1";
    } catch (e) {
      error.textContent = "Could not load runs: " + e.message;
      error.hidden = false;
    }
  }

  function syncUrl() {
    const p = new URLSearchParams();
    if (glob.value.trim()) p.set("glob", glob.value.trim());
    if (stateSel.value) p.set("state", stateSel.value);
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  }

  let typing = null;
  glob.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { syncUrl(); load(); }, 200); });
  stateSel.addEventListener("change", () => { syncUrl(); load(); });
  const reload = throttle(load, 1000);
  events(null, {
    update: reload,
    alert: reload,
    reload,
    status: (ok) => { live.className = "live " + (ok ? "on" : "off"); live.title = ok ? "live" : "reconnecting"; },
  });
  setInterval(load, 10000); // states age (silent) without any write
  load();

  // Served models (producers.serving): one link per model to its page.
  async function loadModels() {
    try {
      const models = await window.SS.api("/models");
      const list = document.getElementById("models");
      list.replaceChildren(...models.map((m) => window.SS.el("li", {},
        window.SS.el("a", { href: "/model/" + encodeURIComponent(m.model) }, m.model),
        " " + m.versions.join(", "))));
      document.getElementById("models-box").hidden = models.length === 0;
    } catch (e) { /* the runs table shows read errors */ }
  }
  loadModels();
  setInterval(loadModels, 10000);
})();
