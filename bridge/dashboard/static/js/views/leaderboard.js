// Leaderboard: every user's requests, tokens and spend over a range (GET usage?by=user, plus the users
// without usage for administrators), sorted by one figure, a page of 25 at a time.

import { USAGE, USERS, apiGet, explain, getIdentity, isAdmin } from "../api.js";
import { AXIS_ZONE } from "../charts.js";
import { fmtUsd, unpricedNote } from "../costs.js";
import { fmtInt, h, notice, replace, spinner } from "../dom.js";
import { userRecordsHref } from "../links.js";
import { pageLink } from "../pager.js";
import { FIGURES, addFigures, noFigures } from "../tokens.js";
import { RANGES } from "./overview.js";

export const PAGE_SIZE = 25;
const DEFAULT_RANGE = "7d"; // the overview's
// URL value -> [the row's figure, column title]; "total" is the four token figures added up, "spend"
// the priced usages' USD (a user with none priced shows "—" and sorts as $0).
const SORTS = {
  requests: ["interceptions", "Requests"],
  input: ["input_tokens", "Input"],
  output: ["output_tokens", "Output"],
  cache_read: ["cache_read_input_tokens", "Cache read"],
  cache_write: ["cache_write_input_tokens", "Cache write"],
  total: ["total_tokens", "Total tokens"],
  spend: ["cost_usd", "Spend"],
};
const DEFAULT_SORT = "total";

function href(state, changes = {}) {
  const next = new URLSearchParams(state);
  for (const [key, value] of Object.entries(changes)) next.set(key, value);
  return `#/leaderboard?${next.toString()}`;
}

function emptyRow(id, username) {
  return { id, username, total_tokens: 0, ...noFigures() };
}

/** One row per user: the usage series summed over the range, and (admins) every live user without usage. */
function userRows(usage, users) {
  const rows = new Map();
  for (const series of usage.series || []) {
    const row = emptyRow(series.key, String(series.label ?? series.key ?? "(none)"));
    for (const point of series.points || []) addFigures(row, point);
    row.total_tokens = FIGURES.reduce((sum, [key]) => sum + row[key], 0);
    rows.set(series.key, row);
  }
  for (const user of users) if (!rows.has(user.id)) rows.set(user.id, emptyRow(user.id, user.username));
  return [...rows.values()];
}

function rangeControl(range, state) {
  return h("div", { class: "segmented", role: "group", "aria-label": "Range", dataset: { control: "range" } },
    h("span", { class: "segmented-label" }, "Range"),
    Object.keys(RANGES).map((value) => h("a", {
      href: href(state, { range: value, page: "1" }), class: value === range ? "active" : "",
      "aria-current": value === range ? "true" : null, dataset: { value },
    }, value)));
}

function table(rows, first, sort, state) {
  const sortable = (name, [, title]) => {
    const active = name === sort;
    return h("th", { class: "num", "aria-sort": active ? "descending" : null },
      h("a", { href: href(state, { sort: name, page: "1" }), class: active ? "sort active" : "sort", dataset: { sort: name } },
        title, active ? " ▾" : ""));
  };
  return h("table", { class: "data-table", dataset: { table: "leaderboard" } },
    h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "User"),
      Object.entries(SORTS).map(([name, column]) => sortable(name, column)))),
    h("tbody", {}, rows.map((row, i) => h("tr", { dataset: { user: row.username } },
      h("td", { class: "num muted" }, String(first + i + 1)),
      h("td", {}, h("a", { href: userRecordsHref(row.username), title: `${row.username}'s sessions` }, row.username)),
      Object.values(SORTS).map(([key]) => cell(row, key, key === SORTS[sort][0]))))));
}

function cell(row, key, sorted) {
  const className = sorted ? "num sorted" : "num";
  if (key !== "cost_usd") return h("td", { class: className }, fmtInt(row[key]));
  return h("td", { class: className, dataset: { figure: key, value: String(row.cost_usd ?? "") },
    title: unpricedNote(row.unpriced_token_usages) }, fmtUsd(row.cost_usd));
}

export async function renderLeaderboard(main, params, { signal }) {
  const range = RANGES[params.get("range")] ? params.get("range") : DEFAULT_RANGE;
  const sort = SORTS[params.get("sort")] ? params.get("sort") : DEFAULT_SORT;
  const admin = isAdmin();
  const state = new URLSearchParams({ range, sort });
  const until = new Date();
  const since = new Date(until.getTime() - RANGES[range].ms);

  const summary = h("span", { class: "muted", dataset: { role: "count" } });
  const results = h("div", { class: "results" }, spinner("Loading the leaderboard…"));
  replace(main, h("div", { class: "view", dataset: { view: "leaderboard" } },
    h("div", { class: "toolbar" },
      h("div", {}, h("h1", {}, "Leaderboard"),
        h("p", { class: "muted" }, `Requests, tokens and spend (USD) per user over the last ${RANGES[range].label}, counted in whole ${AXIS_ZONE} hours.`)),
      h("div", { class: "controls" }, summary, rangeControl(range, state))),
    admin ? null : notice("empty", "The leaderboard of every user is for administrators: you see your own usage."),
    results));

  let usage;
  let users = [];
  try {
    [usage, users] = await Promise.all([
      apiGet(USAGE, { by: "user", bucket: "day", since: since.toISOString(), until: until.toISOString() }, { signal }),
      admin ? apiGet(USERS, {}, { signal }) : Promise.resolve([getIdentity()].filter(Boolean)),
    ]);
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    replace(results, notice("error", `The leaderboard could not be loaded: ${explain(error)}`));
    return;
  }
  if (signal.aborted) return;
  const figure = SORTS[sort][0];
  const rows = userRows(usage, users || [])
    .sort((a, b) => (Number(b[figure]) || 0) - (Number(a[figure]) || 0) || a.username.localeCompare(b.username));
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  const asked = Number(params.get("page"));
  const page = Number.isInteger(asked) && asked >= 1 ? Math.min(asked, pages) : 1;
  const first = (page - 1) * PAGE_SIZE;
  const shown = rows.slice(first, first + PAGE_SIZE);
  replace(summary, rows.length <= PAGE_SIZE ? `${fmtInt(rows.length)} ${rows.length === 1 ? "user" : "users"}`
    : `${fmtInt(first + 1)}–${fmtInt(first + shown.length)} of ${fmtInt(rows.length)} users`);
  if (rows.length === 0) {
    replace(results, notice("empty", "No usage in this range."));
    return;
  }
  const step = (label, to, name) => pageLink(label, name, to ? href(state, { page: String(to) }) : null,
    href(state, { page: String(page) }));
  replace(results,
    h("div", { class: "card table-card" }, h("div", { class: "table-wrap" }, table(shown, first, sort, state))),
    h("nav", { class: "pager", "aria-label": "Pages" },
      h("span", { class: "muted pager-label" }, `Page ${page} of ${pages}`),
      step("‹ Previous", page > 1 ? page - 1 : null, "prev"),
      step("Next ›", page < pages ? page + 1 : null, "next")));
}
