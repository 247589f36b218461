// Small inline-SVG charts: stacked bars over time buckets, with axes, a legend and native tooltips.

import { fmtUsd } from "./costs.js";
import { fmtCompact, fmtInt, h, s } from "./dom.js";

export const PALETTE = ["#3b5bdb", "#f08c00", "#2f9e44", "#e03131", "#7048e8", "#1098ad", "#d6336c", "#5c940d",
  "#9c36b5", "#0b7285"];
export const OTHER_COLOR = "#adb5bd";

const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;

export function bucketMs(bucket) {
  return bucket === "day" ? DAY : HOUR;
}

/** The start of the bucket holding ``ms`` (UTC hours and days, as the API's rollup buckets). */
export function floorBucket(ms, bucket) {
  const size = bucketMs(bucket);
  return Math.floor(ms / size) * size;
}

/** Every bucket start from ``sinceMs`` to ``untilMs`` (both included). */
export function bucketAxis(sinceMs, untilMs, bucket) {
  const size = bucketMs(bucket);
  const axis = [];
  for (let t = floorBucket(sinceMs, bucket); t <= untilMs && axis.length < 5000; t += size) axis.push(t);
  return axis;
}

/** A round grid step near ``raw``, never under ``least`` (1 for counts, a cent for dollars). */
function niceStep(raw, least) {
  if (raw <= 0) return least;
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  const nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 2.5 ? 2.5 : fraction <= 5 ? 5 : 10;
  return Math.max(nice * power, least);
}

// The API buckets hours and days in UTC, so the axes are labelled in UTC and say so: a day bar is
// one UTC day, which a local-time label would misdate west of Greenwich.
export const AXIS_ZONE = "UTC";
const hourLabel = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: AXIS_ZONE });
const dayLabel = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", timeZone: AXIS_ZONE });
const fullLabel = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
  timeZone: AXIS_ZONE });

function tickLabel(ms, bucket, spanMs) {
  const date = new Date(ms);
  if (bucket === "day") return dayLabel.format(date);
  return spanMs > 2 * DAY ? fullLabel.format(date) : hourLabel.format(date);
}

function tooltipTime(ms, bucket) {
  const date = new Date(ms);
  return `${bucket === "day" ? dayLabel.format(date) : fullLabel.format(date)} ${AXIS_ZONE}`;
}

/**
 * A stacked bar chart.
 * @param {object} o
 * @param {number[]} o.axis bucket start times (ms)
 * @param {{label: string, color: string, values: number[], total?: number|null}[]} o.series values aligned with
 *   axis; ``total`` (optional) is the legend's figure when the values' sum would say less (a null cost: "—")
 * @param {string} o.bucket "hour" | "day"
 * @param {string} o.title accessible name
 * @param {string} [o.unit] e.g. "requests", "tokens"
 * @param {boolean} [o.usd] the values are US dollars: fractions of a cent count, labels in $
 */
export function stackedBars({ axis, series, bucket, title, unit = "", usd = false }) {
  const value = usd ? fmtUsd : fmtInt;
  const axisValue = usd ? (v) => (v >= 1000 ? `$${fmtCompact(v)}` : fmtUsd(v)) : fmtCompact;
  const width = 960;
  const height = 256;
  const margin = { top: 10, right: 12, bottom: 42, left: 52 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;

  const totals = axis.map((_, i) => series.reduce((sum, one) => sum + (one.values[i] || 0), 0));
  const max = Math.max(0, ...totals);
  const step = niceStep(max / 4, usd ? 0.0001 : 1);
  const top = max > 0 ? Math.ceil(max / step) * step : 4;
  const y = (v) => margin.top + plotH - (v / top) * plotH;
  const slot = plotW / Math.max(axis.length, 1);
  const barW = Math.max(1, slot * (axis.length > 60 ? 0.86 : 0.72));

  const svg = s("svg", {
    class: "chart-svg", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title} (${AXIS_ZONE})`,
    preserveAspectRatio: "xMidYMid meet", dataset: { zone: AXIS_ZONE },
  });
  svg.append(s("title", {}, title));

  const grid = s("g", { class: "grid" });
  for (let v = 0; v <= top + 1e-9; v += step) {
    const yy = y(v);
    grid.append(s("line", { x1: margin.left, x2: width - margin.right, y1: yy, y2: yy }));
    grid.append(s("text", { x: margin.left - 8, y: yy + 4, "text-anchor": "end", class: "axis-label" }, axisValue(v)));
  }
  svg.append(grid);

  const bars = s("g", { class: "bars" });
  axis.forEach((t, i) => {
    let base = 0;
    const x = margin.left + i * slot + (slot - barW) / 2;
    for (const one of series) {
      const amount = one.values[i] || 0;
      if (amount <= 0) continue;
      const y0 = y(base);
      const y1 = y(base + amount);
      base += amount;
      bars.append(s("rect", {
        x: x.toFixed(2), y: y1.toFixed(2), width: barW.toFixed(2), height: Math.max(0.5, y0 - y1).toFixed(2),
        fill: one.color, class: "bar",
      }, s("title", {}, `${one.label} · ${tooltipTime(t, bucket)}: ${value(amount)}${unit ? ` ${unit}` : ""}`)));
    }
  });
  svg.append(bars);

  const xAxis = s("g", { class: "x-axis" });
  xAxis.append(s("line", { x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0), class: "baseline" }));
  const spanMs = axis.length ? axis[axis.length - 1] - axis[0] : 0;
  const ticks = Math.min(8, axis.length);
  const every = Math.max(1, Math.ceil(axis.length / Math.max(ticks, 1)));
  for (let i = 0; i < axis.length; i += every) {
    const x = margin.left + i * slot + slot / 2;
    xAxis.append(s("line", { x1: x, x2: x, y1: y(0), y2: y(0) + 4, class: "tick" }));
    xAxis.append(s("text", { x, y: y(0) + 18, "text-anchor": "middle", class: "axis-label" },
      tickLabel(axis[i], bucket, spanMs)));
  }
  xAxis.append(s("text", { x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle", class: "axis-title" },
    `${bucket === "day" ? "Day" : "Hour"} (${AXIS_ZONE})`));
  svg.append(xAxis);

  if (max === 0) {
    svg.append(s("text", { x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle", class: "empty-label" },
      "Nothing in this range"));
  }

  const legend = h("ul", { class: "legend" }, series.map((one) =>
    h("li", {}, h("span", { class: "swatch", dataset: { color: one.color } }), h("span", { class: "legend-label", title: one.label }, one.label),
      h("span", { class: "legend-value" }, value(one.total !== undefined ? one.total : one.values.reduce((a, b) => a + (b || 0), 0))))));
  for (const swatch of legend.querySelectorAll(".swatch")) swatch.style.backgroundColor = swatch.dataset.color;

  return h("figure", { class: "chart" }, svg, series.length ? legend : null);
}
