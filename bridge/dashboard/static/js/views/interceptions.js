// The interceptions list: filters (the API's q keys), newest first, paged with the after_id cursor.

import { CLIENTS, MODELS, USAGE, USERS, apiGet, apiGetOptional, explain, isAdmin } from "../api.js";
import { fmtInt, fmtTime, h, notice, replace, spinner, truncate, zoned } from "../dom.js";
import { fetchPage } from "../records.js";

const FILTER_KEYS = ["initiator", "provider", "provider_name", "model", "client", "after", "before"];
const PROVIDER_TYPES = ["anthropic", "openai", "copilot"];
const PAGE_SIZES = [25, 50, 100, 200];
const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 1000; // the API's

// For each cursor met while paging with these filters: the cursor of the page before it ("Newer")
// and the position of its first row. Forgotten when the filters change.
const pager = { signature: "", previous: new Map(), offset: new Map() };
// The list as last shown (filters and page), for the detail view's way back.
export const lastList = { hash: "#/interceptions" };

function pad(n) {
  return String(n).padStart(2, "0");
}

/** ISO -> the value of a datetime-local input (local time). */
function toLocalInput(iso) {
  const ms = Date.parse(iso);
  if (!iso || Number.isNaN(ms)) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : new Date(ms).toISOString();
}

/** An interception's own address: it opens from any browser (GET interceptions/{id}), after sign-in too. */
export function detailHref(record) {
  return `#/interceptions/${encodeURIComponent(record.id)}`;
}

function listHref(filters, extra = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries({ ...filters, ...extra })) if (value) params.set(key, value);
  const text = params.toString();
  return `#/interceptions${text ? `?${text}` : ""}`;
}

export function tokenTotals(record) {
  const totals = { input_tokens: 0, output_tokens: 0, cache_read_input_tokens: 0, cache_write_input_tokens: 0 };
  for (const usage of record.token_usages || []) for (const key of Object.keys(totals)) totals[key] += Number(usage[key]) || 0;
  return totals;
}

export function userName(record) {
  return record.initiator?.username || record.initiator?.id || "—";
}

function field(label, control) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control);
}

/**
 * A filter that is a text input until the values it can take are known, then a pick list of them
 * ("" = any). The value in the address stays selectable even when it is not among them.
 */
function pickList(name, current, anyLabel, placeholder) {
  const input = h("input", { name, value: current, placeholder, autocomplete: "off" });
  const holder = h("span", { class: "pick", dataset: { pick: name } }, input);
  holder.fill = (values) => {
    const chosen = input.value.trim(); // what the address gave, or what was typed before the list came
    const names = [...new Set((values || []).filter((v) => typeof v === "string" && v !== ""))];
    if (chosen && !names.includes(chosen)) names.push(chosen);
    names.sort((a, b) => a.localeCompare(b));
    replace(holder, h("select", { name }, h("option", { value: "" }, anyLabel),
      names.map((value) => h("option", { value, selected: value === chosen }, value))));
  };
  return holder;
}

function row(record) {
  const totals = tokenTotals(record);
  const prompt = (record.user_prompts || []).map((p) => p.prompt).filter(Boolean).pop();
  const href = detailHref(record);
  const tokensTitle = `input ${fmtInt(totals.input_tokens)}, output ${fmtInt(totals.output_tokens)}, ` +
    `cache read ${fmtInt(totals.cache_read_input_tokens)}, cache write ${fmtInt(totals.cache_write_input_tokens)}`;
  const cache = totals.cache_read_input_tokens + totals.cache_write_input_tokens;
  return h("tr", { class: "clickable", dataset: { id: record.id, href }, tabindex: "-1" },
    h("td", { class: "nowrap" }, h("a", { href, class: "row-link" }, fmtTime(record.started_at))),
    h("td", {}, userName(record)),
    h("td", {}, h("div", {}, record.provider_name || record.provider),
      record.provider_name && record.provider_name !== record.provider ? h("div", { class: "muted small" }, record.provider) : null),
    h("td", { class: "mono" }, record.model),
    h("td", {}, record.client || "—"),
    h("td", { class: "num", title: tokensTitle }, h("div", {}, `${fmtInt(totals.input_tokens)} / ${fmtInt(totals.output_tokens)}`),
      cache ? h("div", { class: "muted small" }, `+${fmtInt(cache)} cache`) : null),
    h("td", { class: "num" }, fmtInt((record.tool_usages || []).length)),
    h("td", { class: "prompt-cell" }, prompt ? truncate(prompt, 90)
      : h("span", { class: "muted" }, record.correlating_tool_call_id ? "tool results" : "—")));
}

export async function renderInterceptions(main, params, { signal }) {
  lastList.hash = window.location.hash || "#/interceptions";
  const filters = Object.fromEntries(FILTER_KEYS.map((key) => [key, params.get(key) || ""]));
  const asked = Number(params.get("limit"));
  const limit = Number.isInteger(asked) && asked >= 1 && asked <= MAX_LIMIT ? asked : DEFAULT_LIMIT;
  const sizes = PAGE_SIZES.includes(limit) ? PAGE_SIZES : [...PAGE_SIZES, limit].sort((a, b) => a - b);
  const cursor = params.get("cursor") || null;
  const signature = JSON.stringify([filters, limit]);
  if (pager.signature !== signature) {
    pager.signature = signature;
    pager.previous = new Map();
    pager.offset = new Map();
  }

  const admin = isAdmin();
  const users = pickList("initiator", filters.initiator, "Any user", "username or id");
  const providerNames = pickList("provider_name", filters.provider_name, "Any provider name", "e.g. team-b");
  const models = pickList("model", filters.model, "Any model", "exact model name");
  const clients = pickList("client", filters.client, "Any client", "e.g. Claude Code");
  const form = h("form", { class: "filters card", dataset: { form: "filters" } },
    admin ? field("User", users) : null, // the API shows a non-admin their own records only
    field("Provider", h("select", { name: "provider" }, h("option", { value: "" }, "Any provider"),
      PROVIDER_TYPES.map((type) => h("option", { value: type, selected: filters.provider === type }, type)))),
    field("Provider name", providerNames),
    field("Model", models),
    field("Client", clients),
    field(zoned("Started after"), h("input", { name: "after", type: "datetime-local", value: toLocalInput(filters.after) })),
    field(zoned("Started before"), h("input", { name: "before", type: "datetime-local", value: toLocalInput(filters.before) })),
    field("Per page", h("select", { name: "limit" }, sizes.map((n) => h("option", { value: String(n), selected: n === limit }, String(n))))),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "button primary" }, "Apply"),
      h("a", { href: "#/interceptions", class: "button ghost" }, "Clear")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = {};
    for (const key of FILTER_KEYS) {
      const value = String(data.get(key) || "").trim();
      next[key] = key === "after" || key === "before" ? fromLocalInput(value) : value;
    }
    const size = Number(data.get("limit"));
    window.location.hash = listHref(next, size !== DEFAULT_LIMIT ? { limit: String(size) } : {});
  });

  const summary = h("span", { class: "muted", dataset: { role: "count" } });
  const results = h("div", { class: "results" }, spinner("Loading interceptions…"));
  replace(main, h("div", { class: "view", dataset: { view: "interceptions" } },
    h("div", { class: "toolbar" }, h("h1", {}, "Interceptions"), summary),
    admin ? null : notice("empty", "You see your own interceptions. Administrators see everyone's."),
    form, results));

  // The pick lists' values; where one cannot be had (e.g. no models route yet) the text input stays.
  const fill = (list, promise, values) => promise.then((body) => {
    const found = body && !signal.aborted ? values(body) : null;
    if (found) list.fill(found);
  }, () => {});
  fill(clients, apiGet(CLIENTS, {}, { signal }), (body) => body);
  fill(models, apiGetOptional(MODELS, {}, { signal }), (body) => (Array.isArray(body) ? body : null));
  fill(providerNames, apiGet(USAGE, { by: "provider", bucket: "day", since: "90d" }, { signal }),
    (body) => (body.series || []).map((one) => one.key));
  if (admin) fill(users, apiGet(USERS, {}, { signal }), (body) => body.map((user) => user.username));

  const q = {
    initiator: filters.initiator, provider: filters.provider, provider_name: filters.provider_name, model: filters.model,
    client: filters.client, started_after: filters.after, started_before: filters.before,
  };
  let page;
  try {
    page = await fetchPage(q, { limit, afterId: cursor, signal });
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    replace(results, notice("error", explain(error)));
    return;
  }
  if (signal.aborted) return;
  const offset = cursor ? pager.offset.get(cursor) : 0; // undefined: a page reached from a pasted URL
  const shown = page.results.length;
  replace(summary, page.count === 0 ? "No matching interceptions" : offset === undefined
    ? `${fmtInt(shown)} shown of ${fmtInt(page.count)} matching`
    : `${fmtInt(offset + 1)}–${fmtInt(offset + shown)} of ${fmtInt(page.count)} matching`);

  if (shown === 0) {
    replace(results, notice("empty", cursor ? "No more interceptions." : "No interceptions match these filters."),
      cursor ? h("nav", { class: "pager" }, h("a", { class: "button", href: listHref(filters, limitExtra(limit)) }, "« Newest")) : null);
    return;
  }
  const table = h("table", { class: "data-table interceptions", dataset: { table: "interceptions" } },
    h("thead", {}, h("tr", {}, [zoned("Started"), "User", "Provider", "Model", "Client", "Tokens in / out", "Tools", "Prompt"].map((title, i) =>
      h("th", { class: i === 5 || i === 6 ? "num" : "" }, title)))),
    h("tbody", {}, page.results.map(row)));
  table.addEventListener("click", (event) => {
    if (event.target.closest("a")) return; // the link navigates by itself
    const tr = event.target.closest("tr[data-href]");
    if (tr && !window.getSelection()?.toString()) window.location.hash = tr.dataset.href;
  });

  const last = page.results[page.results.length - 1];
  const hasOlder = offset === undefined ? shown === limit : offset + shown < page.count;
  const hasNewer = Boolean(cursor) && pager.previous.has(cursor);
  const newer = () => {
    window.location.hash = listHref(filters, { ...limitExtra(limit), cursor: pager.previous.get(cursor) || "" });
  };
  const older = () => {
    pager.previous.set(last.id, cursor);
    if (offset !== undefined) pager.offset.set(last.id, offset + shown);
    window.location.hash = listHref(filters, { ...limitExtra(limit), cursor: last.id });
  };
  replace(results, h("div", { class: "card table-card" }, h("div", { class: "table-wrap" }, table)),
    h("nav", { class: "pager", "aria-label": "Pages" },
      h("a", { class: `button${cursor ? "" : " disabled"}`, href: listHref(filters, limitExtra(limit)), "aria-disabled": cursor ? null : "true" }, "« Newest"),
      h("button", { type: "button", class: "button", disabled: !hasNewer, onclick: newer, dataset: { page: "newer" } }, "‹ Newer"),
      h("button", { type: "button", class: "button", disabled: !hasOlder, onclick: older, dataset: { page: "next" } }, "Next page ›")));
}

function limitExtra(limit) {
  return limit !== DEFAULT_LIMIT ? { limit: String(limit) } : {};
}
