"""The cost of token usages stored without one (SPEC §11): every row when migration 0009 (PostgreSQL
0006) adds the cost columns, and again on demand after the prices changed (``python -m bridge costs
reprice``). New rows come priced from the gateway (bridge.interception); this only prices rows after
the fact, then recounts what sums them (the usage rollups, the sessions' totals)."""

from __future__ import annotations

from typing import Any

import orjson

from bridge.pricing import Prices
from bridge.store.common import SESSION_MEMBERS_TABLE, SESSIONS_TABLE, USAGE_ROLLUPS
from bridge.store.dialect import Dialect, writes
from bridge.store.rollups import Rollups

#: Token usages priced per round (one keyset page read, one executemany written).
_PAGE = 5000


def cost_schema(real: str, integer: str) -> list[str]:
    """Migration 0009 (PostgreSQL 0006): the cost columns, in a backend's types."""
    statements = [f"ALTER TABLE aibridge_token_usages ADD COLUMN cost_usd {real}"]
    for table in USAGE_ROLLUPS.values():
        statements.append(f"ALTER TABLE {table} ADD COLUMN unpriced_token_usages {integer} NOT NULL DEFAULT 0")
        statements.append(f"ALTER TABLE {table} ADD COLUMN cost_usd {real}")
    statements.append(f"ALTER TABLE {SESSIONS_TABLE} ADD COLUMN cost_usd {real}")
    return statements


class Costs:
    def __init__(self, store: Dialect, rollups: Rollups) -> None:
        self.store = store
        self.rollups = rollups

    @writes
    def reprice(self, prices: Prices) -> int:
        """Price every stored token usage again with ``prices`` (after the prices file changed), in one
        transaction; returns how many now have a price."""
        with self.store.write():
            return self.fill(prices)

    def fill(self, prices: Prices) -> int:
        """``reprice`` inside the caller's transaction (the migration's)."""
        db = self.store.db
        priced, after = 0, ""
        while True:
            page = list(db.execute(
                "SELECT u.id, i.provider, i.model, u.input_tokens, u.output_tokens, u.cache_read_input_tokens,"
                " u.cache_write_input_tokens, u.metadata FROM aibridge_token_usages AS u"
                " JOIN aibridge_interceptions AS i ON i.id = u.interception_id"
                f" WHERE u.id > ? ORDER BY u.id LIMIT {_PAGE}", [after]))
            if not page:
                break
            costs = [(_cost(prices, row), row[0]) for row in page]
            self.store._executemany("UPDATE aibridge_token_usages SET cost_usd = ? WHERE id = ?", costs)
            priced += sum(1 for cost, _ in costs if cost is not None)
            after = page[-1][0]
        self.rollups.recount()
        db.execute(
            f"UPDATE {SESSIONS_TABLE} SET cost_usd = (SELECT sum(u.cost_usd) FROM {SESSION_MEMBERS_TABLE} AS m"
            " JOIN aibridge_token_usages AS u ON u.interception_id = m.interception_id"
            f" WHERE m.session_id = {SESSIONS_TABLE}.session_id AND m.initiator_id = {SESSIONS_TABLE}.initiator_id)")
        return priced


def _cost(prices: Prices, row: tuple[Any, ...]) -> float | None:
    _, provider, model, input_tokens, output_tokens, cache_read, cache_write, metadata = row
    try:
        figures = orjson.loads(metadata) if metadata else None
    except orjson.JSONDecodeError:
        figures = None
    return prices.cost(provider or "", model, int(input_tokens or 0), int(output_tokens or 0), int(cache_read or 0),
                       int(cache_write or 0), figures if isinstance(figures, dict) else None)
