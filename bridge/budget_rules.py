"""What a budget is (SPEC §11), without Flask or SQL: its periods (UTC calendar day, ISO week, month),
when they start and reset, the check of a budget as the API and the CLI take it, and how a budget
with its spend reads. The API (bridge.api), the CLI (bridge.cli) and the guard (bridge.budgets)
share it.

Tokens, for a budget, are every token a call counted: input + output + cache reads + cache writes.

The clock: ``now()`` is the current UTC time, or, when ``BRIDGE_TEST_CLOCK_FILE`` names a file that
holds an RFC 3339 time, that time (for tests only: they move into the next period by writing the
file instead of waiting for it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

PERIODS = ("day", "week", "month")
FIELDS = ("period", "limit_usd", "limit_tokens")
#: The largest token limit the stores hold (a 64-bit signed integer column).
MAX_TOKENS = 2**63 - 1
#: Test only: a file holding the time the budgets take as now (absent or empty: the real time).
TEST_CLOCK_ENV = "BRIDGE_TEST_CLOCK_FILE"
_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}


class BudgetError(ValueError):
    """A budget the API (400) and the CLI (one error line) refuse; the message names the problem."""


@dataclass(frozen=True, slots=True)
class Budget:
    period: str
    limit_usd: float | None
    limit_tokens: int | None


def now() -> datetime:
    """The budgets' clock: the real UTC time, or the test clock file's (TEST_CLOCK_ENV)."""
    path = os.environ.get(TEST_CLOCK_ENV)
    if path:
        try:
            with open(path) as file:
                text = file.read().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    return datetime.now(timezone.utc)


def period_start(period: str, moment: datetime) -> datetime:
    """The UTC start of the ``period`` (day, ISO week from Monday, calendar month) ``moment`` falls in."""
    day = moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(period: str, moment: datetime) -> datetime:
    """When the period ``moment`` falls in ends, and the next one (a reset) begins."""
    start = period_start(period, moment)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def rfc3339(moment: datetime) -> str:
    """A whole-second UTC time: ``2026-11-21T00:00:00Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_periods(moment: datetime) -> dict[str, tuple[str, str]]:
    """Every period's [start, end) around ``moment``, as the daily rollups' keys (``2026-11-20T00:00:00Z``)."""
    return {period: (rfc3339(period_start(period, moment)), rfc3339(period_end(period, moment))) for period in PERIODS}


def parse_budget(body: Any, names: Mapping[str, str] | None = None) -> Budget:
    """A budget from a JSON object ``{"period": "day"|"week"|"month", "limit_usd": number >= 0 or null,
    "limit_tokens": integer >= 0 or null}`` with at least one limit; BudgetError naming what is wrong
    (``names``: how the caller names each field, e.g. the CLI's flags; by default ``field 'period'``)."""
    def name(field: str) -> str:
        return (names or {}).get(field) or f"field {field!r}"

    if not isinstance(body, Mapping):
        raise BudgetError("a budget is a JSON object with period, limit_usd and/or limit_tokens")
    unknown = [key for key in body if key not in FIELDS]
    if unknown:
        raise BudgetError(f"unknown field {unknown[0]!r}: accepted fields are {', '.join(FIELDS)}")
    period = body.get("period")
    if period is None:
        raise BudgetError(f"{name('period')} is required: one of {', '.join(PERIODS)}")
    if period not in PERIODS:
        raise BudgetError(f"{name('period')} must be one of {', '.join(PERIODS)}, not {_shown(period)}")
    limit_usd, limit_tokens = body.get("limit_usd"), body.get("limit_tokens")
    if limit_usd is not None and (isinstance(limit_usd, bool) or not isinstance(limit_usd, (int, float))
                                  or not math.isfinite(limit_usd) or limit_usd < 0):
        raise BudgetError(f"{name('limit_usd')} must be a number >= 0 (US dollars) or null, not {_shown(limit_usd)}")
    if limit_tokens is not None and (isinstance(limit_tokens, bool) or not isinstance(limit_tokens, int)
                                     or not 0 <= limit_tokens <= MAX_TOKENS):
        raise BudgetError(f"{name('limit_tokens')} must be an integer >= 0 (at most {MAX_TOKENS}) or null,"
                          f" not {_shown(limit_tokens)}")
    if limit_usd is None and limit_tokens is None:
        raise BudgetError(f"a budget needs a limit: give {name('limit_usd')}, {name('limit_tokens')} or both")
    return Budget(period, None if limit_usd is None else float(limit_usd), limit_tokens)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def budget_status(budget: Budget, spend: tuple[float | None, int] | None, moment: datetime) -> dict[str, Any]:
    """A budget with its spend in the current period (``spend``: USD, None when nothing was priced,
    and tokens; None: nothing spent): what the API and the CLI show."""
    usd, tokens = spend or (None, 0)
    return {
        "period": budget.period,
        "limit_usd": budget.limit_usd,
        "limit_tokens": budget.limit_tokens,
        "spend_usd": usd or 0.0,
        "spend_tokens": tokens or 0,
        "period_start": rfc3339(period_start(budget.period, moment)),
        "resets_at": rfc3339(period_end(budget.period, moment)),
        "exceeded": reached(budget, usd, tokens) is not None,
    }


def reached(budget: Budget, usd: float | None, tokens: int | None) -> str | None:
    """Which limit the spend has reached (``usd`` first, then ``tokens``), or None."""
    if budget.limit_usd is not None and (usd or 0.0) >= budget.limit_usd:
        return "usd"
    if budget.limit_tokens is not None and (tokens or 0) >= budget.limit_tokens:
        return "tokens"
    return None


def refusal_message(username: str, is_default: bool, budget: Budget, limit: str, usd: float | None,
                    tokens: int | None, resets_at: datetime) -> str:
    """What a refused caller reads: whose budget, its period, the limit, the spend and the reset."""
    adjective = _ADJECTIVES[budget.period]
    whose = (f"the default {adjective} budget (user {username!r} has no budget of their own)" if is_default
             else f"the {adjective} budget of user {username!r}")
    if limit == "usd":
        figures = f"limit ${budget.limit_usd:.2f}, spent ${usd or 0.0:.4f} this {budget.period}"
    else:
        figures = f"limit {budget.limit_tokens} tokens, used {tokens or 0} tokens this {budget.period}"
    return f"budget exceeded: {whose} is spent ({figures}); it resets at {rfc3339(resets_at)}"


def budget_view(row: Mapping[str, Any], spend: Mapping[str, tuple[float | None, int]] | None,
                moment: datetime) -> dict[str, Any]:
    """A stored budget (bridge.store.budgets) as the API and the CLI show it: whose, its limits, and
    with ``spend`` (a user's, by period; None: no spend figures, as for the default budget itself)
    what was spent in the current period and whether a limit is reached."""
    budget = Budget(row["period"], row["limit_usd"], row["limit_tokens"])
    status = budget_status(budget, (spend or {}).get(budget.period), moment)
    if spend is None:
        status.update(spend_usd=None, spend_tokens=None, exceeded=None)
    user = None if row["default"] else {"id": row["user_id"], "username": row["username"]}
    return {"user": user, "default": row["default"], **status, "updated_at": row["updated_at"]}
