// Draws the dashboard's charts from the JSON the server embedded in the page.
// Served from this origin (no inline script, no CDN); the numbers are also in the page's tables.
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || typeof window.Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent || "{}");
  var Chart = window.Chart;
  var ink = "#1b1b1f", accent = "#0b4f8a", orange = "#b34700", green = "#1d5e2a", grid = "#d9dde3";
  Chart.defaults.color = ink;
  Chart.defaults.font.family = "system-ui, 'DejaVu Sans', sans-serif";
  Chart.defaults.animation = false;          // deterministic, and kinder to reduced-motion users
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.scale.grid.color = grid;

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    new Chart(canvas, config);
    canvas.setAttribute("data-rendered", "true");
  }

  if (data.history) {
    var h = data.history;
    var upper = h.ndcg.map(function (v, i) { return h.sd[i] === null ? null : v + h.sd[i]; });
    var lower = h.ndcg.map(function (v, i) { return h.sd[i] === null ? null : Math.max(0, v - h.sd[i]); });
    draw("chart-history", {
      type: "line",
      data: {
        labels: h.labels,
        datasets: [
          { label: "NDCG@10 + sd", data: upper, borderColor: "rgba(11,79,138,0.25)", backgroundColor: "rgba(11,79,138,0.12)", pointRadius: 0, fill: "+1" },
          { label: "NDCG@10 − sd", data: lower, borderColor: "rgba(11,79,138,0.25)", pointRadius: 0, fill: false },
          { label: "NDCG@10 (mean)", data: h.ndcg, borderColor: accent, backgroundColor: accent, pointRadius: 5, borderWidth: 3 }
        ]
      },
      options: {
        plugins: {
          legend: { labels: { filter: function (item) { return item.datasetIndex === 2; } } },
          tooltip: { callbacks: { afterLabel: function (ctx) { return "model: " + h.models[ctx.dataIndex]; } } }
        },
        scales: { y: { beginAtZero: true, suggestedMax: 0.5, title: { display: true, text: "NDCG@10" } },
                  x: { offset: true, ticks: { maxRotation: 45, autoSkip: true } } }
      }
    });
  }

  if (data.feedback) {
    var f = data.feedback;
    draw("chart-feedback", {
      data: {
        labels: f.labels,
        datasets: [
          { type: "bar", label: "Ratings", data: f.count, backgroundColor: accent, yAxisID: "y", order: 2 },
          { type: "line", label: "Mean score", data: f.mean, borderColor: orange, backgroundColor: orange, yAxisID: "y1", spanGaps: false, pointRadius: 5, borderWidth: 2, order: 1,
            pointBorderColor: "#ffffff", pointBorderWidth: 1.5 }
        ]
      },
      options: {
        scales: {
          y: { beginAtZero: true, title: { display: true, text: "ratings" }, ticks: { precision: 0 } },
          y1: { position: "right", min: 0, max: 5, title: { display: true, text: "mean score" }, grid: { drawOnChartArea: false } },
          x: { offset: true, ticks: { maxRotation: 45, autoSkip: true } }
        }
      }
    });
    draw("chart-like", {
      type: "line",
      data: {
        labels: f.labels,
        datasets: [{ label: "Like-rate (score ≥ 4)", data: f.like_rate, borderColor: green, backgroundColor: green, pointRadius: 4, borderWidth: 2, spanGaps: false }]
      },
      options: {
        scales: {
          y: { min: 0, max: 1, title: { display: true, text: "share of ratings ≥ 4" },
               ticks: { callback: function (v) { return Math.round(v * 100) + "%"; } } },
          x: { offset: true, ticks: { maxRotation: 45, autoSkip: true } }
        }
      }
    });
  }
}());
