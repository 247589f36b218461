"""Reading the records (the API, the CLI): interceptions by filter or id, usage from the rollups.

Every interception query is answered from one index: the count from a covering index range, a page
from an index in newest-first order (keyset or offset), the rows and their children by id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.store.common import (
    USAGE_FIELDS, _FILTER_COLUMNS, _TOKEN_FIGURES, _USAGE_FIGURES, CHILD_TABLES, RECORD_COLUMNS, SESSION_MEMBERS_TABLE,
    TOOL_ROLLUPS, USAGE_ROLLUPS, InterceptionFilter,
    StoreError, UnknownCursor, add_usage, _ceil_hour, _child_result, _hour, _interception_result, _segments, _sql_where,
    _between, _usage_column,
)
from bridge.store.dialect import Dialect
from bridge.store.identity import Identity

#: The orders of usage groups (all biggest first): most tokens (input + output + cache read + cache
#: write), most interceptions, most cost (groups with no price last).
USAGE_SORTS = ("tokens", "requests", "cost")


class RecordQueries:
    """Interceptions (a filtered page, one by id, the client names) and usage (summaries, series, top tools)."""

    def __init__(self, store: Dialect, identity: Identity) -> None:
        self.store = store
        self.identity = identity

    def _interception_where(self, filters: InterceptionFilter,
                            initiators: list[str] | None) -> tuple[list[str], list[Any]]:
        values: dict[str, list[str]] = {}
        if initiators is not None:
            values["initiator_id"] = initiators
        for column in _FILTER_COLUMNS[1:]:
            value = getattr(filters, column)
            if value is not None:
                values[column] = list(value) if isinstance(value, tuple) else [value]
        where: list[str] = []
        params: list[Any] = []
        for n, column in enumerate(c for c in _FILTER_COLUMNS if c in values):
            # Each filter column leads an index holding all the others (migration 0003): the first
            # one picks that index and the hint keeps the rest from competing (SQLite), so they are
            # checked inside it.
            condition, param = self.store._any_of(column if n == 0 else self.store._hint(column), values[column])
            where.append(condition)
            params.append(param)
        times, bounds = _between("started_at", filters.started_after, filters.started_before)
        return [*where, *times], [*params, *bounds]

    def query_interceptions(
        self,
        filters: InterceptionFilter | None = None,
        *,
        limit: int = 100,
        after_id: str | None = None,
        offset: int | None = None,
        viewer_id: str | None = None,
    ) -> dict[str, Any]:
        """``{"count": matching interceptions, "results": one page of them, newest first}``.

        ``viewer_id`` restricts everything (results, count, the cursor) to that user's records.
        ``after_id`` continues after that interception in newest-first order (started_at desc, id
        desc); it must exist and be visible, else UnknownCursor. Results carry their children, JSON
        columns decoded (a tool call's ``input`` stays the text the model sent).
        """
        filters = filters or InterceptionFilter()
        if after_id is not None and offset is not None:
            raise StoreError("after_id and offset cannot be combined")
        with self.store._read_snapshot():
            initiators = self.identity.visible_initiators(filters.initiator, viewer_id)
            cursor = None
            if after_id is not None:
                sql = "SELECT started_at, id FROM aibridge_interceptions WHERE id = ?"
                params: list[Any] = [after_id]
                if viewer_id is not None:
                    sql += " AND initiator_id = ?"
                    params.append(viewer_id)
                cursor = self.store.db.execute(sql, params).fetchone()
                if cursor is None:
                    raise UnknownCursor(f"unknown after_id {after_id!r}: no such interception")
            if initiators == []:
                return {"count": 0, "results": []}
            where, params = self._interception_where(filters, initiators)
            count = self.store.db.execute(f"SELECT count(*) FROM aibridge_interceptions{_sql_where(where)}", params).fetchone()[0]
            if cursor is not None:
                where = [*where, "(started_at, id) < (?, ?)"]
                params = [*params, *cursor]
            page = page_query("SELECT id FROM aibridge_interceptions", where, params, "started_at DESC, id DESC",
                              limit, offset)
            ids = [row[0] for row in self.store.db.execute(*page)]
            return {"count": count, "results": self.interceptions_by_id(ids)}

    def any_interception(self, filters: InterceptionFilter) -> bool:
        """Whether any interception matches ``filters`` (one indexed probe: no count, no rows read)."""
        initiators = self.identity.initiator_ids(filters.initiator) if filters.initiator is not None else None
        where, params = self._interception_where(filters, initiators)
        return self.store.db.execute(f"SELECT 1 FROM aibridge_interceptions{_sql_where(where)} LIMIT 1", params).fetchone() is not None

    def interception_result(self, interception_id: str, viewer_id: str | None = None) -> dict[str, Any] | None:
        """One interception as query_interceptions() lists it; None when there is no such id or, with
        ``viewer_id``, when it is someone else's (so that ids of others cannot be told apart)."""
        if "\x00" in interception_id:  # no stored id has one (and PostgreSQL text cannot hold it)
            return None
        found = self.interceptions_by_id([interception_id], viewer_id)
        return found[0] if found else None

    def interceptions_by_id(self, ids: list[str], viewer_id: str | None = None) -> list[dict[str, Any]]:
        """Full results for these ids, in this order (only ``viewer_id``'s when given): one query for the
        rows, then, if any, one per child table."""
        if not ids:
            return []
        columns = RECORD_COLUMNS["aibridge_interceptions"]
        condition, param = self.store._in("i.id", ids)
        params = [param]
        if viewer_id is not None:  # someone else's is not read at all, its children neither
            condition += " AND i.initiator_id = ?"
            params.append(viewer_id)
        rows = {
            values[0]: values
            for values in self.store.db.execute(
                f"SELECT {', '.join('i.' + c for c in columns)}, u.username,"
                " coalesce(m.session_id, nullif(i.client_session_id, ''), i.id), coalesce(m.thread_id, i.id)"
                f" FROM aibridge_interceptions i LEFT JOIN users u ON u.id = i.initiator_id"
                f" LEFT JOIN {SESSION_MEMBERS_TABLE} m ON m.interception_id = i.id WHERE {condition}",
                params,
            )
        }
        if not rows:
            return []
        children: dict[str, dict[str, list[dict[str, Any]]]] = {i: {name: [] for name in CHILD_TABLES} for i in ids}
        condition, param = self.store._in("interception_id", ids)
        for name, table in CHILD_TABLES.items():
            child_columns = RECORD_COLUMNS[table]
            for values in self.store.db.execute(
                f"SELECT {', '.join(child_columns)} FROM {table} WHERE {condition}"
                f" ORDER BY created_at, {self.store._WRITE_ORDER}",
                [param],
            ):
                child = _child_result(dict(zip(child_columns, values)))
                children[child["interception_id"]][name].append(child)
        names = (*columns, "initiator_username", "session_id", "thread_id")
        return [_interception_result(dict(zip(names, rows[i])), children[i]) for i in ids if i in rows]

    def interception_clients(self, viewer_id: str | None = None) -> list[str]:
        """Distinct client names, sorted; only the viewer's own when ``viewer_id`` is given."""
        return self._distinct("client", viewer_id)

    def interception_models(self, viewer_id: str | None = None) -> list[str]:
        """Distinct model names as recorded, sorted; only the viewer's own when ``viewer_id`` is given."""
        return self._distinct("model", viewer_id)

    def _distinct(self, column: str, viewer_id: str | None) -> list[str]:
        """The distinct values of an indexed interception column (client, model), sorted."""
        if viewer_id is not None:
            sql = (f"SELECT DISTINCT {column} FROM aibridge_interceptions WHERE initiator_id = ? AND {column} IS NOT NULL"
                   f" ORDER BY {column}")
            return [row[0] for row in self.store.db.execute(sql, [viewer_id])]
        # A loose index scan: one seek per distinct name instead of reading every row.
        sql = f"""WITH RECURSIVE names(value) AS (
                     SELECT min({column}) FROM aibridge_interceptions
                     UNION ALL
                     SELECT (SELECT min({column}) FROM aibridge_interceptions WHERE {column} > names.value)
                     FROM names WHERE names.value IS NOT NULL)
                 SELECT value FROM names WHERE value IS NOT NULL"""
        return [row[0] for row in self.store.db.execute(sql)]

    # -- usage (the rollups of migration 0004) ------------------------------------------------
    # Rollups count by the hour an interception started in, so a time range is taken in whole
    # hours: from the start of the hour ``since`` falls in to the end of the hour ``until`` falls in.

    @property
    def _sum_figures(self) -> str:
        # sum(cost_usd) stays NULL when no row has a cost: nothing priced is no cost known, not 0.
        return ", ".join([*(self.store._SUM.format(c) for c in USAGE_FIELDS[:-1]), "sum(cost_usd)"])

    def usage_summary(self, by: str, since: str | None = None, until: str | None = None,
                      sort: str = "requests") -> list[dict[str, Any]]:
        """Interceptions, token totals and cost per user, model, client or provider, in ``sort`` order
        (USAGE_SORTS; by default most interceptions first).

        ``since`` (a store timestamp) counts interceptions started in its hour or later, ``until`` those
        started before the end of its hour; their token usages are counted whenever they were written.
        """
        column = _usage_column(by)
        totals: dict[str, list[Any]] = {}
        with self.store._read_snapshot():
            for period, low, high in _segments(None if since is None else _hour(since),
                                               None if until is None else _ceil_hour(until)):
                where, params = _period_where(period, low, high, None)
                for key, *figures in self.store.db.execute(
                    f"SELECT {column}, {self._sum_figures} FROM {USAGE_ROLLUPS[period]}{where} GROUP BY 1", params
                ):
                    add_usage(totals.setdefault(key, no_usage()), figures)
            names = self.usernames(totals) if column == "initiator_id" else {}
        summary = []
        for key, figures in totals.items():
            value = key or None
            row: dict[str, Any] = {"group": names.get(key, value) if column == "initiator_id" else value}
            if column == "initiator_id":
                row["user_id"] = value
            row.update(zip(USAGE_FIELDS, figures))
            summary.append(row)
        summary.sort(key=lambda r: usage_rank(sort, r, str(r["group"])))
        return summary

    def usage_series(self, by: str, bucket: str, since: str, until: str, viewer_id: str | None = None,
                     sort: str = "tokens") -> dict[str, Any]:
        """Usage over time per user, model, client or provider: ``{"series": [...], "totals": {...}}``.

        Each series is ``{"key", "label", "total", "points": [{"t", <USAGE_FIELDS>}]}``, its points one
        per ``bucket`` ("hour" or "day", UTC) that has data, oldest first; series come in ``sort`` order
        (USAGE_SORTS; by default most tokens first). ``key`` is the dimension's value (a user id for
        "user", whose ``label`` is the username). ``viewer_id`` restricts everything to that user's own usage.
        """
        column = _usage_column(by)
        if bucket not in ("hour", "day"):
            raise StoreError(f"cannot bucket usage by {bucket!r}: use hour or day")
        low, high = _hour(since), _ceil_hour(until)
        points: dict[str, dict[str, list[Any]]] = {}
        with self.store._read_snapshot():
            for period, start, end in [("hour", low, high)] if bucket == "hour" else _segments(low, high):
                where, params = _period_where(period, start, end, viewer_id)
                t = period if period == bucket else f"substr({period}, 1, 10) || 'T00:00:00Z'"
                for key, at, *figures in self.store.db.execute(
                    f"SELECT {column}, {t}, {self._sum_figures} FROM {USAGE_ROLLUPS[period]}{where} GROUP BY 1, 2", params
                ):
                    add_usage(points.setdefault(key, {}).setdefault(at, no_usage()), figures)
            names = self.usernames(points) if column == "initiator_id" else {}
        return usage_series_result(points, {key: names.get(key) or key or "(none)" for key in points}, sort)

    def top_tools(self, since: str, until: str, limit: int = 20, viewer_id: str | None = None) -> list[dict[str, Any]]:
        """The most called tools in the range, ``[{"tool", "calls"}]`` most calls first."""
        calls: dict[str, int] = {}
        with self.store._read_snapshot():
            for period, start, end in _segments(_hour(since), _ceil_hour(until)):
                where, params = _period_where(period, start, end, viewer_id)
                for tool, count in self.store.db.execute(
                    f"SELECT tool, {self.store._SUM.format('calls')} FROM {TOOL_ROLLUPS[period]}{where} GROUP BY 1", params
                ):
                    calls[tool] = calls.get(tool, 0) + count
        ranked = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [{"tool": tool or None, "calls": count} for tool, count in ranked]

    def usernames(self, user_ids: Any) -> dict[str, str]:
        """Usernames (of live or deleted users) by id."""
        ids = [key for key in user_ids if key]
        if not ids:
            return {}
        condition, param = self.store._in("id", ids)
        return dict(self.store.db.execute(f"SELECT id, username FROM users WHERE {condition}", [param]).fetchall())

    # -- whole records (tests, tools) -----------------------------------------------------------

    def count_records(self) -> dict[str, int]:
        """Rows per record table."""
        return {table: self.store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in RECORD_COLUMNS}

    def get_interception(self, interception_id: str) -> dict[str, Any] | None:
        """An interception row (JSON columns as stored text) with its children under their field names.

        Children come in time order, ties in the order they were written.
        """
        columns = ", ".join(RECORD_COLUMNS["aibridge_interceptions"])
        row = next(iter(self.store.db.query(f"SELECT {columns} FROM aibridge_interceptions WHERE id = ?", [interception_id])), None)
        if row is None:
            return None
        for name, table in CHILD_TABLES.items():
            row[name] = list(self.store.db.query(
                f"SELECT {', '.join(RECORD_COLUMNS[table])} FROM {table} WHERE interception_id = ?"
                f" ORDER BY created_at, {self.store._WRITE_ORDER}", [interception_id]
            ))
        return row


def no_usage() -> list[Any]:
    """A group's figures before any is added (USAGE_FIELDS order; no cost known)."""
    return [0] * (len(USAGE_FIELDS) - 1) + [None]


def usage_rank(sort: str, figures: Mapping[str, Any], key: str) -> tuple[Any, ...]:
    """Where a group with these figures (USAGE_FIELDS) comes in ``sort`` order; ``key`` breaks ties.
    "tokens": most tokens, then most interceptions; "requests": most interceptions; "cost": most cost,
    then as "tokens" (a group with no price after every priced one)."""
    tokens, requests = sum(figures[c] for c in _TOKEN_FIGURES), figures["interceptions"]
    if sort == "tokens":
        return -tokens, -requests, key
    if sort == "requests":
        return -requests, key
    if sort == "cost":
        cost = figures["cost_usd"]
        return cost is None, -(cost or 0.0), -tokens, -requests, key
    raise StoreError(f"cannot sort usage by {sort!r}: use one of {', '.join(USAGE_SORTS)}")


def usage_series_result(points: dict[str, dict[str, list[Any]]], labels: dict[str, str],
                        sort: str) -> dict[str, Any]:
    """``{"series", "totals"}`` of usage ``points`` (per key, per time: figures in USAGE_FIELDS order),
    each series with its ``labels[key]`` and its ``total``, in ``sort`` order."""
    series, totals = [], no_usage()
    for key, by_time in points.items():
        sums = no_usage()
        for figures in by_time.values():
            add_usage(sums, figures)
        add_usage(totals, sums)
        total = dict(zip(USAGE_FIELDS, sums))
        series.append((usage_rank(sort, total, key), {
            "key": key or None,
            "label": labels[key],
            "total": total,
            "points": [{"t": at, **dict(zip(USAGE_FIELDS, by_time[at]))} for at in sorted(by_time)],
        }))
    series.sort(key=lambda item: item[0])
    return {"series": [item[1] for item in series], "totals": dict(zip(USAGE_FIELDS, totals))}


def page_query(select: str, where: list[str], params: list[Any], order: str, limit: int,
               offset: int | None) -> tuple[str, list[Any]]:
    """A page of a list: ``select`` (with its FROM) under ``where``, in ``order``, ``limit`` rows from
    ``offset``; the SQL and its parameters."""
    sql = f"{select}{_sql_where(where)} ORDER BY {order} LIMIT ?"
    params = [*params, limit]
    if offset:
        sql += " OFFSET ?"
        params.append(offset)
    return sql, params


def _period_where(period: str, start: str | None, end: str | None, viewer_id: str | None) -> tuple[str, list[Any]]:
    conditions, params = (["initiator_id = ?"], [viewer_id]) if viewer_id is not None else ([], [])
    times, bounds = _between(period, start, end)
    return _sql_where([*conditions, *times]), [*params, *bounds]
