// One session (GET sessions/{id}): who, which client and models, when, its totals, and its threads as
// a timeline, a page of turns at a time (the API's after_id / before_id). #/sessions/ID opens from any
// browser; ?thread=T&turn=I opens the page where thread T begins (or turn I, in a thread longer than
// a page) and marks them; ?after=I / ?before=I are the pages after / before turn I; ?initiator=NAME
// says whose session when several users' sessions share the id (an administrator is asked to choose).

import { ApiError, SESSIONS, apiGet, buildQ, explain } from "../api.js";
import { fmtUsd } from "../costs.js";
import { VIEWER_ZONE, fmtInt, fmtTime, h, notice, replace, spinner, zoned } from "../dom.js";
import { sessionHref } from "../links.js";
import { pageLink } from "../pager.js";
import { FIGURES, usageTotals } from "../tokens.js";
import { timeline } from "./timeline.js";

const TURNS_PER_PAGE = 50;
const LOOK_BEHIND = 5; // turns before a page read to name the tools its first turns answer
// A turn's position in its session, where a page shown in this tab told it (for "turns 51–100 of 230").
const positions = new Map();

function turnsOf(page) {
  return (page.threads || []).flatMap((thread) => thread.interceptions || [])
    .sort((a, b) => a.started_at.localeCompare(b.started_at) || a.id.localeCompare(b.id));
}

/** GET the session ``id`` (whose: ``initiator``, when the address says) with more query parameters. */
function getSession({ id, initiator }, query, signal) {
  return apiGet(`${SESSIONS}/${encodeURIComponent(id)}`, { limit: TURNS_PER_PAGE, initiator, ...query }, { signal });
}

/** A page of the session: {page, first} (first: it begins with the session's first turn). */
async function loadPage(which, params, signal) {
  const get = (query) => getSession(which, query, signal);
  if (params.get("after")) return { page: await get({ after_id: params.get("after") }), first: false };
  if (params.get("before")) return { page: await get({ before_id: params.get("before") }), first: false };
  // The page that begins at a turn: after the one before it (none: the first page).
  const startingAt = async (turnId) => {
    const previous = turnsOf(await get({ before_id: turnId, limit: 1 })).pop();
    return previous ? { page: await get({ after_id: previous.id }), first: false } : { page: await get({}), first: true };
  };
  const thread = params.get("thread");
  const turn = params.get("turn");
  if (thread) {
    const found = await startingAt(thread);
    if (!turn || turnsOf(found.page).some((one) => one.id === turn)) return found;
  }
  if (turn) return startingAt(turn);
  return { page: await get({}), first: true };
}

function metaList(rows) {
  return h("dl", { class: "meta-grid columns" }, rows.map(([label, value, className]) => h("div", { class: "meta-item" },
    h("dt", {}, label), h("dd", { class: className || "" }, value))));
}

function header(session) {
  const totals = usageTotals(session.token_usage);
  const figures = [
    ["turns", "Turns", fmtInt(session.interception_count)],
    ["threads", "Threads", fmtInt(session.thread_count)],
    ...FIGURES.map(([key, label]) => [key, `${label} tokens`, fmtInt(totals[key])]),
    ["cost", "Cost", fmtUsd(session.cost_usd)],
  ];
  return [
    h("section", { class: "cards compact session-figures", "aria-label": "Totals" }, figures.map(([key, label, value]) =>
      h("div", { class: "card stat", dataset: { figure: key } }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value)))),
    h("section", { class: "card" }, metaList([
      ["User", session.initiator?.username || session.initiator?.id || "—"],
      ["Client", session.client || "—"],
      ["Providers", (session.providers || []).join(", ") || "—"],
      ["Models", (session.models || []).join(", ") || "—", "mono"],
      [zoned("Started"), fmtTime(session.started_at)],
      [zoned("Last active"), fmtTime(session.last_active_at)],
      [zoned("Ended"), session.ended_at ? fmtTime(session.ended_at) : "in progress"],
      ["Last prompt", session.last_prompt || "—"],
    ])),
  ];
}

/** Where this page sits among the session's turns, when a page shown before in this tab says so. */
function pageOffset(params, turns, first) {
  if (first) return 0;
  const after = params.get("after");
  if (after && positions.has(after)) return positions.get(after) + 1;
  const before = params.get("before");
  if (before && positions.has(before)) return positions.get(before) - turns.length;
  return undefined;
}

function pager(which, session, params, turns, first) {
  const offset = pageOffset(params, turns, first);
  if (offset !== undefined && turns.length) {
    positions.set(turns[0].id, offset);
    positions.set(turns[turns.length - 1].id, offset + turns.length - 1);
  }
  const count = Number(session.interception_count) || 0;
  const full = turns.length >= TURNS_PER_PAGE;
  const hasEarlier = turns.length > 0 && (offset !== undefined ? offset > 0 : !(params.get("before") && !full));
  const hasLater = turns.length > 0 && (offset !== undefined ? offset + turns.length < count : full || Boolean(params.get("before")));
  const label = turns.length === 0 ? "No turns on this page"
    : offset !== undefined ? `Turns ${fmtInt(offset + 1)}–${fmtInt(offset + turns.length)} of ${fmtInt(count)}`
      : `${fmtInt(turns.length)} turns of ${fmtInt(count)}`;
  const top = sessionHref(which.id, { initiator: which.initiator });
  const step = (text, name, enabled, cursor) => pageLink(text, name,
    enabled ? sessionHref(which.id, { initiator: which.initiator, ...cursor }) : null, top);
  return h("nav", { class: "pager", "aria-label": "Turns" },
    h("span", { class: "muted pager-label", dataset: { role: "turns-shown" } }, label),
    step("« First", "first", !first, null),
    step("‹ Earlier turns", "earlier", hasEarlier, { before: turns[0]?.id }),
    step("Later turns ›", "later", hasLater, { after: turns[turns.length - 1]?.id }));
}

/** Turns just before the page, to name the tools its first turns answer (none on the first page). */
async function turnsBefore(which, turns, first, signal) {
  if (first || turns.length === 0 || !turns.some((turn) => turn.correlating_tool_call_id)) return [];
  try {
    return turnsOf(await getSession(which, { before_id: turns[0].id, limit: LOOK_BEHIND }, signal));
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    return []; // the names stay unknown: the turn says which call it answers instead
  }
}

function backLink() {
  return h("a", { href: "#/sessions", class: "back-link" }, "← Sessions");
}

/** An id several users' sessions share: each of them, to choose from (GET sessions?q=session_id:ID). */
async function chooser(id, error, signal) {
  let found = [];
  try {
    found = (await apiGet(SESSIONS, { q: buildQ({ session_id: id }), limit: 100 }, { signal })).sessions || [];
  } catch (failure) {
    if (failure?.name === "AbortError") throw failure;
  }
  return [notice("empty", `${explain(error)}. Whose session?`),
    h("ul", { class: "choices", dataset: { role: "whose" } }, found.map((one) => {
      const name = one.initiator?.username || one.initiator?.id || "";
      return h("li", {}, h("a", { href: sessionHref(id, { initiator: name }) }, name),
        h("span", { class: "muted" }, ` · ${fmtInt(one.interception_count)} turns, last active ${fmtTime(one.last_active_at)}`));
    }))];
}

export async function renderSession(main, { id, params, signal }) {
  const which = { id, initiator: params.get("initiator") || null };
  const view = (...children) => replace(main, h("div", { class: "view", dataset: { view: "session" } }, backLink(), ...children));
  replace(main, h("div", { class: "view", dataset: { view: "session" } }, spinner("Loading the session…")));
  let loaded;
  try {
    loaded = await loadPage(which, params, signal);
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    if (error instanceof ApiError && error.status === 400 && !which.initiator && /several users/.test(error.message)) {
      view(...await chooser(id, error, signal));
      return;
    }
    view(notice("error", error instanceof ApiError && error.status === 404
      ? `Session ${id} was not found: it does not exist, was deleted by retention, or is not yours to see.` : explain(error)));
    return;
  }
  const { page: session, first } = loaded;
  const turns = turnsOf(session);
  const known = await turnsBefore(which, turns, first, signal);
  if (signal.aborted) return;
  const marks = { thread: params.get("thread"), turn: params.get("turn") };
  const nav = pager(which, session, params, turns, first);
  replace(main, h("div", { class: "view", dataset: { view: "session", id: session.id } },
    backLink(),
    h("div", { class: "toolbar" },
      h("div", {}, h("h1", {}, "Session ", h("span", { class: "mono" }, session.id)),
        h("p", { class: "muted" }, `${session.initiator?.username || "—"} · ${session.client || "unknown client"} · times in ${VIEWER_ZONE}`))),
    header(session),
    nav,
    turns.length ? timeline(session, known, { ...marks, initiator: which.initiator }) : notice("empty", "No turns on this page."),
    turns.length > 10 ? nav.cloneNode(true) : null));
  const target = document.getElementById(marks.turn ? `turn-${marks.turn}` : `thread-${marks.thread}`);
  if (target) requestAnimationFrame(() => target.scrollIntoView({ block: "start" }));
}
