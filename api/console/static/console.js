// Purser console: the only script the pages load (the CSP forbids inline script).
// Everything works without it; it adds a confirmation before money actions, a guard
// against double submits (the form's one-time key makes a second one a no-op anyway)
// and a refresh of the overview's figures every few seconds while the tab is visible.
"use strict";

document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  if (form.dataset.sent) {
    event.preventDefault();
    return;
  }
  form.dataset.sent = "1";
});

(function refreshOverview() {
  var live = document.getElementById("live");
  var seconds = live ? parseInt(live.dataset.refresh, 10) : 0;
  if (!seconds) {
    return;
  }
  window.setInterval(function () {
    if (document.hidden) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", redirect: "error" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
        }
      })
      .catch(function () { /* the next tick tries again; a plain reload always works */ });
  }, seconds * 1000);
})();
