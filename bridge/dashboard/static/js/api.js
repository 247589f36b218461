// The JSON API with the gateway token the user pasted, and who that token belongs to (both kept in
// sessionStorage for this tab only).

const TOKEN_KEY = "bridge.dashboard.token";
const IDENTITY_KEY = "bridge.dashboard.me";

export const INTERCEPTIONS = "/api/v2/aibridge/interceptions";
export const SESSIONS = "/api/v2/aibridge/sessions";
export const CLIENTS = "/api/v2/aibridge/clients";
export const USAGE = "/api/v2/aibridge/usage";
export const TOOLS = "/api/v2/aibridge/tools";
export const MODELS = "/api/v2/aibridge/models";
export const BUDGETS = "/api/v2/aibridge/budgets";
export const USERS = "/api/v2/users";
export const ME = "/api/v2/users/me";

export class ApiError extends Error {
  constructor(status, message, detail = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** The signed-in user, {id, username, is_admin} as GET /api/v2/users/me answered, or null. */
export function getIdentity() {
  try {
    return JSON.parse(sessionStorage.getItem(IDENTITY_KEY) || "null");
  } catch {
    return null;
  }
}

export function isAdmin() {
  return Boolean(getIdentity()?.is_admin);
}

export function signIn(token, identity) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(IDENTITY_KEY, JSON.stringify(identity));
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(IDENTITY_KEY);
}

/** What a refusal means for the person at the keyboard. */
export function explain(error) {
  if (!(error instanceof ApiError)) return error?.message || String(error);
  if (error.status === 401) return "The token was not accepted: it is unknown, expired or revoked.";
  if (error.status === 403) return "This is for administrators only.";
  return error.detail ? `${error.message} (${error.detail})` : error.message;
}

/**
 * GET a JSON API path with query parameters (empty values left out). Throws ApiError with the API's
 * message on a non-2xx answer; a 401 with the stored token also signs the tab out (the app listens).
 */
export function apiGet(path, params = {}, { signal, token } = {}) {
  return request("GET", path, { params, signal, token });
}

/** PUT (with a JSON body) or DELETE a JSON API path; errors as apiGet's. A 204 answers null. */
export function apiSend(method, path, body = undefined, { signal } = {}) {
  return request(method, path, { body, signal });
}

async function request(method, path, { params = {}, body, signal, token } = {}) {
  const useToken = token ?? getToken();
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, String(value));
  }
  const headers = { Authorization: `Bearer ${useToken}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw new ApiError(0, `The gateway could not be reached (${error?.message || error}).`);
  }
  if (response.status === 204) return null;
  let answer = null;
  try {
    answer = await response.json();
  } catch (error) {
    if (error?.name === "AbortError" || signal?.aborted) throw new DOMException("The view was left", "AbortError");
    answer = null;
  }
  if (response.ok && (answer === null || typeof answer !== "object")) {
    throw new ApiError(response.status, `The gateway answered ${path} with something that is not a JSON object.`);
  }
  if (!response.ok) {
    const message = answer?.message || answer?.error?.message || `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, message, answer?.detail ?? null);
    if (response.status === 401 && token === undefined) {
      window.dispatchEvent(new CustomEvent("bridge:unauthorized", { detail: explain(error) }));
    }
    throw error;
  }
  return answer;
}

/** GET a route the gateway may not offer yet: its body, or null on any refusal (nothing is shown). */
export async function apiGetOptional(path, params = {}, { signal } = {}) {
  try {
    return await apiGet(path, params, { signal, token: getToken() }); // a given token: a 401 signs nobody out
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    return null;
  }
}

/** Quote a q filter value the way the API's shlex parser reads it back. */
export function qValue(value) {
  return `"${String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

export function buildQ(filters) {
  return Object.entries(filters)
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([key, value]) => `${key}:${qValue(value)}`)
    .join(" ");
}
