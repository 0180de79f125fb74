// pilot dashboard: live numbers without reloading. Every element with data-live="KEY" shows live[KEY] of the
// page's JSON endpoint (body data-api), fetched every 5 s with the session cookie (same origin). No secret here.
(function () {
  "use strict";
  var INTERVAL_MS = 5000;
  var api = document.body.getAttribute("data-api");
  var stateEl = document.getElementById("live-state");
  if (!api) { return; }

  function show(text, stale) {
    if (!stateEl) { return; }
    stateEl.textContent = text;
    stateEl.setAttribute("data-stale", stale ? "true" : "false");
  }

  // numbers change in place; when a list would change (a new cluster, category or pilot, or the "needs you"
  // entries), the page says so and offers a reload instead of rebuilding its tables
  function apply(live) {
    var els = document.querySelectorAll("[data-live]");
    var seen = {};
    var listsChanged = false;
    for (var i = 0; i < els.length; i++) {
      var key = els[i].getAttribute("data-live");
      seen[key] = true;
      if (Object.prototype.hasOwnProperty.call(live, key)) {
        var value = String(live[key]);
        if (els[i].textContent !== value) {
          els[i].textContent = value;
          els[i].classList.add("changed");
          if (els[i].hasAttribute("data-live-lists")) { listsChanged = true; }
        }
      }
    }
    var keys = Object.keys(live);
    for (var j = 0; j < keys.length; j++) {
      if (!seen[keys[j]]) { listsChanged = true; }
    }
    var hint = document.getElementById("reload-hint");
    if (hint && listsChanged) { hint.hidden = false; }
  }

  function poll() {
    fetch(api, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname)); throw new Error("logged out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (doc) {
        apply(doc.live || {});
        document.dispatchEvent(new CustomEvent("pilot:live", {detail: doc}));
        show("live: updated " + new Date().toLocaleTimeString(), false);
      })
      .catch(function (e) { show("live: not updated (" + e.message + ")", true); })
      .finally(function () { window.setTimeout(poll, INTERVAL_MS); });
  }
  window.setTimeout(poll, INTERVAL_MS);
})();
