// jobs-bridge console: reads the bridge's own API every few seconds and draws what it sees.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const ANALYTICS_MS = 15000;
  const TOKEN_KEY = "jobs-bridge-token";
  const NEEDS_TOKEN = document.querySelector('meta[name="jb-auth"]').content === "token";

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    paused: false,
    busy: false,
    selected: null, // event id shown in the detail panel
    events: new Map(),
    minutes: 60,
    analytics: null,
    analyticsAt: 0,
    origins: {}, // subscription name -> "config" | "api"
  };
  const $ = (id) => document.getElementById(id);

  class Unauthorized extends Error {}

  // -- the API ---------------------------------------------------------------------------

  async function api(path, { method = "GET", body, okStatuses = [] } = {}) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) throw new Unauthorized("the token was refused");
    const data = await response.json().catch(() => null);
    if (!response.ok && !okStatuses.includes(response.status)) {
      throw new Error((data && data.error) || `HTTP ${response.status} from ${path}`);
    }
    return data;
  }

  // -- small DOM helpers ---------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child != null && child !== false) el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function fillTable(table, headers, rows, empty) {
    const head = h("thead", null, h("tr", null, headers.map(([text, cls]) => h("th", { class: cls }, text))));
    const body = rows.length
      ? h("tbody", null, rows)
      : h("tbody", null, h("tr", null, h("td", { class: "empty", colspan: headers.length }, empty)));
    table.replaceChildren(head, body);
  }

  function ago(value) {
    if (!value) return h("span", { class: "muted" }, "never");
    const date = new Date(typeof value === "number" ? value * 1000 : value);
    const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    let text = `${seconds} s ago`;
    if (seconds >= 86400) text = `${Math.floor(seconds / 86400)} d ago`;
    else if (seconds >= 3600) text = `${Math.floor(seconds / 3600)} h ago`;
    else if (seconds >= 60) text = `${Math.floor(seconds / 60)} min ago`;
    return h("span", { title: date.toLocaleString() }, text);
  }

  function clock(iso) {
    const date = new Date(iso);
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    return h("span", { title: date.toLocaleString() }, time);
  }

  const status = (word) => h("span", { class: `pill s-${word}` }, word);
  const shortId = (id) => h("span", { class: "mono", title: id }, id.slice(0, 8));

  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 3500);
  }

  // -- views ---------------------------------------------------------------------------

  function renderPollers(pollers) {
    fillTable($("pollers"), [["Store"], ["Source"], ["Baseline"], ["Last poll"], ["Open jobs", "num"],
      ["Known", "num"], ["Failures", "num"]], pollers.map((p) => h("tr", null,
      h("td", null, h("strong", null, p.store)),
      h("td", null, p.source),
      h("td", null, p.baseline_done ? h("span", { class: "pill good" }, "done") : h("span", { class: "pill warn" }, "running")),
      h("td", null, ago(p.last_poll_at)),
      h("td", { class: "num" }, p.open_jobs),
      h("td", { class: "num" }, p.known_jobs),
      h("td", { class: `num ${p.consecutive_failures ? "error" : ""}` }, p.consecutive_failures),
    )), "No store is configured.");
  }

  function renderSubscriptions(subscriptions, origins) {
    state.origins = origins;
    fillTable($("subscriptions"), [["Subscription"], ["State"], ["Backlog", "num"], ["Retrying", "num"],
      ["Dead", "num"], ["Last success"], ["Last failure"]], subscriptions.map((s) => {
      let pill = h("span", { class: "pill good" }, "enabled");
      if (!s.configured) pill = h("span", { class: "pill muted-pill" }, "off in config");
      else if (!s.enabled) pill = h("span", { class: "pill bad", title: s.disabled_reason || "" }, "disabled");
      else if (s.failing_since) pill = h("span", { class: "pill warn" }, "failing");
      return h("tr", null,
        h("td", null, h("strong", null, s.name),
          h("span", { class: "sub nowrap", title: "where it is defined" }, `${s.type} · ${origins[s.name] || "config"}`),
          h("div", { class: "actions" },
            h("button", { type: "button", title: "Send one test event", onclick: (e) => sendTest(s.name, e.currentTarget) }, "Test"),
            origins[s.name] === "api"
              ? h("button", { type: "button", onclick: (e) => remove(s.name, e.currentTarget) }, "Delete") : null)),
        h("td", null, pill, s.enabled ? null : h("span", { class: "sub reason", title: s.disabled_reason || "" }, s.disabled_reason || "")),
        h("td", { class: "num" }, s.backlog),
        h("td", { class: "num" }, s.retrying),
        h("td", { class: `num ${s.dead_letters ? "error" : ""}` }, s.dead_letters),
        h("td", null, ago(s.last_success_at)),
        h("td", null, ago(s.last_failure_at), s.last_error ? h("span", { class: "sub reason", title: s.last_error }, s.last_error) : null),
      );
    }), "No subscription is configured.");
  }

  // -- subscriptions through the API ---------------------------------------------------

  async function sendTest(name, button) {
    button.disabled = true;
    try {
      const outcome = await api(`/subscriptions/${encodeURIComponent(name)}/test`, { method: "POST", body: {} });
      const status = outcome.status == null ? "" : ` (HTTP ${outcome.status})`;
      const took = `${Math.round(outcome.duration_ms)} ms`;
      toast(outcome.ok ? `Test event to ${name}: delivered${status} in ${took}.`
        : `Test event to ${name} failed${status}: ${outcome.error}`);
    } catch (error) {
      handleError(error);
    } finally {
      button.disabled = false;
    }
  }

  async function remove(name, button) {
    if (!window.confirm(`Delete the subscription ${name}? Its attempts and dead letters stay readable.`)) return;
    button.disabled = true;
    try {
      await api(`/subscriptions/${encodeURIComponent(name)}`, { method: "DELETE" });
      toast(`${name} deleted: nothing more is sent to it.`);
      await refresh(true);
    } catch (error) {
      button.disabled = false;
      handleError(error);
    }
  }

  function newSecret() {
    // Standard Webhooks format: whsec_ + base64 of random bytes.
    return `whsec_${btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(24))))}`;
  }

  async function addWebhook(form) {
    const data = new FormData(form);
    const name = data.get("name").trim();
    const secret = newSecret();
    const entry = { type: "webhook", url: data.get("url").trim(), secrets: [secret] };
    const statuses = data.get("statuses").split(",").map((word) => word.trim()).filter(Boolean);
    if (statuses.length) entry.filter = { statuses };
    if (data.get("private")) entry.allow_private_networks = true;
    const result = $("webhook-result");
    result.hidden = false;
    try {
      const answer = await api(`/subscriptions/${encodeURIComponent(name)}`, { method: "PUT", body: entry, okStatuses: [422] });
      if (answer.errors) {
        result.className = "result error";
        result.replaceChildren("Not added:", h("ul", null, answer.errors.map((e) => h("li", null, `${e.path || "entry"}: ${e.message}`))));
        return;
      }
      const verb = state.origins[name] === "api" ? "replaced" : "added";
      result.className = "result";
      result.replaceChildren(`${name} ${verb}. Its signing secret is shown only now: `,
        h("code", { id: "webhook-secret" }, secret));
      form.reset();
      await refresh(true);
    } catch (error) {
      if (error instanceof Unauthorized) return handleError(error);
      result.className = "result error";
      result.textContent = `Not added: ${error.message}`;
    }
  }

  function deliveryChips(deliveries) {
    const names = Object.keys(deliveries);
    if (!names.length) return h("span", { class: "muted" }, "not routed");
    return h("div", { class: "chips" }, names.map((name) => {
      const d = deliveries[name];
      const mark = { delivered: "✓", failing: "✗", waiting: "…" }[d.state];
      const tries = d.attempts > 1 ? ` ×${d.attempts}` : "";
      const detail = d.last_reason || (d.last_status ? `HTTP ${d.last_status}` : d.state);
      return h("span", { class: `chip ${d.state}`, title: `${name}: ${detail}` }, `${mark} ${name}${tries}`);
    }));
  }

  function renderEvents(events) {
    state.events = new Map(events.map((e) => [e.id, e]));
    fillTable($("events"), [["Time"], ["Job"], ["Type"], ["Status"], ["Deliveries"]], events.map((e) => h("tr", {
      class: e.id === state.selected ? "selected" : null,
      tabindex: 0,
      onclick: () => select(e.id),
      onkeydown: (key) => { if (key.key === "Enter") select(e.id); },
    },
      h("td", null, clock(e.time)),
      h("td", null, shortId(e.job_id), h("span", { class: "sub" }, `${e.store} · ${e.source}`)),
      h("td", null, e.job_type),
      h("td", null, e.previous_status ? h("span", { class: "arrow" }, `${e.previous_status} → `) : null, status(e.status)),
      h("td", null, deliveryChips(e.deliveries)),
    )), "No event yet: events appear when a job changes status.");
  }

  async function select(id) {
    state.selected = id;
    for (const row of $("events").querySelectorAll("tbody tr")) row.classList.remove("selected");
    const index = [...state.events.keys()].indexOf(id);
    if (index >= 0) $("events").querySelectorAll("tbody tr")[index].classList.add("selected");
    await renderDetail();
  }

  async function renderDetail() {
    const event = state.events.get(state.selected);
    if (!event) return;
    const { attempts } = await api(`/events/${encodeURIComponent(event.id)}/attempts`);
    const rows = attempts.map((a) => h("tr", null,
      h("td", { class: "nowrap" }, a.subscription),
      h("td", { class: "num" }, a.attempt),
      h("td", null, clock(a.at)),
      h("td", null,
        h("span", { class: a.ok ? "s-success" : "s-failed" }, `${a.ok ? "ok" : "failed"} ${a.status}`),
        a.ok ? null : h("span", { class: "sub", title: a.response || "" }, a.reason)),
      h("td", { class: "num nowrap" }, `${Math.round(a.duration_ms)} ms`),
    ));
    const attemptsTable = h("table", { class: "data" });
    fillTable(attemptsTable, [["Subscription"], ["#", "num"], ["At"], ["Result"], ["Took", "num"]],
      rows, "No delivery attempt yet.");
    $("detail").replaceChildren(
      h("h2", null, event.job_type, " ", status(event.status)),
      h("dl", null,
        h("dt", null, "Job"), h("dd", { class: "mono" }, event.job_id),
        h("dt", null, "Store"), h("dd", null, `${event.store} · ${event.source}`),
        h("dt", null, "Event"), h("dd", { class: "mono" }, event.id),
        h("dt", null, "Type"), h("dd", { class: "mono" }, event.event.type),
        h("dt", null, "Observed"), h("dd", null, new Date(event.time).toLocaleString()),
      ),
      h("h3", null, "Delivery attempts"),
      attemptsTable,
      h("h3", null, "Body"),
      h("pre", null, JSON.stringify(event.event, null, 2)),
    );
  }

  function renderDeadLetters({ dead_letters: letters, total }) {
    $("dlq-total").textContent = total ? `(${total})` : "";
    const newest = [...letters].reverse();
    fillTable($("dlq"), [["Failed"], ["Subscription"], ["Job"], ["Event"], ["Reason"], ["Attempts", "num"], [""]],
      newest.map((d) => {
        const data = d.event.data || {};
        const job = data.job || {};
        return h("tr", null,
          h("td", null, ago(d.failed_at)),
          h("td", null, d.subscription),
          h("td", null, shortId(job.id || d.event.subject || ""), h("span", { class: "sub" }, job.type || "")),
          h("td", null, status(data.status || "?")),
          h("td", { class: "reason", title: d.reason }, d.reason),
          h("td", { class: "num" }, d.attempts),
          h("td", null, h("button", { type: "button", onclick: (e) => replay(d, e.currentTarget) }, "Replay")),
        );
      }), "No dead letter. Every delivery succeeded or is still being retried.");
  }

  async function replay(letter, button) {
    button.disabled = true;
    button.textContent = "Queued…";
    try {
      const { queued } = await api("/dlq/replay", { method: "POST", body: { id: letter.entry_id, subscription: letter.subscription } });
      toast(queued ? `Replaying to ${letter.subscription}: it is due now.` : "Already replayed.");
      await refresh(true);
    } catch (error) {
      button.disabled = false;
      button.textContent = "Replay";
      handleError(error);
    }
  }

  function renderReadiness(ready) {
    const pill = $("readiness");
    const ok = ready && ready.status === "ready";
    pill.className = `pill ${ok ? "good" : "bad"}`;
    pill.textContent = ok ? "ready" : "not ready";
    pill.title = ok ? "Redis answers and every loop runs" : (ready ? ready.reasons.join("\n") : "unknown");
  }

  function renderAnalytics() {
    if (!state.analytics) return;
    window.JBCharts.activity($("chart-activity"), state.analytics);
    window.JBCharts.durations($("chart-durations"), state.analytics);
  }

  // -- the refresh loop ----------------------------------------------------------------

  async function refresh(force = false) {
    if (state.busy || $("console").hidden || (!force && (state.paused || document.hidden))) return;
    state.busy = true;
    try {
      const [status, events, dlq, subscriptions] = await Promise.all([
        api("/status"), api("/events?count=60"), api("/dlq?count=100"), api("/subscriptions"),
      ]);
      const origins = Object.fromEntries(subscriptions.subscriptions.map((s) => [s.name, s.origin]));
      renderReadiness(status.readiness);
      renderPollers(status.pollers);
      renderSubscriptions(status.subscriptions, origins);
      renderEvents(events.events);
      renderDeadLetters(dlq);
      if (force || Date.now() - state.analyticsAt > ANALYTICS_MS) await loadAnalytics();
      if (state.selected) await renderDetail();
      $("problem").hidden = true;
      $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
    } catch (error) {
      handleError(error);
    } finally {
      state.busy = false;
    }
  }

  async function loadAnalytics() {
    state.analytics = await api(`/analytics?minutes=${state.minutes}`);
    state.analyticsAt = Date.now();
    renderAnalytics();
  }

  function handleError(error) {
    if (error instanceof Unauthorized) {
      showLogin(state.token ? "That token was refused." : "");
      return;
    }
    $("problem").textContent = `Cannot read the bridge: ${error.message}. Retrying…`;
    $("problem").hidden = false;
  }

  // -- sign-in and controls ------------------------------------------------------------

  function showLogin(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("console").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("login-error").hidden = !message;
    $("token").focus();
  }

  function showConsole() {
    $("login").hidden = true;
    $("console").hidden = false;
    $("logout").hidden = !NEEDS_TOKEN;
    refresh(true);
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("token").value = "";
    showConsole();
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("webhook-form").addEventListener("submit", (event) => {
    event.preventDefault();
    addWebhook(event.currentTarget);
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    if (!state.paused) refresh(true);
  });
  $("window").addEventListener("click", (event) => {
    const minutes = Number(event.target.dataset.minutes);
    if (!minutes) return;
    state.minutes = minutes;
    for (const button of $("window").querySelectorAll("button")) button.classList.toggle("on", button === event.target);
    loadAnalytics().catch(handleError);
  });
  let resizeTimer;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderAnalytics, 150);
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(true); });

  if (NEEDS_TOKEN && !state.token) showLogin("");
  else showConsole();
  setInterval(refresh, REFRESH_MS);
})();
