/*
 * Meta Chat web chat widget. Dependency-free; embed with two lines:
 *   <link rel="stylesheet" href="https://YOUR-PLATFORM/static/webchat/widget.css">
 *   <script src="https://YOUR-PLATFORM/static/webchat/widget.js" data-widget-key="wk_..." defer></script>
 * Optional attributes: data-api-base (default: where this script comes from), data-open="true",
 * data-title. Protocol: docs/webchat.md.
 *
 * What it guarantees: a typed message is written to localStorage before anything else, and leaves it
 * only when the server acknowledged storing it (resends reuse the same client_message_id, so the
 * server stores it once); the socket reconnects with exponential backoff; everything is rendered as
 * text (never HTML), and the conversation is a role="log" live region operable from the keyboard.
 */
(function () {
  "use strict";

  var script = document.currentScript || document.querySelector("script[data-widget-key]");
  if (!script) return;
  var widgetKey = script.getAttribute("data-widget-key") || "";
  if (!widgetKey) {
    if (window.console) console.error("[metachat] data-widget-key is missing on the widget script tag");
    return;
  }
  var apiBase = (script.getAttribute("data-api-base") || new URL(script.src, location.href).origin).replace(/\/+$/, "");
  var wsBase = apiBase.replace(/^http/, "ws");
  var storagePrefix = "metachat.webchat." + widgetKey + ".";
  var uid = Math.random().toString(36).slice(2, 8);

  // --- storage (falls back to memory when localStorage is unavailable) ------------------------------
  var memory = {};
  function load(name, fallback) {
    var raw = null;
    try { raw = window.localStorage.getItem(storagePrefix + name); } catch (e) { raw = memory[name] || null; }
    if (raw === null || raw === undefined) return fallback;
    try { return JSON.parse(raw); } catch (e) { return fallback; }
  }
  function save(name, value) {
    var raw = JSON.stringify(value);
    try { window.localStorage.setItem(storagePrefix + name, raw); } catch (e) { memory[name] = raw; }
  }

  // --- state ----------------------------------------------------------------------------------------
  var state = {
    session: null,
    socket: null,
    ready: false,
    attempt: 0,
    timer: null,
    started: false,
    holdUntil: 0, // rate limited: no sends before this time (ms)
    refusal: "", // why the server last refused or closed the connection, shown while waiting to retry
    maxChars: 4000,
    rendered: {}, // message id -> element
    typingTimer: null,
    stopped: false
  };
  function outbox() { return load("outbox", []); }
  function setOutbox(items) { save("outbox", items); }

  // --- DOM ------------------------------------------------------------------------------------------
  function el(tag, cls, attrs) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (attrs) for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) node.setAttribute(k, attrs[k]);
    return node;
  }
  function srOnly(text) { var s = el("span", "mc-sr"); s.textContent = text; return s; }

  var title = script.getAttribute("data-title") || "Chat";
  var root = el("div", "mc-widget", { "data-state": "closed" });
  var launcher = el("button", "mc-launcher", {
    type: "button", "aria-expanded": "false", "aria-controls": "mc-panel-" + uid, "aria-label": "Open chat"
  });
  launcher.innerHTML = '<svg aria-hidden="true" focusable="false" viewBox="0 0 24 24" width="26" height="26"><path fill="currentColor" d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg>';
  var panel = el("section", "mc-panel", { id: "mc-panel-" + uid, role: "dialog", "aria-modal": "false", "aria-labelledby": "mc-title-" + uid });
  panel.hidden = true;
  var header = el("header", "mc-header");
  var heading = el("h2", "mc-title", { id: "mc-title-" + uid });
  heading.textContent = title;
  var status = el("p", "mc-status", { role: "status", "aria-live": "polite" });
  var closeBtn = el("button", "mc-close", { type: "button", "aria-label": "Close chat" });
  closeBtn.textContent = "\u00d7";
  header.appendChild(heading);
  header.appendChild(status);
  header.appendChild(closeBtn);
  var log = el("div", "mc-log", { role: "log", "aria-live": "polite", "aria-relevant": "additions", "aria-label": "Conversation", tabindex: "0" });
  var typing = el("div", "mc-typing", { "aria-hidden": "true" });
  typing.hidden = true;
  typing.innerHTML = "<span></span><span></span><span></span>";
  var form = el("form", "mc-form", { novalidate: "" });
  var label = el("label", "mc-sr", { for: "mc-input-" + uid });
  label.textContent = "Your message";
  var input = el("textarea", "mc-input", { id: "mc-input-" + uid, rows: "1", placeholder: "Type a message…", "aria-describedby": "mc-hint-" + uid });
  var hint = el("span", "mc-sr", { id: "mc-hint-" + uid });
  hint.textContent = "Enter sends, Shift+Enter adds a line, Escape closes the chat.";
  var send = el("button", "mc-send", { type: "submit", "aria-label": "Send message" });
  send.textContent = "Send";
  form.appendChild(label);
  form.appendChild(hint);
  form.appendChild(input);
  form.appendChild(send);
  var formError = el("p", "mc-form-error", { role: "alert" });
  formError.hidden = true;
  panel.appendChild(header);
  panel.appendChild(log);
  panel.appendChild(typing);
  panel.appendChild(formError);
  panel.appendChild(form);
  root.appendChild(panel);
  root.appendChild(launcher);

  function setStatus(text, kind) {
    status.textContent = text;
    root.setAttribute("data-connection", kind || "");
  }

  function scrollDown() { log.scrollTop = log.scrollHeight; }

  var roleNames = { user: "You", assistant: "Assistant", agent: "Agent", system: "Notice" };

  function renderSources(container, sources) {
    var old = container.querySelector(".mc-sources");
    if (old) old.parentNode.removeChild(old);
    if (!sources || !sources.length) return;
    var box = el("div", "mc-sources");
    var caption = el("p", "mc-sources-title");
    caption.textContent = "Sources";
    var list = el("ul");
    sources.forEach(function (src) {
      var li = el("li", "mc-source");
      var text = (src.title || src.url || "Source") + (src.page ? " (p. " + src.page + ")" : "");
      var safeUrl = typeof src.url === "string" && /^(https?:\/\/|\/)/i.test(src.url) ? src.url : "";
      if (safeUrl) {
        var a = el("a", null, { href: safeUrl, target: "_blank", rel: "noopener noreferrer" });
        a.textContent = text;
        li.appendChild(a);
      } else {
        li.textContent = text;
      }
      list.appendChild(li);
    });
    box.appendChild(caption);
    box.appendChild(list);
    container.appendChild(box);
  }

  function metaText(status, detail) {
    if (status === "pending") return state.ready ? "Sending…" : "Not sent yet — will send when connected";
    if (status === "held") return "Waiting to send (too many messages)…";
    if (status === "failed") return "Not sent: " + (detail || "refused");
    return "Sent";
  }

  function setMessageStatus(node, status, detail) {
    node.setAttribute("data-status", status);
    var meta = node.querySelector(".mc-meta");
    if (meta) meta.textContent = metaText(status, detail);
  }

  function renderMessage(msg) {
    var id = msg.id || msg.client_message_id;
    var role = msg.role || "assistant";
    var existing = id ? state.rendered[id] : null;
    if (existing) {
      if (role !== "user") {
        existing.querySelector(".mc-text").textContent = msg.text || "";
        renderSources(existing, msg.sources);
      } else if (msg.status && msg.status !== "pending") {
        setMessageStatus(existing, "stored");
      }
      return existing;
    }
    var node = el("div", "mc-msg mc-msg--" + role, { "data-role": role });
    if (id) node.setAttribute("data-id", id);
    var bubble = el("div", "mc-bubble");
    bubble.appendChild(srOnly((roleNames[role] || role) + ": "));
    var text = el("span", "mc-text");
    text.textContent = msg.text || "";
    bubble.appendChild(text);
    node.appendChild(bubble);
    if (role === "user") {
      node.appendChild(el("div", "mc-meta", { "aria-hidden": "true" }));
      setMessageStatus(node, msg.status === "pending" || msg.status === "held" || msg.status === "failed" ? msg.status : "stored", msg.detail);
    }
    renderSources(node, msg.sources);
    log.appendChild(node);
    if (id) state.rendered[id] = node;
    scrollDown();
    return node;
  }

  function renderNotice(text) {
    var node = el("div", "mc-notice", { "data-role": "notice" });
    node.textContent = text;
    log.appendChild(node);
    scrollDown();
  }

  function showTyping(on) {
    typing.hidden = !on;
    clearTimeout(state.typingTimer);
    if (on) state.typingTimer = setTimeout(function () { typing.hidden = true; }, 15000);
  }

  var handoffTexts = {
    handoff_requested: "You will be connected to a person shortly.",
    agent: "A person has joined the conversation.",
    bot: "You are chatting with the assistant again.",
    resolved: "This conversation was marked as resolved."
  };

  // The closing satisfaction question: 1-5 buttons; the answer goes back as a "csat" frame (once).
  function renderRating(frame) {
    var box = el("div", "mc-rating", { role: "group", "aria-label": frame.question || "Rate this conversation" });
    var question = el("p", "mc-rating-question");
    question.textContent = frame.question || "How satisfied are you?";
    box.appendChild(question);
    var buttons = el("div", "mc-rating-buttons");
    (frame.scale || [1, 2, 3, 4, 5]).forEach(function (score) {
      var button = el("button", "mc-rating-button", { type: "button", "aria-label": score + " out of 5", "data-score": String(score) });
      button.textContent = String(score);
      button.addEventListener("click", function () {
        if (!state.socket || state.socket.readyState !== 1) return;
        state.socket.send(JSON.stringify({ type: "csat", score: score }));
        buttons.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
        button.setAttribute("aria-pressed", "true");
      });
      buttons.appendChild(button);
    });
    box.appendChild(buttons);
    log.appendChild(box);
    state.rating = box;
    scrollDown();
  }

  // The visitor's typing, for the agent's inbox: at most one frame every 3 s while typing.
  var typingSentAt = 0;
  function sendTyping() {
    if (!state.ready || !state.socket || state.socket.readyState !== 1) return;
    var now = Date.now();
    if (now - typingSentAt < 3000) return;
    typingSentAt = now;
    state.socket.send(JSON.stringify({ type: "typing", on: true }));
  }

  // --- sending --------------------------------------------------------------------------------------
  function newId() {
    if (window.crypto && window.crypto.randomUUID) return "c_" + window.crypto.randomUUID();
    var s = "c_";
    for (var i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
    return s;
  }

  function submit() {
    var text = input.value;
    formError.hidden = true;
    if (!text.trim()) return;
    if (text.length > state.maxChars) {
      formError.textContent = "Your message is " + text.length + " characters long; the limit is " + state.maxChars + ".";
      formError.hidden = false;
      return;
    }
    var item = { client_message_id: newId(), text: text, ts: Date.now() };
    var items = outbox();
    items.push(item);
    setOutbox(items); // persisted before anything can fail
    input.value = "";
    typingSentAt = 0; // the next message's first keystroke shows at once
    renderMessage({ id: item.client_message_id, role: "user", text: text, status: "pending" });
    flush();
    ensureStarted();
  }

  function flush() {
    if (!state.ready || !state.socket || state.socket.readyState !== 1) return;
    if (Date.now() < state.holdUntil) return;
    var socket = state.socket;
    socket.sentIds = socket.sentIds || {};
    outbox().forEach(function (item) {
      if (socket.sentIds[item.client_message_id]) return; // in flight on this socket: wait for its ack
      socket.sentIds[item.client_message_id] = true;
      socket.send(JSON.stringify({ type: "message", client_message_id: item.client_message_id, text: item.text, page_url: location.href }));
    });
  }

  function removeFromOutbox(id) {
    setOutbox(outbox().filter(function (item) { return item.client_message_id !== id; }));
  }

  // --- server frames --------------------------------------------------------------------------------
  var streams = {};

  function onFrame(frame) {
    var node;
    switch (frame.type) {
      case "ready":
        state.ready = true;
        state.attempt = 0;
        state.refusal = "";
        setStatus("Online", "online");
        refreshPendingLabels();
        flush();
        break;
      case "ack":
        removeFromOutbox(frame.client_message_id);
        node = state.rendered[frame.client_message_id];
        if (node) setMessageStatus(node, "stored");
        break;
      case "message":
        showTyping(false);
        renderMessage(frame);
        break;
      case "stream_start":
        showTyping(false);
        node = renderMessage({ id: frame.id, role: frame.role || "assistant", text: "" });
        node.setAttribute("aria-busy", "true");
        streams[frame.id] = node;
        break;
      case "stream_delta":
        node = streams[frame.id] || state.rendered[frame.id];
        if (!node) node = streams[frame.id] = renderMessage({ id: frame.id, role: "assistant", text: "" });
        node.querySelector(".mc-text").textContent += frame.delta || "";
        scrollDown();
        break;
      case "stream_end":
        node = streams[frame.id] || renderMessage({ id: frame.id, role: frame.role || "assistant", text: "" });
        node.querySelector(".mc-text").textContent = frame.text || "";
        renderSources(node, frame.sources);
        node.removeAttribute("aria-busy");
        delete streams[frame.id];
        scrollDown();
        break;
      case "sources":
        node = state.rendered[frame.id];
        if (node) renderSources(node, frame.sources);
        break;
      case "typing":
        showTyping(frame.on !== false);
        break;
      case "handoff":
        renderNotice(frame.message || handoffTexts[frame.state] || "The conversation changed hands.");
        break;
      case "csat":
        renderRating(frame);
        break;
      case "csat_ack":
        if (state.rating) state.rating.setAttribute("data-answered", String(frame.score));
        break;
      case "error":
        onError(frame);
        break;
      default:
        break; // unknown frames are ignored so that newer servers do not break older widgets
    }
  }

  function onError(frame) {
    var id = frame.client_message_id;
    if (!id) {
      state.refusal = frame.message || "Error";
      setStatus(state.refusal, "error");
      return;
    }
    var node = state.rendered[id];
    if (frame.code === "rate_limited") {
      var wait = ((frame.details && frame.details.retry_after) || 10) * 1000;
      state.holdUntil = Date.now() + wait;
      if (state.socket && state.socket.sentIds) delete state.socket.sentIds[id]; // to be sent again
      if (node) setMessageStatus(node, "held");
      setTimeout(function () { state.holdUntil = 0; flush(); }, wait);
      return;
    }
    // Refused for good (too long, empty, malformed): it will never be stored, so stop resending it.
    removeFromOutbox(id);
    if (node) setMessageStatus(node, "failed", frame.message);
  }

  function refreshPendingLabels() {
    outbox().forEach(function (item) {
      var node = state.rendered[item.client_message_id];
      if (node && node.getAttribute("data-status") === "pending") setMessageStatus(node, "pending");
    });
  }

  // --- session and socket ---------------------------------------------------------------------------
  // refusal: the server's reason, kept on screen until the retry (a refused session or socket).
  function scheduleReconnect(extraDelay, refusal) {
    clearTimeout(state.timer);
    if (state.stopped) return;
    var base = Math.min(30000, 1000 * Math.pow(2, state.attempt));
    var delay = (extraDelay || 0) + base * (0.5 + Math.random() / 2);
    state.attempt = Math.min(state.attempt + 1, 10);
    if (refusal) setStatus(refusal, "error");
    else setStatus(navigator.onLine === false ? "Offline — your messages will be sent when you are back" : "Reconnecting…", "offline");
    refreshPendingLabels();
    state.timer = setTimeout(connect, delay);
  }

  function applySession(session) {
    state.session = session;
    save("visitor", session.visitor_token);
    if (session.widget) {
      state.maxChars = session.widget.max_message_chars || state.maxChars;
      if (!script.getAttribute("data-title") && session.widget.title) heading.textContent = session.widget.title;
    }
    var storedIds = {};
    (session.history || []).forEach(function (msg) {
      if (msg.role === "user") storedIds[msg.id] = true;
      renderMessage(msg);
    });
    // Messages acknowledged before a lost ack are in the history: stop resending them.
    setOutbox(outbox().filter(function (item) { return !storedIds[item.client_message_id]; }));
    outbox().forEach(function (item) {
      renderMessage({ id: item.client_message_id, role: "user", text: item.text, status: "pending" });
    });
    if (!log.children.length && session.widget && session.widget.greeting) {
      renderMessage({ id: "greeting", role: "assistant", text: session.widget.greeting });
    }
  }

  function connect() {
    clearTimeout(state.timer);
    state.ready = false;
    setStatus("Connecting…", "connecting");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", apiBase + "/api/webchat/sessions/");
    xhr.setRequestHeader("Content-Type", "application/json");
    xhr.timeout = 15000;
    xhr.onload = function () {
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status === 201 && body) {
        applySession(body);
        openSocket(body);
      } else {
        var message = body && body.error ? body.error.message : "The chat is unavailable (" + xhr.status + ").";
        var details = (body && body.error && body.error.details) || {};
        // 429: too many sessions, wait as told; other 4xx are configuration problems (origin, key):
        // retry slowly in case they get fixed.
        if (xhr.status === 429) scheduleReconnect((details.retry_after || 30) * 1000, message);
        else scheduleReconnect(xhr.status >= 400 && xhr.status < 500 ? 30000 : 0, message);
      }
    };
    xhr.onerror = xhr.ontimeout = function () { scheduleReconnect(0); };
    xhr.send(JSON.stringify({ widget_key: widgetKey, visitor_token: load("visitor", "") || "" }));
  }

  function openSocket(session) {
    var socket;
    try {
      socket = new WebSocket(wsBase + (session.websocket_path || "/ws/webchat/") + "?token=" + encodeURIComponent(session.token));
    } catch (e) {
      scheduleReconnect(0);
      return;
    }
    state.socket = socket;
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && typeof frame === "object") onFrame(frame);
    };
    socket.onclose = function (event) {
      if (state.socket !== socket) return;
      state.ready = false;
      state.socket = null;
      // 4401: token refused (expired, invalid) -> a new session at once; 4403 (origin, chat switched
      // off) and 4429 (too many open tabs of this visitor): wait, showing why; anything else: backoff.
      var refusal = state.refusal;
      state.refusal = "";
      if (event.code === 4401 && state.attempt < 2) {
        state.attempt += 1;
        connect();
      } else if (event.code === 4403 || event.code === 4429) {
        scheduleReconnect(30000, refusal);
      } else {
        scheduleReconnect(0);
      }
    };
  }

  function ensureStarted() {
    if (state.started) return;
    state.started = true;
    connect();
  }

  // --- open / close / keyboard ----------------------------------------------------------------------
  function open() {
    panel.hidden = false;
    root.setAttribute("data-state", "open");
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", "Close chat");
    save("open", true);
    ensureStarted();
    input.focus();
  }
  function close() {
    panel.hidden = true;
    root.setAttribute("data-state", "closed");
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", "Open chat");
    save("open", false);
    launcher.focus();
  }

  launcher.addEventListener("click", function () { if (panel.hidden) open(); else close(); });
  closeBtn.addEventListener("click", close);
  panel.addEventListener("keydown", function (event) { if (event.key === "Escape") close(); });
  form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", function () { if (input.value) sendTyping(); });
  window.addEventListener("online", function () {
    if (state.started && !state.ready) { state.attempt = 0; connect(); }
  });
  window.addEventListener("offline", function () {
    setStatus("Offline — your messages will be sent when you are back", "offline");
  });

  function mount() {
    document.body.appendChild(root);
    if (script.getAttribute("data-open") === "true" || load("open", false) === true) open();
    else if (outbox().length) ensureStarted(); // unsent messages from a previous visit go out now
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);

  window.MetaChatWidget = { open: open, close: close };
})();
