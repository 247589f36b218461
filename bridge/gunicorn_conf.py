"""gunicorn settings and hooks (``gunicorn -c gunicorn.conf.py`` and ``python -m bridge server``).

This module is loaded by the gunicorn master before the gevent workers patch the standard
library: it must not import requests, ssl, Flask or the app (bridge.config, bridge.logsetup and
bridge.store are safe).
"""

from __future__ import annotations

import os
import sys

from bridge.config import ConfigError, serving_settings


def _stop(message: str) -> None:
    """Stop the start with one line (no traceback), leaving no metrics directory behind."""
    _remove_own_metrics_dir()
    sys.stderr.write(f"bridge: {message}\n")
    sys.exit(1)


try:
    _serving = serving_settings()
except ConfigError as error:
    sys.stderr.write(f"bridge: configuration error: {error}\n")
    sys.exit(1)
bind = _serving.bind
worker_class = "bridge.worker.GeventWorker"  # gunicorn's gevent worker, stopping idle connections promptly
workers = _serving.workers  # about one per core: each worker is concurrent
worker_connections = _serving.worker_connections
timeout = 30            # heartbeat of the event loop, not a limit on streams
# In-flight streams get this long to finish on SIGTERM/HUP; those still running a few seconds
# before it end with the provider's error event and are recorded (bridge/worker.py).
graceful_timeout = 120
keepalive = 75          # longer than common load balancer idle timeouts (ALB: 60 s)
control_socket_disable = True  # two instances would otherwise share ~/.gunicorn/gunicorn.ctl
accesslog = None
logger_class = "bridge.worker.GunicornLogger"
# Headers spelled with underscores reach pre_request (gunicorn drops them by default), which keeps
# only those a client needs (Codex's `session_id`, read for the audit record): gunicorn maps
# `X_Api_Key` and `X-Api-Key` to one WSGI name, and a credential header must have one spelling.
header_map = "dangerous"


def pre_request(worker, req) -> None:
    from bridge.auth import drop_underscore_headers  # not at import: the master loads this module

    req.headers = drop_underscore_headers(req.headers)


# Every worker counts metrics in files here so that a scrape of any worker sums them all; set
# before the workers start (prometheus_client reads it at import).
_OWN_METRICS_DIR = None
_MASTER_PID = os.getpid()
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import atexit
    import tempfile

    _OWN_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bridge-metrics-")
    # Also when the master stops before on_exit could run (e.g. its address is taken).
    atexit.register(lambda: _remove_own_metrics_dir())

from bridge.logsetup import GUNICORN_LOGCONFIG, configure_logging  # noqa: E402

logconfig_dict = GUNICORN_LOGCONFIG
configure_logging("/dev/stderr", None)  # gunicorn's first lines, until on_starting applies the settings


def on_starting(server) -> None:
    """Fail fast on a broken configuration, before any worker starts; prepare logs and the store."""
    from loguru import logger

    from bridge.config import load_settings
    from bridge.logsetup import configure_logging

    _clear_metrics_dir()  # counts of an earlier run of this directory would be added in
    try:
        settings = load_settings()
    except ConfigError as error:
        _stop(f"configuration error: {error}")
    configure_logging(settings.log_human, settings.log_json)
    problem = _migrate_in_child(settings)  # migrate once here, before the workers fork
    if problem:
        _stop(f"configuration error: {problem}")
    logger.info("bridge starting on {} with {} worker(s); providers: {}", ", ".join(server.cfg.bind), server.cfg.workers,
                ", ".join(f"{p.name} ({p.type})" for p in settings.providers) or "none")


def _migrate_in_child(settings) -> str | None:
    """Bring the store up to date in a child process; the problem in one line, or None.

    A child: the migration that adds costs prices the stored records with genai-prices, whose imports
    (ssl, through httpx2) must not load in the master before the gevent workers patch ssl (a worker
    would then keep the unpatched ssl; see the module docstring)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report a problem through the pipe, never return into gunicorn
        os.close(read_end)
        status = 0
        try:
            from bridge.pricing import Prices
            from bridge.store import open_store

            open_store(settings.database_path, migrate=True, prices=Prices(settings.prices)).close()
        except BaseException as error:  # a missing or read-only directory, a server that refuses
            from bridge.config import store_problem

            os.write(write_end, store_problem(settings.database_path, error).encode()[:4096])
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        problem = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if problem or os.waitstatus_to_exitcode(status) == 0:
        return problem or None
    return f"the store migration process ended with status {os.waitstatus_to_exitcode(status)}"


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
        if name.endswith((".db", ".labels")):  # .labels: the label values bridge.metrics admitted
            os.remove(os.path.join(directory, name))


def on_exit(server) -> None:
    _remove_own_metrics_dir()


def _remove_own_metrics_dir() -> None:
    # Workers are forked from the master and inherit its exit handlers: only the master removes it.
    if _OWN_METRICS_DIR and os.getpid() == _MASTER_PID:
        import shutil

        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)


def post_worker_init(worker) -> None:
    """The app is loaded: its objects (tens of thousands, none of them garbage) leave the garbage
    collector's view, so a full collection no longer walks them all in the middle of a request
    (seen as single calls taking 30-40 ms at concurrency 1; about 10 ms at most after this)."""
    from bridge import patches

    patches.freeze_loaded_objects()
