/* A selection's page (/selections/<id>): the ranking forms live. A top-K selection or a
   noise floor publishes selection.progress events to its search's websocket when it is
   created, each time one of its runs ends, and when it ends; each carries the whole
   selection as the API returns it (Selection.to_dict, ranking included). The page listens
   there while the selection is active, catching up after the seq it was rendered at
   (live_socket.js), and redraws the ranking, the counters, the winner and the noise floor
   from the newest event of this selection.
   Text from the server is set with textContent only, never innerHTML. */
(function () {
  "use strict";
  var dataNode = document.getElementById("selection-live-data");
  if (!dataNode) return;
  var cfg = JSON.parse(dataNode.textContent);
  var socket = null;

  function num(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v) { return num(v) ? v.toFixed(4) : "–"; }
  function byId(id) { return document.getElementById(id); }
  function setText(id, text) { var node = byId(id); if (node) node.textContent = text; }
  function active(status) { return cfg.active.indexOf(status) >= 0; }

  function setBadge(container, status) {
    if (!container || !status) return;
    var span = document.createElement("span");
    span.className = "badge " + String(status).replace(/[^a-z]/g, "");
    span.textContent = String(status);
    container.replaceChildren(span);
  }

  function meanStd(r) {
    if (!num(r.mean)) return "–";
    return fmt(r.mean) + (num(r.std) ? " ± " + fmt(r.std) : "");
  }

  function link(archId, sampleIndex) {
    var a = document.createElement("a");
    a.href = cfg.architecture_prefix + Number(archId);
    a.textContent = "#" + sampleIndex;
    return a;
  }

  function cell(tr, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function makeRow(r, rank, winner) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-architecture", String(Number(r.architecture)));
    if (r.architecture === winner) tr.className = "winner";
    cell(tr, "num").textContent = rank === null ? "–" : String(rank);
    var name = cell(tr);
    name.appendChild(link(r.architecture, r.sample_index));
    if (r.architecture === winner) {
      var badge = document.createElement("span");
      badge.className = "badge succeeded";
      badge.textContent = "winner";
      name.appendChild(document.createTextNode(" "));
      name.appendChild(badge);
    }
    cell(tr, "num").textContent = fmt(r.search_reward);
    var seeds = cell(tr, "seeds mono");
    var rewards = Array.isArray(r.rewards) ? r.rewards : [];
    (Array.isArray(r.seeds) ? r.seeds : []).forEach(function (seed, i) {
      if (i > 0) seeds.appendChild(document.createTextNode(" · "));
      var span = document.createElement("span");
      span.className = "seed-reward";
      span.title = "seed " + seed;
      span.textContent = fmt(rewards[i]);
      seeds.appendChild(span);
    });
    cell(tr, "num mean").textContent = meanStd(r);
    cell(tr, "num").textContent = num(r.n) ? String(r.n) : "0";
    return tr;
  }

  function renderRanking(sel) {
    var tbody = document.querySelector("#ranking tbody");
    if (!tbody || !Array.isArray(sel.ranking)) return;
    var rank = 0;
    var rows = sel.ranking.map(function (r) {
      if (num(r.mean)) rank += 1;
      return makeRow(r, num(r.mean) ? rank : null, sel.winner);
    });
    tbody.replaceChildren.apply(tbody, rows);
    var empty = byId("ranking-empty");
    if (empty) empty.hidden = rows.length > 0;
  }

  function renderWinner(sel) {
    var box = byId("selection-winner");
    var row = null;
    (sel.ranking || []).forEach(function (r) { if (r.architecture === sel.winner) row = r; });
    var tile = byId("sel-winner");
    if (tile) tile.replaceChildren(row ? link(row.architecture, row.sample_index) : document.createTextNode("–"));
    if (!box) return;
    box.hidden = !row;
    if (!row) return;
    var muted = document.createElement("span");
    muted.className = "muted";
    muted.textContent = "mean " + meanStd(row) + " over " + row.n + " seed" + (row.n === 1 ? "" : "s");
    byId("winner-title").replaceChildren(
      document.createTextNode("· "), link(row.architecture, row.sample_index), document.createTextNode(" "), muted
    );
    byId("train-winner").href = cfg.architecture_prefix + Number(row.architecture) + "#train";
  }

  function renderNoise(sel) {
    if (cfg.kind !== "noise_floor") return;
    setText("sel-noise-std", fmt(sel.noise_std));
    var text = byId("noise-floor-text");
    if (!text || !num(sel.noise_std)) return;
    var strong = document.createElement("strong");
    strong.textContent = fmt(sel.noise_std);
    text.replaceChildren(
      document.createTextNode("One cell's validation accuracy moves by σ = "),
      strong,
      document.createTextNode(
        " (pooled standard deviation over seeds, the search's own reward counted as one seed) from the " +
        "training seed alone. Two children of this search whose rewards differ by less than about 2σ may " +
        "differ by chance, not by their cells."
      )
    );
  }

  function render(sel) {
    setBadge(byId("selection-status"), sel.status);
    var total = num(sel.runs_total) ? sel.runs_total : 0;
    var done = num(sel.runs_done) ? sel.runs_done : 0;
    setText("sel-runs", done + " / " + total);
    var bar = byId("sel-runs-bar");
    if (bar) bar.style.width = (total ? Math.round((100 * done) / total) : 0) + "%";
    setText("sel-failed", (sel.runs_failed || 0) + " · " + (sel.runs_running || 0));
    setText("selection-error", sel.error || "");
    var errorBox = byId("selection-error-box");
    if (errorBox) errorBox.hidden = !sel.error;
    renderRanking(sel);
    renderWinner(sel);
    renderNoise(sel);
    if (!active(sel.status)) {
      var cancel = byId("selection-cancel");
      if (cancel) cancel.hidden = true;
      if (socket) socket.close();
      window.NasLive.showState(byId("live-state"), "", false);
    }
  }

  if (!active(cfg.status)) return; // ended: nothing more will come
  socket = window.NasLive.connect(cfg.ws_path, {
    after: cfg.after,
    onEvent: function (e) {
      if (e.type === "selection.progress" && e.selection && e.selection.id === cfg.selection) render(e.selection);
    },
    onState: function (text, on) { window.NasLive.showState(byId("live-state"), text, on); },
  });
})();
