// Inline SVG charts drawn from API data: a line chart (the loss curve) and grouped bars with confidence
// intervals (pass rates). Colours come from classes in studio.css (no inline styles: the CSP forbids them);
// each mark carries a <title>, and the chart an aria-label, so both read without the picture.

const NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

const round = (v, digits = 3) => Number(v.toPrecision(digits)).toLocaleString();

// series: [{name, points: [[x, y], ...]}]; the x axis runs from the smallest x to `xMax` (or the largest).
export function lineChart(series, { title, xLabel = "step", yLabel = "loss", xMax, width = 640, height = 260 } = {}) {
  const pad = { left: 52, right: 16, top: 16, bottom: 40 };
  const all = series.flatMap((s) => s.points);
  const x0 = Math.min(...all.map((p) => p[0]), 1);
  const x1 = Math.max(xMax || 0, ...all.map((p) => p[0]), x0 + 1);
  const y1 = niceMax(Math.max(...all.map((p) => p[1]), 0));
  const w = width - pad.left - pad.right;
  const hgt = height - pad.top - pad.bottom;
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * w;
  const sy = (y) => pad.top + hgt - (y / y1) * hgt;
  const chart = svg("svg", {
    class: "chart line-chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": title || `${yLabel} by ${xLabel}`,
  }, svg("title", {}, title || `${yLabel} by ${xLabel}`));
  for (let i = 0; i <= 4; i += 1) {
    const y = (y1 * i) / 4;
    chart.append(svg("line", { class: "grid", x1: pad.left, x2: pad.left + w, y1: sy(y), y2: sy(y) }),
      svg("text", { class: "tick", x: pad.left - 6, y: sy(y) + 4, "text-anchor": "end" }, round(y, 2)));
  }
  for (const x of [x0, Math.round((x0 + x1) / 2), x1]) {
    chart.append(svg("text", { class: "tick", x: sx(x), y: pad.top + hgt + 16, "text-anchor": "middle" }, x));
  }
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left + w, y1: pad.top + hgt, y2: pad.top + hgt }),
    svg("text", { class: "label", x: pad.left + w / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  series.forEach((s, n) => {
    if (!s.points.length) return;
    const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    chart.append(svg("path", { class: `series s${n}`, d, "data-series": s.name }));
    for (const [x, y] of s.points) {
      chart.append(svg("circle", { class: `point s${n}`, cx: sx(x), cy: sy(y), r: 3 },
        svg("title", {}, `${s.name}, ${xLabel} ${x}: ${round(y, 4)}`)));
    }
  });
  return chart;
}

const percent = (v) => `${Math.round(100 * v)}%`;

// groups: [{name, bars: [{name, value, low, high}]}] with values in 0..1; one colour per bar position.
export function barChart(groups, { title = "Pass rate", width = 720, height = 280 } = {}) {
  const pad = { left: 44, right: 12, top: 16, bottom: 44 };
  const w = width - pad.left - pad.right;
  const hgt = height - pad.top - pad.bottom;
  const sy = (v) => pad.top + hgt - v * hgt;
  const perGroup = Math.max(1, ...groups.map((g) => g.bars.length));
  const groupWidth = w / Math.max(1, groups.length);
  const barWidth = Math.min(48, (groupWidth * 0.8) / perGroup);
  const chart = svg("svg", { class: "chart bar-chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title },
    svg("title", {}, title));
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { class: "grid", x1: pad.left, x2: pad.left + w, y1: sy(v), y2: sy(v) }),
      svg("text", { class: "tick", x: pad.left - 6, y: sy(v) + 4, "text-anchor": "end" }, percent(v)));
  }
  groups.forEach((group, g) => {
    const start = pad.left + g * groupWidth + (groupWidth - barWidth * group.bars.length) / 2;
    group.bars.forEach((bar, b) => {
      const x = start + b * barWidth;
      const label = `${bar.name} · ${group.name}: ${percent(bar.value)} (95% CI ${percent(bar.low)}–${percent(bar.high)})`;
      const mid = x + barWidth / 2;
      chart.append(svg("g", { class: "bar-group", "data-subject": bar.name, "data-criterion": group.name },
        svg("title", {}, label),
        svg("rect", { class: `bar s${b}`, x: x + 2, y: sy(bar.value), width: barWidth - 4, height: Math.max(0, sy(0) - sy(bar.value)) }),
        svg("line", { class: "ci", x1: mid, x2: mid, y1: sy(bar.high), y2: sy(bar.low) }),
        svg("line", { class: "ci", x1: mid - 5, x2: mid + 5, y1: sy(bar.high), y2: sy(bar.high) }),
        svg("line", { class: "ci", x1: mid - 5, x2: mid + 5, y1: sy(bar.low), y2: sy(bar.low) })));
    });
    chart.append(svg("text", { class: "label", x: pad.left + (g + 0.5) * groupWidth, y: pad.top + hgt + 18, "text-anchor": "middle" },
      group.name.length > 28 ? `${group.name.slice(0, 27)}…` : group.name));
  });
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left + w, y1: sy(0), y2: sy(0) }));
  return chart;
}

// A legend for the colour classes the charts use (s0, s1, ...).
export function legend(names) {
  const list = document.createElement("ul");
  list.className = "legend";
  names.forEach((name, n) => {
    const item = document.createElement("li");
    item.append(svg("svg", { width: 12, height: 12, "aria-hidden": "true" }, svg("rect", { class: `bar s${n}`, width: 12, height: 12 })), ` ${name}`);
    list.append(item);
  });
  return list;
}
