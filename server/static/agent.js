// The agent review page. Everything from visitors, the model or the API is put on the page
// with textContent (never innerHTML) and links only get http(s) addresses, so no stored
// text can become markup or script. The page's CSP forbids inline script as a second wall.
"use strict";

const { KEY, el, safeUrl, api } = window.SupportbotPage;
const $ = (id) => document.getElementById(id);
let me = null;
let cursor = null;
let current = null;
let poll = null;

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    me = await api("/v1/agent/me");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = error.status === 401 ? "That key is not valid." : error.message;
    return;
  }
  $("who").textContent = `${me.name} (${me.role})`;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  document.dispatchEvent(new CustomEvent("supportbot:signed-in", { detail: me })); // other sections (kb.js) start here
  await loadList(true);
}

function filterParams() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const [name, value] of form.entries()) {
    if (value === "") continue;
    if (name === "since" || name === "until") params.set(name, `${value}T00:00:00Z`);
    else params.set(name, value);
  }
  return params;
}

async function loadList(fresh) {
  const params = filterParams();
  if (!fresh && cursor) params.set("cursor", cursor);
  $("list-error").textContent = "";
  let page;
  try {
    page = await api(`/v1/agent/conversations?${params}`);
  } catch (error) {
    $("list-error").textContent = error.message;
    return;
  }
  const list = $("conversations");
  if (fresh) list.replaceChildren();
  for (const c of page.conversations) {
    const when = new Date(c.updated * 1000).toLocaleString();
    const badges = el("span");
    badges.append(el("span", { class: `badge ${c.status}`, text: c.status === "handoff" && !c.agent ? "waiting" : c.status }));
    if (c.agent) badges.append(el("span", { class: "badge", text: c.agent }));
    if (c.ratings.down) badges.append(el("span", { class: "badge down", text: `👎 ${c.ratings.down}` }));
    if (c.corrections) badges.append(el("span", { class: "badge", text: `corrected ${c.corrections}` }));
    const button = el("button", { type: "button", "data-id": c.id }, badges, el("div", { text: c.preview || "(no messages)" }), el("small", { text: when }));
    button.addEventListener("click", () => openConversation(c.id));
    list.append(el("li", {}, button));
  }
  cursor = page.next_cursor;
  $("more").hidden = !cursor;
}

async function openConversation(id) {
  current = id;
  for (const b of document.querySelectorAll("#conversations button")) b.setAttribute("aria-current", String(b.dataset.id === id));
  $("transcript-empty").hidden = true;
  $("transcript").hidden = false;
  $("action-error").textContent = "";
  await renderTranscript();
  clearInterval(poll);
  poll = setInterval(renderTranscript, 2000);
}

async function renderTranscript() {
  if (!current) return;
  let data;
  try {
    data = await api(`/v1/agent/conversations/${encodeURIComponent(current)}`);
  } catch (error) {
    $("action-error").textContent = error.message;
    return;
  }
  const c = data.conversation;
  const holder = c.agent ? `, with ${c.agent}` : c.status === "handoff" ? ", waiting for a person" : "";
  $("meta").replaceChildren(
    el("p", { text: `${c.id} · ${c.status}${holder} · started ${new Date(c.created * 1000).toLocaleString()}` }),
  );
  const mine = c.status === "handoff" && c.agent === me.name;
  $("takeover").disabled = mine;
  $("handback").disabled = !mine;
  $("reply-form").hidden = !mine;
  const list = $("messages");
  const openForms = new Set([...list.querySelectorAll("form[data-for]")].map((f) => f.dataset.for));
  list.replaceChildren(...data.messages.map((m) => renderMessage(m, openForms.has(m.id))));
}

function renderMessage(m, correcting) {
  const label = m.role === "user" ? "Visitor" : m.role === "agent" ? `Agent ${m.agent}` : "Bot";
  const item = el("li", { class: m.role, "data-id": m.id }, el("span", { class: "who", text: label }), el("div", { class: "text", text: m.text }));
  if (m.role !== "assistant") return item;
  const timings = m.timings || {};
  const details = [`path ${m.path}`];
  if (m.confidence !== undefined) details.push(`confidence ${m.confidence}`);
  if (m.model_id) details.push(`model ${m.model_id}`);
  if (timings.total_s !== undefined) details.push(`total ${Number(timings.total_s).toFixed(2)} s`);
  if (timings.time_to_first_token_s != null) details.push(`first text ${Number(timings.time_to_first_token_s).toFixed(2)} s`);
  item.append(el("div", { class: "details", text: details.join(" · ") }));
  if (m.sources && m.sources.length) {
    const sources = el("div", { class: "details" }, el("span", { text: "Sources: " }));
    for (const s of m.sources) {
      const href = s.url && safeUrl(s.url);
      sources.append(href ? el("a", { href, target: "_blank", rel: "noopener noreferrer", text: s.title }) : el("span", { text: s.title }), " ");
    }
    item.append(sources);
  }
  for (const f of m.feedback || []) {
    const who = f.actor.role === "agent" ? f.actor.id : "visitor";
    const what = f.correction != null ? `correction: ${f.correction}` : `rated ${f.rating === "up" ? "👍" : "👎"}`;
    item.append(el("div", { class: "feedback", text: `${who} ${what}${f.comment ? ` — “${f.comment}”` : ""}` }));
  }
  const button = el("button", { type: "button", class: "correct", text: "Correct this answer" });
  const form = el("form", { "data-for": m.id, class: "correction" });
  form.hidden = !correcting;
  const area = el("textarea", { maxlength: "8000", rows: "3", "aria-label": "Corrected answer", required: "" });
  area.value = m.correction || m.text;
  form.append(area, el("button", { type: "submit", text: "Save correction" }));
  button.addEventListener("click", () => { form.hidden = false; area.focus(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`/v1/agent/conversations/${encodeURIComponent(current)}/messages/${encodeURIComponent(m.id)}/correction`, {
        method: "POST",
        body: JSON.stringify({ text: area.value }),
      });
      form.hidden = true;
      form.removeAttribute("data-for");
      await renderTranscript();
    } catch (error) {
      $("action-error").textContent = error.message;
    }
  });
  item.append(button, form);
  return item;
}

async function act(action) {
  $("action-error").textContent = "";
  try {
    await api(`/v1/agent/conversations/${encodeURIComponent(current)}/${action}`, { method: "POST" });
  } catch (error) {
    $("action-error").textContent = error.message;
  }
  await renderTranscript();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("api-key").value.trim());
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadList(true);
  });
  $("more").addEventListener("click", () => loadList(false));
  $("takeover").addEventListener("click", () => act("takeover"));
  $("handback").addEventListener("click", () => act("handback"));
  $("close").addEventListener("click", () => act("close"));
  $("reply-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("reply").value.trim();
    if (!text) return;
    try {
      await api(`/v1/agent/conversations/${encodeURIComponent(current)}/messages`, { method: "POST", body: JSON.stringify({ text }) });
      $("reply").value = "";
    } catch (error) {
      $("action-error").textContent = error.message;
    }
    await renderTranscript();
  });
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved);
});
