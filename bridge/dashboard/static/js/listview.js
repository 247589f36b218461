// A filtered list view, newest first (the interceptions', the sessions'): its title, the filter form,
// one page of rows for the address's filters and cursor, the count and the pager.

import { explain, isAdmin } from "./api.js";
import { h, notice, openRowsOnClick, replace, spinner } from "./dom.js";
import { filterForm, limitExtra, listHref, qFilters, readFilters } from "./filters.js";
import { cursorPage } from "./pager.js";

/**
 * ``list``: {base ("#/sessions"), noun ("sessions"), title, intro (a line under it, or null), table
 * (its data-table name), columns [[title, numeric]], row(item) -> <tr>, fetch(q, limit, cursor,
 * signal) -> {count, items} (items: the page, each with an id, the next page's cursor being the last's)},
 * cursorOf(item) (optional: the next page's cursor from the last item, when not its id).
 */
export async function renderList(main, params, signal, list) {
  const { filters, limit } = readFilters(params);
  const cursor = params.get("cursor") || null;
  const admin = isAdmin();
  const summary = h("span", { class: "muted", dataset: { role: "count" } });
  const results = h("div", { class: "results" }, spinner(`Loading ${list.noun}…`));
  replace(main, h("div", { class: "view", dataset: { view: list.noun } },
    h("div", { class: "toolbar" },
      list.intro ? h("div", {}, h("h1", {}, list.title), h("p", { class: "muted" }, list.intro)) : h("h1", {}, list.title),
      summary),
    admin ? null : notice("empty", `You see your own ${list.noun}. Administrators see everyone's.`),
    filterForm(list.base, { filters, limit }, { admin, signal }), results));

  let page;
  try {
    page = await list.fetch(qFilters(filters), limit, cursor, signal);
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    replace(results, notice("error", explain(error)));
    return;
  }
  if (signal.aborted) return;
  const { items } = page;
  const { summary: counted, nav } = cursorPage(list.noun, {
    signature: JSON.stringify([filters, limit]), cursor, shown: items.length, count: page.count, limit,
    lastId: items.length ? (list.cursorOf || ((item) => item.id))(items[items.length - 1]) : undefined, href: (next) => listHref(list.base, filters, { ...limitExtra(limit), cursor: next || "" }),
  });
  replace(summary, counted);
  if (items.length === 0) {
    replace(results, notice("empty", cursor ? `No more ${list.noun}.` : `No ${list.noun} match these filters.`),
      cursor ? h("nav", { class: "pager" }, h("a", { class: "button", href: listHref(list.base, filters, limitExtra(limit)) }, "« Newest")) : null);
    return;
  }
  const table = h("table", { class: `data-table ${list.noun}`, dataset: { table: list.table } },
    h("thead", {}, h("tr", {}, list.columns.map(([title, numeric]) => h("th", { class: numeric ? "num" : "" }, title)))),
    h("tbody", {}, items.map(list.row)));
  replace(results, h("div", { class: "card table-card" }, h("div", { class: "table-wrap" }, openRowsOnClick(table))), nav);
}
