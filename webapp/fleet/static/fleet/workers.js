// The staff workers page: fetch /staff/workers.json every few seconds and redraw the
// counters and the table. Text goes in through textContent only (host and search names
// are not trusted); links only to the URLs the server built.
(function () {
  "use strict";
  var script = document.currentScript;
  var url = script.dataset.url;
  var every = Math.max(1, Number(script.dataset.every) || 5) * 1000;

  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (var key in attrs || {}) node.setAttribute(key, attrs[key]);
    return node;
  }

  function link(href, text) {
    return href ? el("a", text, { href: href }) : document.createTextNode(text);
  }

  function dig(data, path) {
    return path.split(".").reduce(function (obj, key) { return obj == null ? obj : obj[key]; }, data);
  }

  function appendTask(parent, task) {
    parent.appendChild(link(task.url, task.label));
    if (task.architecture && task.url !== task.architecture.url) {
      parent.appendChild(document.createTextNode(" · "));
      parent.appendChild(link(task.architecture.url, "#" + task.architecture.sample_index));
    }
    if (task.search) {
      parent.appendChild(document.createTextNode(" · search "));
      parent.appendChild(link(task.search.url, task.search.name));
    }
    if (task.since_s !== null && task.since_s !== undefined) {
      parent.appendChild(document.createTextNode(" "));
      parent.appendChild(el("span", "for " + task.since_s + " s", { class: "muted" }));
    }
  }

  // One line per process of the worker: which one (pool number, pid), then its task or "idle".
  function processesCell(processes) {
    var td = el("td", null, { class: "wrap" });
    if (!processes.length) {
      td.appendChild(el("span", "idle", { class: "muted" }));
      return td;
    }
    processes.forEach(function (p) {
      var line = el("div", null, { class: "process" });
      line.appendChild(el("span", p.label, { class: "muted mono", title: "process " + p.identity }));
      line.appendChild(document.createTextNode(" "));
      if (p.task) appendTask(line, p.task);
      else line.appendChild(el("span", "idle", { class: "muted" }));
      td.appendChild(line);
    });
    return td;
  }

  function row(w) {
    var tr = el("tr");
    tr.appendChild(el("td", w.hostname, { class: "name mono", title: "pid " + (w.pid || "?") + ", started " + w.started_at }));
    tr.appendChild(el("td", w.queues.join(", "), { class: "wrap" }));
    tr.appendChild(el("td", w.device || "–", { class: "wrap" }));
    var status = el("td");
    status.appendChild(el("span", w.status, { class: "badge " + w.badge }));
    status.appendChild(document.createTextNode(w.busy && w.status === "online" ? " busy " : " "));
    status.appendChild(el("span", "seen " + w.last_seen_s + " s ago", { class: "muted" }));
    tr.appendChild(status);
    tr.appendChild(processesCell(w.processes));
    tr.appendChild(el("td", w.tasks_done, { class: "num" }));
    return tr;
  }

  function draw(data) {
    document.querySelectorAll("[data-stat]").forEach(function (node) {
      node.textContent = dig(data, node.dataset.stat);
    });
    var body = document.querySelector("#fleet-workers tbody");
    if (data.workers.length) {
      var rows = document.createDocumentFragment();
      data.workers.forEach(function (w) { rows.appendChild(row(w)); });
      body.replaceChildren(rows);
    }
    var updated = document.getElementById("fleet-updated");
    updated.textContent = "as of " + data.generated_at.slice(11, 19) + " UTC";
    updated.title = data.generated_at;
  }

  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(draw)
      .catch(function () { document.getElementById("fleet-updated").textContent = "not refreshed (retrying)"; })
      .finally(function () { setTimeout(refresh, every); });
  }

  setTimeout(refresh, every);
})();
