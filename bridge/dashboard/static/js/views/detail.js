// One interception: prompt, tool calls with their arguments, thoughts, token usage, metadata, thread.

import { explain } from "../api.js";
import { fmtUsd } from "../costs.js";
import { VIEWER_ZONE, fmtDuration, fmtInt, fmtTime, h, notice, prettyJson, replace, spinner, truncate, zoned } from "../dom.js";
import { sessionHref } from "../links.js";
import { fetchInterception, findThread } from "../records.js";
import { FIGURES, tokenTotals } from "../tokens.js";
import { detailHref, lastList, userName } from "./interceptions.js";


function section(title, name, ...children) {
  return h("section", { class: "card detail-section", dataset: { section: name } },
    h("header", { class: "card-header" }, h("h2", {}, title)), ...children);
}

/** A section whose header also says which zone its times are in. */
function timedSection(title, name, ...children) {
  return h("section", { class: "card detail-section", dataset: { section: name } },
    h("header", { class: "card-header" }, h("h2", {}, title), h("span", { class: "muted small", dataset: { zone: VIEWER_ZONE } },
      `times in ${VIEWER_ZONE}`)), ...children);
}

function codeBlock(value, className = "") {
  const { text, json } = prettyJson(value);
  return h("pre", { class: `code${json ? " json" : ""} ${className}`.trim() }, text);
}

function isEmptyObject(value) {
  return value === null || value === undefined || value === "" ||
    (typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 0);
}

function meta(record) {
  const rows = [
    ["User", userName(record)],
    ["Provider", record.provider_name && record.provider_name !== record.provider
      ? `${record.provider_name} (${record.provider})` : record.provider],
    ["Model", record.model],
    ["Client", record.client || "—"],
    ["Client session", record.client_session_id || "—"],
    ["Session", record.session_id
      ? h("a", { href: sessionHref(record.session_id), dataset: { role: "session-link" } }, record.session_id) : "—"],
    ["Thread", record.session_id && record.thread_id
      ? h("a", { href: sessionHref(record.session_id, { thread: record.thread_id, turn: record.id }), dataset: { role: "thread-link" } },
        "this turn in its thread ›") : "—"],
    ["User agent", record.user_agent || "—"],
    ["Credential", [record.credential_kind, record.credential_hint].filter(Boolean).join(" · ") || "—"],
    [zoned("Started"), fmtTime(record.started_at)],
    [zoned("Ended"), record.ended_at ? fmtTime(record.ended_at) : "in progress"],
    ["Duration", record.ended_at ? fmtDuration(record.started_at, record.ended_at) : "—"],
    ["Answers tool call", record.correlating_tool_call_id || "—"],
  ];
  return h("dl", { class: "meta-grid" }, rows.map(([label, value]) => h("div", { class: "meta-item" },
    h("dt", {}, label), h("dd", { class: ["Model", "Answers tool call", "Session"].includes(label) ? "mono" : "" }, value))));
}

function otherFigures(metadata) {
  if (isEmptyObject(metadata)) return "—";
  if (typeof metadata !== "object") return String(metadata);
  return h("dl", { class: "figures" }, Object.entries(metadata).map(([key, value]) => h("div", {},
    h("dt", {}, key),
    h("dd", {}, typeof value === "number" ? fmtInt(value) : JSON.stringify(value)))));
}

function usageSection(record) {
  const usages = record.token_usages || [];
  if (usages.length === 0) return section("Token usage", "usage", notice("empty", "No token usage was recorded."));
  const totals = tokenTotals(record);
  const cards = h("div", { class: "cards compact" }, FIGURES.map(([key, label]) =>
    h("div", { class: "card stat", dataset: { usage: key, value: String(totals[key]) } },
      h("div", { class: "stat-label" }, label),
      h("div", { class: "stat-value" }, fmtInt(totals[key])))),
  h("div", { class: "card stat", dataset: { usage: "cost_usd", value: String(record.cost_usd ?? "") } },
    h("div", { class: "stat-label" }, "Cost"),
    h("div", { class: "stat-value" }, fmtUsd(record.cost_usd))));
  const head = h("thead", {}, h("tr", {},
    h("th", {}, "Response"),
    FIGURES.map(([, label]) => h("th", { class: "num" }, label)),
    h("th", { class: "num" }, "Cost"),
    h("th", {}, "Other figures")));
  const body = h("tbody", {}, usages.map((usage) => h("tr", {},
    h("td", { class: "mono" }, usage.provider_response_id || "—"),
    FIGURES.map(([key]) => h("td", { class: "num" }, fmtInt(usage[key]))),
    h("td", { class: "num", dataset: { figure: "cost_usd" } }, fmtUsd(usage.cost_usd)),
    h("td", { class: "figures-cell" }, otherFigures(usage.metadata)))));
  const unpriced = usages.some((usage) => usage.cost_usd === null || usage.cost_usd === undefined)
    ? h("p", { class: "muted small", dataset: { role: "unpriced" } }, "—: the price table has no price for this model.") : null;
  return section("Token usage", "usage", cards, h("div", { class: "table-wrap" }, h("table", { class: "data-table" }, head, body)), unpriced);
}

function promptSection(record) {
  const prompts = record.user_prompts || [];
  if (prompts.length === 0) {
    return section("Prompt", "prompt", notice("empty", record.correlating_tool_call_id
      ? "No prompt: this turn returned tool results to the model." : "No prompt was recorded."));
  }
  return section(prompts.length > 1 ? "Prompts" : "Prompt", "prompt",
    prompts.map((prompt) => h("pre", { class: "prompt-text", dataset: { prompt: "" } }, prompt.prompt)));
}

function toolsSection(record) {
  const tools = record.tool_usages || [];
  if (tools.length === 0) return section("Tool calls", "tools", notice("empty", "The model made no tool call."));
  return section(`Tool calls (${tools.length})`, "tools", tools.map((tool) => h("article", { class: "tool-call", dataset: { tool: tool.tool } },
    h("header", { class: "tool-header" },
      h("span", { class: "tool-name mono" }, tool.tool),
      tool.injected ? h("span", { class: "badge" }, "injected") : null,
      tool.invocation_error ? h("span", { class: "badge danger" }, "error") : null,
      h("span", { class: "muted mono small" }, tool.provider_tool_call_id || "")),
    tool.server_url ? h("div", { class: "muted small" }, `MCP server: ${tool.server_url}`) : null,
    h("div", { class: "field-label" }, "Arguments"),
    codeBlock(tool.input ?? "", "tool-input"),
    tool.invocation_error ? h("div", { class: "notice error" }, tool.invocation_error) : null)));
}

function thoughtsSection(record) {
  const thoughts = record.model_thoughts || [];
  if (thoughts.length === 0) return section("Thoughts", "thoughts", notice("empty", "No model thoughts were recorded."));
  return section(`Thoughts (${thoughts.length})`, "thoughts", thoughts.map((thought) => h("article", { class: "thought" },
    h("span", { class: "badge" }, thought.metadata?.source || "unknown source"),
    h("pre", { class: "thought-text" }, thought.content))));
}

function threadItem(record, relation, current = false) {
  const prompt = (record.user_prompts || []).map((p) => p.prompt).filter(Boolean).pop();
  const tools = (record.tool_usages || []).map((t) => t.tool);
  const summary = prompt ? truncate(prompt, 100)
    : record.correlating_tool_call_id ? "tool results" : "—";
  const label = [fmtTime(record.started_at), record.model].join(" · ");
  return h("li", { class: current ? "thread-item current" : "thread-item", dataset: { thread: relation, id: record.id } },
    current ? h("span", { class: "thread-title" }, label) : h("a", { href: detailHref(record), class: "thread-title" }, label),
    h("span", { class: "badge subtle" }, relation),
    h("div", { class: "thread-summary" }, summary),
    tools.length ? h("div", { class: "muted small" }, `tool calls: ${tools.join(", ")}`) : null);
}

async function fillThread(container, record, signal) {
  let thread;
  try {
    thread = await findThread(record, { signal });
  } catch (error) {
    if (error?.name === "AbortError") return;
    replace(container, notice("error", `The thread could not be loaded: ${explain(error)}`));
    return;
  }
  if (signal.aborted) return;
  const items = [
    ...thread.before.map((r, i) => threadItem(r, i === thread.before.length - 1 ? "called the tool this answers" : "earlier")),
    threadItem(record, "this interception", true),
    ...thread.after.map(({ record: r, answers }) => threadItem(r, answers === record.id ? "answers its tool calls" : "later")),
  ];
  const missing = record.correlating_tool_call_id && thread.before.length === 0
    ? notice("empty", `The interception that made tool call ${record.correlating_tool_call_id} was not found.`) : null;
  replace(container,
    thread.before.length + thread.after.length === 0 && !record.correlating_tool_call_id
      ? notice("empty", "No linked interceptions: this one neither answers a tool call nor has its tool calls answered.")
      : h("ol", { class: "thread" }, items),
    missing,
    thread.complete ? null : h("p", { class: "muted small" }, "The search for more linked interceptions stopped here."));
}

export async function renderDetail(main, { id, signal }) {
  replace(main, h("div", { class: "view", dataset: { view: "detail" } }, spinner("Loading the interception…")));
  let record;
  try {
    record = await fetchInterception(id, { signal });
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    replace(main, h("div", { class: "view", dataset: { view: "detail" } }, backLink(), notice("error", explain(error))));
    return;
  }
  if (signal.aborted) return;
  if (!record) {
    replace(main, h("div", { class: "view", dataset: { view: "detail" } }, backLink(),
      notice("error", `Interception ${id} was not found: it does not exist, was deleted by retention, or is not yours to see.`)));
    return;
  }
  const thread = h("div", {}, spinner("Looking for linked interceptions…"));
  replace(main, h("div", { class: "view", dataset: { view: "detail", id: record.id } },
    backLink(),
    h("div", { class: "toolbar" },
      h("div", {}, h("h1", {}, h("span", { class: "mono" }, record.model), " ", h("span", { class: "muted" }, `via ${record.provider_name || record.provider}`)),
        h("p", { class: "muted mono small" }, record.id)),
      record.session_id ? h("a", { class: "button", href: sessionHref(record.session_id, { thread: record.thread_id, turn: record.id }),
        dataset: { role: "open-session" } }, "Open in its session ›") : null),
    h("div", { class: "detail-grid" },
      h("div", { class: "detail-main" },
        promptSection(record),
        toolsSection(record),
        thoughtsSection(record),
        usageSection(record)),
      h("aside", { class: "detail-side" },
        section("Details", "meta", meta(record)),
        timedSection("Thread", "thread", thread),
        section("Metadata", "metadata", isEmptyObject(record.metadata) ? notice("empty", "None.") : codeBlock(record.metadata))))));
  fillThread(thread, record, signal);
}

function backLink() {
  return h("a", { href: lastList.hash, class: "back-link" }, "← Interceptions");
}
