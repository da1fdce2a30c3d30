/* window.NasLive: one search's websocket (/ws/searches/<id>/), reopened when it closes.
 *
 *   var socket = NasLive.connect(path, {after: seq | null, onEvent: function (msg) {},
 *                                       onState: function (text, on) {}});
 *   socket.close(); // for good: no reconnect
 *
 * after: a seq, the last live event the page's state already includes (0: none).
 * 1. On every open, send {"type": "catch_up", "after": <last seq applied>}: the server sends
 *    the stored events after it, in order, then the live ones.
 * 2. Apply every event exactly once, in seq order: an older seq is a duplicate (dropped), a
 *    newer one than expected arrived live ahead of the catch-up and comes again in order.
 *    Should the missing ones never come (GAP_WAIT), the socket is closed and reopened, which
 *    catches up again from the last seq applied. A message without a seq ({"type": "error"})
 *    is dropped.
 * after: null: no catch_up, the live events only, each passed on as it comes (a page that
 *    needs only events that carry the whole state, such as search.status).
 *
 * On close, reconnect after `backoff` ms (plus up to `jitter` ms at random), doubling up to
 * `maxBackoff`; a socket that opens resets it (refused connections never open: the server
 * closes before the handshake). onState gets ("live", true) on open and
 * ("reconnecting…", false) on close. Plain JS, no build step: load before the page script.
 */
(function () {
  "use strict";
  var FORBIDDEN = 4403; // close code of a socket whose user lost access (webapp/live/consumers.py)

  var GAP_WAIT = 5000; // ms an event ahead of the expected seq may wait for the missing ones

  function connect(path, options) {
    var opts = options || {};
    var ordered = opts.after !== null && opts.after !== undefined;
    var lastSeq = ordered ? opts.after : 0;
    var firstBackoff = opts.backoff || 1000;
    var maxBackoff = opts.maxBackoff || 30000;
    var jitter = opts.jitter === undefined ? 500 : opts.jitter;
    var backoff = firstBackoff;
    var socket = null;
    var gapTimer = null;
    var ended = false;
    var handle = {
      close: function () {
        ended = true;
        if (gapTimer !== null) clearTimeout(gapTimer);
        gapTimer = null;
        if (socket) socket.close();
      },
      lastSeq: function () { return lastSeq; },
    };
    if (!("WebSocket" in window)) return handle;

    function state(text, on) {
      if (opts.onState) opts.onState(text, on);
    }

    function deliver(msg) {
      try {
        if (opts.onEvent) opts.onEvent(msg);
      } catch (err) {
        console.error("event not applied", msg.type, err); // eslint-disable-line no-console
      }
    }

    function receive(msg) {
      if (!msg || typeof msg !== "object") return;
      if (!ordered) {
        deliver(msg);
        return;
      }
      if (typeof msg.seq !== "number") return; // {"type": "error", ...}
      if (msg.seq <= lastSeq) return; // already applied
      if (msg.seq > lastSeq + 1) {
        // Live, ahead of the catch-up: it comes again in order. Should the missing ones never
        // come, start over from the last applied seq.
        if (gapTimer === null) {
          var waitingFor = msg.seq;
          gapTimer = setTimeout(function () {
            gapTimer = null;
            if (lastSeq < waitingFor && socket) socket.close();
          }, GAP_WAIT);
        }
        return;
      }
      lastSeq = msg.seq;
      deliver(msg);
    }

    function open() {
      if (ended) return;
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      var ws = new WebSocket(scheme + window.location.host + path);
      socket = ws;
      ws.onopen = function () {
        backoff = firstBackoff;
        state("live", true);
        if (ordered) ws.send(JSON.stringify({ type: "catch_up", after: lastSeq }));
      };
      ws.onmessage = function (event) {
        var msg;
        try {
          msg = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        receive(msg);
      };
      ws.onclose = function (event) {
        if (socket !== ws) return;
        socket = null;
        if (ended) return;
        if (event && event.code === FORBIDDEN) {
          ended = true; // access was withdrawn (left the team): asking again would be refused
          state("no access", false);
          return;
        }
        state("reconnecting…", false);
        setTimeout(open, backoff + Math.random() * jitter);
        backoff = Math.min(backoff * 2, maxBackoff);
      };
    }

    open();
    return handle;
  }

  /* The #live-state badge of a page that hides it until it has something to say. */
  function showState(node, text, on) {
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("on", on);
    node.hidden = !text;
  }

  window.NasLive = { connect: connect, showState: showState };
})();
