"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, loopback only, fsync off.

CI installs the Debian ``postgresql`` package (``.ci/run``); the binaries are found on PATH or
under ``/usr/lib/postgresql/*/bin``. Missing binaries are an error, not a skip: CI always has
them, and a silently skipped backend would hide its failures. Postgres refuses to run as root,
so as root the data directory belongs to the ``postgres`` user (created by the Debian package)
and the server runs through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.harness import free_port

START_TIMEOUT = 30.0


def find_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    candidates = [os.path.dirname(p) for p in (shutil.which("initdb"),) if p]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                       "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install -y postgresql)")


class PostgresServer:
    """One server on 127.0.0.1:<free port>, its socket and data in ``root``."""

    def __init__(self, root: Path | None = None) -> None:
        self.bin = find_binaries()
        # Not under pytest's tmp dir by default: that one is private to root, and as root the
        # server runs as the postgres user.
        self.root = root or Path(tempfile.mkdtemp(prefix="bridge-pg-")) / "pg"
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "bridge"
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._run_as = ["runuser", "-u", "postgres", "--"]
            self._owner = (entry.pw_uid, entry.pw_gid)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        done = subprocess.run([*self._run_as, *args], timeout=timeout, cwd="/", stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout.decode(errors='replace')}"
                               f"\n{self.log()}")

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o755)  # mkdtemp makes it private: the server user must get through
        if self._owner:
            os.chown(self.root, *self._owner)
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                      "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        self.resume()
        return self

    def resume(self) -> None:
        """Start (again) on the same port and data."""
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.root.parent if self.root.parent.name.startswith("bridge-pg-") else self.root,
                      ignore_errors=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given); returns its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
