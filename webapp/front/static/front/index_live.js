/* The searches list (/): status, progress and best reward of the active searches, live.
 *
 * Scheme: one websocket per active search on the page (queued, running, paused,
 * cancelling: a team's quota keeps them few), without catch_up. A socket that never sends
 * catch_up gets the live events only, and this page needs only search.status, which
 * carries the whole state (counters, best reward) and is published on every advance of the
 * search: a missed one is made good by the next, so replaying the history (every epoch of
 * every child) after a reconnect would cost much and add nothing. A search that ends
 * closes its socket. The sparkline is drawn by the server and is not updated live.
 */
(function () {
  "use strict";

  var DONE = ["finished", "cancelled", "failed"];

  function fmt(v) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(4) : "–";
  }

  function apply(row, s) {
    var badge = row.querySelector(".search-status .badge");
    if (badge) {
      badge.className = "badge " + s.status;
      badge.textContent = s.status;
      badge.setAttribute("data-search-status", s.status);
    }
    var total = s.children_total || 0;
    var done = s.children_done || 0;
    var bar = row.querySelector(".search-progress");
    if (bar) bar.style.width = (total ? Math.round((100 * done) / total) : 0) + "%";
    var text = row.querySelector(".search-done");
    if (text) text.textContent = done + " / " + total;
    var best = row.querySelector(".search-best");
    if (best) {
      best.replaceChildren();
      var span = document.createElement("span");
      if (s.best_reward == null) span.className = "muted";
      span.textContent = fmt(s.best_reward);
      best.appendChild(span);
    }
  }

  // live_socket.js without catch_up (after: null); backoff from 2 s up to 60 s.
  function watch(row) {
    var id = Number(row.getAttribute("data-search"));
    var socket = window.NasLive.connect("/ws/searches/" + id + "/", {
      after: null,
      backoff: 2000,
      maxBackoff: 60000,
      jitter: 1000,
      onEvent: function (msg) {
        var s = msg.search; // Search.to_dict() less its spec (webapp/live/events.py)
        if (msg.type !== "search.status" || !s || typeof s.status !== "string") return;
        apply(row, s);
        if (DONE.indexOf(s.status) >= 0) socket.close();
      },
    });
  }

  document.querySelectorAll("#searches tr[data-search][data-live]").forEach(watch);
})();
