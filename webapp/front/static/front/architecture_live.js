/* Architecture page: the child run's curves (val acc and train loss per epoch) and its
   training jobs, kept live from the search's websocket (/ws/searches/<id>/).
   The page knows the search's last event seq when it was rendered and asks for what
   came after it; a reconnect asks again from the last seq applied (live_socket.js).
   The curves and the per-epoch table are epoch_chart.js's. Events carry the models'
   to_dict() (webapp/live/events.py): a ChildRun in `run`, a TrainingJob in `job`, each with
   its `epochs` cut to the newest. Text from events is set with textContent only. */
(function () {
  "use strict";
  var dataNode = document.getElementById("arch-live-data");
  if (!dataNode) return;
  var cfg = JSON.parse(dataNode.textContent);
  var num = window.NasEpochs.num, setBadge = window.NasEpochs.setBadge;
  var epochs = window.NasEpochs.create(cfg.columns, cfg.points);

  function newestEpoch(list) {
    var last = Array.isArray(list) && list.length ? list[list.length - 1] : null;
    return last && typeof last === "object" ? last : {};
  }

  function onChildProgress(run) {
    if (!epochs.add(newestEpoch(run.epochs))) return;
    epochs.draw();
    setBadge(document.getElementById("run-status"), run.status || "running");
  }

  function onChildFinished(run) {
    var last = newestEpoch(run.epochs);
    if (epochs.add(last)) epochs.draw();
    setBadge(document.getElementById("run-status"), run.status);
    var reward = num(run.reward);
    if (reward === null) return;
    if (run.status === "stopped") {
      // Its reward is its value at the rung it reached, not a final reward (_child_note.html).
      var note = document.getElementById("run-note");
      if (!note) return;
      var epoch = num(last.epoch), total = num(last.epochs);
      var stoppedAt = document.createElement("div");
      stoppedAt.className = "child-note muted";
      stoppedAt.textContent = "stopped after epoch " + (epoch === null ? "?" : epoch) + " of " +
        (total === null ? "?" : total);
      var value = document.createElement("div");
      value.className = "child-note muted";
      value.textContent = "rung value " + reward.toFixed(4);
      note.replaceChildren(stoppedAt, value);
    } else if (run.status === "succeeded" || run.status === "reused") {
      document.getElementById("arch-reward").textContent = reward.toFixed(4);
    }
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

  function onJobProgress(job) {
    var id = num(job.id);
    if (id === null) return;
    var row = jobRow(id);
    setBadge(row.querySelector(".job-status"), job.status);
    var last = newestEpoch(job.epochs);
    var epoch = num(last.epoch), total = num(last.epochs);
    if (total === null) total = num((job.recipe || {}).epochs);
    var text = (epoch === null ? "–" : String(epoch)) + (total === null ? "" : " / " + total);
    row.querySelector(".job-epoch").textContent = text;
    var reward = num(job.reward);
    row.querySelector(".job-reward").textContent = reward === null ? "–" : reward.toFixed(4);
  }

  function handle(e) {
    var item = e.type === "job.progress" ? e.job : e.run; // TrainingJob or ChildRun
    if (!item || typeof item !== "object" || item.architecture !== cfg.architecture) return;
    if (e.type === "child.progress") onChildProgress(item);
    else if (e.type === "child.finished") onChildFinished(item);
    else if (e.type === "job.progress") onJobProgress(item);
  }

  var state = document.getElementById("live-state");
  epochs.draw();
  window.NasLive.connect("/ws/searches/" + cfg.search + "/", {
    after: cfg.after,
    onEvent: handle,
    onState: function (text, on) { window.NasLive.showState(state, text, on); },
  });
})();
