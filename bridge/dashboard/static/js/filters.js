// The filter form the interceptions and sessions lists share: the API's q keys as fields (pick lists
// of the values the API knows), the page size, and the address that holds them.

import { CLIENTS, MODELS, USAGE, USERS, apiGet, apiGetOptional } from "./api.js";
import { h, replace, zoned } from "./dom.js";

/** The address's filter keys; "after"/"before" are started_after/started_before; "family" ("1"): the model
 * pick list offers model families (a Bedrock id and dated snapshots with their model) and fills "model_family". */
const FILTER_KEYS = ["initiator", "provider", "provider_name", "model", "model_family", "family", "client", "after", "before"];
export const FAMILY_LABEL = "Group Bedrock ids and dated snapshots with their model";
const PROVIDER_TYPES = ["anthropic", "openai", "copilot"];
const PAGE_SIZES = [25, 50, 100, 200];
const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 1000; // the API's

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

/** The filters and page size an address holds: {filters, limit}. */
export function readFilters(params) {
  const filters = Object.fromEntries(FILTER_KEYS.map((key) => [key, params.get(key) || ""]));
  const asked = Number(params.get("limit"));
  const limit = Number.isInteger(asked) && asked >= 1 && asked <= MAX_LIMIT ? asked : DEFAULT_LIMIT;
  return { filters, limit };
}

/** The API's q filters for the address's ones. */
export function qFilters(filters) {
  return {
    initiator: filters.initiator, provider: filters.provider, provider_name: filters.provider_name,
    model: filters.family ? "" : filters.model, model_family: filters.family ? filters.model_family : "", client: filters.client, started_after: filters.after, started_before: filters.before,
  };
}

/** A list's address ("#/sessions") with filters and extra parameters (empty ones left out). */
export function listHref(base, filters, extra = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries({ ...filters, ...extra })) if (value) params.set(key, value);
  const text = params.toString();
  return `${base}${text ? `?${text}` : ""}`;
}

export function limitExtra(limit) {
  return limit !== DEFAULT_LIMIT ? { limit: String(limit) } : {};
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

/**
 * The filter form of a list at ``base`` ("#/interceptions"): submitting it goes to the list's address
 * with the chosen filters. The pick lists fill themselves from the API (until the view is left);
 * a list whose values cannot be had (e.g. no models route) stays a text input. ``admin``: a user filter
 * (the API shows anyone else their own records only).
 */
export function filterForm(base, { filters, limit }, { admin, signal }) {
  const sizes = PAGE_SIZES.includes(limit) ? PAGE_SIZES : [...PAGE_SIZES, limit].sort((a, b) => a - b);
  const users = pickList("initiator", filters.initiator, "Any user", "username or id");
  const providerNames = pickList("provider_name", filters.provider_name, "Any provider name", "e.g. team-b");
  const family = filters.family === "1";
  const models = family ? pickList("model_family", filters.model_family, "Any model", "e.g. claude-sonnet-4-5")
    : pickList("model", filters.model, "Any model", "exact model name");
  const grouping = h("input", { type: "checkbox", name: "family", value: "1", checked: family, dataset: { role: "group-models" } });
  const clients = pickList("client", filters.client, "Any client", "e.g. Claude Code");
  const form = h("form", { class: "filters card", dataset: { form: "filters" } },
    admin ? field("User", users) : null,
    field("Provider", h("select", { name: "provider" }, h("option", { value: "" }, "Any provider"),
      PROVIDER_TYPES.map((type) => h("option", { value: type, selected: filters.provider === type }, type)))),
    field("Provider name", providerNames),
    field("Model", models),
    h("label", { class: "field check" }, grouping, h("span", {}, FAMILY_LABEL)),
    field("Client", clients),
    field(zoned("Started after"), h("input", { name: "after", type: "datetime-local", value: toLocalInput(filters.after) })),
    field(zoned("Started before"), h("input", { name: "before", type: "datetime-local", value: toLocalInput(filters.before) })),
    field("Per page", h("select", { name: "limit" }, sizes.map((n) => h("option", { value: String(n), selected: n === limit }, String(n))))),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "button primary" }, "Apply"),
      h("a", { href: base, class: "button ghost" }, "Clear")));
  const go = (changes = {}) => {
    const data = new FormData(form);
    const next = {};
    for (const key of FILTER_KEYS) {
      const value = String(data.get(key) || "").trim();
      next[key] = key === "after" || key === "before" ? fromLocalInput(value) : value;
    }
    window.location.hash = listHref(base, { ...next, ...changes }, limitExtra(Number(data.get("limit"))));
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go();
  });
  // Grouping swaps the model pick list (names or families), so the chosen model starts over.
  grouping.addEventListener("change", () => go({ model: "", model_family: "" }));

  const fill = (list, promise, values) => promise.then((body) => {
    const found = body && !signal.aborted ? values(body) : null;
    if (found) list.fill(found);
  }, () => {});
  fill(clients, apiGet(CLIENTS, {}, { signal }), (body) => body);
  fill(models, apiGetOptional(MODELS, family ? { group: "family" } : {}, { signal }),
    (body) => (Array.isArray(body) ? body.map((one) => (family ? one?.model : one)) : null));
  fill(providerNames, apiGet(USAGE, { by: "provider", bucket: "day", since: "90d" }, { signal }),
    (body) => (body.series || []).map((one) => one.key));
  if (admin) fill(users, apiGet(USERS, {}, { signal }), (body) => body.map((user) => user.username));
  return form;
}
