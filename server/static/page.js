// What every script of the agents' page shares: the key this tab signed in with, building
// elements with textContent only (never markup), http(s)-only links, and authorized calls to
// the API whose errors read as the server put them (a 422 names the field).
"use strict";

window.SupportbotPage = (() => {
  const KEY = "supportbot.agent.key"; // kept in sessionStorage: this tab only

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function errorMessage(body, status) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail) && detail.length) return detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
    return detail && detail.message ? detail.message : `HTTP ${status}`;
  }

  // A JSON body (a string) is sent as JSON; anything else (an uploaded file) with the headers given.
  async function api(path, options = {}) {
    const json = typeof options.body === "string" ? { "Content-Type": "application/json" } : {};
    const response = await fetch(path, {
      ...options,
      headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, ...json, ...(options.headers || {}) },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(errorMessage(body, response.status));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  return { KEY, el, safeUrl, api };
})();
