"""The gateway processes and the interceptions they own: heartbeats, and ending the interceptions a
process that is gone left open (bridge.recorder)."""

from __future__ import annotations

from typing import Any

from bridge.store.common import PROCESSES_TABLE, OwnerState, _json_text
from bridge.store.dialect import Dialect, writes
from bridge.store.sessions import Sessions


class Processes:
    """Each process's heartbeat, and the owners of open interceptions."""

    def __init__(self, store: Dialect, sessions: Sessions) -> None:
        self.store = store
        self.sessions = sessions

    @writes
    def heartbeat(self, owner: str, host: str, pid: int, started_at: str) -> None:
        """Register the process ``owner`` or say it is still alive (stamped with the database's clock)."""
        with self.store.write() as db:
            db.execute(
                f"INSERT INTO {PROCESSES_TABLE} (owner, host, pid, started_at, heartbeat)"
                f" VALUES (?, ?, ?, ?, {self.store._NOW_SECONDS})"
                " ON CONFLICT (owner) DO UPDATE SET heartbeat = excluded.heartbeat",
                [owner, host, pid, started_at],
            )

    @writes
    def forget_process(self, owner: str) -> None:
        """A process that stops cleanly removes itself: its interceptions (if any is left open) are orphans."""
        with self.store.write() as db:
            db.execute(f"DELETE FROM {PROCESSES_TABLE} WHERE owner = ?", [owner])

    def open_interception_owners(self) -> list[OwnerState]:
        """The owners of the interceptions not ended yet (None: rows written before owners were recorded),
        each with its process as registered (a partial index holds the open interceptions alone)."""
        rows = self.store.db.execute(
            f"SELECT o.owner, p.host, p.pid, p.started_at, p.heartbeat, {self.store._NOW_SECONDS} - p.heartbeat"
            " FROM (SELECT DISTINCT owner FROM aibridge_interceptions WHERE ended_at IS NULL) AS o"
            f" LEFT JOIN {PROCESSES_TABLE} AS p ON p.owner = o.owner"
        ).fetchall()
        return [OwnerState(*row) for row in rows]

    def oldest_live_process_start(self, silent_for: float) -> str | None:
        """When the longest running process that gave a heartbeat within ``silent_for`` seconds started."""
        return self.store.db.execute(
            f"SELECT min(started_at) FROM {PROCESSES_TABLE} WHERE heartbeat >= {self.store._NOW_SECONDS} - ?", [silent_for]
        ).fetchone()[0]

    @writes
    def end_open_interceptions(self, owner: str | None, ended_at: str, metadata: dict[str, Any],
                               started_before: str | None = None) -> int:
        """End the open interceptions of ``owner``, a process that is gone, ``metadata`` merged as an end
        merges it, and forget that process; returns how many were ended. ``owner`` None: the rows without
        an owner that started before ``started_before``. An interception ended meanwhile is left alone."""
        if owner is None:
            condition, params = "owner IS NULL AND started_at < ?", [started_before]
        else:
            condition, params = "owner = ?", [owner]
        with self.store.write() as db:
            # Their sessions are locked first (as the record writer locks them), then their end times told.
            open_ids = [row[0] for row in db.execute(
                f"SELECT id FROM aibridge_interceptions WHERE ended_at IS NULL AND {condition}", params)]
            self.sessions.lock_keys(member.key for member in self.sessions.members(open_ids).values())
            ended_ids = [row[0] for row in db.execute(
                f"UPDATE aibridge_interceptions SET ended_at = ?, metadata = {self.store._MERGE_METADATA}"
                f" WHERE ended_at IS NULL AND {condition} RETURNING id",
                [ended_at, _json_text(metadata), *params],
            )]
            self.sessions.ended([(interception_id, ended_at) for interception_id in ended_ids])
            ended = len(ended_ids)
            if owner is not None:
                db.execute(f"DELETE FROM {PROCESSES_TABLE} WHERE owner = ?", [owner])
        return ended

    @writes
    def forget_silent_processes(self, silent_for: float) -> int:
        """Forget processes silent for longer than ``silent_for`` seconds that own no open interception
        (killed ones with nothing in flight); returns how many. Looks first, so that the periodic call
        takes no write lock when there is nothing to forget."""
        silent = f"{PROCESSES_TABLE} WHERE heartbeat < {self.store._NOW_SECONDS} - ?"
        if self.store.db.execute(f"SELECT count(*) FROM {silent}", [silent_for]).fetchone()[0] == 0:
            return 0
        with self.store.write() as db:
            return db.execute(
                f"DELETE FROM {silent} AND NOT EXISTS"
                f" (SELECT 1 FROM aibridge_interceptions AS i WHERE i.ended_at IS NULL AND i.owner = {PROCESSES_TABLE}.owner)",
                [silent_for],
            ).rowcount
