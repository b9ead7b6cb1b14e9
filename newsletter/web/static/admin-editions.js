// The edition page's live progress: poll the ledger's counts every 2 s while the
// send runs. Without JavaScript the page's "Refresh" link does the same.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box || !window.fetch || box.getAttribute("data-live") !== "true") { return; }
  var url = box.getAttribute("data-progress-url");
  var first = box.getAttribute("data-status");
  var number = new Intl.NumberFormat("en");
  function field(name) { return box.querySelector('[data-field="' + name + '"]'); }
  function show(name, text) {
    var el = field(name);
    if (el) { el.textContent = text; }
  }
  function update(p) {
    ["handled", "audience", "sent", "failed", "uncertain"].forEach(function (k) {
      show(k, number.format(p[k]));
    });
    var bar = field("bar");
    if (bar) {
      bar.max = Math.max(p.audience, 1);
      bar.value = p.handled;
      bar.textContent = p.handled + " of " + p.audience;
    }
    var status = field("status");
    if (status) {
      status.textContent = p.status;
      status.className = "status status-" + p.status;
    }
    show("status_reason", p.status_reason || "");
    show("error", p.error || "");
  }
  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(function (p) {
        update(p);
        if (p.live) { window.setTimeout(poll, 2000); return; }
        // The send ended (or was paused): reload once so the actions match its state.
        if (p.status !== first) { window.location.reload(); }
      })
      .catch(function () { show("runner", "Progress could not be read; use Refresh."); });
  }
  window.setTimeout(poll, 2000);
})();
