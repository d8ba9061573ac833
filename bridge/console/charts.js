// Hand-drawn SVG charts of the console: jobs finished per type over time, durations per type.
"use strict";

window.JBCharts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const LABEL_WIDTH = 180; // the label column (170px) plus the gap, as in style.css

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
    for (const child of children) el.append(child);
    return el;
  }

  function div(cls, ...children) {
    const el = document.createElement("div");
    if (cls) el.className = cls;
    for (const child of children) if (child != null) el.append(child);
    return el;
  }

  function title(text) {
    const el = svg("title");
    el.textContent = text;
    return el;
  }

  function duration(seconds) {
    if (seconds == null) return "–";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function clock(date, long) {
    const options = long
      ? { weekday: "short", hour: "2-digit", minute: "2-digit", hour12: false }
      : { hour: "2-digit", minute: "2-digit", hour12: false };
    return date.toLocaleString([], options);
  }

  function label(type, many, detail) {
    const where = many ? `${type.store} · ${type.source}` : type.source;
    const small = document.createElement("small");
    small.textContent = `${where} · ${detail}`;
    const el = div("label", type.job_type, small);
    el.title = `${type.store} / ${type.source} / ${type.job_type}`;
    return el;
  }

  const finished = (type) => type.totals.success + type.totals.failed + type.totals.cancelled;
  const manyStores = (data) => new Set(data.types.map((t) => t.store)).size > 1;

  // One row per job type: a bar per time step, success at the bottom, failed on top.
  function activity(container, data) {
    const types = data.types.filter((t) => finished(t) > 0).sort((a, b) => finished(b) - finished(a));
    if (!types.length) {
      container.replaceChildren(div("empty", "No job has finished in this window yet."));
      return;
    }
    const start = Date.parse(data.start);
    const step = data.step_seconds * 1000;
    const many = manyStores(data);
    const rows = types.map((type) => {
      const detail = `${type.totals.success} ok · ${type.totals.failed} failed`;
      return div("row", label(type, many, detail), activityBars(type, start, step));
    });
    const points = types[0].success.length;
    const long = data.minutes > 1440;
    const ticks = [0, Math.floor(points / 2), points].map((i) => clock(new Date(start + i * step), long));
    const axis = div(null, ...ticks.map((text) => { const s = document.createElement("span"); s.textContent = text; return s; }));
    container.replaceChildren(...rows, div("axis", div(null), axis));
  }

  function activityBars(type, start, step) {
    const points = type.success.length;
    const width = points * 10;
    const height = 34;
    const totals = type.success.map((s, i) => s + type.failed[i] + type.cancelled[i]);
    const max = Math.max(1, ...totals);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
      height, role: "img", "aria-label": `${type.job_type}: jobs finished per step` });
    chart.append(svg("rect", { x: 0, y: height - 1, width, height: 1, class: "bar-base" }));
    for (let i = 0; i < points; i++) {
      if (!totals[i]) continue;
      const column = svg("g", {}, title(
        `${clock(new Date(start + i * step))}: ${type.success[i]} ok, ${type.failed[i]} failed, ` +
        `${type.cancelled[i]} cancelled`));
      let y = height;
      for (const [cls, value] of [["bar-ok", type.success[i]], ["bar-off", type.cancelled[i]], ["bar-bad", type.failed[i]]]) {
        if (!value) continue;
        const size = Math.max(1.5, (value / max) * (height - 2));
        y -= size;
        column.append(svg("rect", { x: i * 10 + 1, y, width: 8, height: size, class: cls }));
      }
      chart.append(column);
    }
    return chart;
  }

  // One row per job type: median (dot) to 90th percentile (bar end) of wait and of run time.
  function durations(container, data) {
    const types = data.types.filter((t) => t.run.count || t.wait.count)
      .sort((a, b) => finished(b) - finished(a));
    if (!types.length) {
      container.replaceChildren(div("empty", "No finished job with timestamps in this window."));
      return;
    }
    const width = Math.max(200, (container.clientWidth || 600) - LABEL_WIDTH);
    const highest = Math.max(60, ...types.flatMap((t) => [t.run.p90 || 0, t.wait.p90 || 0]));
    const scale = logScale(0.1, highest * 1.5, width);
    const many = manyStores(data);
    const rows = types.map((type) => {
      const detail = `wait ${duration(type.wait.p50)} · run ${duration(type.run.p50)}`;
      return div("row", label(type, many, detail), durationBars(type, scale, width));
    });
    container.replaceChildren(...rows, div("axis", div(null), durationAxis(scale, width)));
  }

  function logScale(low, high, width) {
    const pad = 6;
    const span = Math.log(high) - Math.log(low);
    const x = (value) => pad + ((Math.log(Math.max(value, low)) - Math.log(low)) / span) * (width - 2 * pad);
    const ticks = [0.1, 1, 10, 60, 600, 3600, 21600, 86400].filter((t) => t >= low && t <= high);
    return { x, ticks };
  }

  function durationBars(type, scale, width) {
    const height = 30;
    const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `${type.job_type}: wait and run time` });
    for (const tick of scale.ticks) {
      const x = scale.x(tick);
      chart.append(svg("line", { x1: x, x2: x, y1: 0, y2: height, class: "grid-line" }));
    }
    [["wait", 9], ["run", 21]].forEach(([phase, y]) => {
      const stats = type[phase];
      if (!stats.count || stats.p50 == null) return;
      const from = scale.x(stats.p50);
      const to = scale.x(stats.p90 ?? stats.p50);
      const text = `${phase}: median ${duration(stats.p50)}, 90th percentile ${duration(stats.p90)}, ` +
        `average ${duration(stats.avg)} (${stats.count} jobs)`;
      chart.append(svg("g", { class: `dur-${phase}` }, title(text),
        svg("line", { x1: from, x2: Math.max(to, from + 1), y1: y, y2: y, "stroke-width": 5,
          "stroke-linecap": "round", opacity: 0.45 }),
        svg("circle", { cx: from, cy: y, r: 4.5 })));
    });
    return chart;
  }

  function durationAxis(scale, width) {
    const chart = svg("svg", { width, height: 16, viewBox: `0 0 ${width} 16` });
    for (const tick of scale.ticks) {
      const x = scale.x(tick);
      const anchor = x < 24 ? "start" : x > width - 24 ? "end" : "middle";
      const text = svg("text", { x, y: 12, "text-anchor": anchor, class: "tick" });
      text.textContent = duration(tick).replace(".0", "");
      chart.append(text);
    }
    return chart;
  }

  return { activity, durations, duration };
})();
