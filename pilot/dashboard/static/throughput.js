// pilot dashboard: the throughput plots (uPlot, vendored: static/uPlot.iife.min.js, MIT, static/uPlot.LICENSE).
// Data from /api/throughput: series.x (epoch seconds, one per day) and per cluster ns per day and cumulative ns.
// Hover shows the values (uPlot's legend); drag across a plot to pick a time range, double-click to reset.
(function () {
  "use strict";
  var plots = [];
  var drawn = null;   // the series drawn now: a poll that brings the same data keeps the plots (and the range picked)
  var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

  function opts(title, yLabel, width) {
    return {title: title, width: width, height: 300, scales: {x: {time: true}},
            axes: [{}, {label: yLabel}], series: [{label: "day"}], cursor: {drag: {x: true, y: false}}};
  }

  function build(id, title, key, series) {
    var el = document.getElementById(id);
    if (!el || typeof uPlot === "undefined") { return null; }
    var names = Object.keys(series.clusters);
    var o = opts(title, "ns", Math.max(320, el.clientWidth || 800));
    var data = [series.x];
    names.forEach(function (n, i) {
      o.series.push({label: n, stroke: COLOURS[i % COLOURS.length], width: 2,
                     value: function (u, v) { return v == null ? "-" : v.toFixed(2) + " ns"; }});
      data.push(series.clusters[n][key]);
    });
    el.textContent = "";
    el.setAttribute("data-series", String(names.length));
    return new uPlot(o, data, el);
  }

  function draw(series) {
    var key = JSON.stringify(series);
    if (key === drawn) { return; }
    drawn = key;
    plots.forEach(function (p) { p.destroy(); });
    plots = [build("plot-daily", "ns of trajectory per day", "ns", series),
             build("plot-cumulative", "cumulative trajectory", "cumulative", series)].filter(Boolean);
  }

  function load() {
    fetch("/api/throughput", {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (doc) { if (doc.available) { draw(doc.series); } })
      .catch(function () {});
  }
  document.addEventListener("DOMContentLoaded", load);
  document.addEventListener("pilot:live", function (e) { if (e.detail && e.detail.available) { draw(e.detail.series); } });
})();
