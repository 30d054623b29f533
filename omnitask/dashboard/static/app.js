// The omnitask dashboard: plain JavaScript, no framework and nothing fetched from elsewhere.
//
// One page; the part after '#' picks the view (#/workers, #/queues, #/tasks, #/tasks/<id>,
// #/dead-letters). Views read the JSON API (relative URLs, so the dashboard also works under
// a path prefix) and refresh every 2 s; the overview tiles and the two charts every 1 s.
// Every text from the API goes into the page through textContent, never as HTML: task
// arguments, exception messages and tracebacks are data anyone who can send a task controls.
"use strict";

(function () {
  const VIEW_REFRESH_MS = 2000;
  const LIVE_REFRESH_MS = 1000;
  const STATES = ["PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"];

  // -- small helpers --------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      // Through the CSSOM: the page's Content-Security-Policy forbids style attributes.
      else if (key === "style") Object.assign(el.style, value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    // 428: a requeue or purge that waits for its confirmation; not an error.
    if (!response.ok && response.status !== 428) {
      const why = body && body.error ? body.error : response.status + " " + response.statusText;
      throw new HttpError(response.status, why);
    }
    return { status: response.status, body: body };
  }

  async function getJSON(path) {
    return (await request(path, { headers: { Accept: "application/json" } })).body;
  }

  function postJSON(path, data) {
    return request(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(data),
    });
  }

  function ago(ms, now) {
    if (ms === null || ms === undefined) return "-";
    return duration(Math.max(0, (now - ms) / 1000)) + " ago";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds === 0) return "0";
    if (seconds < 0.001) return Math.round(seconds * 1e6) + " µs";
    if (seconds < 1) return +(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0) + " ms";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " m " + Math.floor(seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " m";
    return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
  }

  function clock(ms) {
    if (ms === null || ms === undefined) return "-";
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function badge(text, cls) {
    return h("span", { class: "badge " + (cls || text) }, text);
  }

  function taskLink(id) {
    return h("a", { href: "#/tasks/" + encodeURIComponent(id), class: "mono" }, id);
  }

  function table(headers, rows, emptyText) {
    const head = h("tr", {}, headers.map((c) => h("th", { class: c.num ? "num" : null }, c.label || c)));
    const body = rows.length
      ? rows
      : [h("tr", {}, h("td", { class: "empty", colspan: headers.length }, emptyText || "nothing"))];
    return h("div", { class: "panel" }, h("table", {}, h("thead", {}, head), h("tbody", {}, body)));
  }

  function num(value) {
    return h("td", { class: "num" }, value === null || value === undefined ? "-" : value);
  }

  let toastTimer = null;
  function toast(text, isError) {
    const el = document.getElementById("toast");
    el.textContent = text;
    el.className = "toast" + (isError ? " error" : "");
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (el.hidden = true), 4000);
  }

  // The confirmation dialog: resolves true on Confirm, false on Cancel or Escape.
  function confirmDialog(text, okLabel, danger) {
    const modal = document.getElementById("modal");
    const ok = document.getElementById("modal-ok");
    const cancel = document.getElementById("modal-cancel");
    document.getElementById("modal-text").textContent = text;
    ok.textContent = okLabel;
    ok.className = danger ? "danger" : "primary";
    modal.hidden = false;
    ok.focus();
    return new Promise((resolve) => {
      function done(answer) {
        modal.hidden = true;
        ok.removeEventListener("click", onOk);
        cancel.removeEventListener("click", onCancel);
        document.removeEventListener("keydown", onKey);
        resolve(answer);
      }
      const onOk = () => done(true);
      const onCancel = () => done(false);
      const onKey = (e) => e.key === "Escape" && done(false);
      ok.addEventListener("click", onOk);
      cancel.addEventListener("click", onCancel);
      document.addEventListener("keydown", onKey);
    });
  }

  // A requeue or purge: ask the server what it would do, show that, then do it if confirmed.
  async function confirmed(path, body, okLabel) {
    try {
      const first = await postJSON(path, body);
      if (first.status !== 428) return first.body;
      if (!first.body.count) {
        toast("Nothing to do: no matching dead letters.");
        return null;
      }
      if (!(await confirmDialog(first.body.confirm, okLabel, path.endsWith("/purge")))) return null;
      return (await postJSON(path, Object.assign({}, body, { confirm: true }))).body;
    } catch (e) {
      toast(e.message, true);
      return null;
    }
  }

  // -- charts -----------------------------------------------------------------------------------

  const COLORS = { sent: "#8892a6", succeeded: "#1a7f37", failed: "#c62828", retried: "#b26a00" };

  function drawChart(canvas, times, series, format) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 44, right = 8, top = 8, bottom = 18;
    const plotW = width - left - right, plotH = height - top - bottom;
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    max = niceMax(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667085";
    ctx.strokeStyle = "#e3e6eb";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + plotW, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(format((max * i) / 4), left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const n = times.length;
    const ticks = [[0, "-" + n + " s", "left"], [Math.floor(n / 2), "-" + Math.ceil(n / 2) + " s", "center"], [n - 1, "now", "right"]];
    for (const [i, label, align] of ticks) {
      ctx.textAlign = align;
      ctx.fillText(label, left + (plotW * i) / Math.max(1, n - 1), top + plotH + 4);
    }
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      s.values.forEach((v, i) => {
        if (v === null) {
          drawing = false;
          return;
        }
        const x = left + (plotW * i) / Math.max(1, n - 1);
        const y = top + plotH - (max ? (plotH * v) / max : 0);
        if (drawing) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        drawing = true;
      });
      ctx.stroke();
      // A second with a value between two without draws no line: give it a dot.
      ctx.fillStyle = s.color;
      s.values.forEach((v, i) => {
        const alone = (i === 0 || s.values[i - 1] === null) && (i === n - 1 || s.values[i + 1] === null);
        if (v === null || !alone) return;
        ctx.beginPath();
        ctx.arc(left + (plotW * i) / Math.max(1, n - 1), top + plotH - (max ? (plotH * v) / max : 0), 2, 0, 2 * Math.PI);
        ctx.fill();
      });
    }
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * exp) return step * exp;
    return 10 * exp;
  }

  function legend(el, series) {
    el.replaceChildren(...series.map((s) => h("span", {}, h("i", { style: { background: s.color } }), s.label)));
  }

  function drawLive(data) {
    const counts = ["sent", "succeeded", "failed", "retried"].map((k) => ({
      label: k,
      color: COLORS[k],
      values: data[k],
    }));
    drawChart(document.getElementById("chart-throughput"), data.t, counts, (v) => String(+v.toFixed(1)));
    legend(document.getElementById("legend-throughput"), counts);
    const runtimes = [
      { label: "p50", color: "#3559e0", values: data.runtime_p50 },
      { label: "p95", color: "#d97706", values: data.runtime_p95 },
    ];
    drawChart(document.getElementById("chart-runtime"), data.t, runtimes, (v) => duration(v));
    legend(document.getElementById("legend-runtime"), runtimes);
  }

  function drawOverview(o) {
    document.getElementById("app-name").textContent = o.app;
    document.title = "omnitask: " + o.app;
    const tiles = [
      ["workers", o.workers, "workers alive"],
      ["ready", o.ready, "ready"],
      ["delayed", o.delayed, "delayed"],
      ["in-flight", o.in_flight, "in flight"],
      ["dead", o.dead, "dead letters"],
      ["succeeded", o.window.succeeded, "succeeded (window)"],
      ["failed", o.window.failed, "failed (window)"],
    ];
    document.getElementById("overview").replaceChildren(
      ...tiles.map(([id, value, label]) =>
        h("div", { class: "tile", id: "tile-" + id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label))
      )
    );
  }

  async function refreshLive() {
    const status = document.getElementById("status");
    try {
      const [overview, series] = await Promise.all([getJSON("api/overview"), getJSON("api/throughput?seconds=60")]);
      drawOverview(overview);
      drawLive(series);
      status.textContent = "updated " + clock(Date.now());
      status.className = "status";
    } catch (e) {
      status.textContent = e.status === 401 ? "not authorized" : "error: " + e.message;
      status.className = "status error";
    }
  }

  // -- views ------------------------------------------------------------------------------------

  const views = {};

  // A refresh that brings what the page already shows leaves it alone, so a button under the
  // pointer, an open menu or a text selection survives the 2 s refresh. `view.shown` is cleared
  // on navigation, when the page is emptied.
  function unchanged(root, view, data) {
    const key = JSON.stringify(data);
    if (view.shown === key && root.childElementCount) return true;
    view.shown = key;
    return false;
  }

  views.workers = {
    async render(root) {
      const workers = await getJSON("api/workers");
      const now = Date.now();
      const rows = workers.map((w) =>
        h(
          "tr",
          { "data-worker": w.name },
          h("td", { class: "mono" }, w.name),
          h("td", {}, badge(w.alive ? "alive" : "stale")),
          h("td", {}, w.alive ? w.host + " / " + w.pid : "-"),
          num(w.alive ? w.processes + " / " + w.concurrency : "-"),
          h("td", {}, (w.queues || []).join(", ") || "-"),
          h("td", {}, w.current.length ? w.current.map((t) => h("div", {}, taskLink(t.task_id), " ", t.name)) : "idle"),
          h("td", {}, duration(w.heartbeat_age_s) + " ago"),
          h("td", {}, w.alive ? ago(w.started_ms, now) : "-"),
          num(w.succeeded),
          num(w.failed),
          num(w.retried)
        )
      );
      root.replaceChildren(
        h("h2", {}, "Workers"),
        table(
          [
            "Worker", "State", "Host / PID", { label: "Processes", num: true }, "Queues", "Current tasks",
            "Heartbeat", "Started", { label: "Succeeded", num: true }, { label: "Failed", num: true },
            { label: "Retried", num: true },
          ],
          rows,
          "no workers: start one with 'omnitask worker -A <app>'"
        ),
        h("p", { class: "note" }, "Succeeded, failed and retried: counted over the event window (the events the stream still holds).")
      );
    },
  };

  views.queues = {
    async render(root) {
      const queues = await getJSON("api/queues");
      if (unchanged(root, this, queues)) return;
      const rows = queues.map((q) =>
        h(
          "tr",
          { "data-queue": q.name },
          h("td", { class: "mono" }, q.name),
          num(q.ready),
          h("td", { class: "mono" }, Object.entries(q.ready_by_priority).map(([p, n]) => p + ":" + n).join(" ") || "-"),
          num(q.delayed),
          num(q.in_flight),
          num(q.consumers),
          h("td", {}, q.oldest_age_s === null ? "-" : duration(q.oldest_age_s)),
          num(q.in_per_s.toFixed(2)),
          num(q.out_per_s.toFixed(2)),
          num(q.dead),
          h("td", {}, q.paused ? badge("paused") : "active")
        )
      );
      root.replaceChildren(
        h("h2", {}, "Queues"),
        table(
          [
            "Queue", { label: "Ready", num: true }, "By priority", { label: "Delayed", num: true },
            { label: "In flight", num: true }, { label: "Consumers", num: true }, "Oldest",
            { label: "In / s", num: true }, { label: "Out / s", num: true }, { label: "Dead", num: true }, "State",
          ],
          rows,
          "no queues yet: send a task"
        ),
        h("p", { class: "note" }, "In / s: tasks sent or retried into the queue; out / s: tasks workers started; both over the last 60 s.")
      );
    },
  };

  // The task list keeps its search form across refreshes: only the results are redrawn.
  views.tasks = {
    form: null,
    setup(root) {
      const id = h("input", { name: "id", placeholder: "task id", size: 34, class: "mono" });
      const name = h("input", { name: "name", placeholder: "task name" });
      const state = h("select", { name: "state" }, h("option", { value: "" }, "any state"), STATES.map((s) => h("option", { value: s }, s)));
      this.form = h(
        "form",
        { class: "search", id: "task-search", onsubmit: (e) => { e.preventDefault(); this.refresh(); } },
        id, name, state, h("button", { type: "submit", class: "primary" }, "Search")
      );
      this.results = h("div", { id: "task-results" });
      root.replaceChildren(h("h2", {}, "Tasks"), this.form, this.results);
    },
    async render(root) {
      if (!this.form || !root.contains(this.form)) this.setup(root);
      await this.refresh();
    },
    async refresh() {
      const params = new URLSearchParams();
      for (const field of ["id", "name", "state"]) {
        const value = this.form.elements[field].value.trim();
        if (value) params.set(field, value);
      }
      params.set("limit", "200");
      const data = await getJSON("api/tasks?" + params.toString());
      const rows = data.tasks.map((t) =>
        h(
          "tr",
          { "data-task": t.id },
          h("td", {}, taskLink(t.id)),
          h("td", {}, t.name),
          h("td", {}, badge(t.state)),
          h("td", {}, t.queue || "-"),
          h("td", { class: "mono" }, t.worker || "-"),
          h("td", {}, clock(t.sent_ms)),
          h("td", {}, duration(t.runtime_s)),
          num(t.retries),
          h("td", {}, clock(t.last_ms))
        )
      );
      this.results.replaceChildren(
        table(["Task id", "Name", "State", "Queue", "Worker", "Sent", "Runtime", { label: "Retries", num: true }, "Last event"], rows, "no matching task in the event window"),
        h("p", { class: "note" }, data.total + " matching task(s) among the events of the last " + duration(data.window_s) + " (the event window); newest first.")
      );
    },
  };

  function facts(pairs) {
    return h("dl", { class: "facts" }, pairs.filter((p) => p[1] !== null && p[1] !== undefined && p[1] !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  views.task = {
    async render(root, id) {
      let data;
      try {
        data = await getJSON("api/tasks/" + encodeURIComponent(id));
      } catch (e) {
        if (e.status !== 404) throw e;
        root.replaceChildren(h("h2", {}, "Task ", h("span", { class: "mono" }, id)), h("p", {}, "Neither Redis nor the event window knows this task (yet, or any more)."));
        return;
      }
      const s = data.summary;
      const result = data.result;
      const message = data.message;
      const parts = [h("h2", {}, (s && s.name) || (message && message.task) || "Task", " ", h("span", { class: "mono" }, data.id))];
      parts.push(
        h("div", { class: "panel", id: "task-summary" }, facts([
          ["State", result ? badge(result.state) : s ? badge(s.state) : "-"],
          ["Queue", s ? s.queue : message ? message.queue : null],
          ["Worker", (result && result.worker) || (s && s.worker)],
          ["Sent", s ? clock(s.sent_ms) : message ? message.sent : null],
          ["Started", s ? clock(s.started_ms) : null],
          ["Finished", s ? clock(s.finished_ms) : null],
          ["Runtime", duration((result && result.runtime_s) || (s && s.runtime_s))],
          ["Retries", result ? result.retries : s ? s.retries : null],
        ]))
      );
      parts.push(h("h3", {}, "Arguments"));
      if (message) {
        parts.push(h("div", { class: "panel", id: "task-message" }, facts([
          ["Where", message.where],
          ["args", h("span", { class: "mono" }, message.args)],
          ["kwargs", h("span", { class: "mono" }, message.kwargs)],
          ["Priority", message.priority],
          ["ETA", message.eta],
          ["Expires", message.expires],
          ["Serializer", message.serializer],
        ])));
      } else {
        parts.push(h("p", { class: "note" }, "The message is no longer in Redis (it ran and was acknowledged), so its arguments are gone: events do not carry them."));
      }
      parts.push(h("h3", {}, "Result"));
      if (result) {
        parts.push(h("div", { class: "panel", id: "task-result" }, facts([
          ["State", badge(result.state)],
          ["Recorded", clock(result.date_ms)],
          ["Result", result.result === null ? null : h("span", { class: "mono" }, result.result)],
          ["Exception", result.exception_type ? result.exception_type + ": " + (result.exception || "") : null],
        ])));
        if (result.traceback) parts.push(h("h3", {}, "Traceback"), h("pre", { id: "task-traceback" }, result.traceback));
      } else {
        parts.push(h("p", { class: "note" }, "No result record: the task has not finished, stores no result, or its result expired."));
      }
      parts.push(h("h3", {}, "Timeline"));
      const rows = data.timeline.map((e) => {
        const skip = new Set(["kind", "time", "task_id", "name", "queue", "worker", "ms", "worker_name", "runtime_s"]);
        const details = Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => k + "=" + v).join(" ");
        return h("tr", {}, h("td", {}, clock(e.ms)), h("td", {}, e.kind), h("td", { class: "mono" }, e.worker || "-"), h("td", {}, e.runtime_s !== undefined ? duration(e.runtime_s) : ""), h("td", { class: "mono" }, details));
      });
      parts.push(table(["Time", "Event", "Worker", "Runtime", "Details"], rows, "no events of this task in the event window"));
      root.replaceChildren(...parts);
    },
  };

  views["dead-letters"] = {
    queue: "",
    async render(root) {
      const params = new URLSearchParams({ limit: "200" });
      if (this.queue) params.set("queue", this.queue);
      const data = await getJSON("api/dead-letters?" + params.toString());
      if (unchanged(root, this, [this.queue, data])) return;
      const queues = Object.keys(data.counts);
      const select = h(
        "select",
        { id: "dlq-queue", onchange: (e) => { this.queue = e.target.value; refreshView(); } },
        h("option", { value: "" }, "every queue (" + data.total + ")"),
        queues.map((q) => h("option", { value: q, selected: q === this.queue }, q + " (" + data.counts[q] + ")"))
      );
      const scope = this.queue ? { queue: this.queue } : {};
      const toolbar = h(
        "div",
        { class: "toolbar" },
        select,
        h("button", { type: "button", id: "requeue-all", onclick: () => this.act("api/dead-letters/requeue", Object.assign({ all: true }, scope), "Requeue") }, "Requeue all"),
        h("button", { type: "button", id: "purge", class: "danger", onclick: () => this.act("api/dead-letters/purge", scope, "Delete") }, "Purge…")
      );
      const rows = data.letters.map((d) =>
        h(
          "tr",
          { "data-letter": d.id },
          h("td", {}, clock(d.ms)),
          h("td", {}, d.queue),
          h("td", {}, badge(d.reason, "FAILURE")),
          h("td", {}, d.task || "-"),
          h("td", {}, d.task_id ? taskLink(d.task_id) : "-"),
          h("td", {}, d.detail),
          h("td", { class: "mono" }, d.envelope ? d.envelope.args + " " + d.envelope.kwargs : "(not a valid message)"),
          h(
            "td",
            {},
            d.requeueable
              ? h("button", { type: "button", class: "small requeue", "data-id": d.id, onclick: () => this.act("api/dead-letters/requeue", { queue: d.queue, ids: [d.id] }, "Requeue") }, "Requeue")
              : "-"
          )
        )
      );
      root.replaceChildren(
        h("h2", {}, "Dead letters"),
        toolbar,
        table(["Time", "Queue", "Reason", "Task", "Task id", "Detail", "Arguments", ""], rows, "no dead letters")
      );
    },
    async act(path, body, label) {
      const result = await confirmed(path, body, label);
      if (result === null) return;
      if (result.errors && result.errors.length) toast(result.errors.join("; "), true);
      else if ("requeued" in result) toast("Requeued " + result.requeued + " dead letter(s).");
      else toast("Deleted " + result.deleted + " dead letter(s).");
      refreshView();
    },
  };

  // -- routing ----------------------------------------------------------------------------------

  let current = null;
  let busy = false;
  let routeChanged = false; // a navigation that came while a view was loading

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [page, ...rest] = hash.split("/");
    if (page === "tasks" && rest.length) return { name: "task", view: views.task, arg: decodeURIComponent(rest.join("/")), nav: "tasks" };
    if (views[page]) return { name: page, view: views[page], arg: null, nav: page };
    return { name: "workers", view: views.workers, arg: null, nav: "workers" };
  }

  async function refreshView(changed) {
    if (busy) {
      routeChanged = routeChanged || changed === true;
      return;
    }
    if (!changed && !document.getElementById("modal").hidden) return;
    busy = true;
    const root = document.getElementById("page");
    const r = route();
    if (changed) {
      document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === r.nav));
      if (current !== r.name) {
        root.replaceChildren();
        r.view.shown = null;
      }
      current = r.name;
    }
    try {
      await r.view.render(root, r.arg);
      root.dataset.view = r.name;
    } catch (e) {
      r.view.shown = null;
      root.replaceChildren(h("p", { class: "note" }, e.status === 401 ? "Not authorized: open the dashboard with ?token=… or sign in." : "Could not load: " + e.message));
    } finally {
      busy = false;
    }
    if (routeChanged) {
      routeChanged = false;
      refreshView(true);
    }
  }

  window.addEventListener("hashchange", () => refreshView(true));
  window.addEventListener("resize", refreshLive);
  document.addEventListener("DOMContentLoaded", () => {
    refreshView(true);
    refreshLive();
    setInterval(refreshView, VIEW_REFRESH_MS);
    setInterval(refreshLive, LIVE_REFRESH_MS);
  });
})();
