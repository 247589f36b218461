"""Purging records out of retention, with the rollup periods they emptied."""

from __future__ import annotations

from bridge.store.common import CHILD_TABLES, SESSION_MEMBERS_TABLE, TOOL_ROLLUPS, USAGE_ROLLUPS, _day, _hour
from bridge.store.dialect import Dialect, writes
from bridge.store.sessions import Sessions


class Retention:
    """Deletes old interceptions (bridge.recorder's periodic purge, ``bridge retention purge``)."""

    def __init__(self, store: Dialect, sessions: Sessions) -> None:
        self.store = store
        self.sessions = sessions

    @writes
    def purge_records(self, cutoff_iso: str, chunk: int = 5000, *, max_chunks: int | None = None) -> int:
        """Delete interceptions started before ``cutoff_iso`` with their children; returns how many.

        Each chunk is its own short transaction (children first, then their interceptions) so a
        purge of millions of rows never holds locks for long. ``max_chunks`` bounds one call,
        letting the recorder interleave purging with writing.

        The usage rollups go by whole periods: a chunk also deletes the hourly rollup rows of the
        hours it has emptied, up to the hour of the cutoff, and the daily rows of the days before
        that hour's day. The cutoff's own partial hour (and day, in the daily rollups) stays, so the
        rollups keep counting interceptions of that hour (day) started before the cutoff until a
        later purge moves past it (the periodic purge does, hourly).

        The sessions a chunk took interceptions from lose what those counted, and the rest of the
        threads it cut is relinked (Sessions.purged).
        """
        cutoff_hour = _hour(cutoff_iso)
        deleted = chunks = 0
        while max_chunks is None or chunks < max_chunks:
            with self.store.write() as db:
                rows = db.execute(
                    "SELECT id, started_at FROM aibridge_interceptions WHERE started_at < ? ORDER BY started_at LIMIT ?",
                    [cutoff_iso, chunk],
                ).fetchall()
                ids = [row[0] for row in rows]
                if ids:
                    purge = self.sessions.purging(ids)  # their sessions locked first
                    for table in (*CHILD_TABLES.values(), SESSION_MEMBERS_TABLE, "aibridge_interceptions"):
                        condition, param = self.store._in("id" if table == "aibridge_interceptions" else "interception_id", ids)
                        db.execute(f"DELETE FROM {table} WHERE {condition}", [param])
                    self.sessions.purged(purge)
                # Interceptions go oldest first: every hour before the last one deleted is now empty
                # (all of them up to the cutoff's hour once the chunk is not full).
                emptied = cutoff_hour if len(ids) < chunk else min(cutoff_hour, _hour(rows[-1][1]))
                for rollups in (USAGE_ROLLUPS, TOOL_ROLLUPS):
                    db.execute(f"DELETE FROM {rollups['hour']} WHERE hour < ?", [emptied])
                    db.execute(f"DELETE FROM {rollups['day']} WHERE day < ?", [_day(emptied)])
            deleted += len(ids)
            chunks += 1
            if len(ids) < chunk:
                break
        return deleted
