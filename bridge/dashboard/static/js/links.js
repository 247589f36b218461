// Links between views that more than one view builds.

/** A user's records: their interceptions (the sessions view can take this over in this one place). */
export function userRecordsHref(username) {
  return `#/interceptions?${new URLSearchParams({ initiator: username }).toString()}`;
}

/** The leaderboard of every user, for a range of the overview's (e.g. "30d"). */
export function leaderboardHref(range) {
  return `#/leaderboard?${new URLSearchParams({ range }).toString()}`;
}
