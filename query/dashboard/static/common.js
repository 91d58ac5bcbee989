// Shared helpers of the dashboard pages. Data reaches the DOM only as textContent or
// attribute values (never innerHTML): run ids, metric names and alert texts stay text.
"use strict";

(function () {
  const TOKEN_KEY = "stepstream.token";
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function api(path, opts) {
    opts = opts || {};
    const headers = {};
    const t = token();
    if (t) headers["X-Stepstream-Token"] = t;
    let body;
    if (opts.body !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(opts.body); }
    const resp = await fetch(path, { method: opts.method || "GET", headers, body, credentials: "same-origin" });
    if (!resp.ok) {
      let detail = resp.status + " " + resp.statusText;
      try { const doc = await resp.json(); if (doc.detail) detail = typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail); } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    return resp.json();
  }

  // el("td", {class: "x", title: name}, "text", child): strings become text nodes.
  function el(tag, attrs) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, String(v));
    }
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function num(v) { return typeof v === "string" ? Number(v) : v; }

  function fmtAge(s) {
    if (s == null) return "–";
    if (s < 1) return "<1s";
    if (s < 120) return Math.round(s) + "s";
    if (s < 7200) return Math.round(s / 60) + "m";
    return Math.round(s / 3600) + "h";
  }

  function fmtTime(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "–"; }

  // Server-sent events of one run (or all runs): the server pushes a notice when the
  // sink wrote, and each alert transition; handlers fetch what they need.
  function events(run, handlers) {
    const q = new URLSearchParams();
    if (run) q.set("run", run);
    const t = token();
    if (t) q.set("token", t);
    let source = null;
    function open() {
      source = new EventSource("/ui/api/events?" + q.toString());
      source.addEventListener("hello", () => handlers.status && handlers.status(true));
      source.addEventListener("update", (e) => handlers.update && handlers.update(JSON.parse(e.data)));
      source.addEventListener("alert", (e) => handlers.alert && handlers.alert(JSON.parse(e.data)));
      source.addEventListener("reload", () => handlers.reload && handlers.reload());
      source.onerror = () => { handlers.status && handlers.status(false); };
    }
    // Browsers give a host 6 HTTP/1.1 connections and each stream holds one, so a
    // seventh tab would stall. A tab hidden for a while gives its stream back, and on
    // showing again reopens it and reloads what it missed.
    let hiddenTimer = null;
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        hiddenTimer = setTimeout(() => { if (source) { source.close(); source = null; } }, 5000);
        return;
      }
      clearTimeout(hiddenTimer);
      if (!source) {
        open();
        handlers.reload && handlers.reload();
      }
    });
    open();
    return { close: () => source && source.close() };
  }

  // Call fn at most once per `ms`, the last call winning (coalesces bursts of notices).
  function throttle(fn, ms) {
    let timer = null, last = 0, pending = false;
    return function () {
      pending = true;
      if (timer) return;
      const wait = Math.max(0, last + ms - Date.now());
      timer = setTimeout(async () => {
        timer = null;
        if (!pending) return;
        pending = false;
        last = Date.now();
        try { await fn(); } catch (e) { console.warn(e); }
      }, wait);
    };
  }

  function download(name, text) {
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function csvCell(v) {
    const s = String(v);
    // Quote, and defuse spreadsheet formulas in names (=, +, -, @ first).
    return /[",\n]|^[=+\-@]/.test(s) && !/^-?[0-9.]+(e[-+]?[0-9]+)?$/i.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function globToRegExp(glob) {
    const parts = glob.split(",").map((p) => p.trim()).filter(Boolean);
    if (!parts.length) return null;
    const res = parts.map((p) => {
      if (!/[*?[]/.test(p)) return p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      return "^" + p.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$";
    });
    return new RegExp(res.join("|"));
  }

  window.SS = { api, el, num, fmtAge, fmtTime, events, throttle, download, csvCell, token, globToRegExp };
})();
