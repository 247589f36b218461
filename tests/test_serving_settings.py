"""Bad serving settings (listen address, worker count, store location) stop the start with one line
naming the variable, through gunicorn with the gateway's config and through ``python -m bridge server``;
no start, failed or stopped, leaves a metrics directory behind (issue 16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.harness import REPO, free_port

PYTHON = sys.executable
GUNICORN = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app"]
SERVER = [PYTHON, "-m", "bridge", "server"]
EXIT_TIMEOUT = 30.0


def _env(tmp_path: Path, settings: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CODER_", "PROMETHEUS_")) and key not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")}
    temp = tmp_path / "tmp"  # the metrics directory is made in TMPDIR: this one must stay empty
    temp.mkdir(exist_ok=True)
    env.update({"TMPDIR": str(temp), "HOME": str(tmp_path), "CODER_AIBRIDGE_DATABASE_URL": str(tmp_path / "bridge.db"),
                "CODER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}", **settings})
    return env


def _lines_of_ours(stderr: str) -> list[str]:
    """The lines a failed start printed, minus gunicorn's own log lines (timestamped)."""
    return [line for line in stderr.splitlines() if line.strip() and not line[:4].isdigit()]


BAD = [
    pytest.param({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY", id="workers-not-a-number"),
    pytest.param({"CODER_HTTP_ADDRESS": "nonsense"}, "CODER_HTTP_ADDRESS", id="address-without-port"),
    pytest.param({"CODER_HTTP_ADDRESS": "127.0.0.1:99999"}, "CODER_HTTP_ADDRESS", id="port-out-of-range"),
    pytest.param({"CODER_AIBRIDGE_DATABASE_URL": "sqlite:////nonexistent-dir/sub/bridge.db"},
                 "CODER_AIBRIDGE_DATABASE_URL", id="database-directory-missing"),
    # Root may write anywhere a mode allows: /proc refuses new files to everyone.
    pytest.param({"CODER_AIBRIDGE_DATABASE_URL": "sqlite:////proc/bridge.db"},
                 "CODER_AIBRIDGE_DATABASE_URL", id="database-directory-not-writable"),
]


CASES = [pytest.param(command, settings, variable, id=f"{name}-{case.id}")
         for name, command in (("bridge-server", SERVER), ("gunicorn", GUNICORN))
         for case in BAD
         for settings, variable in [case.values]
         # gunicorn's own config module reads WEB_CONCURRENCY as it is imported, before any
         # configuration file is read: only `python -m bridge server` can check it first.
         if not (command is GUNICORN and "WEB_CONCURRENCY" in settings)]


@pytest.mark.parametrize("command, settings, variable", CASES)
def test_a_bad_serving_setting_is_one_line_naming_it(tmp_path: Path, command, settings, variable) -> None:
    env = _env(tmp_path, settings)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr, result.stderr
    ours = _lines_of_ours(result.stderr)
    assert len(ours) == 1 and variable in ours[0], result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_gateway_stopped_with_sigterm_leaves_no_metrics_directory(tmp_path: Path) -> None:
    env = _env(tmp_path, {})
    port = env["CODER_HTTP_ADDRESS"].rpartition(":")[2]
    process = subprocess.Popen(GUNICORN, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the gateway did not come up"
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        assert [path.name for path in (tmp_path / "tmp").iterdir()][0].startswith("bridge-metrics-")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=EXIT_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert list((tmp_path / "tmp").iterdir()) == []
