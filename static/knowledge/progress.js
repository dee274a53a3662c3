/* Document indexing progress in the admin, refreshed by polling the admin's JSON view
 * (knowledge.admin.DocumentAdmin.progress_view) until the document is indexed or failed.
 * - The list: each <span class="document-progress" data-progress-url> of a document not finished.
 * - The document's page: #document-progress (data-progress-url, data-poll-ms), and #chunk-preview
 *   filled once indexing ends if it was empty. No dependencies. */
(function () {
  "use strict";
  var POLL_MS = 1500;

  function get(url, done, failed) {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(done, failed);
  }

  function poll(url, ms, onData) {
    var failures = 0;
    function tick() {
      get(url, function (data) {
        failures = 0;
        if (onData(data) !== false && !data.done) setTimeout(tick, ms);
      }, function () {
        failures += 1;
        if (failures < 5) setTimeout(tick, ms * failures);  // back off; give up after a few errors
      });
    }
    setTimeout(tick, ms);
  }

  function countText(d) { return d.chunks_embedded + "/" + d.chunks_total + " (" + d.percent + "%)"; }

  function queueText(q) {
    if (!q) return "";
    if (q.retry_at) return "Waiting to retry after a temporary error, from " + new Date(q.retry_at).toLocaleTimeString() + ".";
    var text = "In the queue: position " + q.position + " (estimate";
    text += "; " + q.own_ahead + " of your documents and " + q.others_ahead + " of other tenants before it";
    text += q.processing ? "; " + q.processing + " being indexed now)." : ").";
    return text;
  }

  // The list.
  Array.prototype.forEach.call(document.querySelectorAll("span.document-progress[data-progress-url]"), function (span) {
    poll(span.getAttribute("data-progress-url"), POLL_MS, function (d) {
      span.textContent = countText(d);
      var row = span.closest("tr");
      var status = row && row.querySelector("td.field-status");
      if (status) status.textContent = d.status_label;
      var chunks = row && row.querySelector("td.field-chunks_total");
      if (chunks) chunks.textContent = d.chunks_total;
    });
  });

  // The document's page.
  var box = document.getElementById("document-progress");
  if (!box || box.getAttribute("data-done") === "true") return;
  var bar = box.querySelector("progress");
  var label = document.getElementById("document-progress-text");
  var queue = document.getElementById("document-queue");
  var error = document.getElementById("document-error");
  poll(box.getAttribute("data-progress-url"), parseInt(box.getAttribute("data-poll-ms"), 10) || POLL_MS, function (d) {
    box.setAttribute("data-status", d.status);
    bar.value = d.percent;
    label.textContent = d.status_label + ": " + countText(d);
    queue.textContent = queueText(d.queue);
    error.textContent = d.error || "";
    error.style.display = d.error ? "" : "none";
    if (d.done) {
      box.setAttribute("data-done", "true");
      var preview = document.getElementById("chunk-preview");
      if (preview && !preview.querySelector("tbody tr")) {
        get(box.getAttribute("data-progress-url") + "?chunks=1", function (full) { fillChunks(preview, full.chunks || []); });
      }
    }
  });

  function fillChunks(preview, chunks) {
    var body = preview.querySelector("tbody");
    chunks.forEach(function (c) {
      var tr = document.createElement("tr");
      [c.position, c.page == null ? "" : c.page, c.section, c.content].forEach(function (value, i) {
        var td = document.createElement("td");
        td.textContent = value;
        if (i === 3) td.style.whiteSpace = "pre-wrap";  // as the server renders the content
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var empty = document.getElementById("chunk-preview-empty");
    if (empty && chunks.length) empty.remove();
    preview.hidden = !chunks.length;
  }
})();
