// The sessions list (SPEC §9): one row per agent run, most recently active first, with the
// interceptions list's filters, paged with the after_session_id and after_initiator cursor.

import { SESSIONS, apiGet, buildQ } from "../api.js";
import { fmtUsd } from "../costs.js";
import { fmtInt, fmtTime, h, truncate, zoned } from "../dom.js";
import { sessionHref } from "../links.js";
import { renderList } from "../listview.js";
import { tokensCell, usageTotals } from "../tokens.js";

function listCell(values, className = "") {
  const items = (values || []).filter(Boolean);
  if (items.length === 0) return h("td", {}, h("span", { class: "muted" }, "—"));
  return h("td", { class: className }, items.map((value) => h("div", {}, value)));
}

function row(session) {
  const href = sessionHref(session.id);
  return h("tr", { class: "clickable", dataset: { id: session.id, href }, tabindex: "-1" },
    h("td", { class: "nowrap" }, h("a", { href, class: "row-link" }, fmtTime(session.last_active_at)),
      h("div", { class: "muted small", dataset: { role: "started" } }, `started ${fmtTime(session.started_at)}`)),
    h("td", {}, session.initiator?.username || session.initiator?.id || "—"),
    h("td", { class: "nowrap" }, session.client || h("span", { class: "muted" }, "—")),
    listCell(session.models, "mono nowrap"),
    h("td", { class: "prompt-cell" }, session.last_prompt ? truncate(session.last_prompt, 90) : h("span", { class: "muted" }, "—")),
    h("td", { class: "num", dataset: { figure: "turns" } }, fmtInt(session.interception_count)),
    h("td", { class: "num", dataset: { figure: "threads" } }, fmtInt(session.thread_count)),
    tokensCell(usageTotals(session.token_usage)),
    h("td", { class: "num", dataset: { figure: "cost_usd" } }, fmtUsd(session.cost_usd)));
}

export function renderSessions(main, params, { signal }) {
  return renderList(main, params, signal, {
    base: "#/sessions", noun: "sessions", title: "Sessions", table: "sessions", row,
    intro: "An agent's run: the calls of one user with one client session id, most recently active first.",
    columns: [[zoned("Last active")], ["User"], ["Client"], ["Models"], ["Last prompt"], ["Turns", true], ["Threads", true],
      ["Tokens in / out", true], ["Cost", true]],
    // The cursor names the user too ("<session id>@<user id>"): users may share a client session id.
    cursorOf: (session) => `${session.id}@${session.initiator?.id || ""}`,
    fetch: async (q, limit, cursor, abort) => {
      const at = cursor ? cursor.lastIndexOf("@") : -1;
      const after = at < 0 ? { after_session_id: cursor }
        : { after_session_id: cursor.slice(0, at), after_initiator: cursor.slice(at + 1) };
      const page = await apiGet(SESSIONS, { q: buildQ(q), limit, ...after }, { signal: abort });
      return { count: page.count, items: page.sessions || [] };
    },
  });
}
