// Links between views that more than one view builds.

/** A user's records: their sessions, most recently active first. */
export function userRecordsHref(username) {
  return `#/sessions?${new URLSearchParams({ initiator: username }).toString()}`;
}

/**
 * A session's page (GET sessions/{id} opens it from any browser): with ``thread`` it opens at that
 * thread, with ``turn`` (an interception of it) at that turn, marked; ``initiator`` says whose session
 * when several users' sessions share the id.
 */
export function sessionHref(sessionId, { thread = null, turn = null, initiator = null } = {}) {
  const params = new URLSearchParams();
  if (initiator) params.set("initiator", initiator);
  if (thread) params.set("thread", thread);
  if (turn) params.set("turn", turn);
  const query = params.toString();
  return `#/sessions/${encodeURIComponent(sessionId)}${query ? `?${query}` : ""}`;
}

/** The leaderboard of every user, for a range of the overview's (e.g. "30d"). */
export function leaderboardHref(range) {
  return `#/leaderboard?${new URLSearchParams({ range }).toString()}`;
}
