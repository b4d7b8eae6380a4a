// modelpress dashboard: draws the charts of a page with Apache ECharts. Each chart's option
// is built by the server and sits in a <script type="application/json"> block named by the
// chart element's data-chart attribute; this file only draws it (the CSP runs no inline
// script). Content that htmx swaps in (a job's page while it runs) is drawn when it settles.
"use strict";

(function () {
  // [x, low, high] -> a vertical interval with caps: the paired 95% interval of a speed-up.
  function errorBar(params, api) {
    const x = api.value(0);
    const low = api.coord([x, api.value(1)]);
    const high = api.coord([x, api.value(2)]);
    const half = Math.max(4, api.size([1, 0])[0] * 0.12);
    const style = { stroke: "#1b1f24", lineWidth: 2 };
    const line = (x1, y1, x2, y2) => ({ type: "line", shape: { x1, y1, x2, y2 }, style });
    return {
      type: "group",
      children: [
        line(low[0], low[1], high[0], high[1]),
        line(low[0] - half, low[1], low[0] + half, low[1]),
        line(high[0] - half, high[1], high[0] + half, high[1]),
      ],
    };
  }
  const RENDERERS = { errorbar: errorBar };

  function drawAll() {
    if (!window.echarts) return;
    document.querySelectorAll("[data-chart]").forEach((element) => {
      if (window.echarts.getInstanceByDom(element)) return;
      const source = document.getElementById(element.dataset.chart);
      if (!source) return;
      const option = JSON.parse(source.textContent);
      (option.series || []).forEach((series) => {
        if (series.type === "custom" && RENDERERS[series.renderItem]) {
          series.renderItem = RENDERERS[series.renderItem];
        }
      });
      const chart = window.echarts.init(element, null, { renderer: "canvas" });
      chart.setOption(option);
      element.dataset.drawn = "true";
    });
  }

  function resizeAll() {
    document.querySelectorAll("[data-chart]").forEach((element) => {
      const chart = window.echarts && window.echarts.getInstanceByDom(element);
      if (chart) chart.resize();
    });
  }

  // A chart whose element htmx removes is disposed, so nothing keeps its canvas alive.
  document.addEventListener("htmx:beforeCleanupElement", (event) => {
    const chart = window.echarts && window.echarts.getInstanceByDom(event.target);
    if (chart) chart.dispose();
  });
  document.addEventListener("htmx:afterSettle", drawAll);
  window.addEventListener("resize", resizeAll);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
