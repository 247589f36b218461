"""Sessions and threads (SPEC §9), kept by the record writer in its transaction, like the usage rollups:

- ``aibridge_session_interceptions``: each interception's session (its initiator and client session id,
  or its own id) and thread (NULL: the thread it starts), written with the interception;
- ``aibridge_sessions``: one summary row per session (times, counts, token sums, providers, models,
  the last prompt, the cost of its priced token usages, NULL when none has a price): what the
  sessions list reads, most recently active first, from an index;
- ``aibridge_session_facets``: the provider types and names and the models each session used, one row
  each, for the list's filters.

A thread follows from the records (``thread_ids``): an interception that records a prompt starts one;
one whose correlating_tool_call_id names a tool call recorded earlier in its session joins that
call's thread; any other starts its own. Workers write out of order: an answer's start can be
stored before the end that recorded the call it answers (another worker, a later batch), and a
prompt is recorded at its turn's end. So a new interception is linked from what is stored, and a
stored interception a late tool call or prompt changes is relinked with the members of its old
thread after it (``_relink``: never a whole session). On PostgreSQL a writer first takes an advisory lock per session it touches (in one order),
so that writers of several instances see each other's rows of a session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.records import InterceptionEndRecord, InterceptionRecord, PromptRecord, TokenUsageRecord, ToolUsageRecord
from bridge.store.common import (
    _TOKEN_FIGURES, SESSION_COLUMNS, SESSION_FACETS, SESSION_FACETS_TABLE, SESSION_MEMBERS_TABLE, SESSIONS_TABLE,
    RecordBatch, _figure, add_cost, session_key,
)
from bridge.store.dialect import Dialect, writes

Key = tuple[str, str]  # (initiator id or '', session id)
#: What a session sums of each token usage: its token figures, then its cost (None: no price).
_USAGE_COLUMNS = (*_TOKEN_FIGURES, "cost_usd")
#: Sessions recounted per round of queries (each an IN list of session ids).
_RECOUNT_CHUNK = 1000
_SUMMARY_COLUMNS = ("session_id", "initiator_id", *SESSION_COLUMNS)
_UPSERT_SUMMARY = (
    f"INSERT INTO {SESSIONS_TABLE} ({', '.join(_SUMMARY_COLUMNS)}) VALUES ({', '.join('?' * len(_SUMMARY_COLUMNS))})"
    f" ON CONFLICT (session_id, initiator_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SESSION_COLUMNS)
)
_INSERT_FACET = (f"INSERT INTO {SESSION_FACETS_TABLE} (facet, value, initiator_id, session_id, client, started_at)"
                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (facet, value, initiator_id, session_id)"
                 " DO UPDATE SET client = excluded.client, started_at = excluded.started_at")
_DELETE_FACETS = f"DELETE FROM {SESSION_FACETS_TABLE} WHERE session_id = ? AND initiator_id = ?"
_INSERT_MEMBER = (f"INSERT INTO {SESSION_MEMBERS_TABLE} (interception_id, initiator_id, session_id, started_at, thread_id)"
                  " VALUES (?, ?, ?, ?, ?) ON CONFLICT (interception_id) DO NOTHING")


def session_schema(text: str, integer: str, table_options: str = "") -> list[str]:
    """The tables and indexes of sessions and threads, in a backend's types (SQLite migration 0006,
    PostgreSQL 0003)."""
    figures = ", ".join(f"{name} {integer} NOT NULL DEFAULT 0" for name in _TOKEN_FIGURES)
    return [
        f"""CREATE TABLE {SESSION_MEMBERS_TABLE} (
            interception_id {text} PRIMARY KEY REFERENCES aibridge_interceptions (id) ON DELETE CASCADE,
            initiator_id {text} NOT NULL,
            session_id {text} NOT NULL,
            started_at {text} NOT NULL,
            thread_id {text}
        ){table_options}""",
        # A session's interceptions in order, with their threads, from the index alone.
        f"CREATE INDEX {SESSION_MEMBERS_TABLE}_session ON {SESSION_MEMBERS_TABLE}"
        " (session_id, initiator_id, started_at, interception_id, thread_id)",
        f"""CREATE TABLE {SESSIONS_TABLE} (
            session_id {text} NOT NULL,
            initiator_id {text} NOT NULL,
            client {text},
            provider_types {text} NOT NULL,
            provider_names {text} NOT NULL,
            models {text} NOT NULL,
            started_at {text} NOT NULL,
            ended_at {text},
            last_active_at {text} NOT NULL,
            last_prompt_interception_id {text},
            last_prompt_started_at {text},
            interception_count {integer} NOT NULL DEFAULT 0,
            thread_count {integer} NOT NULL DEFAULT 0,
            {figures},
            PRIMARY KEY (session_id, initiator_id)
        )""",
        # Most recently active first (keyset pages), for everyone, per user, per client.
        f"CREATE INDEX {SESSIONS_TABLE}_last_active ON {SESSIONS_TABLE} (last_active_at, session_id, initiator_id)",
        f"CREATE INDEX {SESSIONS_TABLE}_by_initiator ON {SESSIONS_TABLE} (initiator_id, last_active_at, session_id)",
        f"CREATE INDEX {SESSIONS_TABLE}_by_client ON {SESSIONS_TABLE}"
        " (client, last_active_at, session_id, initiator_id)",
        # An answer's tool call (the writer links a new answer) and a tool call's answers (a late call).
        "CREATE INDEX aibridge_tool_usages_call_id ON aibridge_tool_usages (provider_tool_call_id)"
        " WHERE provider_tool_call_id IS NOT NULL",
        "CREATE INDEX aibridge_interceptions_answers ON aibridge_interceptions (correlating_tool_call_id)"
        " WHERE correlating_tool_call_id IS NOT NULL",
    ]


def facets_schema(text: str, without_rowid: str = "") -> list[str]:
    """What the sessions list's provider and model filters and its start times read (SQLite migration
    0007, PostgreSQL 0004): each session's facet rows, and an index of session starts."""
    return [
        # With the session's client and start: a filtered count is one range of this key.
        f"""CREATE TABLE {SESSION_FACETS_TABLE} (
            facet {text} NOT NULL,
            value {text} NOT NULL,
            initiator_id {text} NOT NULL,
            session_id {text} NOT NULL,
            client {text},
            started_at {text} NOT NULL,
            PRIMARY KEY (facet, value, initiator_id, session_id)
        ){without_rowid}""",
        f"CREATE INDEX {SESSION_FACETS_TABLE}_session ON {SESSION_FACETS_TABLE} (session_id, initiator_id)",
        f"CREATE INDEX {SESSIONS_TABLE}_started ON {SESSIONS_TABLE} (started_at)",
    ]


def thread_schema() -> list[str]:
    """A thread's members in session order (SQLite migration 0008, PostgreSQL 0005): what relinking
    the followers of a late prompt or tool call and a session page's thread figures read."""
    return [f"CREATE INDEX {SESSION_MEMBERS_TABLE}_thread ON {SESSION_MEMBERS_TABLE}"
            " (thread_id, started_at, interception_id) WHERE thread_id IS NOT NULL"]


@dataclass(slots=True)
class Member:
    """An interception's place in its session: its key, start, and thread (None: the one it starts)."""

    id: str
    key: Key
    started_at: str
    thread_id: str | None = None

    @property
    def order(self) -> tuple[str, str]:
        """Its place in the session's order (started_at, then id)."""
        return self.started_at, self.id


def thread_ids(members: list[tuple[str, str | None, bool]], calls: list[tuple[str, str]]) -> dict[str, str]:
    """The thread of each interception of one session: ``members`` in session order as ``(id,
    correlating_tool_call_id, prompted)``, ``calls`` the session's tool calls as ``(tool call id, the
    interception that recorded it)``. An answer joins the thread of the first interception that
    recorded the call, when that one came before it."""
    position = {member[0]: n for n, member in enumerate(members)}
    first: dict[str, str] = {}
    for call_id, owner in calls:
        if owner in position and (call_id not in first or position[owner] < position[first[call_id]]):
            first[call_id] = owner
    threads: dict[str, str] = {}
    for n, (interception_id, answers, prompted) in enumerate(members):
        owner = None if prompted or answers is None else first.get(answers)
        threads[interception_id] = threads[owner] if owner is not None and position[owner] < n else interception_id
    return threads


@dataclass(slots=True)
class Summary:
    """A session's summary row as Python values (``aibridge_sessions``)."""

    client: str | None = None  # the least, by name, of its interceptions' clients (one in practice)
    provider_types: set[str] = field(default_factory=set)
    provider_names: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    started_at: str | None = None
    ended_at: str | None = None
    last_active_at: str | None = None
    last_prompt: tuple[str, str] | None = None  # (its interception's started_at, that interception's id)
    interception_count: int = 0
    thread_count: int = 0
    tokens: list[int] = field(default_factory=lambda: [0] * len(_TOKEN_FIGURES))
    cost_usd: float | None = None  # of its priced token usages (None: none has a price)
    #: What its stored facet rows hold (client, start, each facet's values); None: none to go by. A
    #: snapshot of the row it was read from, not part of the summary's value.
    stored_facets: tuple[str | None, str | None, dict[str, frozenset[str]]] | None = field(
        default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Summary:
        (client, types, names, models, started_at, ended_at, last_active_at, prompt_id, prompt_at, count, threads,
         *tokens, cost) = row
        summary = cls(client, set(orjson.loads(types)), set(orjson.loads(names)), set(orjson.loads(models)), started_at,
                      ended_at, last_active_at, (prompt_at, prompt_id) if prompt_id is not None else None, count,
                      threads, [int(t) for t in tokens], cost)
        summary.stored_facets = (client, started_at, {facet: frozenset(getattr(summary, attribute))
                                                      for facet, attribute in SESSION_FACETS.items()})
        return summary

    def row(self, key: Key) -> tuple[Any, ...]:
        prompt_at, prompt_id = self.last_prompt or (None, None)
        return (key[1], key[0], self.client, _list_text(self.provider_types), _list_text(self.provider_names),
                _list_text(self.models), self.started_at, self.ended_at, self.last_active_at, prompt_id, prompt_at,
                self.interception_count, self.thread_count, *self.tokens, self.cost_usd)

    def facet_rows(self, key: Key) -> list[tuple[Any, ...]]:
        """The facet rows to write: only the new values' while the stored rows hold the same client and
        start (most batches add none: the writer's work does not grow with a session's models), else all."""
        stored = self.stored_facets
        kept = stored[2] if stored is not None and stored[:2] == (self.client, self.started_at) else {}
        return [(facet, value, *key, self.client, self.started_at) for facet, attribute in SESSION_FACETS.items()
                for value in sorted(getattr(self, attribute) - kept.get(facet, frozenset()))]

    def add_interception(self, record: Any, starts_thread: bool) -> None:
        """An interception (a record, or a row with the same attributes) joins the session."""
        self.interception_count += 1
        self.thread_count += starts_thread
        if record.client is not None and (self.client is None or record.client < self.client):
            self.client = record.client
        for values, value in ((self.provider_types, record.provider), (self.provider_names, record.provider_name),
                              (self.models, record.model)):
            if value is not None:
                values.add(value)
        if self.started_at is None or record.started_at < self.started_at:
            self.started_at = record.started_at
        self._active(record.started_at)
        if record.ended_at is not None:
            self.end(record.ended_at)

    def end(self, ended_at: str) -> None:
        if self.ended_at is None or ended_at > self.ended_at:
            self.ended_at = ended_at
        self._active(ended_at)

    def use(self, usage: tuple[Any, ...]) -> None:
        """A token usage's figures and cost, in _USAGE_COLUMNS order."""
        *figures, cost = usage
        for n, value in enumerate(figures):
            self.tokens[n] += _figure(value)
        self.cost_usd = add_cost(self.cost_usd, cost)

    def take(self, usage: tuple[Any, ...]) -> bool:
        """A purged token usage (in _USAGE_COLUMNS order) no longer counts; True when it had a price
        (whether any priced usage is left is then for the caller to tell)."""
        *figures, cost = usage
        for n, value in enumerate(figures):
            self.tokens[n] -= _figure(value)
        if cost is None or self.cost_usd is None:
            return False
        self.cost_usd = max(self.cost_usd - cost, 0.0)  # never below 0 by a float's rounding
        return True

    def prompt(self, member: Member) -> None:
        """The interception ``member`` recorded a prompt: the session's last prompt if it is the latest."""
        if self.last_prompt is None or member.order > self.last_prompt:
            self.last_prompt = member.order

    def _active(self, at: str) -> None:
        if self.last_active_at is None or at > self.last_active_at:
            self.last_active_at = at


def _list_text(values: set[str]) -> str:
    """A summary's list column: a sorted JSON array (filters read the facet rows instead)."""
    return orjson.dumps(sorted(values)).decode()


@dataclass(slots=True)
class _Stored:
    """An interception's row as a recount reads it (the attributes Summary.add_interception reads)."""

    id: str
    member: Member
    ended_at: str | None
    provider: str | None
    provider_name: str | None
    model: str | None
    client: str | None
    correlating_tool_call_id: str | None
    started_at: str = ""

    def __post_init__(self) -> None:
        self.started_at = self.member.started_at


@dataclass(slots=True)
class Purge:
    """What a retention chunk takes from its sessions: its interceptions, and their token usages."""

    rows: list[_Stored]
    usages: dict[str, list[tuple[Any, ...]]]


class Sessions:
    """Keeps the sessions and threads of the records current (the record writer, retention, the
    ending of orphaned interceptions) and rebuilds them from the records."""

    def __init__(self, store: Dialect) -> None:
        self.store = store

    # -- the record writer's steps, in its transaction ---------------------------------------------

    def lock(self, batch: RecordBatch, new: list[InterceptionRecord]) -> None:
        """Before the batch's ends and children are written: on PostgreSQL, lock the sessions it touches."""
        if not self.store._LOCKS_SESSIONS:
            return
        keys = {session_key(r.initiator_id, r.client_session_id, r.id) for r in new}
        new_ids = {r.id for r in new}
        referenced = {end.id for end in batch.ends}
        for name in ("token_usages", "user_prompts", "tool_usages", "model_thoughts"):
            referenced.update(record.interception_id for record in getattr(batch, name))
        keys.update(member.key for member in self.members(referenced - new_ids).values())
        self.store._lock_sessions(sorted(keys))

    def add(self, new: list[InterceptionRecord], ends: list[InterceptionEndRecord], token_usages: list[TokenUsageRecord],
            prompts: list[PromptRecord], tool_calls: list[ToolUsageRecord]) -> None:
        """Newly inserted records join their sessions: the new interceptions are linked into threads
        and their memberships written, stored ones a late tool call or prompt changes are relinked
        (``_relink``), and the sessions' summaries get what the records add."""
        if not (new or ends or token_usages or prompts or tool_calls):
            return
        fresh = {r.id: Member(r.id, session_key(r.initiator_id, r.client_session_id, r.id), r.started_at) for r in new}
        referenced = {end.id for end in ends} | {r.interception_id for r in (*token_usages, *prompts, *tool_calls)}
        members = {**self.members(referenced - fresh.keys()), **fresh}
        prompted = {p.interception_id for p in prompts}
        threads_started = self._relink(members, fresh, prompted, tool_calls, new)
        self.store._executemany(_INSERT_MEMBER, [(m.id, *m.key, m.started_at, m.thread_id) for m in fresh.values()])

        summaries = self._summaries({m.key for m in members.values()})
        fresh_keys = {m.key for m in fresh.values()}
        recount = {key for key, summary in summaries.items() if summary.started_at is None and key not in fresh_keys}
        # (no summary row yet for a stored interception's session: it is counted whole)
        for key, started in threads_started.items():
            if key not in recount:
                summaries[key].thread_count += started
        for record in new:
            member = fresh[record.id]
            if member.key not in recount:
                summaries[member.key].add_interception(record, member.thread_id is None)
        for end in ends:
            member = members.get(end.id)
            if member is not None and member.key not in recount:
                summaries[member.key].end(end.ended_at)
        for usage in token_usages:
            member = members.get(usage.interception_id)
            if member is not None and member.key not in recount:
                summaries[member.key].use(tuple(getattr(usage, name) for name in _USAGE_COLUMNS))
        for interception_id in prompted:
            member = members.get(interception_id)
            if member is not None and member.key not in recount:
                summaries[member.key].prompt(member)
        self._write_summaries({key: s for key, s in summaries.items() if key not in recount})
        self.recount(recount)

    def _relink(self, members: dict[str, Member], fresh: dict[str, Member], prompted: set[str],
                tool_calls: list[ToolUsageRecord], new: list[InterceptionRecord]) -> dict[Key, int]:
        """Link the new interceptions into threads, and relink the stored ones these records change: one
        that now has a prompt starts its own thread, one that answers a new tool call may join that
        call's thread; either takes along the members of its old thread after it (its followers through
        tool calls are among them). Bounded work: those members only, never a whole session. Returns the
        change in each session's count of stored threads."""
        starts = [m for i, m in members.items() if i in prompted and i not in fresh and m.thread_id is not None]
        starts.extend(self._late_answers(members, fresh, tool_calls))
        stored: dict[str, Member] = {}
        earliest: dict[tuple[Key, str], Member] = {}  # per old thread, the first member to relink
        for member in starts:
            stored[member.id] = member
            thread = (member.key, member.thread_id or member.id)
            if thread not in earliest or member.order < earliest[thread].order:
                earliest[thread] = member
        for (key, thread_id), member in earliest.items():
            for interception_id, started_at, old in self.store.db.execute(
                    f"SELECT interception_id, started_at, thread_id FROM {SESSION_MEMBERS_TABLE}"
                    " WHERE thread_id = ? AND (started_at, interception_id) > (?, ?)", [thread_id, *member.order]):
                stored.setdefault(interception_id, Member(interception_id, key, started_at, old))
        return self._relink_threads(stored, fresh, prompted, {r.id: r.correlating_tool_call_id for r in new
                                                              if r.correlating_tool_call_id is not None})

    def _relink_threads(self, stored: dict[str, Member], fresh: dict[str, Member], prompted: set[str],
                        answers: dict[str, str]) -> dict[Key, int]:
        """Link these stored and new interceptions (``answers``: the tool call each new one answers,
        ``prompted``: those with a prompt in the batch) in session order from the stored tool calls;
        the stored ones' changes are written. Returns the change in each session's thread count."""
        prompted = prompted | self._stored_links(list(stored), answers)
        answers = {i: call for i, call in answers.items() if i not in prompted}
        owners: dict[str, list[str]] = {}
        if answers:
            condition, param = self.store._in("provider_tool_call_id", list(set(answers.values())))
            for call_id, owner in self.store.db.execute(
                    f"SELECT provider_tool_call_id, interception_id FROM aibridge_tool_usages"
                    f" WHERE provider_tool_call_id IS NOT NULL AND {condition}", [param]):
                owners.setdefault(call_id, []).append(owner)
        relinked = {**stored, **fresh}
        known = {**self.members({o for found in owners.values() for o in found} - relinked.keys()), **relinked}
        threads: dict[str, str | None] = {}  # the new thread of each relinked interception, in session order
        for member in sorted(relinked.values(), key=lambda m: m.order):
            candidates = [known[o] for o in owners.get(answers.get(member.id, ""), ()) if o in known]
            before = [o for o in candidates if o.key == member.key and o.order < member.order]
            thread_id = None
            if before:
                owner = min(before, key=lambda m: m.order)
                thread_id = (threads[owner.id] if owner.id in threads else owner.thread_id) or owner.id
            threads[member.id] = thread_id
        started: dict[Key, int] = {}
        moved: list[tuple[str | None, str]] = []
        for member in relinked.values():
            thread_id = threads[member.id]
            if member.id in stored and thread_id != member.thread_id:
                moved.append((thread_id, member.id))
                started[member.key] = started.get(member.key, 0) + (thread_id is None) - (member.thread_id is None)
            member.thread_id = thread_id
        if moved:
            self.store._executemany(f"UPDATE {SESSION_MEMBERS_TABLE} SET thread_id = ? WHERE interception_id = ?", moved)
        return started

    def _late_answers(self, members: dict[str, Member], fresh: dict[str, Member],
                      tool_calls: list[ToolUsageRecord]) -> list[Member]:
        """The stored interceptions of a session that answer one of these new tool calls of it."""
        owners: dict[str, set[Key]] = {}
        for call in tool_calls:
            if call.provider_tool_call_id is not None and call.interception_id in members:
                owners.setdefault(call.provider_tool_call_id, set()).add(members[call.interception_id].key)
        if not owners:
            return []
        condition, param = self.store._in("correlating_tool_call_id", list(owners))
        late = {interception_id for interception_id, initiator_id, client_session_id, answers in self.store.db.execute(
                "SELECT id, initiator_id, client_session_id, correlating_tool_call_id FROM aibridge_interceptions"
                f" WHERE correlating_tool_call_id IS NOT NULL AND {condition}", [param])
                if interception_id not in fresh
                and session_key(initiator_id, client_session_id, interception_id) in owners[answers]}
        return list(self.members(late).values())

    def _stored_links(self, ids: list[str], answers: dict[str, str]) -> set[str]:
        """Of these stored interceptions: adds the tool call each answers to ``answers``, and returns
        those that recorded a prompt."""
        if not ids:
            return set()
        condition, param = self.store._in("id", ids)
        for interception_id, call_id in self.store.db.execute(
                f"SELECT id, correlating_tool_call_id FROM aibridge_interceptions"
                f" WHERE correlating_tool_call_id IS NOT NULL AND {condition}", [param]):
            answers[interception_id] = call_id
        condition, param = self.store._in("interception_id", ids)
        return {row[0] for row in self.store.db.execute(
            f"SELECT DISTINCT interception_id FROM aibridge_user_prompts WHERE {condition}", [param])}

    # -- shared by the writer, retention and the ending of orphans --------------------------------

    def members(self, ids: Iterable[str]) -> dict[str, Member]:
        """The stored memberships of these interceptions (those that have one)."""
        ids = list(ids)
        if not ids:
            return {}
        condition, param = self.store._in("interception_id", ids)
        return {row[0]: Member(row[0], (row[1], row[2]), row[3], row[4]) for row in self.store.db.execute(
            f"SELECT interception_id, initiator_id, session_id, started_at, thread_id FROM {SESSION_MEMBERS_TABLE}"
            f" WHERE {condition}", [param])}

    def lock_keys(self, keys: Iterable[Key]) -> None:
        """Lock these sessions for the transaction (PostgreSQL; SQLite's writers are serialized)."""
        if self.store._LOCKS_SESSIONS:
            self.store._lock_sessions(sorted(set(keys)))

    def ended(self, ends: list[tuple[str, str]]) -> None:
        """Interceptions ended outside a record batch (``(id, ended_at)``): their sessions' end times."""
        members = self.members(interception_id for interception_id, _ in ends)
        summaries = self._summaries({m.key for m in members.values()})
        for interception_id, ended_at in ends:
            member = members.get(interception_id)
            if member is not None and summaries[member.key].started_at is not None:
                summaries[member.key].end(ended_at)
        self._write_summaries({key: s for key, s in summaries.items() if s.started_at is not None})

    def purging(self, ids: list[str]) -> Purge:
        """What purging these interceptions takes from their sessions (read before they are deleted),
        their sessions locked first (PostgreSQL)."""
        members = self.members(ids)
        if self.store._LOCKS_SESSIONS:  # read again under the lock: another instance may have relinked them
            self.lock_keys(member.key for member in members.values())
            members = self.members(ids)
        rows: list[_Stored] = []
        if members:
            condition, param = self.store._in("id", list(members))
            for interception_id, ended_at, provider, provider_name, model, client in self.store.db.execute(
                    "SELECT id, ended_at, provider, provider_name, model, client FROM aibridge_interceptions"
                    f" WHERE {condition}", [param]):
                rows.append(_Stored(interception_id, members[interception_id], ended_at, provider, provider_name, model,
                                    client, None))
        return Purge(rows, self._usages(list(members)))

    def purged(self, purge: Purge) -> None:
        """After the delete of ``purge``'s interceptions: their sessions lose what they counted, and the
        members left of their threads are relinked (the work of the threads it cut, not of whole
        sessions). A session whose last activity, last prompt or client the purge took is recounted."""
        keys = {row.member.key for row in purge.rows}
        stored: dict[str, Member] = {}
        threads = sorted({row.member.thread_id or row.id for row in purge.rows})
        if threads:
            condition, param = self.store._in("thread_id", threads)
            for interception_id, initiator_id, session_id, started_at, thread_id in self.store.db.execute(
                    f"SELECT interception_id, initiator_id, session_id, started_at, thread_id FROM {SESSION_MEMBERS_TABLE}"
                    f" WHERE {condition}", [param]):
                stored[interception_id] = Member(interception_id, (initiator_id, session_id), started_at, thread_id)
        threads_started = self._relink_threads(stored, {}, set(), {})
        summaries = self._summaries(keys)
        recount = {key for key in keys if summaries[key].started_at is None}
        taken: dict[Key, list[_Stored]] = {}
        for row in purge.rows:
            taken.setdefault(row.member.key, []).append(row)
        for key, rows in taken.items():
            summary = summaries[key]
            summary.interception_count -= len(rows)
            summary.thread_count += threads_started.get(key, 0) - sum(row.member.thread_id is None for row in rows)
            priced = False
            for usage in (usage for row in rows for usage in purge.usages.get(row.id, ())):
                priced |= summary.take(usage)
            last_prompt = summary.last_prompt[1] if summary.last_prompt else None
            if summary.interception_count <= 0 or any(
                    row.id == last_prompt or summary.last_active_at in (row.started_at, row.ended_at)
                    or (row.ended_at is not None and row.ended_at == summary.ended_at) for row in rows):
                recount.add(key)
            elif not self._keep_values(key, summary, rows):
                recount.add(key)
            elif priced and not self._any_priced(key):
                summary.cost_usd = None
        self._write_summaries({key: s for key, s in summaries.items() if key not in recount})
        self.recount(recount)

    def _keep_values(self, key: Key, summary: Summary, rows: list[_Stored]) -> bool:
        """Take from ``summary`` the start, providers and models only ``rows`` (purged) had; False when
        they held its client and no member left does (the client is then counted again)."""
        db = self.store.db
        member_with = (f"SELECT 1 FROM {SESSION_MEMBERS_TABLE} m JOIN aibridge_interceptions i ON i.id = m.interception_id"
                       " WHERE m.session_id = ? AND m.initiator_id = ? AND i.{} = ? LIMIT 1")
        if summary.client in {row.client for row in rows}:
            if db.execute(member_with.format("client"), [key[1], key[0], summary.client]).fetchone() is None:
                return False
        for facet, attribute in SESSION_FACETS.items():
            for value in sorted({getattr(row, facet) for row in rows} & getattr(summary, attribute)):
                if db.execute(member_with.format(facet), [key[1], key[0], value]).fetchone() is None:
                    getattr(summary, attribute).discard(value)
                    db.execute(f"DELETE FROM {SESSION_FACETS_TABLE} WHERE facet = ? AND value = ? AND initiator_id = ?"
                               " AND session_id = ?", [facet, value, *key])
        if summary.started_at in {row.started_at for row in rows}:
            summary.started_at = db.execute(f"SELECT min(started_at) FROM {SESSION_MEMBERS_TABLE}"
                                            " WHERE session_id = ? AND initiator_id = ?", [key[1], key[0]]).fetchone()[0]
        return True

    def _any_priced(self, key: Key) -> bool:
        """Whether a token usage of the session has a price (after a purge took priced ones: one probe,
        stopping at the first priced usage it finds)."""
        return self.store.db.execute(
            f"SELECT 1 FROM {SESSION_MEMBERS_TABLE} m"
            " JOIN aibridge_token_usages u ON u.interception_id = m.interception_id WHERE m.session_id = ? AND m.initiator_id = ? AND u.cost_usd IS NOT NULL LIMIT 1", [key[1], key[0]]
        ).fetchone() is not None

    def recount(self, keys: Iterable[Key]) -> None:
        """Recount these sessions from their records: every member's thread, and the summary row
        (deleted when the session has no interception left)."""
        by_session: dict[str, set[Key]] = {}
        for key in keys:
            by_session.setdefault(key[1], set()).add(key)
        session_ids = sorted(by_session)
        for start in range(0, len(session_ids), _RECOUNT_CHUNK):
            chunk = session_ids[start:start + _RECOUNT_CHUNK]
            self._recount_chunk({key for session_id in chunk for key in by_session[session_id]}, chunk)

    def _recount_chunk(self, keys: set[Key], session_ids: list[str]) -> None:
        """Recount ``keys``, the sessions of these ``session_ids`` to recount."""
        db = self.store.db
        condition, param = self.store._in("m.session_id", session_ids)
        sessions: dict[Key, list[_Stored]] = {}
        for (interception_id, initiator_id, session_id, started_at, thread_id, ended_at, provider, provider_name, model,
             client, answers) in db.execute(
                "SELECT m.interception_id, m.initiator_id, m.session_id, m.started_at, m.thread_id, i.ended_at,"
                " i.provider, i.provider_name, i.model, i.client, i.correlating_tool_call_id"
                f" FROM {SESSION_MEMBERS_TABLE} AS m JOIN aibridge_interceptions AS i ON i.id = m.interception_id"
                f" WHERE {condition}", [param]):
            key = (initiator_id, session_id)
            if key in keys:
                member = Member(interception_id, key, started_at, thread_id)
                sessions.setdefault(key, []).append(_Stored(interception_id, member, ended_at, provider, provider_name,
                                                            model, client, answers))
        rows = {row.id: row for rows in sessions.values() for row in rows}
        prompted, all_calls, usages = self._children(list(rows))
        calls: dict[Key, list[tuple[str, str]]] = {}
        for call in all_calls:
            calls.setdefault(rows[call[1]].member.key, []).append(call)
        summaries: dict[Key, Summary] = {}
        moved: list[tuple[str | None, str]] = []
        for key, stored in sessions.items():
            stored.sort(key=lambda row: row.member.order)
            threads = thread_ids([(row.id, row.correlating_tool_call_id, row.id in prompted) for row in stored],
                                 calls.get(key, []))
            summary = summaries[key] = Summary()
            for row in stored:
                thread_id = None if threads[row.id] == row.id else threads[row.id]
                if thread_id != row.member.thread_id:
                    moved.append((thread_id, row.id))
                summary.add_interception(row, thread_id is None)
                for usage in usages.get(row.id, ()):
                    summary.use(usage)
                if row.id in prompted:
                    summary.prompt(row.member)
        if moved:
            self.store._executemany(f"UPDATE {SESSION_MEMBERS_TABLE} SET thread_id = ? WHERE interception_id = ?", moved)
        # Every facet row of these sessions is written again: a purge may have taken a model away.
        self.store._executemany(_DELETE_FACETS, [(key[1], key[0]) for key in sorted(keys)])
        self._write_summaries(summaries)
        gone = [(key[1], key[0]) for key in keys if key not in sessions]
        if gone:
            self.store._executemany(f"DELETE FROM {SESSIONS_TABLE} WHERE session_id = ? AND initiator_id = ?", gone)

    def _children(self, ids: list[str]) -> tuple[set[str], list[tuple[str, str]], dict[str, list[tuple[Any, ...]]]]:
        """What a recount reads of these interceptions' children: which recorded a prompt, their tool
        calls ``(call id, interception id)``, and their token usages."""
        if not ids:
            return set(), [], {}
        db = self.store.db
        condition, param = self.store._in("interception_id", ids)
        prompted = {row[0] for row in db.execute(
            f"SELECT DISTINCT interception_id FROM aibridge_user_prompts WHERE {condition}", [param])}
        calls = [(row[0], row[1]) for row in db.execute(
            "SELECT provider_tool_call_id, interception_id FROM aibridge_tool_usages"
            f" WHERE provider_tool_call_id IS NOT NULL AND {condition}", [param])]
        return prompted, calls, self._usages(ids)

    def _usages(self, ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
        """These interceptions' token usages (their figures and cost in _USAGE_COLUMNS order), by interception."""
        usages: dict[str, list[tuple[Any, ...]]] = {}
        if not ids:
            return usages
        condition, param = self.store._in("interception_id", ids)
        for interception_id, *figures in self.store.db.execute(
                f"SELECT interception_id, {', '.join(_USAGE_COLUMNS)} FROM aibridge_token_usages WHERE {condition}",
                [param]):
            usages.setdefault(interception_id, []).append(tuple(figures))
        return usages

    def _summaries(self, keys: set[Key]) -> dict[Key, Summary]:
        """The stored summaries of these sessions (an empty one where there is none yet)."""
        found = {key: Summary() for key in keys}
        if not keys:
            return found
        condition, param = self.store._in("session_id", sorted({key[1] for key in keys}))
        for session_id, initiator_id, *row in self.store.db.execute(
                f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM {SESSIONS_TABLE} WHERE {condition}", [param]):
            if (initiator_id, session_id) in found:
                found[(initiator_id, session_id)] = Summary.from_row(tuple(row))
        return found

    def _write_summaries(self, summaries: dict[Key, Summary]) -> None:
        # Sorted: writers of several instances lock summary rows in one order (no deadlock).
        keys = [key for key in sorted(summaries) if summaries[key].started_at is not None]
        if keys:
            self.store._executemany(_UPSERT_SUMMARY, [summaries[key].row(key) for key in keys])
            facet_rows = [row for key in keys for row in summaries[key].facet_rows(key)]
            if facet_rows:
                self.store._executemany(_INSERT_FACET, facet_rows)

    # -- from scratch ------------------------------------------------------------------------------

    @writes
    def rebuild(self) -> None:
        """Recount every session and thread from the records (after the migration that adds them, or
        for a database filled behind write_records' back, e.g. bench/seed.py). One transaction."""
        with self.store.write():
            self.fill()

    def fill_facets(self) -> None:
        """The facet rows of the stored summaries (the migration that adds them, in its transaction)."""
        for facet, column in SESSION_FACETS.items():
            self.store.db.execute(
                f"INSERT INTO {SESSION_FACETS_TABLE} (facet, value, initiator_id, session_id, client, started_at)"
                f" SELECT DISTINCT CAST(? AS TEXT), j.value, s.initiator_id, s.session_id, s.client, s.started_at"
                f" FROM {SESSIONS_TABLE} s, {self.store._JSON_ELEMENTS.format(f's.{column}')}", [facet])

    def fill(self) -> None:
        """``rebuild`` inside the caller's transaction (the migration's)."""
        db = self.store.db
        for table in (SESSION_MEMBERS_TABLE, SESSIONS_TABLE, SESSION_FACETS_TABLE):
            db.execute(f"DELETE FROM {table}")
        db.execute(
            f"INSERT INTO {SESSION_MEMBERS_TABLE} (interception_id, initiator_id, session_id, started_at)"
            " SELECT id, coalesce(initiator_id, ''), coalesce(nullif(client_session_id, ''), id), started_at"
            " FROM aibridge_interceptions")
        keys = {(row[0], row[1]) for row in db.execute(
            f"SELECT DISTINCT initiator_id, session_id FROM {SESSION_MEMBERS_TABLE}")}
        self.recount(keys)
