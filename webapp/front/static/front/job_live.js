/* Training job page: per-epoch curves and the job's numbers, kept live. A job trained
   from one of a search's architectures publishes job.progress events to that search's
   websocket; the page listens there (catching up after the seq it was rendered at:
   live_socket.js). An event carries the job as the API returns it (TrainingJob.to_dict,
   webapp/live/events.py) less its genotype and dataset, its `epochs` cut to the newest:
   applyJob merges it. When the job ends the page reads it once from the API, which fills
   in any epoch the throttled events skipped. A job with no such architecture is polled
   from /api/training-jobs/<id> every 5 s while it runs. The curves and the per-epoch
   table are epoch_chart.js's.
   Text from the server is set with textContent only. */
(function () {
  "use strict";
  var dataNode = document.getElementById("job-live-data");
  if (!dataNode) return;
  var cfg = JSON.parse(dataNode.textContent);
  var POLL_MS = 5000;
  var num = window.NasEpochs.num;
  var epochs = window.NasEpochs.create(cfg.columns, cfg.points);
  var status = cfg.status;

  function active(s) { return cfg.active.indexOf(s) >= 0; }
  function setText(id, text) { var el = document.getElementById(id); if (el) el.textContent = text; }
  function count(v) { return num(v) === null ? "–" : Math.round(v).toLocaleString("en-US"); }

  function setStatus(s) {
    if (!s) return;
    status = String(s);
    window.NasEpochs.setBadge(document.getElementById("job-status"), status);
    var cancel = document.getElementById("job-cancel-form");
    if (cancel && !active(status)) cancel.hidden = true;  // nothing left to cancel
  }

  function setProgress(epoch, total) {
    setText("job-epoch", (num(epoch) === null ? "–" : String(epoch)) + (num(total) === null ? "" : " / " + total));
  }

  function setReward(v) { setText("job-reward", num(v) === null ? "–" : v.toFixed(4)); }

  /* The job as GET /api/training-jobs/<id> returns it (TrainingJob.to_dict), or as a
     job.progress event carries it (its newest epoch only: added to those shown). */
  function applyJob(j) {
    setStatus(j.status);
    var list = Array.isArray(j.epochs) ? j.epochs : [];
    var changed = false;
    list.forEach(function (e) { if (e && typeof e === "object" && epochs.add(e)) changed = true; });
    if (changed) epochs.draw();
    var last = list.length ? list[list.length - 1] || {} : {};
    setProgress(last.epoch, last.epochs || (j.recipe || {}).epochs);
    setReward(j.reward);
    setText("job-test-acc", num(j.test_acc) === null ? "–" : j.test_acc.toFixed(4));
    setText("job-test-source", j.test_source || "");
    var resumed = document.getElementById("job-resumed");
    if (resumed && num(j.resumed_from_epoch) !== null) {
      resumed.hidden = !(j.resumed_from_epoch > 0);
      setText("job-resumed-epoch", String(j.resumed_from_epoch + 1));
    }
    if (j.recipe && typeof j.recipe === "object") {
      setText("job-n-at-f", (num(j.recipe.repeats) === null ? "?" : j.recipe.repeats) + "@" +
        (num(j.recipe.filters) === null ? "?" : j.recipe.filters));
    }
    var fitted = j.budget && typeof j.budget === "object" ? j.budget.fitted : null;
    if (fitted && typeof fitted === "object") {
      setText("job-budget-fitted", "fitted: " + String(fitted.n_at_p) + " (F=" + String(fitted.filters) + "), " +
        count(fitted.params) + " params, " + count(fitted.mult_adds) + " mult-adds");
    }
    if (num(j.attempt) !== null) setText("job-attempt", String(j.attempt));
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

  function setState(text, on) { window.NasLive.showState(state, text, on); }

  function poll() {
    fetchJob().then(
      function () { setState(active(status) ? "polling every 5 s" : "", active(status)); },
      function () { setState("could not refresh; retrying", false); }
    ).then(function () { if (active(status)) window.setTimeout(poll, POLL_MS); });
  }

  function onJobProgress(job) {
    applyJob(job);
    if (!active(status)) fetchJob().catch(function () {}); // the end: every epoch, in case one was skipped
  }

  epochs.draw();
  if (cfg.search !== null) {
    window.NasLive.connect("/ws/searches/" + cfg.search + "/", {
      after: cfg.after,
      onEvent: function (e) {
        if (e.type === "job.progress" && e.job && e.job.id === cfg.job) onJobProgress(e.job);
      },
      onState: setState,
    });
  } else if (active(status)) {
    setState("polling every 5 s", true);
    window.setTimeout(poll, POLL_MS);
  }
})();
