// kiln's review console: live updates, and nothing else. The pages work without it.
// Everything a job says is put in the page as text (textContent), never as markup.
"use strict";

(function () {
  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function jobRow(job) {
    var tr = document.createElement("tr");
    tr.dataset.id = job.id;
    var link = document.createElement("a");
    link.href = "/console/jobs/" + encodeURIComponent(job.id);
    var code = document.createElement("code");
    code.textContent = job.id;
    link.appendChild(code);
    cell(tr, "").appendChild(link);
    var badge = document.createElement("span");
    badge.className = "state s-" + job.state.replace(/[^a-z_]/g, "");
    badge.textContent = job.state;
    cell(tr, "").appendChild(badge);
    cell(tr, job.doing);
    cell(tr, job.repo, "path");
    cell(tr, job.branch, "path");
    cell(tr, job.age);
    return tr;
  }

  // The jobs table: redrawn from every update.
  function liveList(body) {
    var source = new EventSource(body.dataset.events);
    source.addEventListener("jobs", function (event) {
      var jobs = JSON.parse(event.data).jobs;
      var rows = document.createDocumentFragment();
      jobs.forEach(function (job) { rows.appendChild(jobRow(job)); });
      body.replaceChildren(rows);
      var empty = document.getElementById("empty");
      if (empty) empty.hidden = jobs.length > 0;
    });
  }

  // A job's page: its state and stage follow the job; when it moves to another state the page
  // is read again, to show what the new state brought (a report, an escalation, a decision).
  function liveJob(view) {
    var id = view.dataset.job;
    var source = new EventSource("/console/events");
    source.addEventListener("jobs", function (event) {
      var jobs = JSON.parse(event.data).jobs;
      for (var i = 0; i < jobs.length; i++) {
        if (jobs[i].id !== id) continue;
        var state = document.getElementById("job-state");
        var doing = document.getElementById("job-doing");
        if (jobs[i].state !== view.dataset.state) {
          source.close();
          window.location.reload();
          return;
        }
        if (state) state.textContent = jobs[i].state;
        if (doing) doing.textContent = jobs[i].doing;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var body = document.getElementById("jobs");
    if (body && body.dataset.events) liveList(body);
    var view = document.getElementById("job");
    if (view && view.dataset.job) liveJob(view);
  });
})();
