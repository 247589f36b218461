// Interceptions seen in this tab, by id and by tool call id (for the detail view and threads), and
// the bounded lookups that find an interception or its thread neighbours through the paged API.

import { ApiError, INTERCEPTIONS, apiGet, buildQ } from "./api.js";

const MAX_CACHED = 5000;
const byId = new Map();
const byToolCall = new Map(); // provider_tool_call_id -> Set of interception ids that made such a call
const byCorrelating = new Map(); // correlating_tool_call_id -> Set of interception ids answering it

// Whether the API knows the thread filters (an API addition): null until tried, then kept for the tab.
const FEATURES_KEY = "bridge.dashboard.features";
const features = { toolCallFilter: null, correlatingFilter: null, ...readFeatures() };

function readFeatures() {
  try {
    return JSON.parse(sessionStorage.getItem(FEATURES_KEY) || "{}");
  } catch {
    return {};
  }
}

function learned(feature, supported) {
  features[feature] = supported;
  sessionStorage.setItem(FEATURES_KEY, JSON.stringify(features));
}

export function remember(records) {
  for (const record of records || []) {
    if (!record?.id) continue;
    forget(record.id); // a newer copy (e.g. ended since) replaces it, as the most recently seen
    byId.set(record.id, record);
    for (const tool of record.tool_usages || []) {
      if (tool.provider_tool_call_id) addTo(byToolCall, tool.provider_tool_call_id, record.id);
    }
    if (record.correlating_tool_call_id) addTo(byCorrelating, record.correlating_tool_call_id, record.id);
  }
  while (byId.size > MAX_CACHED) forget(byId.keys().next().value);
}

/** Drop a record and its tool call ids from the indexes, so that they stay as bounded as the cache. */
function forget(id) {
  const record = byId.get(id);
  if (!record) return;
  byId.delete(id);
  for (const tool of record.tool_usages || []) removeFrom(byToolCall, tool.provider_tool_call_id, id);
  removeFrom(byCorrelating, record.correlating_tool_call_id, id);
}

function addTo(index, key, id) {
  if (!index.has(key)) index.set(key, new Set());
  index.get(key).add(id);
}

function removeFrom(index, key, id) {
  const ids = index.get(key);
  if (!ids) return;
  ids.delete(id);
  if (ids.size === 0) index.delete(key);
}

export function cached(id) {
  return byId.get(id) || null;
}

/**
 * The known interception whose tool call ``record`` answers: among those that made a call with its
 * correlating id, the same user's latest one started before it (a call id should be unique, but a
 * client replaying a conversation can repeat one).
 */
function knownParent(record) {
  const callId = record.correlating_tool_call_id;
  let best = null;
  for (const id of byToolCall.get(callId) || []) {
    const candidate = cached(id);
    if (!candidate || candidate.id === record.id || candidate.started_at > record.started_at) continue;
    if ((candidate.initiator?.id ?? null) !== (record.initiator?.id ?? null)) continue;
    if (!best || candidate.started_at > best.started_at) best = candidate;
  }
  return best;
}

function isoPlusMs(iso, deltaMs) {
  return new Date(Date.parse(iso) + deltaMs).toISOString();
}

/** A page of interceptions matching filters; remembered for later lookups. */
export async function fetchPage(filters, { limit = 50, afterId = null, signal } = {}) {
  const q = buildQ(filters);
  const page = await apiGet(INTERCEPTIONS, { q, limit, after_id: afterId }, { signal });
  remember(page.results);
  return page;
}

/** One interception by id (GET interceptions/{id}), or null when the API does not know it (or it is not the caller's). */
export async function fetchInterception(id, { signal } = {}) {
  const known = cached(id);
  if (known?.ended_at) return known; // one still in progress is read again: it may have ended since
  try {
    const one = await apiGet(`${INTERCEPTIONS}/${encodeURIComponent(id)}`, {}, { signal });
    remember([one]);
    return one;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

async function tryFilter(feature, filters, signal) {
  if (features[feature] === false) return null;
  try {
    const page = await fetchPage(filters, { limit: 20, signal });
    if (features[feature] !== true) learned(feature, true);
    return page.results;
  } catch (error) {
    if (error instanceof ApiError && error.status === 400) {
      learned(feature, false); // this API has no such filter: look through pages instead
      return null;
    }
    throw error;
  }
}

/** Scan a time window of one user's interceptions (newest first), a few pages at most. */
async function scanWindow(record, startedAfter, startedBefore, found, budget, signal) {
  const filters = { started_after: startedAfter, started_before: startedBefore };
  if (record.initiator?.id) filters.initiator = record.initiator.id;
  let afterId = null;
  for (let pageNo = 0; pageNo < 3 && budget.calls > 0; pageNo += 1) {
    budget.calls -= 1;
    const page = await fetchPage(filters, { limit: 200, afterId, signal });
    if (found()) return true;
    if (page.results.length < 200) return false;
    afterId = page.results[page.results.length - 1].id;
  }
  return Boolean(found());
}

/** The interception whose tool call this one answers (its correlating_tool_call_id), or null. */
export async function findParent(record, budget, signal) {
  const callId = record.correlating_tool_call_id;
  if (!callId) return null;
  const lookup = () => knownParent(record);
  if (lookup()) return lookup();
  if (budget.calls <= 0) return undefined;
  budget.calls -= 1;
  const direct = await tryFilter("toolCallFilter", { tool_call_id: callId }, signal);
  if (direct) return lookup();
  budget.calls += 1; // the filter was not there: the call taught us that, nothing more
  // The call came shortly before: the last hour first, then the rest of the day before.
  const hour = 3600 * 1000;
  for (const [from, to] of [[-hour, 1], [-24 * hour, -hour]]) {
    if (budget.calls <= 0) return undefined;
    await scanWindow(record, isoPlusMs(record.started_at, from), isoPlusMs(record.started_at, to), lookup, budget, signal);
    if (lookup()) return lookup();
  }
  return null;
}

/** The interceptions answering this one's tool calls, oldest first. */
export async function findChildren(record, budget, signal) {
  const callIds = (record.tool_usages || []).map((t) => t.provider_tool_call_id).filter(Boolean);
  if (callIds.length === 0) return [];
  const collect = () => {
    const ids = new Set();
    for (const callId of callIds) for (const id of byCorrelating.get(callId) || []) ids.add(id);
    ids.delete(record.id);
    return [...ids].map(cached).filter((child) => child && knownParent(child)?.id === record.id)
      .sort((a, b) => a.started_at.localeCompare(b.started_at));
  };
  if (collect().length) return collect();
  if (features.correlatingFilter !== false) {
    let supported = true;
    for (const callId of callIds.slice(0, 8)) {
      if (budget.calls <= 0) return collect();
      budget.calls -= 1;
      const direct = await tryFilter("correlatingFilter", { correlating_tool_call_id: callId }, signal);
      if (direct === null) {
        budget.calls += 1;
        supported = false;
        break;
      }
    }
    if (supported) return collect();
  }
  // The answers come shortly after: the next quarter of an hour first, then the rest of the day.
  const minute = 60 * 1000;
  for (const [from, to] of [[0, 15 * minute], [15 * minute, 24 * 60 * minute]]) {
    if (budget.calls <= 0) break;
    await scanWindow(record, isoPlusMs(record.started_at, from), isoPlusMs(record.started_at, to),
      () => collect().length > 0, budget, signal);
    if (collect().length) break;
  }
  return collect();
}

/**
 * The thread around ``record``: the chain of interceptions whose tool calls led to it (oldest first)
 * and the chain that followed from its tool calls. ``complete`` is false when the lookup budget ran out.
 */
export async function findThread(record, { signal, maxDepth = 25, calls = 12 } = {}) {
  const budget = { calls };
  let complete = true;
  const before = [];
  let current = record;
  const seen = new Set([record.id]);
  for (let depth = 0; depth < maxDepth; depth += 1) {
    const parent = await findParent(current, budget, signal);
    if (parent === undefined) { complete = false; break; }
    if (!parent || seen.has(parent.id)) break;
    seen.add(parent.id);
    before.unshift(parent);
    current = parent;
  }
  const after = [];
  let frontier = [record];
  for (let depth = 0; depth < maxDepth && frontier.length; depth += 1) {
    const next = [];
    for (const node of frontier) {
      for (const child of await findChildren(node, budget, signal)) {
        if (seen.has(child.id)) continue;
        seen.add(child.id);
        after.push({ record: child, answers: node.id });
        next.push(child);
      }
    }
    frontier = next.slice(0, 10);
  }
  if (budget.calls <= 0) complete = false;
  return { before, after, complete };
}
