// Overview: usage and spend over time from the rollup-backed usage endpoint, totals, top tools.

import { ApiError, TOOLS, USAGE, apiGet, explain, isAdmin } from "../api.js";
import { AXIS_ZONE, OTHER_COLOR, PALETTE, bucketAxis, floorBucket, stackedBars } from "../charts.js";
import { addCost, fmtUsd, unpricedNote } from "../costs.js";
import { fmtInt, h, notice, replace, spinner } from "../dom.js";
import { leaderboardHref, userRecordsHref } from "../links.js";
import { FAMILY_LABEL } from "../filters.js";
import { FIGURES, addFigures, noFigures } from "../tokens.js";

const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;

export const RANGES = {
  "24h": { label: "24 hours", ms: DAY, bucket: "hour" },
  "7d": { label: "7 days", ms: 7 * DAY, bucket: "hour" },
  "30d": { label: "30 days", ms: 30 * DAY, bucket: "day" },
  "90d": { label: "90 days", ms: 90 * DAY, bucket: "day" },
};
export const GROUPS = { user: "User", model: "Model", client: "Client", provider: "Provider" };
const KINDS = { all: "All kinds", ...Object.fromEntries(FIGURES.map(([key, label]) => [key, label])) };
// The second chart's measure: tokens (of a kind) or spend in USD (the priced calls' cost).
const MEASURES = { tokens: "Tokens", spend: "Spend" };
const KIND_COLORS = ["#3b5bdb", "#f08c00", "#2f9e44", "#ae3ec9"];
const MAX_SERIES = 8;
const TABLE_ROWS = 25;

function link(params, changes) {
  const next = new URLSearchParams(params);
  for (const [key, value] of Object.entries(changes)) {
    if (value) next.set(key, value);
    else next.delete(key);
  }
  return `#/overview?${next.toString()}`;
}

function segmented(label, name, options, current, params) {
  return h("div", { class: "segmented", role: "group", "aria-label": label, dataset: { control: name } },
    h("span", { class: "segmented-label" }, label),
    Object.entries(options).map(([value, text]) => h("a", {
      href: link(params, { [name]: value }), class: value === current ? "active" : "",
      "aria-current": value === current ? "true" : null, dataset: { value },
    }, text)));
}

function tokenSum(point, kind) {
  if (kind !== "all") return Number(point[kind]) || 0;
  return FIGURES.reduce((sum, [key]) => sum + (Number(point[key]) || 0), 0);
}

/** API series -> aligned arrays per series (missing buckets are zero), biggest first, the tail as "Other". */
function alignSeries(usage, axis, bucket) {
  const index = new Map(axis.map((t, i) => [t, i]));
  const aligned = (usage.series || []).map((one) => {
    const rows = axis.map(noFigures);
    for (const point of one.points || []) {
      const at = Date.parse(point.t);
      if (Number.isNaN(at)) continue;
      const i = index.get(floorBucket(at, bucket));
      if (i !== undefined) addFigures(rows[i], point);
    }
    const total = rows.reduce(addFigures, noFigures());
    const label = one.label ?? one.key ?? "(none)";
    return { key: one.key, label: label === null || label === "" ? "(none)" : String(label), rows, total };
  });
  aligned.sort((a, b) => b.total.interceptions - a.total.interceptions || tokenSum(b.total, "all") - tokenSum(a.total, "all")
    || a.label.localeCompare(b.label));
  const ownColors = aligned.length > MAX_SERIES ? MAX_SERIES - 1 : aligned.length; // the rest is "Other"
  aligned.forEach((one, i) => { one.color = i < ownColors ? PALETTE[i % PALETTE.length] : OTHER_COLOR; });
  let shown = aligned;
  if (aligned.length > MAX_SERIES) {
    const rest = aligned.slice(MAX_SERIES - 1);
    const rows = axis.map((_, i) => rest.reduce((row, one) => addFigures(row, one.rows[i]), noFigures()));
    shown = [...aligned.slice(0, MAX_SERIES - 1), { key: null, label: `Other (${rest.length})`, rows, color: OTHER_COLOR }];
  }
  return { all: aligned, shown };
}

function totalsCards(totals) {
  const cards = [["interceptions", "Requests"], ...FIGURES.map(([key, label]) => [key, `${label} tokens`])];
  const note = unpricedNote(totals?.unpriced_token_usages);
  return h("section", { class: "cards", "aria-label": "Totals" }, cards.map(([key, label]) =>
    h("div", { class: "card stat", dataset: { total: key, value: String(Number(totals?.[key]) || 0) } },
      h("div", { class: "stat-label" }, label),
      h("div", { class: "stat-value" }, fmtInt(totals?.[key])))),
  h("div", { class: "card stat", dataset: { spend: "cost_usd", value: String(totals?.cost_usd ?? "") } },
    h("div", { class: "stat-label" }, "Spend (USD)"),
    h("div", { class: "stat-value" }, fmtUsd(totals?.cost_usd)),
    note ? h("div", { class: "muted small", dataset: { role: "unpriced" } }, note) : null));
}

function chartCard(title, subtitle, chart, extra = null, footer = null) {
  return h("section", { class: "card chart-card" },
    h("header", { class: "card-header" }, h("div", {}, h("h2", {}, title), subtitle ? h("p", { class: "muted" }, subtitle) : null), extra),
    chart, footer);
}

/** Where every group is listed: the leaderboard for users, else this table with all its rows. */
function everyGroupHref(by, range, state) {
  return by === "user" ? leaderboardHref(range) : link(state, { all: "1" });
}

function groupTable(groups, groupLabel, { by, showAll, allHref }) {
  const rows = showAll ? groups : groups.slice(0, TABLE_ROWS);
  const name = (one) => (by === "user" && one.label !== "(none)" ? h("a", { href: userRecordsHref(one.label) }, one.label) : one.label);
  return h("section", { class: "card" },
    h("header", { class: "card-header" }, h("h2", {}, `By ${groupLabel.toLowerCase()}`),
      groups.length > rows.length ? h("span", { class: "muted" }, `top ${rows.length} of ${fmtInt(groups.length)} · `,
        h("a", { href: allHref, dataset: { role: "all-groups" } }, `show all ${fmtInt(groups.length)}`)) : null),
    rows.length === 0 ? notice("empty", "No usage in this range.") :
      h("div", { class: "table-wrap" }, h("table", { class: "data-table", dataset: { table: "groups" } },
        h("thead", {}, h("tr", {}, h("th", {}, groupLabel), h("th", { class: "num" }, "Requests"),
          FIGURES.map(([, label]) => h("th", { class: "num" }, label)), h("th", { class: "num" }, "Spend"))),
        h("tbody", {}, rows.map((one) => h("tr", {},
          h("td", {}, h("span", { class: "swatch inline", dataset: { color: one.color } }), name(one)),
          h("td", { class: "num" }, fmtInt(one.total.interceptions)),
          FIGURES.map(([key]) => h("td", { class: "num" }, fmtInt(one.total[key]))),
          h("td", { class: "num", dataset: { figure: "cost_usd" }, title: unpricedNote(one.total.unpriced_token_usages) },
            fmtUsd(one.total.cost_usd))))))));
}

function toolsTable(result) {
  const tools = result?.tools || [];
  const max = Math.max(1, ...tools.map((t) => Number(t.calls) || 0));
  const table = tools.length === 0 ? notice("empty", "No tool calls in this range.") :
    h("div", { class: "table-wrap" }, h("table", { class: "data-table", dataset: { table: "tools" } },
      h("thead", {}, h("tr", {}, h("th", {}, "Tool"), h("th", { class: "num" }, "Calls"), h("th", { class: "bar-col" }, ""))),
      h("tbody", {}, tools.map((tool) => {
        const bar = h("span", { class: "meter-fill" });
        bar.style.width = `${((Number(tool.calls) || 0) / max) * 100}%`;
        return h("tr", {}, h("td", { class: "mono" }, tool.tool), h("td", { class: "num" }, fmtInt(tool.calls)),
          h("td", { class: "bar-col" }, h("span", { class: "meter" }, bar)));
      }))));
  return table;
}

function colorSwatches(root) {
  for (const swatch of root.querySelectorAll(".swatch[data-color]")) swatch.style.backgroundColor = swatch.dataset.color;
}

/** The by-model view's grouping choice, kept in the address ("family=1"). */
function familyChoice(family, state) {
  const box = h("input", { type: "checkbox", checked: family, dataset: { role: "group-models" } });
  box.addEventListener("change", () => { window.location.hash = link(state, { family: box.checked ? "1" : "", all: "" }); });
  return h("label", { class: "check" }, box, h("span", {}, FAMILY_LABEL));
}

export async function renderOverview(main, params, { signal }) {
  const range = RANGES[params.get("range")] ? params.get("range") : "7d";
  const by = GROUPS[params.get("by")] ? params.get("by") : "user";
  const kind = KINDS[params.get("kind")] ? params.get("kind") : "all";
  const measure = MEASURES[params.get("measure")] ? params.get("measure") : "tokens";
  const showAll = params.get("all") === "1";
  // By model: a Bedrock id and dated snapshots can count as their model (the API's by=model_family).
  const family = by === "model" && params.get("family") === "1";
  const state = new URLSearchParams({ range, by, kind, ...(measure === "spend" ? { measure } : {}), ...(family ? { family: "1" } : {}) });
  const { bucket, ms } = RANGES[range];
  const until = new Date();
  const since = new Date(until.getTime() - ms);

  const body = h("div", { class: "overview-body" }, spinner("Loading usage…"));
  const tools = h("div", {}, spinner("Loading tools…"));
  replace(main, h("div", { class: "view", dataset: { view: "overview" } },
    h("div", { class: "toolbar" },
      h("h1", {}, "Overview"),
      h("div", { class: "controls" },
        segmented("Range", "range", Object.fromEntries(Object.entries(RANGES).map(([k, v]) => [k, k])), range, state),
        segmented("Group by", "by", GROUPS, by, state),
        by === "model" ? familyChoice(family, state) : null)),
    isAdmin() ? null : notice("empty", "You see your own usage. Administrators see everyone's."),
    body,
    h("section", { class: "card" }, h("header", { class: "card-header" }, h("h2", {}, "Top tools"),
      h("span", { class: "muted" }, `last ${RANGES[range].label}`)), tools)));

  const span = { since: since.toISOString(), until: until.toISOString() };
  const usagePromise = apiGet(USAGE, { by: family ? "model_family" : by, bucket, ...span }, { signal });
  const toolsPromise = apiGet(TOOLS, { ...span, limit: 20 }, { signal });

  const toolsShown = toolsPromise.then((result) => replace(tools, toolsTable(result)), (error) => {
    if (error?.name !== "AbortError") replace(tools, notice("error", `Top tools could not be loaded: ${explain(error)}`));
  });

  let usage;
  try {
    usage = await usagePromise;
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    const hint = error instanceof ApiError && error.status === 404 ? " The gateway does not offer the usage endpoint." : "";
    replace(body, notice("error", `Usage could not be loaded: ${explain(error)}${hint}`));
    await toolsShown;
    return;
  }
  if (signal.aborted) return;
  const sinceMs = Date.parse(usage.since) || since.getTime();
  const untilMs = Date.parse(usage.until) || until.getTime();
  const axisBucket = usage.bucket === "day" || usage.bucket === "hour" ? usage.bucket : bucket;
  const axis = bucketAxis(sinceMs, untilMs, axisBucket);
  const { all, shown } = alignSeries(usage, axis, axisBucket);
  const groupLabel = GROUPS[by];
  const allHref = everyGroupHref(by, range, state);
  const otherCount = all.length - (shown.length - 1);
  // The "Other" bucket of the charts, reachable: every group is listed where this link goes.
  const otherLink = all.length > shown.length
    ? h("p", { class: "small other-link" }, h("a", { href: allHref, dataset: { role: "other" } },
      `Other: ${fmtInt(otherCount)} more ${by === "user" ? "users, on the leaderboard" : `${groupLabel.toLowerCase()}s, in the table`} ›`))
    : null;

  const requests = stackedBars({
    axis, bucket: axisBucket, unit: "requests", title: `Requests per ${axisBucket} by ${groupLabel.toLowerCase()}`,
    series: shown.map((one) => ({ label: one.label, color: one.color, values: one.rows.map((r) => r.interceptions) })),
  });
  const stacked = `stacked by ${groupLabel.toLowerCase()}`;
  const unpriced = unpricedNote(usage.totals?.unpriced_token_usages);
  const second = measure === "spend" ? {
    title: "Spend", subtitle: `USD per ${axisBucket} (${AXIS_ZONE}), ${stacked}${unpriced ? `; ${unpriced}` : ""}`,
    chart: stackedBars({
      axis, bucket: axisBucket, usd: true, title: `Spend in USD per ${axisBucket} by ${groupLabel.toLowerCase()}`,
      series: shown.map((one) => ({ label: one.label, color: one.color, values: one.rows.map((r) => Number(r.cost_usd) || 0),
        total: one.rows.reduce((sum, r) => addCost(sum, r.cost_usd), null) })),
    }),
  } : {
    title: "Tokens", subtitle: `per ${axisBucket} (${AXIS_ZONE}), ${stacked}`,
    chart: stackedBars({
      axis, bucket: axisBucket, unit: "tokens", title: `${KINDS[kind]} tokens per ${axisBucket} by ${groupLabel.toLowerCase()}`,
      series: shown.map((one) => ({ label: one.label, color: one.color, values: one.rows.map((r) => tokenSum(r, kind)) })),
    }),
  };
  const kinds = stackedBars({
    axis, bucket: axisBucket, unit: "tokens", title: `Tokens per ${axisBucket} by kind`,
    series: FIGURES.map(([key, label], i) => ({
      label, color: KIND_COLORS[i], values: axis.map((_, j) => all.reduce((sum, one) => sum + one.rows[j][key], 0)),
    })),
  });
  const kindPicker = measure === "spend" ? null : h("div", { class: "segmented small", role: "group", "aria-label": "Token kind",
    dataset: { control: "kind" } },
  Object.entries(KINDS).map(([value, text]) => h("a", {
    href: link(state, { kind: value }), class: value === kind ? "active" : "", "aria-current": value === kind ? "true" : null,
    dataset: { value },
  }, text)));
  const measurePicker = h("div", { class: "chart-controls" }, segmented("Show", "measure", MEASURES, measure, state), kindPicker);

  replace(body,
    totalsCards(usage.totals),
    h("div", { class: "chart-grid" },
      chartCard("Requests", `per ${axisBucket} (${AXIS_ZONE}), stacked by ${groupLabel.toLowerCase()}`, requests, null, otherLink),
      chartCard(second.title, second.subtitle, second.chart, measurePicker, otherLink?.cloneNode(true)),
      chartCard("Tokens by kind", `per ${axisBucket} (${AXIS_ZONE}): input, output, cache read and cache write`, kinds)),
    groupTable(all, groupLabel, { by, showAll, allHref }));
  colorSwatches(body);
  await toolsShown;
}
