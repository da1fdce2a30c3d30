/* Training job page: per-epoch curves and the job's numbers, kept live. A job trained
   from one of a search's architectures publishes job.progress events to that search's
   websocket; the page listens there (catching up after the seq it was rendered at) and
   reads the job once from the API when it ends (params, wall time, bundle). A job with
   no such architecture is polled from /api/training-jobs/<id> every 5 s while it runs.
   Text from the server is set with textContent only. */
(function () {
  "use strict";
  var dataNode = document.getElementById("job-live-data");
  if (!dataNode) return;
  var cfg = JSON.parse(dataNode.textContent);
  var POLL_MS = 5000;
  var chart = document.getElementById("epoch-chart");
  var points = new Map(); // epoch -> {epoch, val_acc, train_loss}
  cfg.points.forEach(function (p) { points.set(p.epoch, p); });
  var status = cfg.status;

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function active(s) { return cfg.active.indexOf(s) >= 0; }
  function setText(id, text) { var el = document.getElementById(id); if (el) el.textContent = text; }
  function count(v) { return num(v) === null ? "–" : Math.round(v).toLocaleString("en-US"); }

  function metric(column, v) {
    if (num(v) === null) return "";
    if (column === "epoch" || Number.isInteger(v)) return String(v);
    if (column === "seconds") return v.toFixed(1);
    return column === "lr" ? String(Number(v.toPrecision(3))) : v.toFixed(4);
  }

  function draw() {
    if (!window.Plotly || !chart) return;
    var sorted = Array.from(points.values()).sort(function (a, b) { return a.epoch - b.epoch; });
    var x = sorted.map(function (p) { return p.epoch; });
    var traces = [
      { x: x, y: sorted.map(function (p) { return p.val_acc; }), name: "val acc", mode: "lines+markers", line: { color: "#2f6ea8" } },
      { x: x, y: sorted.map(function (p) { return p.train_loss; }), name: "train loss", mode: "lines+markers", yaxis: "y2", line: { color: "#b7791f", dash: "dot" } }
    ];
    var layout = {
      height: 320, margin: { l: 55, r: 60, t: 10, b: 45 }, legend: { orientation: "h", y: 1.12 },
      xaxis: { title: { text: "epoch" }, tickformat: "d", dtick: Math.max(1, Math.ceil((x[x.length - 1] || 1) / 12)) },
      yaxis: { title: { text: "val acc" }, rangemode: "tozero" },
      yaxis2: { title: { text: "train loss" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, tickmode: "auto", nticks: 6 }
    };
    window.Plotly.react(chart, traces, layout, { responsive: true, displaylogo: false });
    var empty = document.getElementById("chart-empty");
    if (empty) empty.hidden = sorted.length > 0;
  }

  function appendEpochRow(epoch) {
    var table = document.getElementById("epoch-table");
    var body = document.getElementById("epoch-rows");
    if (!table || !body) return;
    var tr = document.createElement("tr");
    cfg.columns.forEach(function (c) {
      var td = document.createElement("td");
      td.className = "num";
      td.textContent = metric(c, epoch[c]);
      tr.appendChild(td);
    });
    body.appendChild(tr);
    table.hidden = false;
    var empty = document.getElementById("epoch-empty");
    if (empty) empty.hidden = true;
  }

  /* One epoch's metrics (an API epoch or a job.progress event); true if the chart changed. */
  function addEpoch(e) {
    var epoch = num(e.epoch);
    if (epoch === null) return false;
    var isNew = !points.has(epoch);
    points.set(epoch, { epoch: epoch, val_acc: num(e.val_acc), train_loss: num(e.train_loss) });
    if (isNew) appendEpochRow(e);
    return true;
  }

  function setStatus(s) {
    if (!s) return;
    status = String(s);
    var span = document.createElement("span");
    span.className = "badge " + status.replace(/[^a-z]/g, "");
    span.textContent = status;
    var box = document.getElementById("job-status");
    if (box) box.replaceChildren(span);
  }

  function setProgress(epoch, epochs) {
    setText("job-epoch", (num(epoch) === null ? "–" : String(epoch)) + (num(epochs) === null ? "" : " / " + epochs));
  }

  function setReward(v) { setText("job-reward", num(v) === null ? "–" : v.toFixed(4)); }

  /* The whole job, as GET /api/training-jobs/<id> returns it (TrainingJob.to_dict). */
  function applyJob(j) {
    setStatus(j.status);
    var epochs = Array.isArray(j.epochs) ? j.epochs : [];
    var changed = false;
    epochs.forEach(function (e) { if (e && typeof e === "object" && addEpoch(e)) changed = true; });
    if (changed) draw();
    var last = epochs.length ? epochs[epochs.length - 1] || {} : {};
    setProgress(last.epoch, last.epochs || (j.recipe || {}).epochs);
    setReward(j.reward);
    setText("job-params", count(j.params));
    setText("job-mult-adds", count(j.mult_adds));
    setText("job-wall-time", num(j.wall_time) === null ? "–" : j.wall_time.toFixed(1) + " s");
    setText("job-error", j.error || "");
    var errorBox = document.getElementById("job-error-box");
    if (errorBox) errorBox.hidden = !j.error;
    var bundle = document.getElementById("job-bundle");
    if (bundle) bundle.hidden = !(j.status === "succeeded" && j.has_bundle);
  }

  function fetchJob() {
    return window.fetch(cfg.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(applyJob);
  }

  var state = document.getElementById("live-state");

  function setState(text, on) {
    if (!state) return;
    state.textContent = text;
    state.classList.toggle("on", on);
    state.hidden = !text;
  }

  function poll() {
    fetchJob().then(
      function () { setState(active(status) ? "polling every 5 s" : "", active(status)); },
      function () { setState("could not refresh; retrying", false); }
    ).then(function () { if (active(status)) window.setTimeout(poll, POLL_MS); });
  }

  function onJobProgress(e) {
    if (addEpoch(e)) draw();
    setStatus(e.status);
    setProgress(e.epoch, e.epochs);
    setReward(e.reward);
    if (!active(status)) fetchJob().catch(function () {}); // the end: params, wall time, bundle
  }

  var lastSeq = cfg.after, delay = 1000;

  function connect() {
    if (!("WebSocket" in window)) return;
    var proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(proto + "//" + window.location.host + "/ws/searches/" + cfg.search + "/");
    ws.onopen = function () {
      delay = 1000;
      setState("live", true);
      ws.send(JSON.stringify({ type: "catch_up", after: lastSeq }));
    };
    ws.onmessage = function (m) {
      var e;
      try { e = JSON.parse(m.data); } catch (err) { return; }
      if (typeof e.seq === "number") {
        if (e.seq <= lastSeq) return;
        lastSeq = e.seq;
      }
      if (e.type === "job.progress" && e.job === cfg.job) onJobProgress(e);
    };
    ws.onclose = function () {
      setState("reconnecting…", false);
      window.setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  draw();
  if (cfg.search !== null) connect();
  else if (active(status)) {
    setState("polling every 5 s", true);
    window.setTimeout(poll, POLL_MS);
  }
})();
