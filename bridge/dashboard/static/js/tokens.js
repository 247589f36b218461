// Token figures as the views show them: an interception's summed over its usages, a session's or a
// thread's as the API sums them, usage points (and their cost) added up, and the table cell both lists use.

import { addCost } from "./costs.js";
import { fmtInt, h } from "./dom.js";

/** The four token figures (§8 names) and their titles, in the order every view shows them. */
export const FIGURES = [
  ["input_tokens", "Input"],
  ["output_tokens", "Output"],
  ["cache_read_input_tokens", "Cache read"],
  ["cache_write_input_tokens", "Cache write"],
];

/** The figures of a usage point (GET usage) before anything is added: zero, and no cost (null, unpriced). */
export function noFigures() {
  const figures = { interceptions: 0, unpriced_token_usages: 0, cost_usd: null };
  for (const [key] of FIGURES) figures[key] = 0;
  return figures;
}

/** Add a usage point's (or another sum's) figures into ``sum``; returns it. */
export function addFigures(sum, point) {
  sum.interceptions += Number(point.interceptions) || 0;
  sum.unpriced_token_usages += Number(point.unpriced_token_usages) || 0;
  for (const [key] of FIGURES) sum[key] += Number(point[key]) || 0;
  sum.cost_usd = addCost(sum.cost_usd, point.cost_usd);
  return sum;
}

/** An interception's tokens: its token_usages added up, in the §8 names. */
export function tokenTotals(record) {
  const totals = { input_tokens: 0, output_tokens: 0, cache_read_input_tokens: 0, cache_write_input_tokens: 0 };
  for (const usage of record.token_usages || []) for (const key of Object.keys(totals)) totals[key] += Number(usage[key]) || 0;
  return totals;
}

/** A session's or thread's token_usage {input, output, cache_read, cache_write} in the §8 names. */
export function usageTotals(usage) {
  return {
    input_tokens: Number(usage?.input) || 0, output_tokens: Number(usage?.output) || 0,
    cache_read_input_tokens: Number(usage?.cache_read) || 0, cache_write_input_tokens: Number(usage?.cache_write) || 0,
  };
}

/** "in / out" with the cache tokens below, every figure in the title. */
export function tokensCell(totals) {
  const cache = totals.cache_read_input_tokens + totals.cache_write_input_tokens;
  const title = `input ${fmtInt(totals.input_tokens)}, output ${fmtInt(totals.output_tokens)}, ` +
    `cache read ${fmtInt(totals.cache_read_input_tokens)}, cache write ${fmtInt(totals.cache_write_input_tokens)}`;
  return h("td", { class: "num", title }, h("div", {}, `${fmtInt(totals.input_tokens)} / ${fmtInt(totals.output_tokens)}`),
    cache ? h("div", { class: "muted small" }, `+${fmtInt(cache)} cache`) : null);
}
