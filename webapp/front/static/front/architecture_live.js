/* Architecture page: the child run's curves (val acc and train loss per epoch) and its
   training jobs, kept live from the search's websocket (/ws/searches/<id>/).
   The page knows the search's last event seq when it was rendered and asks for what
   came after it; a reconnect asks again from the last seq applied (live_socket.js).
   The curves and the per-epoch table are epoch_chart.js's. Text from events is set with
   textContent only. */
(function () {
  "use strict";
  var dataNode = document.getElementById("arch-live-data");
  if (!dataNode) return;
  var cfg = JSON.parse(dataNode.textContent);
  var num = window.NasEpochs.num, setBadge = window.NasEpochs.setBadge;
  var epochs = window.NasEpochs.create(cfg.columns, cfg.points);

  function onChildProgress(e) {
    if (!epochs.add(e)) return;
    epochs.draw();
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
    var epoch = num(e.epoch), total = num(e.epochs);
    var text = (epoch === null ? "–" : String(epoch)) + (total === null ? "" : " / " + total);
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

  var state = document.getElementById("live-state");
  epochs.draw();
  window.NasLive.connect("/ws/searches/" + cfg.search + "/", {
    after: cfg.after,
    onEvent: handle,
    onState: function (text, on) { window.NasLive.showState(state, text, on); },
  });
})();
