/*
 * The agents' inbox (conversations.inbox). Plain JavaScript, no build step, no dependency.
 * HTTP: /inbox/api/... (Django session + CSRF); live: /ws/inbox/?tenant=<id> (frames in docs/conversations.md).
 * Everything user-provided is rendered as text, never HTML.
 */
(function () {
  "use strict";

  var root = document.getElementById("inbox");
  if (!root) return;
  var tenantId = root.getAttribute("data-tenant");
  var base = root.getAttribute("data-base").replace(/\/+$/, "");
  var csrf = (document.querySelector("input[name=csrfmiddlewaretoken]") || {}).value || "";

  var STATE_NAMES = { handoff_requested: "Waiting for a human", agent: "With an agent", bot: "Bot", resolved: "Resolved" };
  var STATE_ORDER = { handoff_requested: 0, agent: 1, bot: 2, resolved: 3 };
  var CHANNEL_NAMES = { whatsapp: "WhatsApp", messenger: "Messenger", webchat: "Web chat" };
  // The user's sentiment (conversations.intelligence): a symbol for the eye, the word for everyone.
  var SENTIMENT_NAMES = { negative: "Negative", neutral: "Neutral", positive: "Positive" };
  var SENTIMENT_SYMBOLS = { negative: "\u2639", neutral: "\u25CB", positive: "\u263A" };

  var state = {
    me: null, agents: [], channels: [], canned: [],
    rows: {}, // id -> row
    scope: "all", stateFilter: "", channelFilter: "", sentimentFilter: "", tagFilter: "", offset: 0,
    open: null, // the open conversation's detail
    mode: "reply",
    socket: null, attempt: 0, ready: false,
    typingSentAt: 0, typingOn: false, typingStopTimer: null,
    agentTypingTimer: null, contactTypingTimer: null,
    readTimer: null, lastSeenId: 0,
    notified: {},
    templates: null, template: null // the open conversation's approved templates, the one being filled
  };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // --- HTTP ---------------------------------------------------------------------------------------
  function api(method, path, body) {
    var url = base + "/api/" + path + (path.indexOf("?") >= 0 ? "&" : "?") + "tenant=" + encodeURIComponent(tenantId);
    var options = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRFToken"] = csrf;
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var error = new Error((data.error && data.error.message) || ("HTTP " + response.status));
          error.status = response.status;
          error.code = (data.error && data.error.code) || "";
          throw error;
        }
        return data;
      });
    });
  }

  function showError(message) {
    var box = $("ib-error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // --- time -----------------------------------------------------------------------------------------
  function ago(iso) {
    if (!iso) return "";
    var seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d";
  }
  function span(ms) {
    var minutes = Math.max(0, Math.round(ms / 60000));
    if (minutes < 60) return minutes + " min";
    if (minutes < 48 * 60) return Math.floor(minutes / 60) + " h" + (minutes % 60 && minutes < 600 ? " " + (minutes % 60) + " min" : "");
    return Math.floor(minutes / 1440) + " d";
  }
  function clock(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return d.toLocaleString(undefined, { hour: "2-digit", minute: "2-digit", day: "numeric", month: "short" });
  }

  // --- list -----------------------------------------------------------------------------------------
  function matches(row) {
    if (state.scope === "mine" && !(row.assignee && state.me && row.assignee.id === state.me.id)) return false;
    if (state.scope === "unassigned" && row.assignee) return false;
    if (state.stateFilter && row.state !== state.stateFilter) return false;
    if (state.channelFilter && row.channel.id !== state.channelFilter) return false;
    return matchesAnalysis(row);
  }

  function matchesAnalysis(analysis) {
    if (state.sentimentFilter && analysis.sentiment !== state.sentimentFilter) return false;
    if (state.tagFilter && (analysis.tags || []).indexOf(state.tagFilter) < 0) return false;
    return true;
  }

  function compare(a, b) {
    var sa = STATE_ORDER[a.state], sb = STATE_ORDER[b.state];
    if (sa !== sb) return sa - sb;
    if (a.state === "handoff_requested") {
      var wa = a.waiting_since ? Date.parse(a.waiting_since) : Infinity;
      var wb = b.waiting_since ? Date.parse(b.waiting_since) : Infinity;
      if (wa !== wb) return wa - wb;
    }
    return Date.parse(b.last_activity_at) - Date.parse(a.last_activity_at);
  }

  function renderList() {
    var list = $("ib-rows");
    var rows = Object.keys(state.rows).map(function (id) { return state.rows[id]; }).filter(matches).sort(compare);
    list.textContent = "";
    if (!rows.length) list.appendChild(el("li", "ib-empty", "No conversations."));
    rows.forEach(function (row) { list.appendChild(renderRow(row)); });
  }

  function renderRow(row) {
    var li = el("li", "ib-row");
    li.setAttribute("data-id", row.id);
    li.setAttribute("data-state", row.state);
    if (state.open && state.open.id === row.id) li.setAttribute("aria-current", "true");
    var button = el("button", "ib-row-button");
    button.type = "button";
    var top = el("div", "ib-row-top");
    top.appendChild(el("strong", "ib-row-name", row.contact.name));
    top.appendChild(el("span", "ib-channel ib-channel--" + row.channel.type, CHANNEL_NAMES[row.channel.type] || row.channel.type));
    if (row.unread > 0) top.appendChild(el("span", "ib-unread", row.unread > 99 ? "99+" : String(row.unread)));
    button.appendChild(top);
    button.appendChild(el("div", "ib-preview", row.preview || ""));
    var bottom = el("div", "ib-row-bottom");
    bottom.appendChild(el("span", "ib-badge ib-badge--" + row.state, STATE_NAMES[row.state] || row.state));
    if (row.waiting_since && (row.state === "handoff_requested" || row.state === "agent")) {
      var waiting = el("span", "ib-waiting", "waiting " + ago(row.waiting_since));
      waiting.setAttribute("data-since", row.waiting_since);
      bottom.appendChild(waiting);
    }
    bottom.appendChild(el("span", "ib-assignee", row.assignee ? row.assignee.name : "Unassigned"));
    button.appendChild(bottom);
    if (row.sentiment || (row.tags && row.tags.length)) button.appendChild(renderAnalysis(row, "div"));
    button.addEventListener("click", function () { openConversation(row.id); });
    li.appendChild(button);
    return li;
  }

  // The sentiment marker and the tags of a conversation (a row's line, or the contact panel's).
  function sentimentMarker(sentiment) {
    var marker = el("span", "ib-sentiment ib-sentiment--" + sentiment);
    marker.setAttribute("data-sentiment", sentiment);
    marker.title = "Sentiment: " + (SENTIMENT_NAMES[sentiment] || sentiment);
    marker.appendChild(el("span", "ib-sr", "Sentiment: "));
    var symbol = el("span", "ib-sentiment-symbol", SENTIMENT_SYMBOLS[sentiment] || "");
    symbol.setAttribute("aria-hidden", "true");
    marker.appendChild(symbol);
    marker.appendChild(el("span", "ib-sentiment-name", (SENTIMENT_NAMES[sentiment] || sentiment).toLowerCase()));
    return marker;
  }

  function tagList(tags) {
    var box = el("span", "ib-tags");
    box.appendChild(el("span", "ib-sr", "Tags: "));
    tags.forEach(function (tag) { box.appendChild(el("span", "ib-tag", tag)); });
    return box;
  }

  function renderAnalysis(row, tag) {
    var line = el(tag, "ib-analysis");
    if (row.sentiment) line.appendChild(sentimentMarker(row.sentiment));
    if (row.tags && row.tags.length) line.appendChild(tagList(row.tags));
    return line;
  }

  function loadList(append) {
    var query = "conversations/?scope=" + state.scope + "&state=" + encodeURIComponent(state.stateFilter) +
      "&channel=" + encodeURIComponent(state.channelFilter) + "&sentiment=" + encodeURIComponent(state.sentimentFilter) +
      "&tag=" + encodeURIComponent(state.tagFilter) + "&offset=" + (append ? state.offset : 0);
    return api("GET", query).then(function (data) {
      if (!append) state.rows = {};
      data.results.forEach(function (row) { state.rows[row.id] = row; });
      state.offset = (append ? state.offset : 0) + data.results.length;
      $("ib-more").hidden = data.results.length < data.page_size;
      renderList();
    }).catch(function (error) { showError(error.message); });
  }

  function refreshRow(id) {
    return api("GET", "conversations/?id=" + encodeURIComponent(id)).then(function (data) {
      var row = data.results[0];
      if (!row) return null;
      var known = state.rows[row.id];
      state.rows[row.id] = row;
      renderList();
      return { row: row, known: known };
    });
  }

  // --- notifications --------------------------------------------------------------------------------
  function notify(row) {
    if (state.notified[row.id + row.waiting_since]) return;
    state.notified[row.id + row.waiting_since] = true;
    var title = row.contact.name + " asks for a human";
    if (window.Notification && Notification.permission === "granted") {
      try {
        var n = new Notification(title, { body: row.preview || "", tag: "inbox-" + row.id });
        n.onclick = function () { window.focus(); openConversation(row.id); };
      } catch (e) { /* some browsers only allow notifications from a service worker */ }
    }
    if ($("ib-sound").checked) beep();
    document.title = "(!) " + document.title.replace(/^\(!\) /, "");
  }

  // A new message in a conversation assigned to me, while I look elsewhere.
  function notifyMessage(row, text) {
    if (window.Notification && Notification.permission === "granted") {
      try {
        var n = new Notification("New message from " + row.contact.name, { body: text || "", tag: "inbox-msg-" + row.id });
        n.onclick = function () { window.focus(); openConversation(row.id); };
      } catch (e) { /* some browsers only allow notifications from a service worker */ }
    }
    if ($("ib-sound").checked) beep();
  }

  function beep() {
    try {
      var Ctx = window.AudioContext || window.webkitAudioContext;
      var ctx = new Ctx();
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      osc.frequency.value = 880;
      gain.gain.value = 0.08;
      osc.connect(gain);
      gain.connect(ctx.destination);
      osc.start();
      osc.stop(ctx.currentTime + 0.2);
    } catch (e) { /* no audio */ }
  }

  function setupSound() {
    var box = $("ib-sound");
    try { box.checked = window.localStorage.getItem("metachat.inbox.sound") === "1"; } catch (e) { /* no storage */ }
    box.addEventListener("change", function () {
      try { window.localStorage.setItem("metachat.inbox.sound", box.checked ? "1" : "0"); } catch (e) { /* no storage */ }
    });
  }

  function setupNotifications() {
    var button = $("ib-notify");
    if (!window.Notification || Notification.permission === "granted") return;
    button.hidden = Notification.permission === "denied";
    button.addEventListener("click", function () {
      Notification.requestPermission().then(function () { button.hidden = Notification.permission !== "default"; });
    });
  }

  // --- the open conversation ------------------------------------------------------------------------
  function openConversation(id) {
    showError("");
    return api("GET", "conversations/" + id + "/").then(function (detail) {
      var same = !!(state.open && state.open.id === id);
      state.open = { id: id, detail: detail, row: detail.conversation };
      if (detail.conversation) {
        detail.conversation.unread = 0;
        state.rows[id] = detail.conversation;
      }
      document.title = document.title.replace(/^\(!\) /, "");
      root.querySelector(".ib-placeholder").hidden = true;
      root.querySelector(".ib-conversation").hidden = false;
      root.querySelector(".ib-contact").hidden = false;
      renderHeader();
      if (!same) closeTemplates(); // a template being filled in survives a reload of the same conversation
      renderWindow();
      renderTimeline(detail.timeline);
      renderContact(detail.contact);
      renderList();
      $("ib-contact-typing").hidden = true;
      $("ib-agent-typing").hidden = true;
      $("ib-text").focus();
    }).catch(function (error) { showError(error.message); });
  }

  function renderHeader() {
    var row = state.open.row;
    if (!row) return;
    $("ib-title").textContent = row.contact.name + " · " + (CHANNEL_NAMES[row.channel.type] || row.channel.type);
    var badge = $("ib-state-badge");
    badge.textContent = STATE_NAMES[row.state] || row.state;
    badge.className = "ib-badge ib-badge--" + row.state;
    badge.setAttribute("data-state", row.state);
    var select = $("ib-assignee");
    select.textContent = "";
    var none = el("option", null, "Unassigned");
    none.value = "";
    select.appendChild(none);
    state.agents.forEach(function (agent) {
      var option = el("option", null, agent.name + (state.me && agent.id === state.me.id ? " (me)" : ""));
      option.value = String(agent.id);
      select.appendChild(option);
    });
    select.value = row.assignee ? String(row.assignee.id) : "";
    $("ib-take").hidden = !!(row.assignee && state.me && row.assignee.id === state.me.id);
    // Two agents never reply unaware of each other: the assignee is named above the composer.
    var owner = $("ib-owner");
    var someoneElse = row.assignee && state.me && row.assignee.id !== state.me.id;
    owner.textContent = someoneElse ? row.assignee.name + " is assigned to this conversation; your reply is sent as you." : "";
    owner.hidden = !someoneElse;
    $("ib-resolve").disabled = row.state === "resolved";
    $("ib-bot").disabled = row.state === "bot";
    renderInsight(row);
  }

  // The contact panel's "Analysis": sentiment, tags and when they were computed.
  function renderInsight(row) {
    var dl = $("ib-insight");
    dl.textContent = "";
    if (!row.analysed_at) {
      dl.appendChild(el("dd", "ib-quiet", "Not analysed yet (about a minute after the contact writes)."));
      return;
    }
    dl.appendChild(el("dt", null, "Sentiment"));
    var sentiment = el("dd");
    sentiment.appendChild(row.sentiment ? sentimentMarker(row.sentiment) : el("span", "ib-quiet", "None"));
    dl.appendChild(sentiment);
    dl.appendChild(el("dt", null, "Tags"));
    var tags = el("dd");
    tags.appendChild(row.tags && row.tags.length ? tagList(row.tags) : el("span", "ib-quiet", "None"));
    dl.appendChild(tags);
    dl.appendChild(el("dt", null, "Analysed"));
    var when = el("dd", "ib-analysed-at", clock(row.analysed_at));
    when.setAttribute("data-at", row.analysed_at);
    dl.appendChild(when);
  }

  // --- the customer-service window (WhatsApp, Messenger) and templates -------------------------------
  // Above the composer: whether a free-form reply can reach the contact now; when it cannot on WhatsApp,
  // "Send a template" (the channel's approved templates, their variables, a preview).
  function currentWindow() {
    var w = state.open && state.open.detail && state.open.detail.window;
    if (!w || !w.applies) return null;
    // Time passes while the page is open: the window closes without anyone writing.
    w.open = !!(w.open && w.closes_at && Date.parse(w.closes_at) > Date.now());
    return w;
  }

  function renderWindow() {
    var node = $("ib-window");
    var w = currentWindow();
    var offer = $("ib-template");
    if (!w) { node.hidden = true; offer.hidden = true; return; }
    var now = Date.now();
    var since = w.last_inbound_at ? span(now - Date.parse(w.last_inbound_at)) : "";
    var text;
    if (w.open) {
      text = "Window open — closes in " + span(Date.parse(w.closes_at) - now) + " (" + clock(w.closes_at) + ").";
    } else if (w.human_agent_closes_at && Date.parse(w.human_agent_closes_at) > now) {
      text = "Window closed " + since + " after the last message: human replies allowed until " +
        clock(w.human_agent_closes_at) + " (sent with the " + (w.human_agent_tag || "HUMAN_AGENT") + " tag).";
    } else if (!w.last_inbound_at) {
      text = "This contact has never written on this channel: " +
        (w.templates ? "only a template can reach them." : "no reply can reach them until they write.");
    } else {
      text = "Window closed " + since + " after the last message: " +
        (w.templates ? "only a template can reach them." : "no reply can reach them until they write again.");
    }
    node.textContent = text;
    node.setAttribute("data-open", String(w.open));
    node.hidden = false;
    var offered = !w.open && !!w.templates;
    offer.hidden = !offered;
    if (!offered) closeTemplates();
  }

  // The contact wrote: their window opens again for as long as the channel's rule says.
  function windowReopened(atIso) {
    var w = state.open && state.open.detail && state.open.detail.window;
    if (!w || !w.applies) return;
    var at = atIso ? Date.parse(atIso) : Date.now();
    var hours = 24;
    if (w.closes_at && w.last_inbound_at) hours = (Date.parse(w.closes_at) - Date.parse(w.last_inbound_at)) / 3600000;
    var humanHours = 0;
    if (w.human_agent_closes_at && w.last_inbound_at) {
      humanHours = (Date.parse(w.human_agent_closes_at) - Date.parse(w.last_inbound_at)) / 3600000;
    }
    w.last_inbound_at = new Date(at).toISOString();
    w.closes_at = new Date(at + hours * 3600000).toISOString();
    if (humanHours) w.human_agent_closes_at = new Date(at + humanHours * 3600000).toISOString();
    w.open = true;
    renderWindow();
  }

  function closeTemplates() {
    state.template = null;
    $("ib-template-picker").hidden = true;
    $("ib-template-open").hidden = false;
    $("ib-template-fields").textContent = "";
    $("ib-template-preview-box").hidden = true;
    $("ib-template-send").disabled = true;
  }

  function openTemplates() {
    if (!state.open) return;
    var id = state.open.id;
    showError("");
    api("GET", "conversations/" + id + "/templates/").then(function (data) {
      if (!state.open || state.open.id !== id) return;
      state.templates = data.templates;
      var select = $("ib-template-select");
      select.textContent = "";
      var none = el("option", null, "Choose a template…");
      none.value = "";
      select.appendChild(none);
      data.templates.forEach(function (t, i) {
        var option = el("option", null, t.name + " (" + t.language + ")" + (t.category ? " · " + t.category.toLowerCase() : ""));
        option.value = String(i);
        select.appendChild(option);
      });
      select.hidden = !data.templates.length;
      $("ib-template-none").hidden = !!data.templates.length;
      $("ib-template-open").hidden = true;
      $("ib-template-picker").hidden = false;
      if (data.templates.length) select.focus();
    }).catch(function (error) { showError(error.message); });
  }

  function chooseTemplate(index) {
    var t = index === "" ? null : state.templates[parseInt(index, 10)];
    state.template = t;
    var fields = $("ib-template-fields");
    fields.textContent = "";
    $("ib-template-preview-box").hidden = !t;
    $("ib-template-send").disabled = !t;
    if (!t) return;
    function field(labelText, role, name, type, placeholder) {
      var input = el("input");
      input.type = type;
      input.id = "ib-tv-" + role + "-" + name;
      input.setAttribute("data-role", role);
      input.setAttribute("data-name", name);
      if (placeholder) input.placeholder = placeholder;
      var label = el("label", null, labelText);
      label.htmlFor = input.id;
      input.addEventListener("input", renderTemplatePreview);
      fields.appendChild(label);
      fields.appendChild(input);
    }
    var header = t.variables.header;
    if (header === "text") field("Header {{" + headerName(t) + "}}", "header", "text", "text", "");
    else if (header) field("Header " + header + " link", "header", "link", "url", "https://…");
    t.variables.body.forEach(function (name) { field("{{" + name + "}}", "body", name, "text", ""); });
    renderTemplatePreview();
  }

  function headerName(t) {
    var m = /\{\{\s*([a-z0-9_]+)\s*\}\}/.exec((t.header && t.header.text) || "");
    return m ? m[1] : "1";
  }

  function templateValues() {
    var values = { body: {}, header: "" };
    $("ib-template-fields").querySelectorAll("input").forEach(function (input) {
      if (input.getAttribute("data-role") === "body") values.body[input.getAttribute("data-name")] = input.value;
      else values.header = input.value;
    });
    return values;
  }

  function fill(text, values) {
    return (text || "").replace(/\{\{\s*([a-z0-9_]+)\s*\}\}/g, function (all, name) {
      return values[name] ? values[name] : all;
    });
  }

  // The message as the contact will read it (as the server renders it: header, body, footer, buttons).
  function renderTemplatePreview() {
    var t = state.template;
    if (!t) return;
    var values = templateValues();
    var parts = [];
    if (t.header) {
      if (t.header.format === "TEXT") {
        var filled = {};
        if (values.header) filled[headerName(t)] = values.header;
        parts.push(fill(t.header.text, filled));
      } else if (t.header.format) {
        parts.push("[" + t.header.format.toLowerCase() + "]");
      }
    }
    if (t.body) parts.push(fill(t.body, values.body));
    if (t.footer) parts.push(t.footer);
    if (t.buttons && t.buttons.length) parts.push(t.buttons.map(function (b) { return "[" + b + "]"; }).join(" | "));
    $("ib-template-preview").textContent = parts.filter(function (p) { return p; }).join("\n\n");
  }

  function sendTemplate() {
    var t = state.template;
    if (!t || !state.open) return;
    var open = state.open;
    var values = templateValues();
    var variables = { body: values.body };
    if (t.variables.header === "text") variables.header = values.header;
    else if (t.variables.header) variables.header = values.header ? { link: values.header } : {};
    $("ib-template-send").disabled = true;
    showError("");
    api("POST", "conversations/" + open.id + "/template/", { name: t.name, language: t.language, variables: variables }).then(function (data) {
      if (!state.open || state.open.id !== open.id) return;
      appendItem(Object.assign({ type: "message" }, data.message));
      $("ib-timeline").scrollTop = $("ib-timeline").scrollHeight;
      closeTemplates();
      return refreshRow(open.id).then(function (found) {
        if (found && state.open && state.open.id === open.id) { state.open.row = found.row; renderHeader(); }
      });
    }).catch(function (error) {
      showError(error.message);
      $("ib-template-send").disabled = false;
      // Stored but Meta refused it: the timeline shows it failed.
      if (error.status === 502 && state.open && state.open.id === open.id) {
        closeTemplates();
        openConversation(open.id);
      }
    });
  }

  function renderTimeline(items) {
    var box = $("ib-timeline");
    box.textContent = "";
    state.lastSeenId = 0;
    items.forEach(appendItem);
    box.scrollTop = box.scrollHeight;
  }

  function appendItem(item) {
    var box = $("ib-timeline");
    var node;
    if (item.type === "note") {
      if (box.querySelector('[data-note="' + item.id + '"]')) return;
      node = el("div", "ib-item ib-note");
      node.setAttribute("data-note", String(item.id));
      node.appendChild(el("div", "ib-who", "Private note · " + (item.author ? item.author.name : "")));
      node.appendChild(el("div", "ib-text", item.text));
    } else {
      var shown = item.id ? box.querySelector('[data-message="' + item.id + '"]') : null;
      if (shown) {
        // Known already: only a delivery failure changes it (message.failed after the send).
        if (item.status === "failed") shown.querySelector(".ib-meta").textContent = clock(item.created_at) + " · not delivered: " + (item.error || "");
        return;
      }
      // A failure of a message this page never showed (message.failed carries no text): say so.
      if (item.status === "failed" && !item.text) item = Object.assign({}, item, { text: "(a message that could not be delivered)" });
      var role = item.sender === "user" ? "user" : item.sender;
      node = el("div", "ib-item ib-msg ib-msg--" + role);
      if (item.id) node.setAttribute("data-message", String(item.id));
      node.setAttribute("data-sender", item.sender);
      var who = { user: state.open.row ? state.open.row.contact.name : "Contact", assistant: "Bot",
        agent: item.agent ? item.agent.name : "Agent", system: "Notice" }[item.sender] || item.sender;
      node.appendChild(el("div", "ib-who", who));
      var bubble = el("div", "ib-bubble");
      bubble.appendChild(el("div", "ib-text", item.text || (item.kind !== "text" ? "[" + item.kind + "]" : "")));
      (item.media || []).forEach(function (media) { bubble.appendChild(renderMedia(item, media)); });
      if (item.sources && item.sources.length) {
        var sources = el("ul", "ib-sources");
        item.sources.forEach(function (src) {
          sources.appendChild(el("li", null, (src.title || src.document_title || src.url || "Source") + (src.page ? " (p. " + src.page + ")" : "")));
        });
        bubble.appendChild(sources);
      }
      node.appendChild(bubble);
      var meta = el("div", "ib-meta", clock(item.created_at) + (item.status === "failed" ? " · not delivered: " + (item.error || "") : ""));
      node.appendChild(meta);
      if (item.id && item.id > state.lastSeenId) state.lastSeenId = item.id;
    }
    box.appendChild(node);
  }

  function renderMedia(item, media) {
    var url = base + "/api/conversations/" + state.open.id + "/media/" + item.id + "/" + media.index + "/?tenant=" + encodeURIComponent(tenantId);
    if (!media.stored) return el("div", "ib-attachment", "[" + media.kind + " not downloaded]");
    if (media.kind === "image" || media.kind === "sticker") {
      var img = el("img", "ib-image");
      img.src = url;
      img.alt = media.caption || media.filename || "image";
      return img;
    }
    var a = el("a", "ib-attachment", media.filename || (media.kind + " (download)"));
    a.href = url;
    a.setAttribute("download", "");
    return a;
  }

  function renderContact(contact) {
    var dl = $("ib-contact");
    dl.textContent = "";
    function add(term, value, href) {
      if (!value) return;
      dl.appendChild(el("dt", null, term));
      var dd = el("dd");
      if (href) {
        var a = el("a", null, value);
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        dd.appendChild(a);
      } else {
        dd.textContent = value;
      }
      dl.appendChild(dd);
    }
    add("Name", contact.name);
    add(contact.identifier_label, contact.identifier);
    add("Channel", (CHANNEL_NAMES[contact.channel.type] || contact.channel.type) + " · " + contact.channel.name);
    add("Language", contact.language);
    add("Page", contact.page_url, contact.page_url);
    add("First seen", clock(contact.first_seen));
    if (contact.ratings && contact.ratings.length) add("Satisfaction", contact.ratings.map(function (r) { return r.score + "/5"; }).join(", "));
    var previous = $("ib-previous");
    previous.textContent = "";
    if (!contact.previous.length) previous.appendChild(el("li", null, "None"));
    contact.previous.forEach(function (p) {
      var li = el("li");
      var b = el("button", "ib-link", clock(p.last_activity_at) + " · " + (STATE_NAMES[p.state] || p.state));
      b.type = "button";
      b.addEventListener("click", function () { openConversation(p.id); });
      li.appendChild(b);
      previous.appendChild(li);
    });
  }

  function markRead() {
    clearTimeout(state.readTimer);
    var open = state.open;
    if (!open || !state.lastSeenId || document.hidden) return;
    var upTo = state.lastSeenId;
    state.readTimer = setTimeout(function () {
      api("POST", "conversations/" + open.id + "/read/", { up_to: upTo }).catch(function () {});
    }, 400);
  }

  // --- composer -------------------------------------------------------------------------------------
  function setMode(mode) {
    state.mode = mode;
    root.querySelectorAll(".ib-modes button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-mode") === mode));
    });
    $("ib-composer").setAttribute("data-mode", mode);
    $("ib-text").placeholder = mode === "note"
      ? "Private note (never sent to the contact)…"
      : "Reply… (Enter sends, Shift+Enter new line, /shortcut for a canned reply)";
    $("ib-send").textContent = mode === "note" ? "Add note" : "Send";
  }

  function send() {
    var input = $("ib-text");
    var text = input.value;
    if (!text.trim() || !state.open) return;
    var open = state.open;
    var path = "conversations/" + open.id + (state.mode === "note" ? "/notes/" : "/reply/");
    $("ib-send").disabled = true;
    showError("");
    // Cleared now, not when the server answers: what the agent types meanwhile is kept.
    input.value = "";
    hideCanned();
    stopTyping();
    api("POST", path, { text: text }).then(function (data) {
      if (state.open && state.open.id === open.id) {
        if (data.note) appendItem({ type: "note", id: data.note.id, text: data.note.text, author: data.note.author, created_at: data.note.created_at });
        if (data.message) appendItem(Object.assign({ type: "message" }, data.message));
        $("ib-timeline").scrollTop = $("ib-timeline").scrollHeight;
      }
    }).catch(function (error) {
      var message = error.message;
      if (error.code === "outside_customer_service_window" && state.open && state.open.id === open.id) {
        // Nothing was stored or sent: the window has closed (the page may not have known yet).
        var w = state.open.detail && state.open.detail.window;
        if (w) { w.open = false; renderWindow(); }
        message = "Not sent: " + message + (w && w.templates ? " Use “Send a template” below." : "");
      }
      showError(message);
      if (!input.value && state.open && state.open.id === open.id) input.value = text; // not lost
    }).then(function () { $("ib-send").disabled = false; });
  }

  function typing() {
    if (!state.open || state.mode !== "reply") return;
    var now = Date.now();
    if (!state.typingOn || now - state.typingSentAt > 3000) {
      sendFrame({ type: "typing", conversation_id: state.open.id, on: true });
      state.typingSentAt = now;
      state.typingOn = true;
    }
    clearTimeout(state.typingStopTimer);
    state.typingStopTimer = setTimeout(stopTyping, 4000);
  }

  function stopTyping() {
    clearTimeout(state.typingStopTimer);
    if (state.typingOn && state.open) sendFrame({ type: "typing", conversation_id: state.open.id, on: false });
    state.typingOn = false;
  }

  // Canned replies: "/shortcut" at the start of the composer lists the matches; Enter or Tab (or a click) inserts.
  var cannedIndex = 0;
  function cannedMatches() {
    var text = $("ib-text").value;
    var m = /^\/([\w-]*)$/.exec(text);
    if (!m) return null;
    var prefix = m[1].toLowerCase();
    return state.canned.filter(function (c) { return c.shortcut.indexOf(prefix) === 0; });
  }
  function showCanned() {
    var found = cannedMatches();
    var box = $("ib-canned");
    if (!found || !found.length) { hideCanned(); return; }
    cannedIndex = Math.min(cannedIndex, found.length - 1);
    box.textContent = "";
    found.forEach(function (c, i) {
      var li = el("li", "ib-canned-item");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(i === cannedIndex));
      li.appendChild(el("strong", null, "/" + c.shortcut + " "));
      li.appendChild(el("span", null, c.text));
      li.addEventListener("mousedown", function (event) { event.preventDefault(); insertCanned(c); });
      box.appendChild(li);
    });
    box.hidden = false;
  }
  function hideCanned() { $("ib-canned").hidden = true; cannedIndex = 0; }
  function insertCanned(c) {
    var input = $("ib-text");
    input.value = c.text;
    hideCanned();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  // --- socket ---------------------------------------------------------------------------------------
  function setConnection(kind, text) {
    var node = $("ib-connection");
    node.setAttribute("data-state", kind);
    node.textContent = text;
  }

  function sendFrame(frame) {
    if (state.socket && state.socket.readyState === 1) state.socket.send(JSON.stringify(frame));
  }

  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/inbox/?tenant=" + encodeURIComponent(tenantId);
    var socket = new WebSocket(url);
    state.socket = socket;
    setConnection("connecting", "Connecting…");
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      onFrame(frame);
    };
    socket.onclose = function (event) {
      if (state.socket !== socket) return;
      state.ready = false;
      if (event.code === 4401) { setConnection("error", "Logged out: reload the page to log in again."); return; }
      if (event.code === 4403) { setConnection("error", "Not allowed for this tenant."); return; }
      var delay = Math.min(30000, 1000 * Math.pow(2, state.attempt)) * (0.5 + Math.random() / 2);
      state.attempt = Math.min(state.attempt + 1, 8);
      setConnection("offline", "Reconnecting…");
      setTimeout(connect, delay);
    };
  }

  function onFrame(frame) {
    var row;
    switch (frame.type) {
      case "ready":
        var reconnect = state.attempt > 0;
        state.ready = true;
        state.attempt = 0;
        setConnection("online", "Live");
        if (reconnect) { loadList(false); if (state.open) openConversation(state.open.id); }
        break;
      case "message":
        onMessage(frame);
        break;
      case "conversation":
        refreshRow(frame.conversation_id).then(function (found) {
          if (!found) return;
          if (state.open && state.open.id === found.row.id) { state.open.row = found.row; renderHeader(); }
          if (frame.handoff) notify(found.row);
        }).catch(function () {});
        break;
      case "assigned":
        row = state.rows[frame.conversation_id];
        if (row) { row.assignee = frame.assignee; row.state = frame.state || row.state; renderList(); }
        if (state.open && state.open.id === frame.conversation_id && state.open.row) {
          state.open.row.assignee = frame.assignee;
          state.open.row.state = frame.state || state.open.row.state;
          renderHeader();
        }
        break;
      case "note":
        if (state.open && state.open.id === frame.conversation_id) {
          appendItem(Object.assign({ type: "note" }, frame.note));
          $("ib-timeline").scrollTop = $("ib-timeline").scrollHeight;
        }
        break;
      case "agent_typing":
        if (state.open && state.open.id === frame.conversation_id && frame.agent && (!state.me || frame.agent.id !== state.me.id)) {
          var marker = $("ib-agent-typing");
          marker.textContent = frame.agent.name + " is replying…";
          marker.hidden = !frame.on;
          clearTimeout(state.agentTypingTimer);
          if (frame.on) state.agentTypingTimer = setTimeout(function () { marker.hidden = true; }, 8000);
        }
        break;
      case "contact_typing":
        if (state.open && state.open.row && state.open.row.channel.id === frame.channel_id &&
            state.open.row.contact.external_id === frame.contact_external_id) {
          var typingNode = $("ib-contact-typing");
          typingNode.textContent = state.open.row.contact.name + " is typing…";
          typingNode.hidden = !frame.on;
          clearTimeout(state.contactTypingTimer);
          if (frame.on) state.contactTypingTimer = setTimeout(function () { typingNode.hidden = true; }, 6000);
        }
        break;
      case "analysis":
        onAnalysis(frame);
        break;
      case "rating":
        if (state.open && state.open.id === frame.conversation_id) openConversation(frame.conversation_id);
        break;
      case "error":
        if (frame.code !== "unknown_type") setConnection("error", frame.message || "Error");
        break;
      default:
        break;
    }
  }

  function onMessage(frame) {
    var row = state.rows[frame.conversation_id];
    var message = frame.message;
    var isOpen = state.open && state.open.id === frame.conversation_id;
    if (!row) {
      refreshRow(frame.conversation_id).catch(function () {});
    } else {
      row.preview = frame.preview;
      row.last_activity_at = message.created_at || new Date().toISOString();
      if (message.direction === "in") {
        if (!isOpen || document.hidden) row.unread = (row.unread || 0) + 1;
        if ((!isOpen || document.hidden) && row.assignee && state.me && row.assignee.id === state.me.id) {
          notifyMessage(row, message.text);
        }
        if ((row.state === "agent" || row.state === "handoff_requested") && !row.waiting_since) row.waiting_since = row.last_activity_at;
      } else if (message.sender === "agent") {
        row.waiting_since = null;
      }
      renderList();
    }
    if (isOpen) {
      if (message.direction === "in") { $("ib-contact-typing").hidden = true; windowReopened(message.created_at); }
      if (message.kind && message.kind !== "text") {
        openConversation(frame.conversation_id);
        return;
      }
      appendItem(Object.assign({ type: "message" }, message));
      $("ib-timeline").scrollTop = $("ib-timeline").scrollHeight;
      markRead();
    }
  }

  // A conversation's new sentiment and tags (the analysis beat task): changed in place; a row this page
  // does not hold is fetched when it now belongs to the filtered list.
  function onAnalysis(frame) {
    var analysis = { sentiment: frame.sentiment || "", tags: frame.tags || [], analysed_at: frame.analysed_at };
    var row = state.rows[frame.conversation_id];
    if (row) {
      Object.assign(row, analysis);
      renderList();
    } else if ((state.sentimentFilter || state.tagFilter) && matchesAnalysis(analysis)) {
      refreshRow(frame.conversation_id).catch(function () {});
    }
    if (state.open && state.open.id === frame.conversation_id && state.open.row) {
      Object.assign(state.open.row, analysis);
      renderInsight(state.open.row);
    }
  }

  // --- wiring ---------------------------------------------------------------------------------------
  root.querySelectorAll(".ib-scopes button").forEach(function (button) {
    button.addEventListener("click", function () {
      state.scope = button.getAttribute("data-scope");
      root.querySelectorAll(".ib-scopes button").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
      loadList(false);
    });
  });
  $("ib-state").addEventListener("change", function (e) { state.stateFilter = e.target.value; loadList(false); });
  $("ib-channel").addEventListener("change", function (e) { state.channelFilter = e.target.value; loadList(false); });
  $("ib-sentiment").addEventListener("change", function (e) { state.sentimentFilter = e.target.value; loadList(false); });
  $("ib-tag").addEventListener("change", function (e) { state.tagFilter = e.target.value; loadList(false); });
  $("ib-more").addEventListener("click", function () { loadList(true); });
  root.querySelectorAll(".ib-modes button").forEach(function (b) {
    b.addEventListener("click", function () { setMode(b.getAttribute("data-mode")); $("ib-text").focus(); });
  });
  $("ib-composer").addEventListener("submit", function (event) { event.preventDefault(); send(); });
  $("ib-text").addEventListener("keydown", function (event) {
    var canned = $("ib-canned");
    if (!canned.hidden) {
      var found = cannedMatches() || [];
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        cannedIndex = (cannedIndex + (event.key === "ArrowDown" ? 1 : found.length - 1)) % Math.max(1, found.length);
        showCanned();
        return;
      }
      if ((event.key === "Enter" || event.key === "Tab") && found.length) {
        event.preventDefault();
        insertCanned(found[cannedIndex] || found[0]);
        return;
      }
      if (event.key === "Escape") { hideCanned(); return; }
    }
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("ib-text").addEventListener("input", function () { showCanned(); typing(); });
  $("ib-text").addEventListener("blur", function () {
    // Later, so that a click on a canned reply lands first; not if the composer has the focus again.
    setTimeout(function () { if (document.activeElement !== $("ib-text")) hideCanned(); }, 150);
  });
  $("ib-take").addEventListener("click", function () { assignTo(state.me ? state.me.id : null); });
  $("ib-assignee").addEventListener("change", function (e) { assignTo(e.target.value ? parseInt(e.target.value, 10) : null); });
  $("ib-resolve").addEventListener("click", function () { action("resolve/"); });
  $("ib-bot").addEventListener("click", function () { action("return-to-bot/"); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) markRead(); });
  setInterval(function () {
    root.querySelectorAll(".ib-waiting[data-since]").forEach(function (node) {
      node.textContent = "waiting " + ago(node.getAttribute("data-since"));
    });
    if (state.open) renderWindow();
  }, 15000);
  $("ib-template-open").addEventListener("click", openTemplates);
  $("ib-template-select").addEventListener("change", function (e) { chooseTemplate(e.target.value); });
  $("ib-template-send").addEventListener("click", sendTemplate);
  $("ib-template-cancel").addEventListener("click", closeTemplates);

  function assignTo(userId) {
    if (!state.open) return;
    var id = state.open.id;
    api("POST", "conversations/" + id + "/assign/", { user_id: userId }).then(function (data) {
      if (state.open && state.open.id === id && state.open.row) {
        state.open.row.assignee = data.assignee;
        state.open.row.state = data.state;
        renderHeader();
      }
    }).catch(function (error) { showError(error.message); });
  }

  function action(path) {
    if (!state.open) return;
    var id = state.open.id;
    api("POST", "conversations/" + id + "/" + path, {}).then(function () {
      return refreshRow(id);
    }).then(function (found) {
      if (found && state.open && state.open.id === id) { state.open.row = found.row; renderHeader(); }
    }).catch(function (error) { showError(error.message); });
  }

  function start() {
    setMode("reply");
    setupNotifications();
    setupSound();
    api("GET", "meta/").then(function (meta) {
      state.me = meta.me;
      state.agents = meta.agents;
      state.channels = meta.channels;
      state.canned = meta.canned;
      if (meta.satisfaction && meta.satisfaction.count) {
        $("ib-csat").textContent = "Satisfaction " + meta.satisfaction.average + "/5 (" + meta.satisfaction.count + ")";
      }
      var select = $("ib-channel");
      meta.channels.forEach(function (c) {
        var option = el("option", null, c.name + " (" + (CHANNEL_NAMES[c.type] || c.type) + ")");
        option.value = c.id;
        select.appendChild(option);
      });
      var tags = $("ib-tag");
      (meta.categories || []).forEach(function (name) {
        var option = el("option", null, name);
        option.value = name;
        tags.appendChild(option);
      });
      tags.hidden = !(meta.categories || []).length;
      return loadList(false);
    }).then(connect).catch(function (error) { showError(error.message); });
  }

  window.MetaChatInbox = { open: openConversation, state: state };
  start();
})();
