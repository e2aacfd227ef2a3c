// Volley's dashboard: polls /dashboard/state every second and renders it.
//
// Plain JavaScript, no build step. The operator key, when the page is opened on the API
// listener, comes from the URL's fragment (#key=…), which the browser never sends to a
// server; it goes out only as the Authorization header of the state requests.
"use strict";

(function () {
  const POLL_MS = 1000;
  const STATE_URL = "/dashboard/state";

  const $ = (id) => document.getElementById(id);

  function operatorKey() {
    const fragment = window.location.hash.replace(/^#/, "");
    const value = new URLSearchParams(fragment).get("key");
    return value ? value.trim() : null;
  }

  // ---- formatting -------------------------------------------------------------------------

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  function count(n) {
    return integer.format(n || 0);
  }

  function rate(n) {
    return n >= 100 ? integer.format(n) : decimal.format(n || 0);
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    return h + " h " + (m % 60) + " min";
  }

  // ---- DOM helpers (textContent only: every value is data, never markup) -------------------

  function el(tag, options, children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.className) node.className = o.className;
    if (o.title) node.title = o.title;
    if (o.attrs) {
      for (const [name, value] of Object.entries(o.attrs)) node.setAttribute(name, String(value));
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function numberCell(value, className) {
    return el("td", {
      text: count(value),
      className: "num" + (className ? " " + className : ""),
      attrs: { "data-value": value || 0 },
    });
  }

  function badge(text, kind, title) {
    return el("span", { text, className: "badge " + kind, title });
  }

  function fill(tableId, emptyId, rows) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren(...rows);
    $(tableId).hidden = rows.length === 0;
    $(emptyId).hidden = rows.length !== 0;
  }

  // ---- sections ----------------------------------------------------------------------------

  const STATE_KIND = {
    queued: "neutral",
    running: "info",
    done: "good",
    cancelling: "warn",
    cancelled: "warn",
  };

  function renderTiles(state) {
    const t = state.totals;
    $("tile-active-jobs").textContent = count(t.active_jobs);
    $("tile-pending").textContent = count(t.pending_notifications);
    $("tile-pending-max").textContent = t.max_pending_notifications
      ? "of " + count(t.max_pending_notifications) + " allowed"
      : "";
    const last = state.rate.length ? state.rate[state.rate.length - 1] : null;
    $("tile-rate").textContent = last ? rate(last.delivered_per_second) : "–";
    $("tile-agents").textContent = count(t.agents);
    const open = state.agents.reduce((n, a) => n + a.paused.length, 0);
    $("tile-breakers").textContent = open ? open + " breaker(s) open" : "all breakers closed";
    $("tile-breakers").className = "sub" + (open ? " bad-text" : "");
    $("tile-queued").textContent = count(t.queued_chunks);
    $("tile-redispatched").textContent = count(t.chunks_redispatched) + " redispatched";
    const c = state.controller;
    $("tile-controller").textContent = c.address || "–";
    $("tile-controller-store").textContent =
      (c.store || "") + (c.term !== null && c.term !== undefined ? " · term " + c.term : "");
  }

  function renderJobs(state) {
    const rows = state.jobs.map((job) => {
      const percent = Math.round(job.progress * 1000) / 10;
      const bar = el("div", {
        className: "bar",
        attrs: {
          role: "progressbar",
          "aria-valuemin": 0,
          "aria-valuemax": 100,
          "aria-valuenow": percent,
        },
      }, [el("span", { className: "fill " + (STATE_KIND[job.state] || "neutral") })]);
      bar.firstChild.style.width = percent + "%";
      const notes = [];
      if (job.waiting) notes.push(el("div", { text: job.waiting, className: "warn-text" }));
      for (const f of job.failures) {
        notes.push(el("div", {
          text: f.platform + " " + f.class + ": " + f.reason + " × " + count(f.count),
          className: "bad-text",
        }));
      }
      if (job.cancelled) notes.push(el("div", { text: count(job.cancelled) + " cancelled" }));
      const age = job.finished_ms
        ? "took " + duration(job.finished_ms - job.created_ms)
        : duration(state.now_ms - job.created_ms);
      return el("tr", {
        attrs: { "data-job-id": job.id, "data-state": job.state, "data-progress": job.progress },
      }, [
        el("td", { text: job.id.slice(0, 8), className: "mono", title: job.id }),
        el("td", { text: job.app }),
        el("td", {}, [badge(job.state, STATE_KIND[job.state] || "neutral")]),
        el("td", { className: "progress-col" }, [
          bar,
          el("span", { text: percent.toFixed(1) + " %", className: "percent" }),
        ]),
        numberCell(job.accepted, "accepted"),
        numberCell(job.delivered, "delivered"),
        numberCell(job.invalid, "invalid"),
        numberCell(job.failed, "failed"),
        numberCell(job.pending, "pending"),
        el("td", { text: age, className: "nowrap" }),
        el("td", { className: "notes" }, notes),
      ]);
    });
    fill("jobs", "jobs-empty", rows);
  }

  function renderAgents(state) {
    const rows = state.agents.map((agent) => {
      const breakers = agent.paused.length
        ? agent.paused.map((p) =>
            badge("open: " + p.app + "/" + p.platform, "bad",
              "chunks kept off this agent for " + duration(p.for_ms) + " more"))
        : [badge("closed", "good", "no queue paused on this agent")];
      const link = el("a", { text: "/metrics", attrs: { href: "http://" + agent.ops_addr + "/metrics", rel: "noreferrer" } });
      return el("tr", { attrs: { "data-agent": agent.name } }, [
        el("td", {}, [
          el("div", { text: agent.name }),
          el("div", { text: agent.addr, className: "muted mono" }),
        ]),
        numberCell(agent.in_flight, "in-flight"),
        numberCell(agent.chunks_done, "chunks-done"),
        el("td", { className: "breakers" }, breakers),
        el("td", {}, [link]),
      ]);
    });
    fill("agents", "agents-empty", rows);
  }

  function renderQueues(state) {
    const rows = state.queues.map((q) => {
      let status;
      if (q.waiting_for_agent) status = badge("waiting for an agent", "bad", q.waiting || "");
      else if (q.waiting) status = badge("stalled", "warn", q.waiting);
      else if (q.paused_agents) status = badge(q.paused_agents + " agent(s) paused", "warn");
      else if (q.in_flight) status = badge("sending", "info");
      else status = badge("idle", "neutral");
      return el("tr", {}, [
        el("td", { text: q.app }),
        el("td", { text: q.platform }),
        numberCell(q.chunks),
        numberCell(q.notifications),
        numberCell(q.in_flight),
        el("td", {}, [status].concat(q.waiting ? [el("div", { text: q.waiting, className: "muted" })] : [])),
      ]);
    });
    fill("queues", "queues-empty", rows);
  }

  const OUTCOME_KIND = { delivered: "good", invalid: "warn", failed: "bad", cancelled: "neutral" };

  function renderOutcomes(state) {
    const outcomes = state.outcomes.slice().sort((a, b) =>
      a.app.localeCompare(b.app) || a.platform.localeCompare(b.platform) || b.count - a.count);
    const rows = outcomes.map((o) => el("tr", {}, [
      el("td", { text: o.app }),
      el("td", { text: o.platform }),
      el("td", {}, [badge(o.outcome, OUTCOME_KIND[o.outcome] || "neutral")]),
      el("td", { text: o.class }),
      el("td", { text: o.reason, className: "mono" }),
      numberCell(o.count),
    ]));
    fill("outcomes", "outcomes-empty", rows);
  }

  // ---- the chart ---------------------------------------------------------------------------

  let chart = null;

  function chartWidth() {
    return Math.max(320, $("rate-chart").clientWidth);
  }

  function makeChart() {
    const container = $("rate-chart");
    if (typeof uPlot !== "function") {
      container.textContent = "the chart library did not load";
      return null;
    }
    return new uPlot({
      width: chartWidth(),
      height: 240,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [
        {
          stroke: "#5f6b7a",
          grid: { stroke: "#e7ebf0" },
          // Whole seconds at least: samples are a second apart.
          space: 70,
          incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600],
          values: (u, splits) => splits.map((s) => new Date(s * 1000).toLocaleTimeString()),
        },
        { stroke: "#5f6b7a", grid: { stroke: "#e7ebf0" }, size: 60 },
      ],
      series: [
        {},
        { label: "delivered/s", stroke: "#2563eb", fill: "rgba(37,99,235,0.10)", width: 2, value: (u, v) => v === null ? "–" : rate(v) },
        { label: "invalid/s", stroke: "#d97706", width: 1.5, value: (u, v) => v === null ? "–" : rate(v) },
        { label: "failed/s", stroke: "#dc2626", width: 1.5, value: (u, v) => v === null ? "–" : rate(v) },
      ],
    }, [[], [], [], []], container);
  }

  function renderChart(state) {
    const points = state.rate;
    const data = [
      points.map((p) => p.at_ms / 1000),
      points.map((p) => p.delivered_per_second),
      points.map((p) => p.invalid_per_second),
      points.map((p) => p.failed_per_second),
    ];
    if (!chart) chart = makeChart();
    if (chart) chart.setData(data);
    $("rate-chart").setAttribute("data-points", String(points.length));
    $("chart-window").textContent = points.length > 1
      ? "· last " + duration(points[points.length - 1].at_ms - points[0].at_ms)
      : "· waiting for samples";
  }

  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: chartWidth(), height: 240 });
  });

  // ---- polling -----------------------------------------------------------------------------

  function connection(kind, text) {
    const node = $("connection");
    node.setAttribute("data-state", kind);
    node.textContent = text;
  }

  async function poll() {
    const headers = { Accept: "application/json" };
    const key = operatorKey();
    if (key) headers.Authorization = "Bearer " + key;
    try {
      const response = await fetch(STATE_URL, { headers, cache: "no-store", credentials: "omit" });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        const message = body && body.error ? body.error.message : response.statusText;
        connection("error", response.status + ": " + message);
        return;
      }
      renderTiles(body);
      renderJobs(body);
      renderChart(body);
      renderAgents(body);
      renderQueues(body);
      renderOutcomes(body);
      document.body.setAttribute("data-updated", String(body.now_ms));
      connection("live", "live · " + new Date(body.now_ms).toLocaleTimeString());
    } catch (error) {
      connection("error", "the front does not answer: " + error.message);
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
