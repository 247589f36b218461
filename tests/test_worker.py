"""The gevent worker's own parts: the Date header every answer carries."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import SimpleNamespace

import requests
from gunicorn import util

from bridge import worker


def test_date_header_is_made_once_a_second_and_reads_as_gunicorns(monkeypatch):
    now = [1_790_000_000.25]
    monkeypatch.setattr(worker, "time", SimpleNamespace(time=lambda: now[0]))  # the worker's clock only
    date = worker._DateHeader()
    first = date()
    assert first == worker._STOCK_HTTP_DATE(now[0]) == "Mon, 21 Sep 2026 14:13:20 GMT"
    now[0] += 0.7  # the same second
    assert date() == first
    now[0] += 0.1  # the next one
    assert date() == worker._STOCK_HTTP_DATE(now[0]) != first
    assert date(86400.0) == util.http_date(86400.0) == "Fri, 02 Jan 1970 00:00:00 GMT"


def test_answers_carry_the_current_date(gateway):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    response = requests.get(f"{gateway.url}/healthz", timeout=10)
    after = datetime.now(timezone.utc)
    assert before <= parsedate_to_datetime(response.headers["Date"]) <= after
