/*
 * Meta Chat web chat widget. Dependency-free; embed with two lines:
 *   <link rel="stylesheet" href="https://YOUR-PLATFORM/static/webchat/widget.css">
 *   <script src="https://YOUR-PLATFORM/static/webchat/widget.js" data-widget-key="wk_..." defer></script>
 * Optional attributes (docs/webchat.md lists them all): data-api-base (default: where this script
 * comes from), data-open="true", data-title, data-greeting, data-placeholder, data-launcher-label,
 * data-send-label. Colours: the --mc-* CSS variables. Protocol: docs/webchat.md.
 *
 * What it guarantees: a typed message (or a tapped option) is written to localStorage before anything
 * else, and leaves it only when the server acknowledged storing it (resends reuse the same
 * client_message_id, so the server stores it once); the socket reconnects with exponential backoff;
 * replies are rendered from a small markdown subset (paragraphs, lists, bold, italic, code, links)
 * built with DOM nodes and textContent, never HTML (links only http, https and mailto); the
 * conversation is a role="log" live region operable from the keyboard.
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
    pingTimer: null,
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

  function attr(name, fallback) {
    var value = script.getAttribute(name);
    return value === null || value === "" ? fallback : value;
  }
  var title = attr("data-title", "Chat");
  var launcherLabel = attr("data-launcher-label", "Open chat");
  var root = el("div", "mc-widget", { "data-state": "closed" });
  var launcher = el("button", "mc-launcher", {
    type: "button", "aria-expanded": "false", "aria-controls": "mc-panel-" + uid, "aria-label": launcherLabel
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
  var input = el("textarea", "mc-input", { id: "mc-input-" + uid, rows: "1", placeholder: attr("data-placeholder", "Type a message…"), "aria-describedby": "mc-hint-" + uid });
  var hint = el("span", "mc-sr", { id: "mc-hint-" + uid });
  hint.textContent = "Enter sends, Shift+Enter adds a line, Escape closes the chat.";
  var send = el("button", "mc-send", { type: "submit", "aria-label": "Send message" });
  send.textContent = attr("data-send-label", "Send");
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
  var OFFLINE_TEXT = "Offline — your messages will be sent when you are back";
  function browserOffline() { return navigator.onLine === false; }
  // Online only while the socket is ready and the browser has a network; the browser's offline state
  // wins over a socket that has not noticed yet.
  function showConnection() {
    if (browserOffline()) setStatus(OFFLINE_TEXT, "offline");
    else if (state.ready && state.socket && state.socket.readyState === 1) setStatus("Online", "online");
  }

  function scrollDown() { log.scrollTop = log.scrollHeight; }

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

  var roleNames = { user: "You", assistant: "Assistant", agent: "Agent", system: "Notice" };

  // --- markdown (a safe subset, built node by node; the text never goes through innerHTML) ----------
  // Paragraphs and line breaks, "- " / "* " bullet lists, "1." numbered lists, "#" headings (as bold
  // lines), ``` code blocks, and inline **bold**, *italic*, `code`, [links](https://...) and bare
  // https:// URLs. Links go only to http, https and mailto, in a new tab without the opener; any
  // other [label](url) shows its label as plain text. Raw HTML in the text stays text.
  function safeHref(url) {
    url = String(url || "").trim();
    return /^(https?:\/\/[^\s]+|mailto:[^\s]+)$/i.test(url) ? url : "";
  }
  function link(parent, href, label, plain) {
    var a = el("a", "mc-link", { href: href, target: "_blank", rel: "noopener noreferrer" });
    if (plain) a.textContent = label; else inline(a, label, true);
    parent.appendChild(a);
  }
  var INLINE = [
    { re: /`([^`\n]+)`/g, make: function (parent, m) { var c = el("code"); c.textContent = m[1]; parent.appendChild(c); } },
    { re: /\[([^\]\n]+)\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\))?[^()\s<>]*)>?\s*\)/g, make: function (parent, m, noLinks) {
      var href = noLinks ? "" : safeHref(m[2]);
      if (href) link(parent, href, m[1]); else inline(parent, m[1], noLinks);
    } },
    { re: /\*\*(?=\S)([^\n]*?\S)\*\*/g, make: wrap("strong") },
    { re: /__(?=\S)([^\n]*?\S)__/g, make: wrap("strong") },
    { re: /\*(?=[^\s*])([^*\n]*?[^\s*])?\*/g, make: function (parent, m, noLinks) {
      var text = m[0].slice(1, -1);
      var em = el("em"); inline(em, text, noLinks); parent.appendChild(em);
    } },
    { re: /(^|[^A-Za-z0-9_])_(?=\S)([^_\n]*?\S)_(?![A-Za-z0-9_])/g, make: function (parent, m, noLinks) {
      if (m[1]) parent.appendChild(document.createTextNode(m[1]));
      var em = el("em"); inline(em, m[2], noLinks); parent.appendChild(em);
    } },
    { re: /(?:https?:\/\/|mailto:)[^\s<>"]*[^\s<>".,;:!?')\]]/gi, make: function (parent, m, noLinks) {
      if (noLinks) parent.appendChild(document.createTextNode(m[0])); else link(parent, m[0], m[0], true);
    } }
  ];
  function wrap(tag) {
    return function (parent, m, noLinks) { var node = el(tag); inline(node, m[1], noLinks); parent.appendChild(node); };
  }
  function inline(parent, text, noLinks) {
    var pos = 0;
    var next = []; // each rule's next match at or after pos (searched again only once passed): linear
    while (pos < text.length) {
      var best = null, bestRule = null;
      for (var i = 0; i < INLINE.length; i++) {
        var rule = INLINE[i];
        if (next[i] === undefined || (next[i] && next[i].index < pos)) {
          rule.re.lastIndex = pos;
          next[i] = rule.re.exec(text);
        }
        var m = next[i];
        if (m && (!best || m.index < best.index)) { best = m; bestRule = rule; }
      }
      if (!best) break;
      if (best.index > pos) parent.appendChild(document.createTextNode(text.slice(pos, best.index)));
      bestRule.make(parent, best, noLinks);
      pos = best.index + best[0].length;
    }
    if (pos < text.length) parent.appendChild(document.createTextNode(text.slice(pos)));
  }
  function renderMarkdown(container, text) {
    container.textContent = "";
    var lines = String(text || "").replace(/\r\n?/g, "\n").split("\n");
    var block = null; // the paragraph or list being filled
    var item = null; // the list item being filled
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      var bullet = /^\s{0,3}[-*+]\s+(.*)$/.exec(line);
      var number = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/.exec(line);
      var heading = /^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
      if (/^\s*```/.test(line)) {
        var pre = el("pre", "mc-pre"), code = el("code"), body = [];
        for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i++) body.push(lines[i]);
        code.textContent = body.join("\n");
        pre.appendChild(code);
        container.appendChild(pre);
        block = item = null;
      } else if (!line.trim()) {
        block = item = null;
      } else if (bullet || number) {
        var tag = bullet ? "ul" : "ol";
        if (!block || block.tagName.toLowerCase() !== tag) {
          block = el(tag);
          if (number && number[1] !== "1") block.setAttribute("start", String(parseInt(number[1], 10)));
          container.appendChild(block);
        }
        item = el("li");
        inline(item, bullet ? bullet[1] : number[2]);
        block.appendChild(item);
      } else if (heading) {
        var h = el("p", "mc-heading"), strong = el("strong");
        inline(strong, heading[1]);
        h.appendChild(strong);
        container.appendChild(h);
        block = item = null;
      } else if (item && /^\s+\S/.test(line)) { // a list item's continuation line
        item.appendChild(el("br"));
        inline(item, line.trim());
      } else {
        if (!block || block.tagName.toLowerCase() !== "p") {
          block = el("p");
          container.appendChild(block);
        } else {
          block.appendChild(el("br"));
        }
        item = null;
        inline(block, line);
      }
    }
  }

  // The text of a message: the visitor's own as typed (plain text), replies from markdown.
  function setText(node, text) {
    var target = node.querySelector(".mc-text");
    node.mcText = text || "";
    if (node.getAttribute("data-role") === "user") target.textContent = node.mcText;
    else renderMarkdown(target, node.mcText);
  }

  // --- time -----------------------------------------------------------------------------------------
  function setTime(node, when) {
    var date = when ? new Date(when) : new Date();
    if (isNaN(date.getTime())) date = new Date();
    var stamp = node.querySelector("time.mc-time");
    if (!stamp) {
      stamp = el("time", "mc-time");
      var bubble = node.querySelector(".mc-bubble");
      bubble.parentNode.insertBefore(stamp, bubble.nextSibling);
    }
    stamp.setAttribute("datetime", date.toISOString());
    stamp.setAttribute("title", date.toLocaleString());
    stamp.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // --- files ----------------------------------------------------------------------------------------
  // Our URLs (a path) open only with this visitor's media key; a tenant's https link is used as is.
  function mediaUrl(url) {
    url = String(url || "");
    if (url.charAt(0) === "/" && url.charAt(1) !== "/") {
      var key = (state.session && state.session.media_key) || "";
      return apiBase + url + (url.indexOf("?") < 0 ? "?" : "&") + "key=" + encodeURIComponent(key);
    }
    return /^https:\/\//i.test(url) ? url : "";
  }
  function fileSize(bytes) {
    if (typeof bytes !== "number" || !isFinite(bytes) || bytes < 0) return "";
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return Math.round(bytes / 1024) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1).replace(/\.0$/, "") + " MB";
  }
  function renderMedia(bubble, items) {
    var old = bubble.querySelector(".mc-media");
    if (old) old.parentNode.removeChild(old);
    if (!items || !items.length) return;
    var box = el("div", "mc-media");
    items.forEach(function (item) {
      if (!item || typeof item !== "object") return;
      var url = mediaUrl(item.url);
      var name = String(item.filename || item.caption || (item.kind === "image" ? "Image" : "File"));
      var figure = el("div", "mc-file mc-file--" + (item.kind || "document"), { "data-kind": item.kind || "document" });
      if (!url) {
        figure.textContent = name + " (unavailable)";
      } else if (item.kind === "image") {
        var a = el("a", null, { href: url, target: "_blank", rel: "noopener noreferrer" });
        var img = el("img", "mc-image", { src: url, alt: item.caption || item.filename || "Image", loading: "lazy" });
        img.addEventListener("load", scrollDown);
        a.appendChild(img);
        figure.appendChild(a);
      } else if (item.kind === "audio" || item.kind === "video") {
        var player = el(item.kind, "mc-player", { controls: "", preload: "metadata", src: url, "aria-label": name });
        if (item.kind === "video") player.setAttribute("playsinline", "");
        figure.appendChild(player);
      } else {
        var download = el("a", "mc-download", { href: url, download: item.filename || "", target: "_blank", rel: "noopener noreferrer" });
        var label = el("span", "mc-download-name");
        label.textContent = name;
        download.appendChild(label);
        var size = fileSize(item.size);
        if (size) {
          var sizeNode = el("span", "mc-download-size");
          sizeNode.textContent = " (" + size + ")";
          download.appendChild(sizeNode);
        }
        figure.appendChild(download);
      }
      box.appendChild(figure);
    });
    bubble.insertBefore(box, bubble.querySelector(".mc-text"));
  }

  // --- options to tap -------------------------------------------------------------------------------
  // One tap sends the option (its signed token) as the visitor's message; then every option is off.
  function renderChoices(node, choices) {
    var old = node.querySelector(".mc-choices");
    if (old) old.parentNode.removeChild(old);
    if (!choices || !choices.options || !choices.options.length) return;
    var box = el("div", "mc-choices", { role: "group", "aria-label": "Options" });
    if (choices.header) { var head = el("p", "mc-choices-header"); head.textContent = choices.header; box.appendChild(head); }
    var buttons = [];
    choices.options.forEach(function (option) {
      var button = el("button", "mc-choice", { type: "button" });
      button.textContent = option.title || "";
      if (option.description) {
        var desc = el("span", "mc-choice-description");
        desc.textContent = option.description;
        button.appendChild(desc);
      }
      button.disabled = !!choices.answered;
      button.addEventListener("click", function () {
        if (button.disabled) return;
        buttons.forEach(function (b) { b.disabled = true; });
        button.setAttribute("aria-pressed", "true");
        box.setAttribute("data-answered", "true");
        tap(option);
      });
      buttons.push(button);
      box.appendChild(button);
    });
    if (choices.answered) box.setAttribute("data-answered", "true");
    if (choices.footer) { var foot = el("p", "mc-choices-footer"); foot.textContent = choices.footer; box.appendChild(foot); }
    node.appendChild(box);
  }

  function answered(messageId) {
    var node = state.rendered[messageId];
    var box = node && node.querySelector(".mc-choices");
    if (!box) return;
    box.setAttribute("data-answered", "true");
    box.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  }

  function renderMessage(msg) {
    var id = msg.id || msg.client_message_id;
    var role = msg.role || "assistant";
    var existing = id ? state.rendered[id] : null;
    if (existing) {
      if (role !== "user") {
        setText(existing, msg.text);
        renderMedia(existing.querySelector(".mc-bubble"), msg.media);
        if (msg.choices) renderChoices(existing, msg.choices);
        renderSources(existing, msg.sources);
      } else if (msg.status && msg.status !== "pending") {
        setMessageStatus(existing, "stored");
      }
      if (msg.created_at) setTime(existing, msg.created_at);
      return existing;
    }
    var node = el("div", "mc-msg mc-msg--" + role, { "data-role": role });
    if (id) node.setAttribute("data-id", id);
    var bubble = el("div", "mc-bubble");
    bubble.appendChild(srOnly((roleNames[role] || role) + ": "));
    var text = el("div", role === "user" ? "mc-text" : "mc-text mc-md");
    bubble.appendChild(text);
    node.appendChild(bubble);
    setText(node, msg.text);
    renderMedia(bubble, msg.media);
    setTime(node, msg.created_at || msg.ts);
    if (role === "user") {
      node.appendChild(el("div", "mc-meta", { "aria-hidden": "true" }));
      setMessageStatus(node, msg.status === "pending" || msg.status === "held" || msg.status === "failed" ? msg.status : "stored", msg.detail);
    }
    renderChoices(node, msg.choices);
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
    renderMessage({ id: item.client_message_id, role: "user", text: text, status: "pending", ts: item.ts });
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
      var frame = item.choice
        ? { type: "choice", client_message_id: item.client_message_id, choice: item.choice, page_url: location.href }
        : { type: "message", client_message_id: item.client_message_id, text: item.text, page_url: location.href };
      socket.send(JSON.stringify(frame));
    });
  }

  // A tapped option goes out like a typed message (kept in the outbox until acknowledged), as its
  // signed token; the server stores its title as the visitor's message and its id as the payload.
  function tap(option) {
    var item = { client_message_id: newId(), text: option.title || "", choice: option.token, ts: Date.now() };
    var items = outbox();
    items.push(item);
    setOutbox(items);
    renderMessage({ id: item.client_message_id, role: "user", text: item.text, status: "pending", ts: item.ts });
    flush();
    ensureStarted();
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
        showConnection();
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
        if (frame.reply_to) answered(frame.reply_to); // an option tapped in another tab
        break;
      case "stream_start":
        showTyping(false);
        node = renderMessage({ id: frame.id, role: frame.role || "assistant", text: "", created_at: frame.created_at });
        node.setAttribute("aria-busy", "true");
        streams[frame.id] = node;
        break;
      case "stream_delta":
        node = streams[frame.id] || state.rendered[frame.id];
        if (!node) node = streams[frame.id] = renderMessage({ id: frame.id, role: "assistant", text: "" });
        // Rendered whole again (markup may span chunks), at most once per frame however fast they come.
        node.mcText = (node.mcText || "") + (frame.delta || "");
        if (!node.mcPaint) {
          node.mcPaint = window.requestAnimationFrame(function () {
            var target = this;
            target.mcPaint = 0;
            setText(target, target.mcText);
            scrollDown();
          }.bind(node));
        }
        break;
      case "stream_end":
        node = streams[frame.id] || renderMessage({ id: frame.id, role: frame.role || "assistant", text: "", created_at: frame.created_at });
        if (node.mcPaint) { window.cancelAnimationFrame(node.mcPaint); node.mcPaint = 0; }
        setText(node, frame.text || "");
        renderSources(node, frame.sources);
        node.removeAttribute("aria-busy");
        delete streams[frame.id];
        scrollDown();
        break;
      case "sources":
        node = state.rendered[frame.id];
        if (node) renderSources(node, frame.sources);
        break;
      case "pong":
        clearTimeout(state.pingTimer);
        showConnection();
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
    else setStatus(browserOffline() ? OFFLINE_TEXT : "Reconnecting…", "offline");
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
      renderMessage({ id: item.client_message_id, role: "user", text: item.text, status: "pending", ts: item.ts });
    });
    // The greeting opens a conversation that has no history yet (first in the log, even when the
    // visitor typed before the session arrived).
    var greeting = attr("data-greeting", (session.widget && session.widget.greeting) || "");
    if (!(session.history || []).length && greeting && !state.rendered.greeting) {
      var hello = renderMessage({ id: "greeting", role: "assistant", text: greeting });
      log.insertBefore(hello, log.firstChild);
    }
  }

  function connect() {
    clearTimeout(state.timer);
    state.ready = false;
    if (browserOffline()) setStatus(OFFLINE_TEXT, "offline");
    else setStatus("Connecting…", "connecting");
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
    document.documentElement.classList.add("mc-chat-open"); // phones: the page behind does not scroll
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", "Close chat");
    save("open", true);
    ensureStarted();
    input.focus();
  }
  function close() {
    panel.hidden = true;
    root.setAttribute("data-state", "closed");
    document.documentElement.classList.remove("mc-chat-open");
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", launcherLabel);
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
  // Back online: a socket that is still open is checked with a ping (the answer shows Online, no
  // answer within 5 s closes it, and the usual reconnect follows); without one, reconnect at once.
  window.addEventListener("online", function () {
    if (!state.started) return;
    var socket = state.socket;
    if (state.ready && socket && socket.readyState === 1) {
      setStatus("Reconnecting…", "connecting");
      clearTimeout(state.pingTimer);
      state.pingTimer = setTimeout(function () { if (state.socket === socket) socket.close(); }, 5000);
      try { socket.send(JSON.stringify({ type: "ping" })); } catch (e) { socket.close(); }
      flush();
    } else {
      state.attempt = 0;
      connect();
    }
  });
  window.addEventListener("offline", function () { setStatus(OFFLINE_TEXT, "offline"); });

  function mount() {
    document.body.appendChild(root);
    if (script.getAttribute("data-open") === "true" || load("open", false) === true) open();
    else if (outbox().length) ensureStarted(); // unsent messages from a previous visit go out now
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);

  window.MetaChatWidget = { open: open, close: close };
})();
