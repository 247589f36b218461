"""The mock upstreams: nginx serving the canned bodies (the fast one), and bench/mockserver.py.

nginx is Debian's (`apt-get install nginx-light`, or ``run.py --install``). Each canned
scenario is a file under ``<tmp>/root/s/<scenario>/v1/...`` with a location that sets its
content type; POST to a static file is a 405 in nginx, so ``error_page 405 =200 $uri`` serves
the file instead. One worker process, no access log, keep-alive without a request limit.

Without nginx the canned bodies are served by mockserver.py (gevent) instead; its own CPU per
request is reported as the "direct" row so that readers can subtract it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import bodies
from procs import Server, free_port
from scenarios import Scenario

HERE = Path(__file__).resolve().parent


def write_canned(root: Path, scenarios: list[Scenario]) -> None:
    for s in scenarios:
        file = root / s.mock_prefix().strip("/") / s.api_path()
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(bodies.canned_body(s.api, s.stream))


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def nginx_version() -> str | None:
    binary = nginx_binary()
    if not binary:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    return out.split("/", 1)[-1] if "/" in out else out


class Mock:
    kind = ""
    server: Server
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.server.pid

    def stop(self) -> None:
        self.server.stop()


class NginxMock(Mock):
    kind = "nginx"

    def __init__(self, workdir: Path, scenarios: list[Scenario]) -> None:
        self.dir = workdir / "nginx"
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        root = self.dir / "root"
        write_canned(root, scenarios)
        self.port = free_port()
        locations = "\n".join(
            f"    location {s.mock_prefix()} {{ default_type {'text/event-stream' if s.stream else 'application/json'};"
            f" error_page 405 =200 $uri; }}" for s in scenarios)
        tmp = self.dir / "tmp"
        conf = f"""daemon off;
master_process on;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  sendfile on; tcp_nodelay on; etag off; server_tokens off;
  keepalive_requests 100000000; keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    root {root};
{locations}
  }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        # nginx's worker runs as nobody: it must be able to walk down to the files (mkdtemp is 0700).
        for path in (workdir, self.dir, *root.rglob("*"), root):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.server = Server("nginx", [nginx_binary(), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                             self.dir / "nginx.out")
        probe = scenarios[0]
        try:
            self.server.wait_http(f"{self.url}{probe.mock_prefix()}{probe.api_path()}", 10)
        except RuntimeError:
            self.server.stop()
            raise


class PyMock(Mock):
    """bench/mockserver.py: paced streams, and the canned files when given a root."""

    def __init__(self, workdir: Path, name: str, scenarios: list[Scenario] | None = None) -> None:
        self.kind = "mockserver (gevent)"
        self.port = free_port()
        cmd = [sys.executable, str(HERE / "mockserver.py"), "--port", str(self.port)]
        if scenarios:
            root = workdir / f"{name}-root"
            write_canned(root, scenarios)
            cmd += ["--root", str(root)]
        self.server = Server(name, cmd, workdir / f"{name}.out")
        self.server.wait_http(f"{self.url}/health", 15, ok=(200, 404))


def canned_mock(workdir: Path, scenarios: list[Scenario], want_nginx: bool = True) -> Mock:
    if want_nginx and nginx_binary():
        return NginxMock(workdir, scenarios)
    return PyMock(workdir, "canned-mock", scenarios)
