// The interceptions list: filters (the API's q keys), newest first, paged with the after_id cursor.

import { fmtUsd } from "../costs.js";
import { fmtInt, fmtTime, h, truncate, zoned } from "../dom.js";
import { sessionHref } from "../links.js";
import { renderList } from "../listview.js";
import { fetchPage } from "../records.js";
import { tokenTotals, tokensCell } from "../tokens.js";

const BASE = "#/interceptions";
// The list as last shown (filters and page), for the detail view's way back.
export const lastList = { hash: BASE };

/** An interception's own address: it opens from any browser (GET interceptions/{id}), after sign-in too. */
export function detailHref(record) {
  return `#/interceptions/${encodeURIComponent(record.id)}`;
}

export function userName(record) {
  return record.initiator?.username || record.initiator?.id || "—";
}

function row(record) {
  const prompt = (record.user_prompts || []).map((p) => p.prompt).filter(Boolean).pop();
  const href = detailHref(record);
  return h("tr", { class: "clickable", dataset: { id: record.id, href }, tabindex: "-1" },
    h("td", { class: "nowrap" }, h("a", { href, class: "row-link" }, fmtTime(record.started_at))),
    h("td", {}, userName(record)),
    h("td", {}, h("div", {}, record.provider_name || record.provider),
      record.provider_name && record.provider_name !== record.provider ? h("div", { class: "muted small" }, record.provider) : null),
    h("td", { class: "mono" }, record.model),
    h("td", {}, record.client || "—"),
    tokensCell(tokenTotals(record)),
    h("td", { class: "num", dataset: { figure: "cost_usd" } }, fmtUsd(record.cost_usd)),
    h("td", { class: "num" }, fmtInt((record.tool_usages || []).length)),
    h("td", { class: "prompt-cell" }, prompt ? truncate(prompt, 90)
      : h("span", { class: "muted" }, record.correlating_tool_call_id ? "tool results" : "—")),
    h("td", { class: "nowrap" }, sessionCell(record)));
}

/** A link to the session and thread an interception belongs to (when the API says which). */
function sessionCell(record) {
  if (!record.session_id) return h("span", { class: "muted" }, "—");
  return h("a", { href: sessionHref(record.session_id, { thread: record.thread_id, turn: record.id }), class: "mono small", title: record.session_id,
    dataset: { role: "session-link" } }, truncate(record.session_id, 10));
}

export async function renderInterceptions(main, params, { signal }) {
  lastList.hash = window.location.hash || BASE;
  await renderList(main, params, signal, {
    base: BASE, noun: "interceptions", title: "Interceptions", intro: null, table: "interceptions", row,
    columns: [[zoned("Started")], ["User"], ["Provider"], ["Model"], ["Client"], ["Tokens in / out", true], ["Cost", true], ["Tools", true],
      ["Prompt"], ["Session"]],
    fetch: async (q, limit, cursor, abort) => {
      const page = await fetchPage(q, { limit, afterId: cursor, signal: abort });
      return { count: page.count, items: page.results };
    },
  });
}
