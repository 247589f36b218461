"""gunicorn settings and hooks (``gunicorn -c gunicorn.conf.py`` and ``python -m bridge server``).

This module is loaded by the gunicorn master before the gevent workers patch the standard
library: it must not import requests, ssl, Flask or the app (bridge.config, bridge.logsetup and
bridge.store are safe).
"""

from __future__ import annotations

import os
import sys

bind = os.environ.get("CODER_HTTP_ADDRESS", "127.0.0.1:3000")
worker_class = "bridge.worker.GeventWorker"  # gunicorn's gevent worker, stopping idle connections promptly
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))  # about one per core: each worker is concurrent
worker_connections = int(os.environ.get("BRIDGE_WORKER_CONNECTIONS", "1000"))
timeout = 30            # heartbeat of the event loop, not a limit on streams
graceful_timeout = 120  # in-flight streams get this long to finish on SIGTERM/HUP
keepalive = 75          # longer than common load balancer idle timeouts (ALB: 60 s)
control_socket_disable = True  # two instances would otherwise share ~/.gunicorn/gunicorn.ctl
accesslog = None
logger_class = "bridge.worker.GunicornLogger"
# Keep headers with underscores (gunicorn drops them by default): clients send some (Codex's
# `session_id`) that the provider expects and the audit record reads.
header_map = "dangerous"

# Every worker counts metrics in files here so that a scrape of any worker sums them all; set
# before the workers start (prometheus_client reads it at import).
_OWN_METRICS_DIR = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    _OWN_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bridge-metrics-")

from bridge.logsetup import GUNICORN_LOGCONFIG, configure_logging  # noqa: E402

logconfig_dict = GUNICORN_LOGCONFIG
configure_logging("/dev/stderr", None)  # gunicorn's first lines, until on_starting applies the settings


def on_starting(server) -> None:
    """Fail fast on a broken configuration, before any worker starts; prepare logs and the store."""
    from loguru import logger

    from bridge.config import ConfigError, load_settings
    from bridge.logsetup import configure_logging
    from bridge.store import Store

    _clear_metrics_dir()  # counts of an earlier run of this directory would be added in
    try:
        settings = load_settings()
    except ConfigError as error:
        sys.stderr.write(f"bridge: configuration error: {error}\n")
        sys.exit(1)
    configure_logging(settings.log_human, settings.log_json)
    store = Store(settings.database_path)  # migrate once here; closed before the workers fork
    store.migrate()
    store.close()
    logger.info("bridge starting on {} with {} worker(s); providers: {}", ", ".join(server.cfg.bind), server.cfg.workers,
                ", ".join(f"{p.name} ({p.type})" for p in settings.providers) or "none")


def worker_exit(server, worker) -> None:
    """Write every queued record before the worker goes (SIGTERM, SIGHUP, max_requests)."""
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("bridge")
    if gateway is not None:
        gateway.close()


def child_exit(server, worker) -> None:
    """A dead worker's gauges stop counting (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _clear_metrics_dir() -> None:
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def on_exit(server) -> None:
    if _OWN_METRICS_DIR:
        import shutil

        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)


def post_worker_init(worker) -> None:
    """The app is loaded: its objects (tens of thousands, none of them garbage) leave the garbage
    collector's view, so a full collection no longer walks them all in the middle of a request
    (seen as single calls taking 30-40 ms at concurrency 1; about 10 ms at most after this)."""
    import gc

    gc.collect()
    gc.freeze()
