"""The services one worker's routes share, built once per app from the settings."""

from __future__ import annotations

import os

from bridge.auth import Authenticator
from bridge.config import Settings
from bridge.providers import build_provider
from bridge.recorder import Recorder
from bridge.relay import Upstream
from bridge.reliability import CircuitBreakers, Limits

#: Concurrent clients per worker (gunicorn's worker_connections); the upstream pool matches it so
#: that concurrent streams never churn connections (each a TLS handshake in production).
WORKER_CONNECTIONS = int(os.environ.get("BRIDGE_WORKER_CONNECTIONS", "1000"))


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.authenticator = Authenticator(settings.database_path)
        self.upstream = Upstream(settings.upstream_connect_timeout, settings.upstream_read_timeout, WORKER_CONNECTIONS)
        self.providers = {provider.name: build_provider(provider) for provider in settings.providers}
        self.recorder = Recorder(settings.database_path, retention=settings.retention)
        self.breakers = CircuitBreakers(settings.circuit_breaker)
        self.limits = Limits(settings.max_concurrency, settings.rate_limit)

    def close(self) -> None:
        """Flush what is still queued; called once when the worker stops."""
        self.recorder.close()
