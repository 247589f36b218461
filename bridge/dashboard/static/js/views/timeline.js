// A session's threads as a timeline: each thread its turns (interceptions) in order, each turn what
// it sent (the user's prompt, or the results of the tool calls the turn before made), then what the
// model did (thoughts and tool calls with their arguments, in the order they happened), its tokens and cost.

import { fmtUsd } from "../costs.js";
import { fmtInt, fmtTime, h, prettyJson, truncate } from "../dom.js";
import { sessionHref } from "../links.js";
import { tokenTotals, usageTotals } from "../tokens.js";
import { detailHref } from "./interceptions.js";

/** provider_tool_call_id -> the interception that made that call, over the turns given. */
function toolCallIndex(turns) {
  const index = new Map();
  for (const turn of turns) {
    for (const tool of turn.tool_usages || []) if (tool.provider_tool_call_id) index.set(tool.provider_tool_call_id, turn);
  }
  return index;
}

/**
 * The names of the tools whose results ``turn`` sends back: the tool calls of the turn that made the
 * call its correlating_tool_call_id names (a client answers all of them at once), that one first.
 * null when the turn answers no tool call; [] when the call is not among the turns known.
 */
function answeredTools(turn, index) {
  const callId = turn.correlating_tool_call_id;
  if (!callId) return null;
  const caller = index.get(callId);
  if (!caller) return [];
  const calls = caller.tool_usages || [];
  const matched = calls.filter((tool) => tool.provider_tool_call_id === callId);
  const names = [...matched, ...calls.filter((tool) => tool.provider_tool_call_id !== callId)].map((tool) => tool.tool);
  return [...new Set(names)];
}

/** Thoughts and tool calls in the order they happened (recording time; a thought before the call it led to). */
function events(turn) {
  const all = [
    ...(turn.model_thoughts || []).map((item, i) => ({ kind: "thought", rank: 0, i, item })),
    ...(turn.tool_usages || []).map((item, i) => ({ kind: "tool", rank: 1, i, item })),
  ];
  return all.sort((a, b) => String(a.item.created_at || "").localeCompare(String(b.item.created_at || ""))
    || a.rank - b.rank || a.i - b.i);
}

function tokensLine(totals) {
  const cache = totals.cache_read_input_tokens + totals.cache_write_input_tokens;
  return h("span", { class: "turn-tokens", dataset: { input: String(totals.input_tokens), output: String(totals.output_tokens) },
    title: `cache read ${fmtInt(totals.cache_read_input_tokens)}, cache write ${fmtInt(totals.cache_write_input_tokens)}` },
  `${fmtInt(totals.input_tokens)} in · ${fmtInt(totals.output_tokens)} out`, cache ? ` · ${fmtInt(cache)} cache` : "");
}

/** What a turn or a thread cost ("—": nothing of it had a price). */
function costLine(cost) {
  return h("span", { class: "turn-cost", dataset: { cost: String(cost ?? "") } }, fmtUsd(cost));
}

function turnInput(turn, index) {
  const prompts = (turn.user_prompts || []).map((p) => p.prompt).filter(Boolean);
  if (prompts.length) {
    return h("div", { class: "turn-input", dataset: { input: "prompt" } },
      prompts.map((prompt) => h("pre", { class: "prompt-text", dataset: { prompt: "" } }, prompt)));
  }
  const tools = answeredTools(turn, index);
  if (tools === null) return h("div", { class: "turn-input muted", dataset: { input: "none" } }, "No prompt was recorded.");
  const names = tools.length ? tools.join(", ") : `call ${turn.correlating_tool_call_id}`;
  return h("div", { class: "turn-input tool-results", dataset: { input: "tool-results", tools: tools.join(",") } },
    h("span", { class: "arrow", "aria-hidden": "true" }, "↩"), " tool results for ", h("strong", { class: "mono" }, names));
}

function eventItem({ kind, item }) {
  if (kind === "thought") {
    return h("li", { class: "event thought", dataset: { event: "thought" } },
      h("span", { class: "badge warm" }, item.metadata?.source === "reasoning" ? "reasoning" : "thought"),
      h("pre", { class: "thought-text" }, item.content));
  }
  return h("li", { class: "event tool-call", dataset: { event: "tool", tool: item.tool } },
    h("div", { class: "tool-header" },
      h("span", { class: "tool-name mono" }, item.tool),
      item.injected ? h("span", { class: "badge" }, "injected") : null,
      item.invocation_error ? h("span", { class: "badge danger" }, "error") : null,
      h("span", { class: "muted mono small" }, item.provider_tool_call_id || "")),
    h("pre", { class: `code tool-input${prettyJson(item.input ?? "").json ? " json" : ""}` }, prettyJson(item.input ?? "").text),
    item.invocation_error ? h("div", { class: "notice error" }, item.invocation_error) : null);
}

function turnItem(turn, index, marked) {
  const happened = events(turn);
  return h("li", { class: marked ? "turn marked" : "turn", id: `turn-${turn.id}`, dataset: { turn: turn.id } },
    h("header", { class: "turn-header" },
      h("a", { href: detailHref(turn), class: "turn-time", title: "This interception's details" }, fmtTime(turn.started_at)),
      h("span", { class: "mono small" }, turn.model),
      tokensLine(tokenTotals(turn)), costLine(turn.cost_usd)),
    turnInput(turn, index),
    happened.length ? h("ol", { class: "events" }, happened.map(eventItem))
      : h("div", { class: "muted small" }, "The model answered without a tool call."));
}

/** One thread of the page: its prompt, when, its tokens, and its turns on this page. */
function threadCard(thread, sessionId, index, marks) {
  const turns = thread.interceptions || [];
  const continued = turns.length > 0 && turns[0].id !== thread.id;
  const totals = usageTotals(thread.token_usage);
  return h("section", { class: `card thread-card${marks.thread === thread.id ? " marked" : ""}`, id: `thread-${thread.id}`,
    dataset: { thread: thread.id } },
  h("header", { class: "thread-head" },
    h("div", { class: "thread-prompt" },
      h("a", { href: sessionHref(sessionId, { thread: thread.id, initiator: marks.initiator }), class: "thread-anchor", title: "This thread's address" }, "Thread"),
      " ", thread.prompt ? h("span", {}, truncate(thread.prompt, 160)) : h("span", { class: "muted" }, "(no prompt: tool results or a call of its own)")),
    h("div", { class: "muted small" }, fmtTime(thread.started_at), " · ", tokensLine(totals), " · ", costLine(thread.cost_usd))),
  continued ? h("p", { class: "muted small" }, "Continued from the earlier turns of this thread.") : null,
  h("ol", { class: "turns" }, turns.map((turn) => turnItem(turn, index, marks.turn === turn.id))));
}

/** The threads of a page of a session, oldest first; ``known`` turns from around the page help name tool results. */
export function timeline(session, known, marks) {
  const turns = (session.threads || []).flatMap((thread) => thread.interceptions || []);
  const index = toolCallIndex([...known, ...turns]);
  return h("div", { class: "timeline", dataset: { role: "timeline" } },
    (session.threads || []).map((thread) => threadCard(thread, session.id, index, marks)));
}
