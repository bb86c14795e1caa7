/* Supportbot chat widget: one tag on any page.
 *
 *   <script src="https://SUPPORT-HOST/widget.js" data-title="Acme Help" async></script>
 *
 * Options (data attributes on the tag): data-title, data-greeting, data-position ("right" or
 * "left"), data-color (accent colour); or CSS custom properties on the page:
 * --supportbot-accent, --supportbot-accent-text, --supportbot-font.
 *
 * Everything renders inside a shadow root, so the page's CSS cannot reach in and ours cannot
 * leak out. Text from the server, the model or an agent only ever becomes text nodes; links
 * only get http(s) addresses. Protocol: docs/protocol.md.
 */
(() => {
  "use strict";
  const tag = document.currentScript;
  if (!tag || window.__supportbotWidget) return;
  window.__supportbotWidget = true;

  const origin = new URL(tag.src, location.href);
  const opts = {
    // The server's SUPPORTBOT_ASSISTANT_NAME / SUPPORTBOT_GREETING (sent in `ready`) unless the tag sets them.
    title: tag.dataset.title || "Help",
    greeting: tag.dataset.greeting || "",
    position: tag.dataset.position === "left" ? "left" : "right",
    color: tag.dataset.color || "",
    maxChars: Number(tag.dataset.maxChars) || 2000,
    userId: tag.dataset.userId || "", // the site's id for a signed-in customer: lets erasure find their chats
  };
  const WS_URL = `${origin.protocol === "https:" ? "wss:" : "ws:"}//${origin.host}/v1/chat`;
  const STORE = `supportbot:${origin.host}:conversation`;

  const CSS = `
:host { all: initial; }
* { box-sizing: border-box; }
.root { --accent: var(--supportbot-accent, #1d4ed8); --accent-text: var(--supportbot-accent-text, #ffffff);
  font: 15px/1.45 var(--supportbot-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif); color: #111827;
  position: fixed; bottom: 20px; z-index: 2147483000; }
.root.right { right: 20px; } .root.left { left: 20px; }
button { font: inherit; cursor: pointer; }
button:focus-visible, textarea:focus-visible, input:focus-visible, a:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }
.launcher { width: 60px; height: 60px; border-radius: 50%; border: 0; background: var(--accent); color: var(--accent-text);
  box-shadow: 0 6px 20px rgba(0,0,0,.25); display: grid; place-items: center; }
.launcher svg { width: 28px; height: 28px; fill: currentColor; }
.panel { position: absolute; bottom: 76px; width: 380px; height: min(620px, calc(100vh - 120px)); background: #fff;
  border-radius: 14px; box-shadow: 0 12px 40px rgba(0,0,0,.28); display: flex; flex-direction: column; overflow: hidden; }
.right .panel { right: 0; } .left .panel { left: 0; }
.panel[hidden] { display: none; }
header { background: var(--accent); color: var(--accent-text); padding: 12px 14px; display: flex; align-items: center; gap: 8px; }
header h2 { font-size: 16px; margin: 0; flex: 1; font-weight: 600; }
header button { background: transparent; color: var(--accent-text); border: 1px solid currentColor; border-radius: 6px; padding: 4px 8px; font-size: 13px; }
header .close { border: 0; font-size: 22px; line-height: 1; padding: 0 6px; }
.banner { padding: 8px 14px; font-size: 13px; background: #fef3c7; color: #78350f; }
.banner.offline { background: #fee2e2; color: #7f1d1d; }
.banner.agent { background: #dcfce7; color: #14532d; }
.banner[hidden] { display: none; }
.log { list-style: none; margin: 0; padding: 14px; flex: 1; overflow-y: auto; display: flex; flex-direction: column; gap: 10px; }
.msg { max-width: 85%; padding: 9px 12px; border-radius: 12px; overflow-wrap: anywhere; }
.msg.user { align-self: flex-end; background: var(--accent); color: var(--accent-text); white-space: pre-wrap; }
.msg.bot, .msg.agent, .msg.note { align-self: flex-start; background: #f3f4f6; }
.msg.agent { background: #ecfdf5; border: 1px solid #a7f3d0; }
.msg.note { background: transparent; color: #4b5563; font-size: 13px; padding: 2px 4px; }
.msg.pending { opacity: .6; }
.who { display: block; font-size: 12px; font-weight: 600; color: #374151; margin-bottom: 2px; }
.body p { margin: 0 0 6px; } .body p:last-child { margin-bottom: 0; } .body ul, .body ol { margin: 4px 0 6px; padding-left: 20px; }
.body code { background: #e5e7eb; padding: 0 3px; border-radius: 3px; font-size: 13px; }
.msg a { color: #1e40af; }
.sources { margin-top: 6px; font-size: 12.5px; color: #374151; }
.sources ul { margin: 2px 0 0; padding-left: 18px; }
.rate { margin-top: 6px; display: flex; gap: 6px; align-items: center; font-size: 12.5px; flex-wrap: wrap; }
.rate button { border: 1px solid #d1d5db; background: #fff; border-radius: 6px; padding: 3px 8px; color: #374151; display: inline-grid; place-items: center; }
.rate button[aria-pressed="true"] { border-color: var(--accent); background: #e0e7ff; }
.rate input { flex: 1; min-width: 120px; font: inherit; padding: 3px 6px; border: 1px solid #9ca3af; border-radius: 6px; }
.suggest { margin-top: 6px; }
.suggest button, .send, .stop { border: 0; border-radius: 8px; background: var(--accent); color: var(--accent-text); padding: 6px 12px; }
.stop { background: #b91c1c; color: #fff; }
.typing { align-self: flex-start; display: flex; gap: 4px; padding: 10px 12px; background: #f3f4f6; border-radius: 12px; }
.typing span { width: 7px; height: 7px; border-radius: 50%; background: #6b7280; animation: blink 1.2s infinite; }
.typing span:nth-child(2) { animation-delay: .2s; } .typing span:nth-child(3) { animation-delay: .4s; }
@keyframes blink { 0%, 80%, 100% { opacity: .25; } 40% { opacity: 1; } }
@media (prefers-reduced-motion: reduce) { .typing span { animation: none; } }
form.composer { border-top: 1px solid #e5e7eb; padding: 10px; display: grid; grid-template-columns: 1fr auto; gap: 6px; align-items: end; }
textarea { font: inherit; resize: none; border: 1px solid #9ca3af; border-radius: 8px; padding: 7px 9px; min-height: 40px; max-height: 120px; color: #111827; }
.notice { grid-column: 1 / -1; margin: 0; font-size: 12.5px; color: #b91c1c; min-height: 0; }
.notice:empty { display: none; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 480px) {
  .root { bottom: 12px; } .root.right { right: 12px; } .root.left { left: 12px; }
  .panel { position: fixed; inset: 0; width: 100vw; height: 100dvh; border-radius: 0; bottom: auto; }
}`;

  // ------------------------------------------------------------------ DOM helpers
  function el(name, props, ...children) {
    const node = document.createElement(name);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== false && value != null) node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function safeHref(url) {
    try {
      const parsed = new URL(url, origin);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function link(text, url) {
    const href = safeHref(url);
    return href ? el("a", { href, target: "_blank", rel: "noopener noreferrer nofollow", text }) : document.createTextNode(text);
  }

  // Safe Markdown: paragraphs, bullet and numbered lists, **bold**, `code`, [links](https://…)
  // and bare URLs. Builds DOM nodes; nothing is ever parsed as HTML.
  const INLINE = /\*\*([^*\n]+)\*\*|`([^`\n]+)`|\[([^\]\n]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;
  function inline(text, into) {
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) into.append(text.slice(last, m.index));
      if (m[1] !== undefined) into.append(el("strong", { text: m[1] }));
      else if (m[2] !== undefined) into.append(el("code", { text: m[2] }));
      else if (m[3] !== undefined) into.append(link(m[3], m[4]));
      else into.append(link(m[5], m[5]));
      last = m.index + m[0].length;
    }
    if (last < text.length) into.append(text.slice(last));
    return into;
  }
  function markdown(text) {
    const out = document.createDocumentFragment();
    for (const block of text.split(/\n{2,}/)) {
      const lines = block.split("\n").filter((l) => l.trim());
      if (!lines.length) continue;
      const bullets = lines.every((l) => /^\s*[-*•]\s+/.test(l));
      const numbers = lines.every((l) => /^\s*\d+[.)]\s+/.test(l));
      if (bullets || numbers) {
        const list = el(bullets ? "ul" : "ol");
        for (const l of lines) list.append(inline(l.replace(/^\s*([-*•]|\d+[.)])\s+/, ""), el("li")));
        out.append(list);
      } else {
        const p = el("p");
        lines.forEach((l, i) => {
          if (i) p.append(el("br"));
          inline(l, p);
        });
        out.append(p);
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ the shadow DOM
  // A custom element, not a div, so page rules such as `div { ... !important }` cannot match
  // the host; the inline !important reset beats whatever else the page throws at it.
  const host = el("supportbot-widget", { id: "supportbot-widget", style: "all: initial !important; display: block !important;" });
  const shadow = host.attachShadow({ mode: "open" });
  const THUMB = '<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true"><path fill="currentColor" d="M2 21h4V9H2v12zm20-11a2 2 0 0 0-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10a2 2 0 0 0 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z"/></svg>';
  const chatIcon = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 1-2z"/></svg>';
  const launcher = el("button", { class: "launcher", type: "button", "aria-label": `Open chat: ${opts.title}`, "aria-expanded": "false", "aria-controls": "sb-panel" });
  launcher.innerHTML = chatIcon; // a constant of ours, never data
  const human = el("button", { type: "button", class: "human", text: "Talk to a person" });
  const closeButton = el("button", { type: "button", class: "close", "aria-label": "Close chat", text: "×" });
  const banner = el("div", { class: "banner", role: "status", hidden: true });
  const log = el("ol", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
  const typing = el("li", { class: "typing", "aria-label": "The assistant is typing" }, el("span"), el("span"), el("span"));
  const input = el("textarea", { id: "sb-input", rows: "1", placeholder: "Type your question…", "aria-describedby": "sb-notice" });
  const notice = el("p", { class: "notice", id: "sb-notice", role: "alert" });
  const send = el("button", { type: "submit", class: "send", text: "Send" });
  const stop = el("button", { type: "button", class: "stop", text: "Stop", hidden: true });
  const form = el("form", { class: "composer" }, el("label", { class: "sr", for: "sb-input", text: "Your message" }), input, send, stop, notice);
  const panel = el("section", { class: "panel", id: "sb-panel", role: "dialog", "aria-label": opts.title, hidden: true },
    el("header", {}, el("h2", { text: opts.title }), human, closeButton), banner, log, form);
  const heading = panel.querySelector("h2");
  const root = el("div", { class: `root ${opts.position}` }, panel, launcher);
  if (opts.color) root.style.setProperty("--accent", opts.color);
  shadow.append(el("style", { text: CSS }), root);

  // ------------------------------------------------------------------ state
  let ws = null;
  let ready = false;
  let attempt = 0;
  let retryTimer = null;
  let conversationId = null;
  let lastSeq = 0;
  let status = "bot";
  const outbox = []; // frames waiting for a connection
  const pending = new Map(); // client_message_id -> {text, node}: sent, not yet stored
  const bubbles = new Map(); // message_id -> {node, body, text}
  let streaming = null; // message id of the answer streaming now
  let waitingFirstToken = false;

  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && typeof saved.id === "string") conversationId = saved.id;
  } catch {
    /* storage unavailable or corrupt: start afresh */
  }

  function remember() {
    try {
      if (conversationId) localStorage.setItem(STORE, JSON.stringify({ id: conversationId }));
      else localStorage.removeItem(STORE);
    } catch {
      /* private mode: the conversation lasts as long as the page */
    }
  }

  function newId() {
    return crypto.randomUUID ? crypto.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function setTyping(on) {
    waitingFirstToken = on;
    if (on) log.append(typing);
    else typing.remove();
    scrollDown();
  }

  function setBanner(text, kind) {
    banner.textContent = text || "";
    banner.className = `banner ${kind || ""}`;
    banner.hidden = !text;
  }

  function showStatus() {
    if (!ready) return;
    if (status === "handoff") setBanner(agentName ? `${agentName} from our team joined the chat.` : "Waiting for a person from our team to join…", agentName ? "agent" : "");
    else if (status === "closed") setBanner("This conversation was closed. Write again to reopen it.", "");
    else setBanner("", "");
    human.hidden = status === "handoff";
  }
  let agentName = null;

  function note(text) {
    log.append(el("li", { class: "msg note", text }));
    scrollDown();
  }

  // ------------------------------------------------------------------ connection
  function connect() {
    if (ws) return;
    clearTimeout(retryTimer);
    ready = false;
    const socket = new WebSocket(WS_URL);
    ws = socket;
    socket.addEventListener("open", () => {
      const start = { type: "start" };
      if (conversationId) Object.assign(start, { conversation_id: conversationId, last_seq: lastSeq });
      else if (opts.userId) start.user_id = opts.userId;
      socket.send(JSON.stringify(start));
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object") handle(frame);
    });
    socket.addEventListener("close", (event) => {
      if (ws !== socket) return;
      ws = null;
      ready = false;
      if (streaming) setTyping(false);
      const delay = Math.min(10000, 500 * 2 ** attempt) * (0.75 + Math.random() / 2);
      attempt += 1;
      const reason = event.code === 1013 ? "The chat is busy" : "You are offline";
      countdown(reason, Date.now() + delay);
      retryTimer = setTimeout(connect, delay);
    });
  }

  function countdown(reason, at) {
    const tick = () => {
      if (ws && ready) return;
      const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      setBanner(`${reason}; retrying${seconds ? ` in ${seconds} s` : "…"}`, "offline");
      if (!ready) setTimeout(tick, 500);
    };
    tick();
  }

  function transmit(frame) {
    if (ws && ready) ws.send(JSON.stringify(frame));
    else {
      outbox.push(frame);
      connect();
    }
  }

  // ------------------------------------------------------------------ frames
  function handle(frame) {
    if (typeof frame.seq === "number") {
      if (frame.seq <= lastSeq) return; // replayed twice: already shown
      lastSeq = frame.seq;
    }
    switch (frame.type) {
      case "ready": {
        const fresh = conversationId !== frame.conversation_id;
        conversationId = frame.conversation_id;
        remember();
        ready = true;
        attempt = 0;
        status = frame.status;
        const assistant = frame.assistant && typeof frame.assistant === "object" ? frame.assistant : {};
        if (!tag.dataset.title && assistant.name) {
          opts.title = String(assistant.name);
          heading.textContent = opts.title;
          panel.setAttribute("aria-label", opts.title);
          launcher.setAttribute("aria-label", `${panel.hidden ? "Open" : "Close"} chat: ${opts.title}`);
        }
        const greeting = opts.greeting || String(assistant.greeting || "Hi! Ask me anything about our products and orders.");
        if (fresh && !log.children.length) note(greeting);
        showStatus();
        // Messages sent before a drop go again with the same id: the server answers each once.
        for (const [cmid, item] of pending) ws.send(JSON.stringify({ type: "message", client_message_id: cmid, text: item.text }));
        while (outbox.length) ws.send(JSON.stringify(outbox.shift()));
        break;
      }
      case "user_message": {
        const item = pending.get(frame.client_message_id);
        pending.delete(frame.client_message_id);
        if (item) {
          item.node.classList.remove("pending");
          item.node.dataset.id = frame.message_id;
        } else {
          log.append(el("li", { class: "msg user", "data-id": frame.message_id, text: String(frame.text) }));
        }
        if (item && status === "bot") setTyping(true); // our own message, live: an answer is coming
        scrollDown();
        break;
      }
      case "token":
        answerBubble(frame.message_id).text += String(frame.delta);
        renderAnswer(frame.message_id);
        break;
      case "sources":
        renderSources(frame.message_id, Array.isArray(frame.sources) ? frame.sources : []);
        break;
      case "done":
        finishAnswer(frame);
        break;
      case "handoff":
        suggestHuman(frame.message_id);
        break;
      case "status":
        status = frame.status;
        agentName = frame.agent || null;
        if (frame.seq && frame.status === "handoff" && frame.agent) note(`${frame.agent} joined the chat.`);
        if (frame.seq && frame.status === "bot" && frame.reason === "handback") note("You are chatting with the assistant again.");
        showStatus();
        break;
      case "agent_message": {
        setTyping(false);
        const node = el("li", { class: "msg agent", "data-id": frame.message_id },
          el("span", { class: "who", text: String(frame.agent || "Support") }), el("div", { class: "body" }, markdown(String(frame.text))));
        log.append(node);
        scrollDown();
        break;
      }
      case "rated": {
        const bubble = bubbles.get(frame.message_id);
        if (bubble && bubble.thanks) bubble.thanks.textContent = "Thanks for your feedback.";
        break;
      }
      case "error":
        handleError(frame);
        break;
      default:
        break; // duplicate, pong, and types added later
    }
  }

  function handleError(frame) {
    if (frame.code === "unknown_conversation") {
      conversationId = null; // expired: start a new one
      lastSeq = 0;
      remember();
      if (ws) ws.send(JSON.stringify({ type: "start" }));
      return;
    }
    if (frame.client_message_id && pending.has(frame.client_message_id)) {
      pending.get(frame.client_message_id).node.remove();
      pending.delete(frame.client_message_id);
      setTyping(false);
    }
    notice.textContent = String(frame.message || "Something went wrong.");
  }

  function answerBubble(id) {
    let bubble = bubbles.get(id);
    if (!bubble) {
      setTyping(false);
      const body = el("div", { class: "body" });
      const node = el("li", { class: "msg bot", "data-id": id }, el("span", { class: "sr", text: "Assistant:" }), body);
      log.append(node);
      bubble = { node, body, text: "" };
      bubbles.set(id, bubble);
      streaming = id;
      stop.hidden = false;
    }
    return bubble;
  }

  function renderAnswer(id) {
    const bubble = bubbles.get(id);
    bubble.body.replaceChildren(markdown(bubble.text));
    scrollDown();
  }

  function renderSources(id, sources) {
    const bubble = answerBubble(id);
    if (!sources.length) return;
    const list = el("ul");
    for (const s of sources.slice(0, 8)) list.append(el("li", {}, link(String(s.title || s.url || "Source"), s.url)));
    bubble.node.append(el("div", { class: "sources" }, el("span", { text: "Sources:" }), list));
    scrollDown();
  }

  function finishAnswer(frame) {
    const bubble = answerBubble(frame.message_id);
    if (streaming === frame.message_id) {
      streaming = null;
      stop.hidden = true;
    }
    setTyping(false);
    if (frame.path === "cancelled") {
      bubble.node.append(el("div", { class: "sources", text: "Stopped." }));
      return;
    }
    if (frame.path === "human_requested" || frame.path === "small_talk") return; // nothing to rate
    const thanks = el("span", { role: "status" });
    bubble.thanks = thanks;
    const up = el("button", { type: "button", "aria-label": "Helpful", "aria-pressed": "false" });
    const down = el("button", { type: "button", "aria-label": "Not helpful", "aria-pressed": "false" });
    up.innerHTML = THUMB; // constants of ours, never data
    down.innerHTML = THUMB.replace("<svg", '<svg style="transform: rotate(180deg)"');
    const row = el("div", { class: "rate" }, el("span", { text: "Was this helpful?" }), up, down, thanks);
    const rate = (rating, comment) => {
      up.setAttribute("aria-pressed", String(rating === "up"));
      down.setAttribute("aria-pressed", String(rating === "down"));
      const frame = { type: "rate", message_id: bubble.node.dataset.id, rating, event_id: newId() };
      if (comment) frame.comment = comment.slice(0, 2000);
      transmit(frame);
    };
    up.addEventListener("click", () => rate("up"));
    down.addEventListener("click", () => {
      if (row.querySelector("form")) return;
      const comment = el("input", { type: "text", maxlength: "2000", "aria-label": "What was wrong? (optional)", placeholder: "What was wrong? (optional)" });
      const box = el("form", { class: "rate" }, comment, el("button", { type: "submit", text: "Send" }));
      box.addEventListener("submit", (event) => {
        event.preventDefault();
        rate("down", comment.value.trim());
        box.remove();
      });
      row.after(box);
      comment.focus();
    });
    bubble.node.append(row);
    scrollDown();
  }

  function suggestHuman(id) {
    const bubble = bubbles.get(id);
    if (!bubble || status !== "bot") return;
    const button = el("button", { type: "button", text: "Talk to a person" });
    button.addEventListener("click", () => {
      transmit({ type: "handoff" });
      button.disabled = true;
    });
    bubble.node.append(el("div", { class: "suggest" }, button));
  }

  // ------------------------------------------------------------------ user actions
  function submit() {
    const text = input.value.trim();
    if (!text) return;
    if (text.length > opts.maxChars) {
      notice.textContent = `Your message is ${text.length} characters long; the limit is ${opts.maxChars}. Please shorten it.`;
      return;
    }
    if (streaming) {
      notice.textContent = "Please wait for the answer to finish, or press Stop.";
      return;
    }
    notice.textContent = "";
    const cmid = newId();
    const node = el("li", { class: "msg user pending", text });
    log.append(node);
    pending.set(cmid, { text, node });
    input.value = "";
    scrollDown();
    if (ws && ready) ws.send(JSON.stringify({ type: "message", client_message_id: cmid, text }));
    else connect(); // sent from `pending` once the connection is ready
  }

  function checkLength() {
    const length = input.value.length;
    if (length > opts.maxChars) {
      notice.textContent = `Your message is ${length} characters long; the limit is ${opts.maxChars}. Please shorten it.`;
      send.disabled = true;
    } else {
      if (notice.textContent.startsWith("Your message is")) notice.textContent = "";
      send.disabled = false;
    }
  }

  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", `Close chat: ${opts.title}`);
    connect();
    input.focus();
  }

  function close() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", `Open chat: ${opts.title}`);
    launcher.focus();
  }

  launcher.addEventListener("click", () => (panel.hidden ? open() : close()));
  closeButton.addEventListener("click", close);
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });
  human.addEventListener("click", () => transmit({ type: "handoff" }));
  stop.addEventListener("click", () => transmit({ type: "cancel" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", checkLength);

  const mount = () => {
    document.body.append(host);
    if (conversationId) connect(); // a returning visitor: restore the conversation at once
  };
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
