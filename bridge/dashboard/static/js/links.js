// Links between views that more than one view builds.

/** A user's records: their sessions, most recently active first. */
export function userRecordsHref(username) {
  return `#/sessions?${new URLSearchParams({ initiator: username }).toString()}`;
}

/**
 * A session's page (GET sessions/{id} opens it from any browser): with ``thread`` it opens at that
 * thread, with ``turn`` (an interception of it) at that turn, marked; ``after`` / ``before`` (a turn's
 * id) are the pages of turns after / before it; ``initiator`` says whose session when several users'
 * sessions share the id.
 */
export function sessionHref(sessionId, { initiator = null, thread = null, turn = null, after = null, before = null } = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries({ initiator, thread, turn, after, before })) if (value) params.set(key, value);
  const query = params.toString();
  return `#/sessions/${encodeURIComponent(sessionId)}${query ? `?${query}` : ""}`;
}

/** The leaderboard of every user, for a range of the overview's (e.g. "30d"). */
export function leaderboardHref(range) {
  return `#/leaderboard?${new URLSearchParams({ range }).toString()}`;
}
