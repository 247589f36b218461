// Paging a newest-first list with the API's cursor (the last id shown): for each cursor met while
// paging with one set of filters, the cursor of the page before it ("Newer") and the position of its
// first row are remembered in this tab, and forgotten when the filters change.

import { fmtInt, h } from "./dom.js";

/** A pager's link: to ``href``, or shown disabled (its address ``fallback``) when ``href`` is null. */
export function pageLink(label, name, href, fallback) {
  return h("a", { class: `button${href ? "" : " disabled"}`, href: href || fallback, "aria-disabled": href ? null : "true",
    dataset: { page: name } }, label);
}

const pagers = new Map(); // list name -> {signature, previous, offset}

function pagerFor(list, signature) {
  let pager = pagers.get(list);
  if (!pager || pager.signature !== signature) {
    pager = { signature, previous: new Map(), offset: new Map() };
    pagers.set(list, pager);
  }
  return pager;
}

/**
 * The count line and the pager of one page of ``list`` (e.g. "sessions"): ``cursor`` the page's own
 * (null: the first), ``shown`` its rows, ``count`` the API's total, ``lastId`` its last row's cursor
 * value, ``href(cursor)`` the address of the page after a cursor (null: the first page).
 */
export function cursorPage(list, { signature, cursor, shown, count, limit, lastId, href }) {
  const pager = pagerFor(list, signature);
  const offset = cursor ? pager.offset.get(cursor) : 0; // undefined: a page reached from a pasted URL
  const summary = count === 0 ? `No matching ${list}` : offset === undefined
    ? `${fmtInt(shown)} shown of ${fmtInt(count)} matching`
    : `${fmtInt(offset + 1)}–${fmtInt(offset + shown)} of ${fmtInt(count)} matching`;
  const hasOlder = offset === undefined ? shown === limit : offset + shown < count;
  const hasNewer = Boolean(cursor) && pager.previous.has(cursor);
  const newer = () => {
    window.location.hash = href(pager.previous.get(cursor) || null);
  };
  const older = () => {
    pager.previous.set(lastId, cursor);
    if (offset !== undefined) pager.offset.set(lastId, offset + shown);
    window.location.hash = href(lastId);
  };
  const nav = h("nav", { class: "pager", "aria-label": "Pages" },
    pageLink("« Newest", "newest", cursor ? href(null) : null, href(null)),
    h("button", { type: "button", class: "button", disabled: !hasNewer, onclick: newer, dataset: { page: "newer" } }, "‹ Newer"),
    h("button", { type: "button", class: "button", disabled: !hasOlder || shown === 0, onclick: older, dataset: { page: "next" } },
      "Next page ›"));
  return { summary, nav };
}
