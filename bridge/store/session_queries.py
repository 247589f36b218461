"""Reading sessions and their threads (SPEC §9): the sessions list from the summary rows (one index
range, most recently active first, keyset or offset pages), one session with a page of its
interceptions grouped into threads."""

from __future__ import annotations

from typing import Any

import orjson

from bridge.store.common import (
    _TOKEN_FIGURES, SESSION_COLUMNS, SESSION_FACETS, SESSION_FACETS_TABLE, SESSION_MEMBERS_TABLE, SESSIONS_TABLE,
    AmbiguousSession, SessionFilter, StoreError,
    UnknownCursor, _sql_where, _between,
)
from bridge.store.dialect import Dialect
from bridge.store.identity import Identity
from bridge.store.queries import RecordQueries, page_query

#: The API's names of the token figures (``token_usage``), in _TOKEN_FIGURES order.
_TOKEN_USAGE = ("input", "output", "cache_read", "cache_write")
_ORDER = "s.last_active_at DESC, s.session_id DESC, s.initiator_id DESC"
_SUMMARY = ", ".join(f"s.{column}" for column in ("session_id", "initiator_id", *SESSION_COLUMNS))
#: A session (of the table {0}) has a facet row whose value meets the condition {1}.
_HAS_FACET = (f"EXISTS (SELECT 1 FROM {SESSION_FACETS_TABLE} x WHERE x.facet = ? AND {{1}}"
              " AND x.initiator_id = {0}.initiator_id AND x.session_id = {0}.session_id)")
#: With a provider or model filter, its facet rows are counted (one index range) and, when there are at
#: most this many, the page is read from them too (then sorted); more (a common model) are found by
#: reading the sessions most recently active first, each checked against the facet rows, up to a page.
_FROM_FACETS_MAX = 2_000


class SessionQueries:
    """Sessions (a filtered page, one by id with its threads)."""

    def __init__(self, store: Dialect, identity: Identity, records: RecordQueries) -> None:
        self.store = store
        self.identity = identity
        self.records = records

    def list_sessions(self, filters: SessionFilter | None = None, *, limit: int = 100, after_session_id: str | None = None,
                      offset: int | None = None, viewer_id: str | None = None,
                      after_initiator: str | None = None) -> dict[str, Any]:
        """``{"count": matching sessions, "sessions": one page, most recently active first}``.

        ``viewer_id`` restricts everything to that user's sessions. ``after_session_id`` continues
        after that session (visible and matching, else UnknownCursor): ``after_initiator``'s (its
        initiator id, '' for none), else, when several users' sessions share the id, the most recently
        active of them.
        """
        filters = filters or SessionFilter()
        if after_session_id is not None and offset is not None:
            raise StoreError("after_session_id and offset cannot be combined")
        with self.store._read_snapshot():
            initiators = self.identity.visible_initiators(filters.initiator, viewer_id)
            if initiators == []:
                if after_session_id is not None:
                    raise UnknownCursor(f"unknown after_session_id {after_session_id!r}: no such session")
                return {"count": 0, "sessions": []}
            # The facet rows serve one value; several (a model family's names) are checked per session.
            facet = next(((name, value) for name in SESSION_FACETS if isinstance(value := getattr(filters, name), str)), None)
            where, params = self._where(filters, initiators)
            sessions = f"{SESSIONS_TABLE} s"
            if facet is None:
                count = self.store.db.execute(f"SELECT count(*) FROM {sessions}{_sql_where(where)}", params).fetchone()[0]
            else:  # counted from the facet rows, which hold the other filters' columns too
                on_facets, facet_params = self._where(filters, initiators, "f", skip=facet[0])
                count = self.store.db.execute(
                    f"SELECT count(*) FROM {SESSION_FACETS_TABLE} f{_sql_where(['f.facet = ?', 'f.value = ?', *on_facets])}",
                    [*facet, *facet_params]).fetchone()[0]
                if count <= _FROM_FACETS_MAX:  # CROSS JOIN: SQLite reads the facet rows first
                    sessions = f"{SESSION_FACETS_TABLE} f CROSS JOIN {SESSIONS_TABLE} s"
                    where, params = self._where(filters, initiators, skip=facet[0])
                    where = ["f.facet = ?", "f.value = ?", "s.initiator_id = f.initiator_id",
                             "s.session_id = f.session_id", *where]
                    params = [*facet, *params]
            if after_session_id is not None:
                whose = ([], []) if after_initiator is None else (["s.initiator_id = ?"], [after_initiator])
                cursor = self.store.db.execute(
                    f"SELECT s.last_active_at, s.session_id, s.initiator_id FROM {sessions}"
                    f"{_sql_where([*where, 's.session_id = ?', *whose[0]])} ORDER BY {_ORDER} LIMIT 1",
                    [*params, after_session_id, *whose[1]]).fetchone()
                if cursor is None:
                    raise UnknownCursor(f"unknown after_session_id {after_session_id!r}: no such session")
                where = [*where, "(s.last_active_at, s.session_id, s.initiator_id) < (?, ?, ?)"]
                params = [*params, *cursor]
            page = page_query(f"SELECT {_SUMMARY} FROM {sessions}", where, params, _ORDER, limit, offset)
            return {"count": count, "sessions": self._results(self.store.db.execute(*page).fetchall())}

    def any_session(self, session_id: str, viewer_id: str | None = None) -> bool:
        """Whether a session (the viewer's own, when given) has this id."""
        where, params = ["session_id = ?"], [session_id]
        if viewer_id is not None:
            where.append("initiator_id = ?")
            params.append(viewer_id)
        return self.store.db.execute(f"SELECT 1 FROM {SESSIONS_TABLE}{_sql_where(where)} LIMIT 1", params).fetchone() is not None

    def session(self, session_id: str, *, initiator: str | None = None, viewer_id: str | None = None, limit: int = 100,
                after_id: str | None = None, before_id: str | None = None) -> dict[str, Any] | None:
        """One session (as listed) with ``threads``: a page of ``limit`` of its interceptions in session
        order (from the start, after ``after_id`` or before ``before_id``), grouped by thread, oldest
        thread first. Each thread's figures (start, end, tokens) are the whole thread's.

        None when no session (the viewer's own, when given; ``initiator``'s, when given) has this id.
        An id several initiators' sessions share raises AmbiguousSession unless ``initiator`` says
        whose; a cursor that is not one of the session's interceptions raises UnknownCursor.
        """
        if after_id is not None and before_id is not None:
            raise StoreError("after_id and before_id cannot be combined")
        if "\x00" in session_id:  # no stored id has one (and PostgreSQL text cannot hold it)
            return None
        with self.store._read_snapshot():
            where, params = ["s.session_id = ?"], [session_id]
            initiators = self.identity.visible_initiators(initiator, viewer_id)
            if initiators is not None:
                condition, param = self.store._in("s.initiator_id", initiators)
                where.append(condition)
                params.append(param)
            found = self._results(self.store.db.execute(
                f"SELECT {_SUMMARY} FROM {SESSIONS_TABLE} s{_sql_where(where)} ORDER BY {_ORDER}", params).fetchall())
            if not found:
                return None
            if len(found) > 1:
                raise AmbiguousSession(session_id, [s["initiator"]["username"] or s["initiator"]["id"] or "(none)"
                                                    for s in found])
            [result] = found
            result["threads"] = self._threads(session_id, result["initiator"]["id"] or "", limit, after_id, before_id)
            return result

    def _threads(self, session_id: str, initiator_id: str, limit: int, after_id: str | None,
                 before_id: str | None) -> list[dict[str, Any]]:
        """A page of the session's interceptions (a keyset range of its members) grouped by thread, with
        each thread's figures summed per thread in the database."""
        db = self.store.db
        key = [session_id, initiator_id]
        where, order = ["session_id = ?", "initiator_id = ?"], "started_at, interception_id"
        cursor = after_id if after_id is not None else before_id
        if cursor is not None:
            found = db.execute(f"SELECT started_at FROM {SESSION_MEMBERS_TABLE}"
                               " WHERE interception_id = ? AND session_id = ? AND initiator_id = ?",
                               [cursor, *key]).fetchone()
            if found is None:
                name = "after_id" if after_id is not None else "before_id"
                raise UnknownCursor(f"unknown {name} {cursor!r}: not an interception of this session")
            where.append(f"(started_at, interception_id) {'>' if after_id is not None else '<'} (?, ?)")
            key.extend((found[0], cursor))
            if before_id is not None:
                order = "started_at DESC, interception_id DESC"
        page = db.execute(f"SELECT interception_id, thread_id FROM {SESSION_MEMBERS_TABLE}{_sql_where(where)}"
                          f" ORDER BY {order} LIMIT ?", [*key, limit]).fetchall()
        if before_id is not None:
            page.reverse()
        thread_of = {row[0]: row[1] or row[0] for row in page}
        roots = list(dict.fromkeys(thread_of.values()))
        if not roots:
            return []
        condition, param = self.store._in("interception_id", roots)
        started = dict(db.execute(f"SELECT interception_id, started_at FROM {SESSION_MEMBERS_TABLE} WHERE {condition}",
                                  [param]).fetchall())
        roots.sort(key=lambda root: (started[root], root))
        ended, tokens, costs = self._thread_figures(roots)
        prompts = self._prompts(roots)
        zero = (0,) * len(_TOKEN_USAGE)
        threads = {root: {"id": root, "prompt": prompts.get(root), "started_at": started[root],
                          "ended_at": ended.get(root), "token_usage": dict(zip(_TOKEN_USAGE, tokens.get(root, zero))),
                          "cost_usd": costs.get(root), "interceptions": []} for root in roots}
        for record in self.records.interceptions_by_id(list(thread_of)):
            threads[thread_of[record["id"]]]["interceptions"].append(record)
        return list(threads.values())

    def _thread_figures(self, roots: list[str]) -> tuple[dict[str, str | None], dict[str, tuple[int, ...]],
                                                         dict[str, float | None]]:
        """The last end, the token sums and the cost (None: no usage priced) of each of these threads (by
        their first interception's id), one aggregate each over the threads' members (the thread index)."""
        thread, thread_param = self.store._in("thread_id", roots)
        first, first_param = self.store._in("interception_id", roots)
        members = (f"(SELECT thread_id AS root, interception_id FROM {SESSION_MEMBERS_TABLE} WHERE {thread}"
                   f" UNION ALL SELECT interception_id, interception_id FROM {SESSION_MEMBERS_TABLE} WHERE {first}) t")
        params = [thread_param, first_param]
        ended = dict(self.store.db.execute(
            f"SELECT t.root, max(i.ended_at) FROM {members} JOIN aibridge_interceptions i ON i.id = t.interception_id"
            " GROUP BY t.root", params).fetchall())
        sums = ", ".join(self.store._SUM.format(f"u.{c}") for c in _TOKEN_FIGURES)
        tokens, costs = {}, {}
        for root, *figures, cost in self.store.db.execute(
                f"SELECT t.root, {sums}, sum(u.cost_usd) FROM {members}"
                " JOIN aibridge_token_usages u ON u.interception_id = t.interception_id GROUP BY t.root", params):
            tokens[root], costs[root] = tuple(int(n) for n in figures), cost
        return ended, tokens, costs

    def _prompts(self, ids: list[str]) -> dict[str, str]:
        """The prompt each of these interceptions recorded (the last written, should there be several)."""
        if not ids:
            return {}
        condition, param = self.store._in("interception_id", ids)
        return {row[0]: row[1] for row in self.store.db.execute(
            f"SELECT interception_id, prompt FROM aibridge_user_prompts WHERE {condition}"
            f" ORDER BY created_at, {self.store._WRITE_ORDER}", [param])}

    def _where(self, filters: SessionFilter, initiators: list[str] | None, table: str = "s",
               skip: str | None = None) -> tuple[list[str], list[Any]]:
        """The filters as conditions on ``table`` (the summaries ``s`` or the facet rows ``f``, which hold
        the same key, client and start), but for the facet ``skip`` (the one the query reads)."""
        where: list[str] = []
        params: list[Any] = []
        if initiators is not None:
            condition, param = self.store._any_of(f"{table}.initiator_id", initiators)
            where.append(condition)
            params.append(param)
        for column, value in (("session_id", filters.session_id), ("client", filters.client)):
            if value is not None:
                where.append(f"{table}.{column} = ?")
                params.append(value)
        for name in SESSION_FACETS:
            value = getattr(filters, name)
            if value is not None and name != skip:
                condition, param = self.store._any_of("x.value", list(value) if isinstance(value, tuple) else [value])
                where.append(_HAS_FACET.format(table, condition))
                params.extend((name, param))
        times, bounds = _between(f"{table}.started_at", filters.started_after, filters.started_before)
        return [*where, *times], [*params, *bounds]

    def _results(self, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Summary rows (``_SUMMARY``) as the API's session objects, with usernames and last prompts."""
        if not rows:
            return []
        names = self.records.usernames({row[1] for row in rows})
        prompts = self._prompts([row[9] for row in rows if row[9] is not None])
        sessions = []
        for (session_id, initiator_id, client, _types, provider_names, models, started_at, ended_at, last_active_at,
             prompt_id, _prompt_at, interception_count, thread_count, *tokens, cost_usd) in rows:
            sessions.append({
                "id": session_id,
                "initiator": {"id": initiator_id or None, "username": names.get(initiator_id)},
                "client": client,
                "providers": orjson.loads(provider_names),
                "models": orjson.loads(models),
                "started_at": started_at,
                "ended_at": ended_at,
                "last_active_at": last_active_at,
                "last_prompt": prompts.get(prompt_id) if prompt_id is not None else None,
                "interception_count": int(interception_count),
                "thread_count": int(thread_count),
                "token_usage": dict(zip(_TOKEN_USAGE, (int(t) for t in tokens))),
                "cost_usd": cost_usd,
            })
        return sessions
