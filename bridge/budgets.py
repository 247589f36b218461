"""Budget enforcement (SPEC §11): each worker's guard, whose check is a dict lookup, kept current by a
background refresher.

The refresher (a greenlet, started by the worker's first intercepted call, which waits for its first
reading) asks the worker's store read pool every REFRESH_INTERVAL seconds for every budget and the
spend of the users they hold (bridge.store.budgets: one call), and works out who has reached a limit.
So a request costs no store round trip, and every worker and every instance sharing a store enforces
the same figures, late by at most REFRESH_INTERVAL plus the time a call's usage takes to reach the
rollups (the recorder's batch wait, 0.5 s, and the write). A call that started under the limit is
not stopped: only new calls are refused. A period that ends between two readings frees its users at
once (each refusal knows when its period resets). While the store cannot be read the last reading
holds; before any reading, calls are let through (a budget is a spending control, not an access
control: tokens are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import gevent
import gevent.event
from loguru import logger

from bridge import budget_rules, metrics
from bridge.budget_rules import Budget
from bridge.errors import GatewayError
from bridge.store import Database

#: Seconds between two readings of the budgets and the spend.
REFRESH_INTERVAL = 1.0
#: How long the first call of a worker waits for the first reading.
FIRST_READING_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A user's budget reached: which budget, which limit, the spend, and when its period resets."""

    budget: Budget
    is_default: bool
    limit: str  # "usd" or "tokens"
    usd: float | None
    tokens: int
    resets_at: datetime

    def error(self, username: str, now: datetime) -> GatewayError:
        """The 429 the caller gets: Anthropic's rate_limit_error, OpenAI's insufficient_quota, with
        Retry-After (whole seconds to the reset) and ``x-should-retry: false`` (the SDKs do not retry)."""
        message = budget_rules.refusal_message(username, self.is_default, self.budget, self.limit, self.usd,
                                               self.tokens, self.resets_at)
        retry_after = max(1, math.ceil((self.resets_at - now).total_seconds()))
        return GatewayError(429, message, code="insufficient_quota",
                            headers={"Retry-After": str(retry_after), "x-should-retry": "false"})


@dataclass(frozen=True, slots=True)
class _Reading:
    """Who is over budget, as of one reading: a user's refusal (None: under budget), and the
    default budget's for users the reading has no figures of (reached at zero spend: a 0 limit)."""

    refusals: dict[str, Refusal | None]
    default: Refusal | None


_NOBODY = _Reading({}, None)


class BudgetGuard:
    """One per worker (bridge.gateway): ``enforce()`` on the hot path, a refresher in the background."""

    def __init__(self, database: Database, interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], datetime] = budget_rules.now) -> None:
        self._database = database
        self._interval = interval
        self._clock = clock
        self._reading: _Reading | None = None
        self._refresher: gevent.Greenlet | None = None
        self._first: gevent.event.Event | None = None

    def enforce(self, user_id: str, username: str, provider: str) -> None:
        """Raise the 429 GatewayError when the user's budget in the current period is spent."""
        reading = self._reading or self._first_reading()
        refusal = reading.refusals.get(user_id, reading.default)
        if refusal is None:
            return
        now = self._clock()
        if now >= refusal.resets_at:  # a new period since the last reading: nothing spent in it yet
            return
        metrics.series(metrics.BUDGET_REJECTIONS, provider, "default" if refusal.is_default else "user").inc()
        raise refusal.error(username, now)

    def close(self) -> None:
        if self._refresher is not None:
            self._refresher.kill(block=False)
            self._refresher = None

    def _first_reading(self) -> _Reading:
        """The first call of the worker starts the refresher and waits (bounded) for its first reading."""
        if self._refresher is None:
            self._first = gevent.event.Event()
            self._refresher = gevent.spawn(self._run)
        self._first.wait(FIRST_READING_WAIT)
        return self._reading or _NOBODY

    def _run(self) -> None:
        while True:
            try:
                self._reading = self._read()
            except Exception as exc:  # the store is busy or down: the last reading holds
                logger.bind(record_type="server").warning("cannot read the budgets ({}); keeping the last reading",
                                                          type(exc).__name__)
            self._first.set()
            gevent.sleep(self._interval)

    def _read(self) -> _Reading:
        now = self._clock()
        budgets, spend = self._database.budgets.snapshot(budget_rules.current_periods(now))
        return reading_of(budgets, spend, now)


def reading_of(budgets: list[dict[str, Any]], spend: dict[str, dict[str, tuple[float | None, int]]],
               now: datetime) -> _Reading:
    """Who has reached a limit at ``now``, from the store's budgets and spend (Budgets.snapshot)."""
    own = {row["user_id"]: _budget(row) for row in budgets if not row["default"]}
    default = next((_budget(row) for row in budgets if row["default"]), None)
    refusals: dict[str, Refusal | None] = {}
    for user_id in own.keys() | (spend.keys() if default is not None else set()):
        budget = own.get(user_id, default)
        usd, tokens = spend.get(user_id, {}).get(budget.period, (None, 0))
        refusals[user_id] = _refusal(budget, user_id not in own, usd, tokens, now)
    return _Reading(refusals, None if default is None else _refusal(default, True, None, 0, now))


def _refusal(budget: Budget, is_default: bool, usd: float | None, tokens: int, now: datetime) -> Refusal | None:
    limit = budget_rules.reached(budget, usd, tokens)
    if limit is None:
        return None
    return Refusal(budget, is_default, limit, usd, tokens, budget_rules.period_end(budget.period, now))


def _budget(row: dict[str, Any]) -> Budget:
    return Budget(row["period"], row["limit_usd"], row["limit_tokens"])
