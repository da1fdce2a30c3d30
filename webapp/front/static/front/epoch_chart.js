/* window.NasEpochs: the per-epoch curves (val acc and train loss, Plotly) and the per-epoch
 * table of a child run or a training job (templates/front/_epoch_chart.html and
 * _epoch_table.html: #epoch-chart, #chart-empty, #epoch-table, #epoch-rows, #epoch-empty).
 *
 *   var epochs = NasEpochs.create(columns, points); // as the page was rendered
 *   if (epochs.add(event)) epochs.draw();           // an epoch's metrics: new ones get a row
 *
 * Plain JS, no build step: load after Plotly and before the page script. Text goes through
 * textContent only.
 */
(function () {
  "use strict";

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

  /* One table cell, as webapp/front/views.py _metric formats it on the server. */
  function metric(column, v) {
    if (num(v) === null) return "";
    if (column === "epoch" || Number.isInteger(v)) return String(v);
    if (column === "seconds") return v.toFixed(1);
    return column === "lr" ? String(Number(v.toPrecision(3))) : v.toFixed(4);
  }

  /* columns: the table's column keys; initial: [{epoch, val_acc, train_loss}] already shown. */
  function create(columns, initial) {
    var chart = document.getElementById("epoch-chart");
    var points = new Map(); // epoch -> {epoch, val_acc, train_loss}
    (initial || []).forEach(function (p) { points.set(p.epoch, p); });

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

    function appendRow(e) {
      var table = document.getElementById("epoch-table");
      var body = document.getElementById("epoch-rows");
      if (!table || !body) return;
      var tr = document.createElement("tr");
      columns.forEach(function (c) {
        var td = document.createElement("td");
        td.className = "num";
        td.textContent = metric(c, e[c]);
        tr.appendChild(td);
      });
      body.appendChild(tr);
      table.hidden = false;
      var empty = document.getElementById("epoch-empty");
      if (empty) empty.hidden = true;
    }

    /* One epoch's metrics (an API epoch, the newest one a child.progress or job.progress
       event carries): the chart point is set, a row is added for an epoch not seen yet.
       True if the chart changed. */
    function add(e) {
      var epoch = num(e.epoch);
      if (epoch === null) return false;
      var isNew = !points.has(epoch);
      points.set(epoch, { epoch: epoch, val_acc: num(e.val_acc), train_loss: num(e.train_loss) });
      if (isNew) appendRow(e);
      return true;
    }

    return { draw: draw, add: add };
  }

  /* A status badge (templates/front/_status.html) put in place of the container's content. */
  function setBadge(container, status) {
    if (!container || !status) return;
    var span = document.createElement("span");
    span.className = "badge " + String(status).replace(/[^a-z]/g, "");
    span.textContent = String(status);
    container.replaceChildren(span);
  }

  window.NasEpochs = { num: num, metric: metric, create: create, setBadge: setBadge };
})();
