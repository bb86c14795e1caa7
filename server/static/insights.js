// The insights section of the agents' page: per-day or per-week figures as charts (hand-rolled
// SVG: no library, no network) and the content gaps. Like agent.js, everything from the API is
// put on the page with textContent or as SVG attributes, never as markup.
"use strict";

(() => {
  const { el, safeUrl, api } = window.SupportbotPage;
  const SVG = "http://www.w3.org/2000/svg";
  const PATHS = ["composed", "generated", "fallback", "busy", "not_sure", "human_requested", "small_talk", "error", "cancelled"];
  const PATH_LABELS = {
    composed: "composed", generated: "generated", fallback: "fallback", busy: "busy (article quoted)",
    not_sure: "not sure", human_requested: "asked for a person", small_talk: "small talk", error: "error", cancelled: "cancelled",
  };
  const KIND_LABELS = { not_sure: "not sure", down: "rated down", handoff: "then asked for a person" };
  const $ = (id) => document.getElementById(id);
  let loaded = false;

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function tip(text) {
    const title = document.createElementNS(SVG, "title");
    title.textContent = text;
    return title;
  }

  const percent = (rate) => (rate == null ? "–" : `${Math.round(rate * 1000) / 10}%`);
  const seconds = (s) => (s == null ? "–" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);
  const label = (row, period) => (period === "week" ? `week of ${row.start}` : row.start);
  const short = (row) => row.start.slice(5); // MM-DD

  function build(section) {
    const form = el("form", { id: "insights-form" },
      el("label", { text: "Per " }, el("select", { name: "period" },
        el("option", { value: "day", text: "day" }), el("option", { value: "week", text: "week" }))),
      el("label", { text: "From " }, el("input", { name: "since", type: "date" })),
      el("label", { text: "To " }, el("input", { name: "until", type: "date" })),
      el("button", { type: "submit", text: "Show" }));
    form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
    // Another period gets that period's default range (14 days, 8 weeks) unless dates are picked again.
    form.elements.period.addEventListener("change", () => { form.elements.since.value = ""; form.elements.until.value = ""; });
    section.append(
      form,
      el("p", { id: "insights-error", class: "error", role: "alert" }),
      el("div", { id: "insights-summary", class: "tiles" }),
      el("div", { class: "charts" },
        el("figure", {}, el("figcaption", { text: "Answers by path" }), el("div", { id: "chart-paths" }), el("div", { id: "legend-paths", class: "legend" })),
        el("figure", {}, el("figcaption", { text: "Resolution rate" }), el("div", { id: "chart-resolution" })),
        el("figure", {}, el("figcaption", { text: "Handoffs by reason" }), el("div", { id: "chart-handoffs" }))),
      el("details", { id: "insights-table-box" }, el("summary", { text: "All figures as a table" }), el("div", { id: "insights-table" })),
      el("h3", { id: "gaps-title", text: "Content gaps: what visitors asked that the help center did not answer" }),
      el("p", { id: "gaps-note", class: "details" }),
      el("ol", { id: "gaps", "aria-labelledby": "gaps-title" }));
  }

  function params() {
    const form = new FormData($("insights-form"));
    const out = new URLSearchParams();
    for (const [name, value] of form.entries()) if (value !== "") out.set(name, value);
    return out;
  }

  async function load() {
    $("insights-error").textContent = "";
    const query = params();
    const gapsQuery = new URLSearchParams(query);
    gapsQuery.delete("period");
    let figures, gaps;
    try {
      [figures, gaps] = await Promise.all([api(`/v1/agent/insights?${query}`), api(`/v1/agent/insights/gaps?${gapsQuery}`)]);
    } catch (error) {
      $("insights-error").textContent = error.message;
      return;
    }
    const form = $("insights-form");
    form.elements.since.value = figures.since;
    form.elements.until.value = figures.until;
    renderSummary(figures.total);
    renderPaths(figures.periods, figures.period);
    renderResolution(figures.periods, figures.period);
    renderHandoffs(figures.total.handoffs);
    renderTable(figures.periods, figures.period);
    renderGaps(gaps);
    $("insights").dataset.loaded = "true";
  }

  function renderSummary(t) {
    const tile = (name, value, note) => el("div", { class: "tile", "data-figure": name },
      el("span", { class: "value", text: value }), el("span", { class: "name", text: note }));
    $("insights-summary").replaceChildren(
      tile("conversations", String(t.conversations), "conversations"),
      tile("resolution_rate", percent(t.resolution_rate), `resolved (${t.resolved} of ${t.answered} answered)`),
      tile("ratings", `${t.ratings.up} up · ${t.ratings.down} down`, "thumbs (latest rating of each answer)"),
      tile("handed_off", String(t.handed_off), "conversations handed off"),
      tile("ttft", `${seconds(t.time_to_first_text_p50_s)} / ${seconds(t.time_to_first_text_p95_s)}`, "time to first text, p50 / p95"));
  }

  // Stacked bars: one column per period, one band per answer path.
  function renderPaths(rows, period) {
    const W = 420, H = 180, left = 30, bottom = 22, top = 8;
    const used = PATHS.filter((p) => rows.some((r) => r.paths[p]));
    for (const r of rows) for (const p of Object.keys(r.paths)) if (!used.includes(p)) used.push(p);
    const max = Math.max(1, ...rows.map((r) => r.answers));
    const step = (W - left) / rows.length;
    const bar = Math.max(2, step * 0.7);
    const scale = (H - bottom - top) / max;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Answers by path per period", class: "chart" });
    chart.append(svg("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, class: "axis" }));
    chart.append(svg("text", { x: left - 4, y: top + 8, class: "tick end" }, String(max)));
    chart.append(svg("text", { x: left - 4, y: H - bottom, class: "tick end" }, "0"));
    const every = Math.ceil(rows.length / 10);
    rows.forEach((r, i) => {
      const x = left + i * step + (step - bar) / 2;
      let y = H - bottom;
      for (const p of used) {
        const n = r.paths[p] || 0;
        if (!n) continue;
        const h = n * scale;
        y -= h;
        chart.append(svg("rect", { x, y, width: bar, height: h, class: `path-${p}`, "data-path": p, "data-period": r.start, "data-count": n },
          tip(`${label(r, period)}: ${PATH_LABELS[p] || p} ${n}`)));
      }
      if (i % every === 0) chart.append(svg("text", { x: x + bar / 2, y: H - 6, class: "tick middle" }, short(r)));
    });
    $("chart-paths").replaceChildren(chart);
    $("legend-paths").replaceChildren(...used.map((p) => el("span", { class: "key" },
      svg("svg", { viewBox: "0 0 10 10", class: "swatch" }, svg("rect", { width: 10, height: 10, class: `path-${p}` })),
      PATH_LABELS[p] || p)));
  }

  // A line over the periods that had answered conversations; the gaps stay gaps.
  function renderResolution(rows, period) {
    const W = 420, H = 150, left = 34, bottom = 22, top = 8;
    const step = (W - left) / rows.length;
    const x = (i) => left + i * step + step / 2;
    const y = (rate) => top + (1 - rate) * (H - bottom - top);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Resolution rate per period", class: "chart" });
    for (const level of [0, 0.5, 1]) {
      chart.append(svg("line", { x1: left, x2: W, y1: y(level), y2: y(level), class: level === 0 ? "axis" : "grid" }));
      chart.append(svg("text", { x: left - 4, y: y(level) + 4, class: "tick end" }, `${level * 100}%`));
    }
    let segment = [];
    const flush = () => {
      if (segment.length > 1) chart.append(svg("polyline", { points: segment.join(" "), class: "rate-line" }));
      segment = [];
    };
    const every = Math.ceil(rows.length / 10);
    rows.forEach((r, i) => {
      if (i % every === 0) chart.append(svg("text", { x: x(i), y: H - 6, class: "tick middle" }, short(r)));
      if (r.resolution_rate == null) return flush();
      segment.push(`${x(i)},${y(r.resolution_rate)}`);
    });
    flush();
    rows.forEach((r, i) => {
      if (r.resolution_rate == null) return;
      chart.append(svg("circle", { cx: x(i), cy: y(r.resolution_rate), r: 3.5, class: "rate-point", "data-period": r.start, "data-rate": r.resolution_rate },
        tip(`${label(r, period)}: ${percent(r.resolution_rate)} (${r.resolved} of ${r.answered})`)));
    });
    $("chart-resolution").replaceChildren(chart);
  }

  function renderHandoffs(handoffs) {
    const entries = Object.entries(handoffs);
    if (!entries.length) {
      $("chart-handoffs").replaceChildren(el("p", { class: "details", text: "No handoffs in this range." }));
      return;
    }
    const W = 420, row = 22, left = 120;
    const max = Math.max(...entries.map(([, n]) => n));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${entries.length * row + 4}`, role: "img", "aria-label": "Handoffs by reason", class: "chart" });
    entries.forEach(([reason, n], i) => {
      const width = Math.max(2, ((W - left - 40) * n) / max);
      chart.append(svg("text", { x: left - 6, y: i * row + 15, class: "tick end" }, reason.replaceAll("_", " ")));
      chart.append(svg("rect", { x: left, y: i * row + 3, width, height: row - 8, class: "handoff-bar", "data-reason": reason, "data-count": n },
        tip(`${reason}: ${n}`)));
      chart.append(svg("text", { x: left + width + 4, y: i * row + 15, class: "tick" }, String(n)));
    });
    $("chart-handoffs").replaceChildren(chart);
  }

  function renderTable(rows, period) {
    const head = ["period", "conversations", "answers", "resolved", "thumbs up", "thumbs down", "handed off", "first text p50", "p95"];
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))));
    const body = el("tbody");
    for (const r of rows) {
      const cells = [label(r, period), r.conversations, r.answers, percent(r.resolution_rate), r.ratings.up, r.ratings.down,
        r.handed_off, seconds(r.time_to_first_text_p50_s), seconds(r.time_to_first_text_p95_s)];
      body.append(el("tr", { "data-period": r.start }, ...cells.map((c) => el("td", { text: String(c) }))));
    }
    table.append(body);
    $("insights-table").replaceChildren(table);
  }

  function renderGaps(gaps) {
    $("gaps-note").textContent = gaps.groups.length
      ? `${gaps.questions} questions from ${gaps.since} to ${gaps.until}, grouped by meaning, largest group first.`
      : `No unanswered, rated-down or handed-off questions from ${gaps.since} to ${gaps.until}.`;
    $("gaps").replaceChildren(...gaps.groups.map((g) => {
      const kinds = Object.entries(g.kinds).map(([k, n]) => `${KIND_LABELS[k] || k} ${n}`).join(" · ");
      const item = el("li", { class: "gap", "data-size": g.size },
        el("div", { class: "gap-head" }, el("strong", { text: `${g.size} question${g.size === 1 ? "" : "s"}` }), el("span", { class: "details", text: ` · ${kinds}` })));
      item.append(el("ul", { class: "examples" }, ...g.examples.map(example)));
      const article = el("div", { class: "details article" });
      if (g.article) {
        const href = g.article.url && safeUrl(g.article.url);
        article.append("Closest article: ",
          href ? el("a", { href, target: "_blank", rel: "noopener noreferrer", text: g.article.title }) : el("span", { text: g.article.title }),
          ` (${g.article.document_id}, confidence ${g.article.confidence.toFixed(2)})`);
      } else {
        article.textContent = "No article comes close: a new one is needed.";
      }
      item.append(article);
      return item;
    }));
  }

  // An example question opens its conversation in the transcript pane (agent.js's openConversation).
  function example(e) {
    if (typeof window.openConversation !== "function") return el("li", { text: e.text });
    const button = el("button", { type: "button", class: "link", text: e.text, "data-conversation": e.conversation_id, title: "Open the conversation" });
    button.addEventListener("click", () => {
      window.openConversation(e.conversation_id);
      $("transcript-pane").scrollIntoView({ behavior: "smooth" });
    });
    return el("li", {}, button);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const section = $("insights");
    const app = $("app");
    if (!section || !app) return;
    build(section);
    // agent.js shows #app once the key is accepted: load then, once.
    const start = () => {
      if (!app.hidden && !loaded) {
        loaded = true;
        load();
      }
    };
    new MutationObserver(start).observe(app, { attributes: true, attributeFilter: ["hidden"] });
    start();
  });
})();
