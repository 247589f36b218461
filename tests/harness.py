"""Runs the real gateway under gunicorn with gevent workers, as production does, for the tests."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import requests

from bridge.store import open_store

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
RECORD_WAIT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """``gunicorn -c gunicorn.conf.py bridge.wsgi:app`` on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.env = env
        self.log_path = log_path
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.cwd = REPO

    def base(self, provider: str) -> str:
        return f"{self.url}/api/v2/aibridge/{provider}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), "bridge.wsgi:app",
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)]

    def process_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CODER_")}
        # The app imports from the repository even when run in another directory (self.cwd).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(self.env)
        return env

    def start(self) -> "GatewayProcess":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.process_env(), stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:  # not listening yet, or a worker still booting
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not come up within {START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> set[int]:
        """The pids of gunicorn's workers: the master's children, listed by each of its threads."""
        master = self.process.pid
        return {int(pid) for task in Path(f"/proc/{master}/task").iterdir()
                for pid in (task / "children").read_text().split()}

    def worker_status_kb(self, key: str) -> int:
        """A figure in kB of the one worker's /proc status: ``VmRSS`` (resident memory), ``VmHWM`` (its peak)."""
        [worker] = self.worker_pids()
        with open(f"/proc/{worker}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(f"{key}:"))


def wait_for_records(database, ids: list[str]) -> dict[str, dict]:
    """The interceptions with these ids (and their children) once the writer has stored them ended."""
    store = open_store(str(database))
    try:
        deadline = time.monotonic() + RECORD_WAIT
        found: dict[str, dict] = {}
        while time.monotonic() < deadline:
            for interception_id in ids:
                if interception_id not in found:
                    record = store.queries.get_interception(interception_id)
                    if record and record["ended_at"]:
                        found[interception_id] = record
            if len(found) == len(ids):
                break
            time.sleep(0.1)
        return found
    finally:
        store.close()


def wait_for_session(database, session_id: str, count: int) -> list[dict]:
    """The interceptions of one client session (its ``client_session_id``), in order, once the gateway's
    writer stored them ended; waits for at least ``count`` of them."""
    store = open_store(str(database))
    try:
        deadline = time.monotonic() + RECORD_WAIT
        while True:
            ids = [row["id"] for row in store.db.query(
                "SELECT id FROM aibridge_interceptions WHERE client_session_id = ? ORDER BY started_at, rowid",
                [session_id])]
            if len(ids) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        store.close()
    found = wait_for_records(database, ids)
    return [found[i] for i in ids if i in found]


@dataclass
class ClientRun:
    """One run of a real client CLI (Claude Code, Codex) against a gateway or the fake upstream."""

    returncode: int
    stdout: str
    stderr: str
    requests: list  # the fake upstream's RecordedRequests during the run

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        sent = "\n".join(f"  {r.method} {r.path} stream={(r.json or {}).get('stream')}" for r in self.requests)
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}\nupstream saw:\n{sent}"


def sent_before_close(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before it closed the connection within ``within`` seconds (None: still open)."""
    received = b""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return None
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    return None


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head of the answer the server sends on ``sock`` (up to its blank line) and what came after
    it; bounded by the socket's timeout, AssertionError if the server closes first."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        assert data, f"the connection closed before a whole head: {received!r}"
        received += data
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


def json_log_line(json_log: Path, record_type: str, interception_id: str) -> str:
    """The JSON log's line of this record type for this interception, once it is written."""
    def find() -> str | None:
        text = json_log.read_text() if json_log.exists() else ""
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):  # being written
                continue
            entry = orjson.loads(line)
            if entry.get("record_type") == record_type and entry.get("interception_id") == interception_id:
                return line
        return None
    return wait_until(find, f"the {record_type} log line of {interception_id}")


def cli_env(database_url: str, home: Path) -> dict[str, str]:
    """The environment of a ``python -m bridge`` run on one store: no other AI Gateway setting, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_AIBRIDGE_", "CODER_CONFIG_PATH"))}
    return {**env, "CODER_AIBRIDGE_DATABASE_URL": database_url, "HOME": str(home)}


def cli_runner(database_url: str, home: Path):
    """``run(*args, **env)``: ``python -m bridge ARGS`` on the store at ``database_url``, as a subprocess
    in the repository, with ``env`` as more settings; its CompletedProcess (text)."""
    env = cli_env(database_url, home)

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=REPO, env={**env, **extra_env},
                              capture_output=True, text=True, timeout=60)

    return run


def assert_cli_error(result: subprocess.CompletedProcess[str], fragment: str, status: int = 1) -> str:
    """The CLI failed with ``status`` and one ``error:`` line holding ``fragment`` (no traceback,
    nothing on stdout); that line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    return lines[0]


def store_with_users(database: Path) -> tuple[str, str]:
    """A fresh store at ``database`` with alice (admin) and bob; their gateway tokens."""
    store = open_store(str(database))
    try:
        store.migrate()
        store.identity.create_user("alice", is_admin=True)
        store.identity.create_user("bob")
        return store.identity.create_token("alice")[0], store.identity.create_token("bob")[0]
    finally:
        store.close()


def wait_until(check, what: str, timeout: float = 10.0):
    """``check()``'s first true answer, polled every 50 ms; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not show up within {timeout}s")
