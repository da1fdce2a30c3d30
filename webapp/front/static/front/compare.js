/* Compare page: validation accuracy per epoch of each architecture's child run, overlaid.
   Trace names are the server's labels ("#<sample> of search <id>"): numbers only, no user text. */
(function () {
  "use strict";
  var dataNode = document.getElementById("compare-data");
  var chart = document.getElementById("compare-chart");
  if (!dataNode || !chart) return;
  var series = JSON.parse(dataNode.textContent);
  var traces = series.filter(function (s) { return s.points.length > 0; }).map(function (s) {
    return {
      x: s.points.map(function (p) { return p.epoch; }),
      y: s.points.map(function (p) { return p.val_acc; }),
      name: s.label,
      mode: "lines+markers"
    };
  });
  document.getElementById("chart-empty").hidden = traces.length > 0;
  chart.hidden = traces.length === 0;
  if (!traces.length || !window.Plotly) return;
  var lastEpoch = Math.max.apply(null, traces.map(function (t) { return t.x[t.x.length - 1] || 1; }));
  var layout = {
    height: 340, margin: { l: 55, r: 20, t: 10, b: 45 }, legend: { orientation: "h", y: -0.2 },
    xaxis: { title: { text: "epoch" }, tickformat: "d", dtick: Math.max(1, Math.ceil(lastEpoch / 12)) },
    yaxis: { title: { text: "val acc" } }
  };
  window.Plotly.newPlot(chart, traces, layout, { responsive: true, displaylogo: false });
})();
