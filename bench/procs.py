"""Processes: starting and stopping the servers under test, and reading their cost from /proc.

CPU is utime+stime of every process in the tree (the gunicorn master and its workers, nginx's
master and worker, ...), all threads included, read from /proc/<pid>/stat. Memory is VmRSS and
VmHWM (peak resident set) from /proc/<pid>/status.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and all its descendants (through /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Usage:
    """A snapshot of a process tree's CPU time, to subtract from a later one."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.cpu = {p: cpu_seconds(p) for p in tree(root)}

    def cpu_since(self, earlier: "Usage") -> float:
        pids = set(self.cpu) | set(earlier.cpu)
        return sum(self.cpu.get(p, 0.0) - earlier.cpu.get(p, 0.0) for p in pids if p in self.cpu)


def rss_mb(root: int, key: str = "VmRSS") -> float:
    """The largest VmRSS (or VmHWM) among the tree's processes, in MB (the worker's, for gunicorn)."""
    return max((status_kb(p, key) for p in tree(root)), default=0) / 1024.0


class Server:
    """A child process we started; stopped with SIGTERM (then SIGKILL) by its own pid only."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> None:
        self.name, self.cmd, self.log_path = name, cmd, log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, preexec_fn=raise_nofile)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_http(self, url: str, timeout: float, ok=(200,)) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status in ok:
                        return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                if getattr(exc, "code", None) in ok:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:.0f}s; log {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def raise_nofile() -> None:
    """As many file descriptors as allowed, up to 65,536: a socket per client (1,000 streams =
    2,000+ sockets in the gateway). Also run in each child this module starts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
