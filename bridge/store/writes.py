"""Writing interception records: one batch in one transaction, with its ends and its additions to
the usage rollups."""

from __future__ import annotations

from typing import Any

from bridge.store.common import CHILD_TABLES, RecordBatch
from bridge.store.dialect import Dialect, writes
from bridge.store.rollups import Rollups
from bridge.store.sessions import Sessions

#: Children whose newly inserted rows are counted (rollups, sessions): a replayed one adds nothing.
_COUNTED_CHILDREN = ("token_usages", "user_prompts", "tool_usages")


def first_of_each(records: list[Any], new_ids: set[Any]) -> list[Any]:
    """The records whose id is in ``new_ids`` (the ids an insert stored), the first of each id."""
    new_ids = set(new_ids)
    new = []
    for record in records:
        if record.id in new_ids:
            new_ids.discard(record.id)
            new.append(record)
    return new


class RecordWrites:
    """The record writer's way in (bridge.recorder, on the write thread)."""

    def __init__(self, store: Dialect, rollups: Rollups, sessions: Sessions) -> None:
        self.store = store
        self.rollups = rollups
        self.sessions = sessions

    @writes
    def write_records(self, batch: RecordBatch) -> None:
        """Write a batch in one transaction; idempotent, so a journal can be replayed safely.

        The usage rollups (migration 0004) and the sessions and threads (0006) are brought up to date
        in the same transaction, counting only the rows this call actually inserts: a replayed batch
        adds nothing.

        Raises StoreError for a record of another table's class or for an end whose interception does
        not exist.
        """
        if not len(batch):
            return
        batch = self.store._storable(batch)
        with self.store.write():
            new_interceptions = self.store._inserted("aibridge_interceptions", batch.interceptions)
            self.sessions.lock(batch, new_interceptions)  # before any row of a stored interception is changed
            if batch.ends:
                self.store._end_interceptions(batch.ends)
            new_children: dict[str, list[Any]] = {}
            for name, table in CHILD_TABLES.items():
                rows = getattr(batch, name)
                if name in _COUNTED_CHILDREN:
                    new_children[name] = self.store._inserted(table, rows)
                else:
                    self.store._insert_rows(table, rows)
            self.sessions.add(new_interceptions, batch.ends, new_children["token_usages"], new_children["user_prompts"],
                              new_children["tool_usages"])
            self.rollups.add(new_interceptions, new_children["token_usages"], new_children["tool_usages"])
