"""The services one worker's routes share, built once per app from the settings."""

from __future__ import annotations

import os
import time

import gevent
from loguru import logger

from bridge.auth import Authenticator
from bridge.budgets import BudgetGuard
from bridge.config import Settings
from bridge.pricing import Prices, load_table
from bridge.providers import build_provider
from bridge.recorder import Recorder
from bridge.relay import StreamRelay
from bridge.reliability import CircuitBreakers, Limits
from bridge.store import Database
from bridge.upstream import Upstream

#: Concurrent clients per worker (gunicorn's worker_connections); the upstream pool matches it so
#: that concurrent streams never churn connections (each a TLS handshake in production).
WORKER_CONNECTIONS = int(os.environ.get("BRIDGE_WORKER_CONNECTIONS", "1000"))
#: What a client whose stream the gateway has to cut when it stops is told, in the provider's error event.
SHUTDOWN_MESSAGE = "the gateway is shutting down"


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The store's threads and connections of this worker, shared by auth, the API, /readyz and the recorder.
        self.database = Database(settings.database_path)
        self.authenticator = Authenticator(settings.database_path, database=self.database)
        self.upstream = Upstream(settings.upstream_connect_timeout, settings.upstream_read_timeout, WORKER_CONNECTIONS)
        self.providers = {provider.name: build_provider(provider) for provider in settings.providers}
        self.prices = Prices(settings.prices)
        load_table()
        self.recorder = Recorder(settings.database_path, retention=settings.retention, database=self.database)
        self.breakers = CircuitBreakers(settings.circuit_breaker)
        self.limits = Limits(settings.max_concurrency, settings.rate_limit)
        #: Who is over budget, read in the background: checking a call costs no store call.
        self.budgets = BudgetGuard(self.database)

    def end_streams(self, within: float) -> None:
        """End every stream still in flight with the provider's error event and write their records,
        within ``within`` seconds: the worker is stopping and is killed at its graceful timeout."""
        deadline = time.monotonic() + within
        streams = StreamRelay.in_flight()
        if not streams:
            return
        logger.warning("stopping: ending {} stream(s) still in flight before the graceful timeout", len(streams))
        for stream in streams:
            stream.abort(SHUTDOWN_MESSAGE)
        # Each stream's own greenlet sends the error event and ends its interception; half the time
        # is theirs, the rest is for writing the records.
        settle = time.monotonic() + within / 2
        while not all(stream.closed for stream in streams) and time.monotonic() < settle:
            gevent.sleep(0.05)
        for stream in streams:
            if not stream.closed:  # its client is not reading: the record is written all the same
                stream.report_end()
        self.recorder.flush(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Flush what is still queued, then release the store; called when the worker stops."""
        self.budgets.close()
        self.recorder.close()
        self.database.close()
