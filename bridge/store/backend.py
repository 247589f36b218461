"""``Store``: the base of the backends (``sqlite.SqliteStore``, ``postgres.PostgresStore``), a
connection (``Dialect``) with the store's concerns on it, each created on first use:

- ``store.identity``: users, tokens, authentication (identity.py);
- ``store.records``: writing record batches (writes.py);
- ``store.rollups``: the usage rollups (rollups.py);
- ``store.costs``: pricing token usages stored without a cost (costs.py);
- ``store.retention``: purging old records (retention.py);
- ``store.processes``: heartbeats and the interceptions of processes that are gone (processes.py);
- ``store.sessions``: sessions and threads, kept with the records (sessions.py);
- ``store.queries``: reading records and usage (queries.py);
- ``store.session_queries``: reading sessions and their threads (session_queries.py);
- ``store.budgets``: budgets and the spend they are held to (budgets.py).

Open one with ``bridge.store.open_store(target)``.
"""

from __future__ import annotations

from functools import cached_property

from bridge.store.budgets import Budgets
from bridge.store.costs import Costs
from bridge.store.dialect import Dialect
from bridge.store.identity import Identity
from bridge.store.processes import Processes
from bridge.store.queries import RecordQueries
from bridge.store.retention import Retention
from bridge.store.rollups import Rollups
from bridge.store.session_queries import SessionQueries
from bridge.store.sessions import Sessions
from bridge.store.writes import RecordWrites


class Store(Dialect):
    """Users, API tokens and interception records, in SQLite or PostgreSQL, by concern."""

    @cached_property
    def identity(self) -> Identity:
        return Identity(self)

    @cached_property
    def rollups(self) -> Rollups:
        return Rollups(self)

    @cached_property
    def costs(self) -> Costs:
        return Costs(self, self.rollups)

    @cached_property
    def sessions(self) -> Sessions:
        return Sessions(self)

    @cached_property
    def records(self) -> RecordWrites:
        return RecordWrites(self, self.rollups, self.sessions)

    @cached_property
    def retention(self) -> Retention:
        return Retention(self, self.sessions)

    @cached_property
    def processes(self) -> Processes:
        return Processes(self, self.sessions)

    @cached_property
    def queries(self) -> RecordQueries:
        return RecordQueries(self, self.identity)

    @cached_property
    def session_queries(self) -> SessionQueries:
        return SessionQueries(self, self.identity, self.queries)

    @cached_property
    def budgets(self) -> Budgets:
        return Budgets(self, self.identity)
