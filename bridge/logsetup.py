"""Log sinks (loguru) and the bridge from the standard ``logging`` module (gunicorn's own loggers).

Imported by the gunicorn config in the master, so it must not import requests or the app.
Never ``enqueue=True``: its feeder thread becomes a greenlet under gevent and hangs the worker.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
from loguru import logger

HUMAN_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message} {extra}"
_STDERR_PATHS = ("", "/dev/stderr", "stderr")


def _open(path: str) -> TextIO:
    if path in _STDERR_PATHS:
        return sys.stderr
    if path in ("/dev/stdout", "stdout"):
        return sys.stdout
    return open(path, "a", buffering=1, encoding="utf-8")  # one write per line: safe across workers


def _json_sink(stream: TextIO):
    def write(message) -> None:
        record = message.record
        line = {"ts": record["time"].isoformat(), "level": record["level"].name, "msg": record["message"], **record["extra"]}
        if record["exception"] is not None:
            line["error"] = repr(record["exception"].value)
        stream.write(orjson.dumps(line, default=str).decode() + "\n")
    return write


def configure_logging(human: str | None, json_path: str | None, level: str = "INFO") -> None:
    """Send logs to the human destination (a path or /dev/stderr) and/or as JSON lines to ``json_path``."""
    logger.remove()
    logger.configure(extra={"record_type": "server"})
    if human is not None:
        logger.add(_open(human), format=HUMAN_FORMAT, level=level, colorize=False, backtrace=False, diagnose=False)
    if json_path:
        logger.add(_json_sink(_open(json_path)), level=level, backtrace=False, diagnose=False)


class InterceptHandler(logging.Handler):
    """Routes standard-library log records (gunicorn's) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).bind(logger_name=record.name).log(level, record.getMessage())


GUNICORN_LOGCONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"loguru": {"()": "bridge.logsetup.InterceptHandler"}},
    "root": {"handlers": ["loguru"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["loguru"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["loguru"], "level": "WARNING", "propagate": False},
    },
}
