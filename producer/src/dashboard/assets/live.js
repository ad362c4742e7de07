// tributary dashboard: live numbers (Server-Sent Events from /events), the throughput
// chart (uPlot, history from /throughput.json) and a job's rate chart (from
// /jobs/{id}/progress.json). Pages work without it; this only updates.
(function () {
  "use strict";
  var chartEl = document.getElementById("chart");
  var span = chartEl ? Number(chartEl.dataset.span || 900) : 900;
  var data = [[], [], []];
  var plot = null;

  function push(p) {
    data[0].push(p.t); data[1].push(p.fetched); data[2].push(p.aggregated);
    while (data[0].length && data[0][0] < p.t - span) { data[0].shift(); data[1].shift(); data[2].shift(); }
  }

  if (chartEl && window.uPlot) {
    fetch("/throughput.json", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (j) {
        (j.points || []).forEach(push);
        plot = new uPlot({
          width: Math.min(chartEl.clientWidth || 900, 1150), height: 220,
          series: [{}, { label: "fetched /s", stroke: "#3b6fd8" }, { label: "aggregated /s", stroke: "#2e9d5b" }],
          axes: [{}, { label: "URLs/s" }]
        }, data, chartEl);
      });
  }

  // The job page's rate chart: tasks finished (aggregated or dead) per second between
  // the job's progress samples (/jobs/{id}/progress.json), then from each snapshot.
  var jobChartEl = document.getElementById("job-chart");
  var jobData = [[], []];
  var jobPlot = null;
  var lastPoint = null;

  function pushProgress(p) {
    var n = p.aggregated + p.dead;
    if (lastPoint && p.t <= lastPoint.t) { return; }
    if (lastPoint) { jobData[0].push(p.t); jobData[1].push((n - lastPoint.n) / (p.t - lastPoint.t)); }
    lastPoint = { t: p.t, n: n };
  }

  if (jobChartEl && window.uPlot) {
    fetch("/jobs/" + jobChartEl.dataset.job + "/progress.json", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (j) {
        (j.points || []).forEach(pushProgress);
        jobPlot = new uPlot({
          width: Math.min(jobChartEl.clientWidth || 900, 1150), height: 200,
          series: [{}, { label: "tasks finished /s", stroke: "#2e9d5b" }],
          axes: [{}, { label: "tasks/s" }]
        }, jobData, jobChartEl);
        jobChartEl.dataset.points = String(jobData[0].length);
      });
  }

  function updateJobChart(s) {
    if (!jobPlot) { return; }
    (s.jobs || []).forEach(function (j) {
      if (j.job_id !== jobChartEl.dataset.job) { return; }
      if (lastPoint && j.aggregated + j.dead === lastPoint.n) { return; }
      pushProgress({ t: s.at_ms / 1000, aggregated: j.aggregated, dead: j.dead });
      jobPlot.setData(jobData);
      jobChartEl.dataset.points = String(jobData[0].length);
    });
  }

  function setText(el, text) { if (el && el.textContent !== String(text)) { el.textContent = text; } }

  function updateBar(bar, j) {
    if (!bar) { return; }
    var total = Math.max(j.total, 1);
    var parts = { ok: j.aggregated, dead: j.dead, retrying: j.retrying };
    Object.keys(parts).forEach(function (k) {
      var span = bar.querySelector("." + k);
      if (span) { span.style.width = Math.min(100, parts[k] / total * 100).toFixed(2) + "%"; }
    });
  }

  function updateJob(j) {
    document.querySelectorAll('[data-job="' + j.job_id + '"]').forEach(function (row) {
      updateBar(row.querySelector(".bar"), j);
      setText(row.querySelector(".counts"), j.aggregated + " / " + j.total + (j.dead > 0 ? ", " + j.dead + " dead" : ""));
      var state = row.querySelector(".state");
      if (state) { setText(state, j.state); state.className = "state " + j.state; }
      row.querySelectorAll("[data-counter]").forEach(function (dd) {
        var v = j[dd.dataset.counter]; if (v !== undefined) { setText(dd, v); }
      });
    });
  }

  if (!window.EventSource) { return; }
  var events = new EventSource("/events");
  // A page left for another must give its stream back at once: browsers allow a few
  // connections per server, and a page kept for "back" would hold one. Coming back to a
  // kept page shows it anew.
  window.addEventListener("pagehide", function () { events.close(); });
  window.addEventListener("pageshow", function (ev) { if (ev.persisted) { window.location.reload(); } });
  events.addEventListener("snapshot", function (ev) {
    var s = JSON.parse(ev.data);
    (s.queues || []).forEach(function (q) {
      document.querySelectorAll('td[data-queue="' + q.queue + '"]').forEach(function (cell) {
        var v = q[cell.dataset.field];
        if (v === null || v === undefined) { return; }
        setText(cell, cell.dataset.field.indexOf("rate") === 0 ? v.toFixed(1) : v);
      });
    });
    // A snapshot sampled before this page was rendered is older than what the page shows.
    if (s.at_ms >= Number(document.body.dataset.renderedMs || 0)) { (s.jobs || []).forEach(updateJob); updateJobChart(s); }
    if (s.rate) { push(s.rate); if (plot) { plot.setData(data); } }
    document.body.dataset.live = "on";
  });
})();
