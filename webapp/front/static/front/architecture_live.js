/* Architecture page: the child run's curves (val acc and train loss per epoch) and its
   training jobs, kept live from the search's websocket (/ws/searches/<id>/).
   The page knows the search's last event seq when it was rendered and asks for what
   came after it ({"type": "catch_up", "after": seq}); a reconnect asks again from the
   last seq seen. Text from events is set with textContent only. */
(function () {
  "use strict";
  var dataNode = document.getElementById("arch-live-data");
  if (!dataNode) return;
  var cfg = JSON.parse(dataNode.textContent);
  var chart = document.getElementById("epoch-chart");
  var points = new Map(); // epoch -> {epoch, val_acc, train_loss}
  cfg.points.forEach(function (p) { points.set(p.epoch, p); });

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

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

  function appendEpochRow(point) {
    var table = document.getElementById("epoch-table");
    var body = document.getElementById("epoch-rows");
    if (!table || !body) return;
    var tr = document.createElement("tr");
    cfg.columns.forEach(function (c) {
      var td = document.createElement("td");
      td.className = "num";
      td.textContent = metric(c, point[c]);
      tr.appendChild(td);
    });
    body.appendChild(tr);
    table.hidden = false;
    var empty = document.getElementById("epoch-empty");
    if (empty) empty.hidden = true;
  }

  function badge(status) {
    var span = document.createElement("span");
    span.className = "badge " + String(status).replace(/[^a-z]/g, "");
    span.textContent = String(status);
    return span;
  }

  function setBadge(container, status) {
    if (!container || !status) return;
    container.replaceChildren(badge(status));
  }

  function onChildProgress(e) {
    var epoch = num(e.epoch);
    if (epoch === null) return;
    var point = { epoch: epoch, val_acc: num(e.val_acc), train_loss: num(e.train_loss) };
    var isNew = !points.has(epoch);
    points.set(epoch, point);
    if (isNew) appendEpochRow(point);
    draw();
    setBadge(document.getElementById("run-status"), "running");
  }

  function onChildFinished(e) {
    setBadge(document.getElementById("run-status"), e.status);
    var reward = num(e.reward);
    if (reward !== null) document.getElementById("arch-reward").textContent = reward.toFixed(4);
  }

  function jobRow(id) {
    var row = document.querySelector('#job-rows tr[data-job="' + id + '"]');
    if (row) return row;
    row = document.createElement("tr");
    row.dataset.job = String(id);
    var name = document.createElement("td");
    name.className = "name";
    var link = document.createElement("a");
    link.href = "/training-jobs/" + id;
    link.textContent = "training job #" + id;
    name.appendChild(link);
    row.appendChild(name);
    [["job-status", ""], ["num job-epoch", "–"], ["num job-reward", "–"]].forEach(function (c) {
      var td = document.createElement("td");
      td.className = c[0];
      td.textContent = c[1];
      row.appendChild(td);
    });
    document.getElementById("job-rows").prepend(row);
    document.getElementById("job-table").hidden = false;
    var empty = document.getElementById("job-empty");
    if (empty) empty.hidden = true;
    return row;
  }

  function onJobProgress(e) {
    var id = num(e.job);
    if (id === null) return;
    var row = jobRow(id);
    setBadge(row.querySelector(".job-status"), e.status);
    var epoch = num(e.epoch), epochs = num(e.epochs);
    var text = (epoch === null ? "–" : String(epoch)) + (epochs === null ? "" : " / " + epochs);
    row.querySelector(".job-epoch").textContent = text;
    var reward = num(e.reward);
    row.querySelector(".job-reward").textContent = reward === null ? "–" : reward.toFixed(4);
  }

  function handle(e) {
    if (e.architecture !== cfg.architecture) return;
    if (e.type === "child.progress") onChildProgress(e);
    else if (e.type === "child.finished") onChildFinished(e);
    else if (e.type === "job.progress") onJobProgress(e);
  }

  var lastSeq = cfg.after, delay = 1000, state = document.getElementById("live-state");

  function setState(text, on) {
    if (!state) return;
    state.textContent = text;
    state.classList.toggle("on", on);
    state.hidden = !text;
  }

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
      handle(e);
    };
    ws.onclose = function () {
      setState("reconnecting…", false);
      window.setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  draw();
  connect();
})();
