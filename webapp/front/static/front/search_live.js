/* The live search page (/searches/<id>): charts, children table, stat tiles, best cells.
 *
 * 1. GET chart.json: the chart state reduced on the server, the latest children, the
 *    search's counters and `last_seq`, the last live event that state includes.
 * 2. Open /ws/searches/<id>/ and send {"type": "catch_up", "after": last_seq}: the server
 *    sends the stored events after it, in order, then the live ones.
 * 3. Apply every event exactly once, in seq order: an older seq is a duplicate, a newer
 *    one than expected arrived live ahead of the catch-up and comes again in order.
 * 4. On close, reconnect with backoff and catch up after the last seq applied.
 * Steps 2 to 4 are live_socket.js's (window.NasLive.connect), loaded before this script.
 *
 * Plain JS, no build step. Text from the server (names, statuses) only ever goes through
 * textContent or attributes, never innerHTML.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("live-config").textContent);
  var REWARDED = ["succeeded", "reused"];
  var RENDER_DELAY = 300; // ms: events are batched into one redraw

  var el = {
    reward: document.getElementById("reward-chart"),
    controller: document.getElementById("controller-chart"),
    policy: document.getElementById("policy-heatmap"),
    policyStep: document.getElementById("policy-step"),
    live: document.getElementById("live-state"),
    badge: document.getElementById("search-status"),
    progress: document.getElementById("stat-progress"),
    progressBar: document.getElementById("stat-progress-bar"),
    done: document.getElementById("stat-done"),
    sampled: document.getElementById("stat-sampled"),
    failed: document.getElementById("stat-failed"),
    stopped: document.getElementById("stat-stopped"),
    epochs: document.getElementById("stat-epochs"),
    best: document.getElementById("stat-best"),
    noiseFloor: document.getElementById("stat-noise-floor"),
    bestTitle: document.getElementById("best-title"),
    bestCells: document.getElementById("best-cells"),
    tbody: document.querySelector("#children tbody"),
    childrenEmpty: document.getElementById("children-empty"),
  };

  // -- state of the charts -----------------------------------------------------------------
  var rewards = { x: [], y: [], plotted: new Set(), maxX: null };
  var best = { x: [], y: [] }; // change points of the running best, sorted by x
  // Stopped children (early stopping) at their rung value: a series apart, never in the
  // running best or the moving average (a value after a few epochs is no final reward).
  var stopped = { x: [], y: [] };
  var avg = { window: 5, x: [], y: [], tail: [] };
  var noiseFloor = null; // Search.noise_floor: σ of one cell's reward over seeds
  var ctl = { step: [], loss: [], entropy: [], baseline: [] };
  var policy = null; // {step, probs, labels, options}
  var sampleIndex = new Map(); // architecture id -> sample index (for the best's title)
  var children = new Map(); // architecture id -> row state of the live table
  var bestShown = el.bestCells ? el.bestCells.getAttribute("data-architecture") : null;
  var bestLoading = null; // the best architecture whose cells are being fetched
  var dirty = { reward: false, controller: false, policy: false };
  var renderTimer = null;

  function hide(id) {
    var node = document.getElementById(id);
    if (node) node.hidden = true;
  }

  function num(v) {
    return typeof v === "number" && isFinite(v);
  }

  function fmt(v) {
    return num(v) ? v.toFixed(4) : "–";
  }

  // -- rewards -------------------------------------------------------------------------------
  function addReward(archId, x, y) {
    if (archId != null) {
      if (rewards.plotted.has(archId)) return;
      rewards.plotted.add(archId);
    }
    rewards.x.push(x);
    rewards.y.push(y);
    if (rewards.maxX === null || x > rewards.maxX) rewards.maxX = x;
    addBest(x, y);
    avg.tail.push(y);
    if (avg.tail.length > avg.window) avg.tail.shift();
    var sum = 0;
    for (var i = 0; i < avg.tail.length; i++) sum += avg.tail[i];
    avg.x.push(x);
    avg.y.push(sum / avg.tail.length);
    schedule("reward");
  }

  function addStopped(archId, x, y) {
    if (archId != null) {
      if (rewards.plotted.has(archId)) return;
      rewards.plotted.add(archId);
    }
    stopped.x.push(x);
    stopped.y.push(y);
    if (rewards.maxX === null || x > rewards.maxX) rewards.maxX = x;
    schedule("reward");
  }

  // The running best by sample index: a late child with a lower index may raise it from
  // its index on, which removes the later change points it now dominates.
  function addBest(x, y) {
    var i = 0;
    while (i < best.x.length && best.x[i] <= x) i++;
    if (i > 0 && best.y[i - 1] >= y) return;
    var j = i;
    while (j < best.x.length && best.y[j] <= y) j++;
    best.x.splice(i, j - i, x);
    best.y.splice(i, j - i, y);
  }

  // -- rendering (Plotly, WebGL traces) ------------------------------------------------------
  function schedule(what) {
    dirty[what] = true;
    if (renderTimer === null) renderTimer = setTimeout(renderAll, RENDER_DELAY);
  }

  function renderAll() {
    renderTimer = null;
    if (dirty.reward) renderReward();
    if (dirty.controller) renderController();
    if (dirty.policy) renderPolicy();
    dirty = { reward: false, controller: false, policy: false };
  }

  function plot(target, traces, layout) {
    if (!target || typeof Plotly === "undefined") return;
    // Shown before drawing: Plotly sizes a chart from its container, and a hidden one
    // (the controller and policy charts until the first update) would get a fixed 700 px.
    target.classList.add("drawn");
    try {
      Plotly.react(target, traces, layout, { responsive: true, displaylogo: false });
    } catch (err) {
      console.error("chart not drawn", err); // eslint-disable-line no-console
    }
  }

  var revision = 0;

  function baseLayout(xTitle, yTitle) {
    revision += 1;
    return {
      datarevision: revision,
      margin: { l: 52, r: 16, t: 8, b: 40 },
      legend: { orientation: "h", x: 0, y: 1.12 },
      xaxis: { title: { text: xTitle }, zeroline: false },
      yaxis: { title: { text: yTitle }, zeroline: false, automargin: true },
      hovermode: "closest",
      uirevision: "keep", // zoom and hidden traces survive updates
    };
  }

  // Rewards are accuracies: never autoscale below 0 (one point would give an axis of -0.5..1).
  function rewardLayout() {
    var layout = baseLayout("sample index", "reward (val. accuracy)");
    layout.xaxis.rangemode = "nonnegative";
    // A small budget: the x axis spans it, the chart fills up as the search progresses
    // (a large one autoscales, or its first hundred points would be a sliver at the left).
    var total = config.children_total;
    if (num(total) && total > 1 && total <= 200 && (rewards.maxX || 0) < total) {
      layout.xaxis.range = [-0.02 * total, total * 1.02];
    }
    layout.yaxis.rangemode = "nonnegative";
    return layout;
  }

  function renderReward() {
    var bx = best.x.slice();
    var by = best.y.slice();
    if (bx.length && rewards.maxX !== null && rewards.maxX > bx[bx.length - 1]) {
      bx.push(rewards.maxX); // the step line runs on to the latest child
      by.push(by[by.length - 1]);
    }
    plot(
      el.reward,
      noiseBand(bx, by).concat([
        {
          type: "scattergl", mode: "lines", name: "running best", x: bx, y: by,
          line: { shape: "hv", color: "#2f855a", width: 2 }, hovertemplate: "best %{y:.4f}<extra></extra>",
        },
        {
          type: "scattergl", mode: "lines", name: "moving average (" + avg.window + ")", x: avg.x.slice(),
          y: avg.y.slice(), line: { color: "#b7791f", width: 1.5 }, hovertemplate: "mean %{y:.4f}<extra></extra>",
        },
      ]).concat(stoppedTrace()).concat([
        // last: the dots are drawn over the lines
        {
          type: "scattergl", mode: "markers", name: "reward", x: rewards.x.slice(), y: rewards.y.slice(),
          marker: { size: 6, color: "#2f6ea8", opacity: 0.7 },
          hovertemplate: "#%{x}: %{y:.4f}<extra></extra>",
        },
      ]),
      rewardLayout()
    );
    el.reward.setAttribute("data-points", String(rewards.x.length));
    el.reward.setAttribute("data-stopped", String(stopped.x.length));
  }

  function stoppedTrace() {
    if (!stopped.x.length && !config.early_stop) return [];
    return [{
      type: "scattergl", mode: "markers", name: "stopped (rung value)", x: stopped.x.slice(), y: stopped.y.slice(),
      marker: { size: 6, symbol: "x", color: "#805ad5", opacity: 0.55 },
      hovertemplate: "#%{x} stopped: rung value %{y:.4f}<extra></extra>",
    }];
  }

  // ±σ around the running best: a child inside the band beats the best by no more than chance.
  function noiseBand(bx, by) {
    if (!num(noiseFloor) || !bx.length) return [];
    var band = function (sign, extra) {
      return Object.assign({
        type: "scatter", mode: "lines", name: "noise floor ±σ", legendgroup: "noise", x: bx,
        y: by.map(function (y) { return y + sign * noiseFloor; }), line: { shape: "hv", width: 0 }, hoverinfo: "skip",
      }, extra);
    };
    return [band(-1, { showlegend: false }), band(1, { fill: "tonexty", fillcolor: "rgba(47, 133, 90, 0.15)" })];
  }

  function renderController() {
    if (!ctl.step.length) return;
    hide("controller-empty");
    var layout = baseLayout("update step", "entropy");
    layout.yaxis2 = {
      title: { text: "loss · baseline" }, overlaying: "y", side: "right", zeroline: false, automargin: true,
    };
    layout.margin.r = 52;
    var line = function (name, y, color, axis) {
      return {
        type: "scattergl", mode: "lines+markers", name: name, x: ctl.step.slice(), y: y.slice(), yaxis: axis,
        line: { color: color, width: 1.5 }, marker: { size: 3, color: color },
      };
    };
    plot(el.controller, [
      line("entropy", ctl.entropy, "#2f6ea8", "y"),
      line("loss", ctl.loss, "#c53030", "y2"),
      line("baseline", ctl.baseline, "#2f855a", "y2"),
    ], layout);
  }

  function renderPolicy() {
    if (!el.policy || !policy || !Array.isArray(policy.probs)) return;
    hide("policy-empty");
    var width = 0;
    policy.probs.forEach(function (row) { width = Math.max(width, Array.isArray(row) ? row.length : 0); });
    var z = [];
    var text = [];
    var labels = [];
    policy.probs.forEach(function (row, k) {
      var options = (policy.options && policy.options[k]) || [];
      var zr = [];
      var tr = [];
      for (var j = 0; j < width; j++) {
        var p = Array.isArray(row) && num(row[j]) ? row[j] : null;
        zr.push(p);
        tr.push(p === null ? "" : options[j] || "option " + j);
      }
      z.push(zr);
      text.push(tr);
      labels.push((policy.labels && policy.labels[k]) || "decision " + (k + 1));
    });
    var layout = baseLayout("option", "");
    layout.margin = { l: 110, r: 8, t: 8, b: 40 };
    layout.yaxis = { autorange: "reversed", tickfont: { size: 9 }, automargin: true };
    layout.xaxis = { title: { text: "option" }, dtick: 1 };
    plot(el.policy, [{
      // Plotly's "Blues" runs dark to light: reversed, the likeliest option is the darkest.
      type: "heatmap", z: z, y: labels, text: text, colorscale: "Blues", reversescale: true, zmin: 0, zmax: 1,
      hovertemplate: "%{y}<br>%{text}: %{z:.3f}<extra></extra>", colorbar: { thickness: 10 },
    }], layout);
    if (el.policyStep) el.policyStep.textContent = num(policy.step) ? "after update step " + policy.step : "";
  }

  // -- children table ------------------------------------------------------------------------
  function cell(tr, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function makeRow(c) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-architecture", String(c.architecture));
    var a = document.createElement("a");
    a.href = config.architecture_prefix + c.architecture;
    a.textContent = "#" + c.sample_index;
    cell(tr).appendChild(a);
    cell(tr, "run-status");
    var progress = document.createElement("div");
    progress.className = "progress";
    var bar = document.createElement("div");
    bar.className = "bar";
    bar.appendChild(document.createElement("span"));
    var label = document.createElement("span");
    label.className = "mono";
    progress.appendChild(bar);
    progress.appendChild(label);
    cell(tr, "epochs").appendChild(progress);
    cell(tr, "num reward");
    cell(tr, "num").textContent = num(c.params) ? c.params.toLocaleString() : "–";
    cell(tr, "num").textContent = num(c.mult_adds) ? c.mult_adds.toLocaleString() : "–";
    fillRow(tr, c);
    return tr;
  }

  function note(text) {
    var div = document.createElement("div");
    div.className = "child-note muted";
    if (text) div.textContent = text;
    return div;
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  // What _child_note.html writes under the status: stopped at / waiting at a rung, reused from.
  function childNotes(c) {
    var out = [];
    var epoch = num(c.epoch) ? c.epoch : "?";
    if (c.status === "stopped") {
      out.push(note("stopped after epoch " + epoch + " of " + (num(c.epochs) && c.epochs > 0 ? c.epochs : "?")));
    } else if (c.status === "waiting") {
      out.push(note("waiting for its decision at epoch " + epoch));
    }
    var origin = c.reused_from;
    if (origin && typeof origin === "object" && num(origin.architecture)) {
      var div = note();
      div.appendChild(document.createTextNode("reused from "));
      var label = num(origin.sample_index) ? "#" + origin.sample_index : "where it was measured";
      div.appendChild(link(config.architecture_prefix + origin.architecture, label));
      if (typeof origin.search_name === "string" && num(origin.search)) {
        div.appendChild(document.createTextNode(" of "));
        var other = link(config.search_prefix + origin.search, origin.search_name);
        other.className = "wrap";
        div.appendChild(other);
      }
      out.push(div);
    }
    return out;
  }

  // What _child_reward.html writes: the final reward, or a stopped child's rung value as such.
  function fillReward(td, c) {
    if (num(c.reward)) {
      td.textContent = fmt(c.reward);
      return;
    }
    var span = document.createElement("span");
    span.className = "muted";
    span.textContent = "–";
    if (num(c.rung_value)) {
      span.className = "rung-value muted";
      span.title = "validation accuracy after epoch " + (num(c.epoch) ? c.epoch : "?") +
        ", where early stopping stopped it: not a final reward";
      span.textContent = "rung value " + fmt(c.rung_value);
    }
    td.replaceChildren(span);
  }

  function fillRow(tr, c) {
    var status = tr.querySelector(".run-status");
    if (status) {
      status.replaceChildren();
      var badge = document.createElement("span");
      badge.className = c.status ? "badge " + c.status : "muted";
      badge.textContent = c.status || "–";
      status.appendChild(badge);
      childNotes(c).forEach(function (n) { status.appendChild(n); });
    }
    var epochs = tr.querySelector(".epochs");
    if (epochs) {
      var total = num(c.epochs) && c.epochs > 0 ? c.epochs : null;
      var done = num(c.epoch) ? c.epoch : 0;
      var span = epochs.querySelector(".bar > span");
      if (span) span.style.width = (total ? Math.min(100, Math.round((100 * done) / total)) : 0) + "%";
      var label = epochs.querySelector(".mono");
      if (label) label.textContent = done + "/" + (total || "?");
    }
    var reward = tr.querySelector(".reward");
    if (reward) fillReward(reward, c);
  }

  function rowOf(archId) {
    return el.tbody ? el.tbody.querySelector('tr[data-architecture="' + Number(archId) + '"]') : null;
  }

  // Only the first page of the table is live: it shows the newest architectures.
  function upsertChild(archId, fields, create) {
    if (!config.live_table || !el.tbody) return;
    var c = children.get(archId);
    if (!c) {
      if (!create) return; // older than the rows shown
      c = {
        architecture: archId, status: "queued", epoch: 0, epochs: config.epochs, reward: null, rung_value: null,
        reused_from: null,
      };
      children.set(archId, c);
    }
    Object.keys(fields).forEach(function (k) {
      if (fields[k] !== undefined) c[k] = fields[k];
    });
    var row = rowOf(archId);
    if (row) fillRow(row, c);
    else if (create) insertRow(makeRow(c), c.sample_index);
  }

  function insertRow(tr, index) {
    var rows = el.tbody.querySelectorAll("tr[data-architecture]");
    var before = null;
    for (var i = 0; i < rows.length; i++) {
      var other = children.get(Number(rows[i].getAttribute("data-architecture")));
      if (other && num(other.sample_index) && other.sample_index < index) {
        before = rows[i];
        break;
      }
    }
    el.tbody.insertBefore(tr, before);
    var all = el.tbody.querySelectorAll("tr[data-architecture]");
    for (var k = all.length - 1; k >= config.per_page; k--) all[k].remove(); // newest page only
    if (el.childrenEmpty) el.childrenEmpty.hidden = true;
  }

  function loadChildren(list) {
    list.forEach(function (c) {
      sampleIndex.set(c.architecture, c.sample_index);
    });
    if (!config.live_table || !el.tbody) return;
    children.clear();
    list.forEach(function (c) {
      children.set(c.architecture, c);
    });
    el.tbody.replaceChildren.apply(el.tbody, list.map(makeRow));
    if (el.childrenEmpty) el.childrenEmpty.hidden = list.length > 0;
  }

  // -- early stopping's decisions per rung (Search.rung_counts, with each search.status) ----
  function applyRungs(rungs) {
    var body = document.querySelector("#rungs tbody");
    if (!body) return;
    body.replaceChildren.apply(body, rungs.map(function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-epoch", String(r.epoch));
      [r.epoch, r.reached, r.continued, r.stopped].forEach(function (value) {
        var td = document.createElement("td");
        td.className = "num";
        td.textContent = String(value);
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  // -- search status: badge, tiles, buttons, best ----------------------------------------------
  // s: Search.to_dict() less its spec (a search.status event's `search`, chart.json's `status`).
  function applyStatus(s) {
    if (!s || typeof s.status !== "string") return;
    el.badge.className = "badge " + s.status;
    el.badge.textContent = s.status;
    el.badge.setAttribute("data-search-status", s.status);
    var total = s.children_total || 0;
    var pct = total ? Math.round((100 * (s.children_done || 0)) / total) : 0;
    el.progress.textContent = pct + "%";
    el.progressBar.style.width = pct + "%";
    el.done.textContent = (s.children_done || 0) + " / " + total;
    el.sampled.textContent = String(s.children_sampled || 0);
    el.failed.textContent = (s.children_failed || 0) + " · " + (s.children_reused || 0);
    if (el.stopped) el.stopped.textContent = String(s.children_stopped || 0);
    if (el.epochs) el.epochs.textContent = (s.epochs_trained || 0) + " · " + (s.epochs_saved || 0);
    el.best.textContent = fmt(s.best_reward);
    if (num(s.noise_floor) && s.noise_floor !== noiseFloor) {
      noiseFloor = s.noise_floor;
      if (el.noiseFloor) el.noiseFloor.textContent = fmt(noiseFloor);
      schedule("reward");
    }
    document.querySelectorAll("#search-actions button[data-action]").forEach(function (button) {
      var allowed = (config.transitions[button.getAttribute("data-action")] || []).indexOf(s.status) >= 0;
      button.disabled = !allowed;
      if (allowed) button.removeAttribute("title");
      else button.title = "not possible while " + s.status;
    });
    if (s.best_architecture != null) {
      setBestTitle(s.best_architecture, s.best_reward);
      loadBest(String(s.best_architecture));
    }
  }

  function setBestTitle(archId, reward) {
    if (!el.bestTitle) return;
    var a = document.createElement("a");
    a.id = "best-link";
    a.href = config.architecture_prefix + archId;
    var index = sampleIndex.get(Number(archId));
    a.textContent = index != null ? "#" + index : "view";
    var muted = document.createElement("span");
    muted.className = "muted";
    muted.textContent = "reward ";
    var r = document.createElement("span");
    r.id = "best-reward";
    r.textContent = fmt(reward);
    muted.appendChild(r);
    el.bestTitle.replaceChildren(document.createTextNode("· "), a, document.createTextNode(" "), muted);
  }

  // Cells come from /architectures/<id>/cells.svg (escaped by the renderer), parsed as XML and
  // imported as nodes; anything scriptable is dropped all the same.
  function loadBest(archId) {
    if (archId === bestShown) {
      bestLoading = null; // back to the one shown: drop what is on its way
      return;
    }
    if (archId === bestLoading) return;
    bestLoading = archId;
    var placeholder = el.bestCells.querySelector(".empty");
    if (placeholder) placeholder.textContent = "Drawing the cells…";
    fetch(config.architecture_prefix + archId + "/cells.svg", { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("cells.svg: HTTP " + response.status);
        return response.text();
      })
      .then(function (text) {
        if (bestLoading !== archId) return; // a newer best is on its way
        var doc = new DOMParser().parseFromString(text, "image/svg+xml");
        var root = doc.documentElement;
        if (!root || root.nodeName.toLowerCase() !== "svg" || doc.querySelector("parsererror")) return;
        root.querySelectorAll("script, foreignObject").forEach(function (n) { n.remove(); });
        [root].concat(Array.prototype.slice.call(root.querySelectorAll("*"))).forEach(function (n) {
          Array.prototype.slice.call(n.attributes).forEach(function (attr) {
            if (/^on/i.test(attr.name) || /javascript:/i.test(attr.value)) n.removeAttribute(attr.name);
          });
        });
        el.bestCells.replaceChildren(document.importNode(root, true));
        el.bestCells.setAttribute("data-architecture", archId);
        bestShown = archId;
        bestLoading = null;
      })
      .catch(function (err) {
        if (bestLoading === archId) bestLoading = null; // tried again on the next status event
        console.warn(err); // eslint-disable-line no-console
      });
  }

  // -- events --------------------------------------------------------------------------------
  // Events carry the models' to_dict() (webapp/live/events.py): msg.architecture, msg.run
  // (a ChildRun, its `epochs` cut to the newest), msg.search; controller.update is flat.
  function newestEpoch(list) {
    var last = Array.isArray(list) && list.length ? list[list.length - 1] : null;
    return last && typeof last === "object" ? last : {};
  }

  function apply(msg) {
    switch (msg.type) {
      case "architecture.sampled": {
        var a = msg.architecture || {};
        sampleIndex.set(a.id, a.sample_index);
        // The event names where a reused child was measured (msg.reused_from, as the page
        // does); an older event has only the id, and the row may already hold it in full.
        var origin = msg.reused_from && typeof msg.reused_from === "object" ? msg.reused_from : undefined;
        if (!origin && num(a.reused_from)) {
          origin = { architecture: a.reused_from };
          var known = children.get(a.id);
          if (known && known.reused_from && known.reused_from.architecture === a.reused_from) origin = undefined;
        }
        upsertChild(
          a.id, { sample_index: a.sample_index, params: a.params, mult_adds: a.mult_adds, reused_from: origin }, true
        );
        break;
      }
      case "child.progress": {
        var run = msg.run || {};
        var e = newestEpoch(run.epochs);
        upsertChild(run.architecture, {
          status: run.status || "running",
          epoch: num(e.epoch) ? e.epoch : undefined,
          epochs: num(e.epochs) ? e.epochs : undefined,
        });
        break;
      }
      case "child.finished": {
        var done = msg.run || {};
        var id = done.architecture;
        sampleIndex.set(id, msg.sample_index);
        // A stopped child's reward is its value at the rung it reached: shown as that, not as a reward.
        var isStopped = done.status === "stopped";
        var fields = { status: done.status, reward: isStopped ? null : done.reward };
        fields.rung_value = isStopped ? done.reward : null;
        var last = newestEpoch(done.epochs);
        var c = children.get(id);
        if (num(last.epoch)) {
          fields.epoch = last.epoch;
          if (num(last.epochs)) fields.epochs = last.epochs;
        } else if (done.status === "succeeded" && c && num(c.epochs)) {
          fields.epoch = c.epochs;
        }
        upsertChild(id, fields);
        if (REWARDED.indexOf(done.status) >= 0 && num(done.reward)) addReward(id, msg.sample_index, done.reward);
        else if (isStopped && num(done.reward)) addStopped(id, msg.sample_index, done.reward);
        break;
      }
      case "controller.update":
        if (!config.rl) break;
        ctl.step.push(msg.step);
        ctl.loss.push(msg.loss);
        ctl.entropy.push(msg.entropy);
        ctl.baseline.push(msg.baseline);
        schedule("controller");
        if (policy && Array.isArray(msg.policy) && msg.policy.length) {
          policy.probs = msg.policy;
          policy.step = msg.step;
          schedule("policy");
        }
        break;
      case "search.status":
        applyStatus(msg.search);
        if (Array.isArray(msg.rungs)) applyRungs(msg.rungs);
        break;
      case "selection.progress": {
        var sel = msg.selection || {};
        // A noise floor under way; its value comes with the search.status event that ends it.
        if (sel.kind === "noise_floor" && noiseFloor === null && el.noiseFloor) {
          el.noiseFloor.textContent = sel.status === "queued" || sel.status === "running" ? "measuring…" : "–";
        }
        break;
      }
      default:
        break; // job.progress and future types: nothing on this page
    }
  }

  function setLive(text) {
    if (el.live) {
      el.live.textContent = text;
      el.live.classList.toggle("on", text === "live");
    }
  }

  // -- page load -----------------------------------------------------------------------------
  function load(state) {
    var r = state.rewards;
    rewards.x = r.x.slice();
    rewards.y = r.y.slice();
    rewards.plotted = new Set(r.recent || []);
    rewards.maxX = r.x.length ? r.x[r.x.length - 1] : null; // sorted by sample index
    var st = r.stopped || { x: [], y: [] };
    stopped.x = st.x.slice();
    stopped.y = st.y.slice();
    if (st.x.length && (rewards.maxX === null || st.x[st.x.length - 1] > rewards.maxX)) {
      rewards.maxX = st.x[st.x.length - 1];
    }
    best.x = r.best.x.slice();
    best.y = r.best.y.slice();
    avg.window = r.moving_average.window;
    avg.x = r.moving_average.x.slice();
    avg.y = r.moving_average.y.slice();
    avg.tail = r.moving_average.tail.slice();
    if (state.controller) {
      ctl.step = state.controller.step;
      ctl.loss = state.controller.loss;
      ctl.entropy = state.controller.entropy;
      ctl.baseline = state.controller.baseline;
    }
    policy = state.policy;
    if (state.status && state.status.best_architecture != null && state.best_sample_index != null) {
      sampleIndex.set(state.status.best_architecture, state.best_sample_index);
    }
    loadChildren(state.children || []);
    applyStatus(state.status);
    dirty = { reward: true, controller: !!state.controller, policy: !!(policy && policy.probs) };
    renderAll();
  }

  function start(delay) {
    fetch(config.chart_url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("chart.json: HTTP " + response.status);
        return response.json();
      })
      .then(function (state) {
        load(state);
        window.NasLive.connect(config.ws_path, { after: state.last_seq, onEvent: apply, onState: setLive });
      })
      .catch(function (err) {
        console.warn(err); // eslint-disable-line no-console
        setLive("reconnecting…");
        setTimeout(function () { start(Math.min(delay * 2, 30000)); }, delay);
      });
  }

  start(1000);
})();
