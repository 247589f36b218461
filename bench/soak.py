"""Soak: hundreds of concurrent streams through a two-worker gateway for a minute, on loopback.

    python bench/soak.py [--streams 500] [--seconds 60] [--workers 2] [--events 20] [--interval-ms 200]

Not run by CI (it takes a minute or two and wants the machine to itself). ``--streams`` clients,
each on its own keep-alive connection, open streams back to back for ``--seconds`` (OpenAI chat
and Anthropic Messages alternately, each a paced stream of ``--events`` events ``--interval-ms``
apart from bench/mockserver.py) through ``gunicorn -c gunicorn.conf.py bridge.wsgi:app`` with
``--workers`` workers, a real gateway token and recording on. Then it checks and prints:

- errors: any status but 200, a cut or incomplete stream, a connection error (must be 0);
- every interception recorded: the store's count equals the streams answered, each id the clients
  saw is in it and ended;
- RSS of each worker at boot, after warm-up, at the end of the load, and the peak (memory flat);
- streams/s and events/s relayed.

Everything is bounded (a hard deadline of ``--seconds`` + 180 s); the servers it started are
stopped by their own pids. Exit status 0 when every check passed.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bodies  # noqa: E402
from procs import Server, free_port, raise_nofile, status_kb, tree  # noqa: E402

APIS = ("openai", "anthropic")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-soak-"))
        self.db = self.dir / "bridge.db"
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        self.answered = 0      # streams that got a complete 200 answer
        self.started = 0       # requests sent
        self.events = 0        # SSE events the clients received
        self.ids: set[str] = set()
        self.rss: dict[str, dict[int, int]] = {}

    # -- setup -------------------------------------------------------------------------------

    def token(self) -> str:
        from bridge.store import open_store

        store = open_store(str(self.db))
        try:
            store.migrate()
            store.identity.create_user("soak")
            token, _ = store.identity.create_token("soak")
        finally:
            store.close()
        return token

    def start(self) -> None:
        self.mock_port, self.port = free_port(), free_port()
        self.mock = Server("mock", [sys.executable, str(REPO / "bench" / "mockserver.py"), "--port", str(self.mock_port)],
                           self.dir / "mock.log")
        self.mock.wait_http(f"http://127.0.0.1:{self.mock_port}/", 30, ok=(404,))
        mock = f"http://127.0.0.1:{self.mock_port}/p"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
        env.update({
            "CODER_AIBRIDGE_ENABLED": "true",
            "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{self.db}",
            "CODER_AIBRIDGE_OPENAI_KEY": "sk-soak-openai-key-0000000000",
            "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{mock}/openai/{self.args.events}/{self.args.interval_ms}/v1/",
            "CODER_AIBRIDGE_ANTHROPIC_KEY": "sk-ant-soak-key-00000000000",
            "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": f"{mock}/anthropic/{self.args.events}/{self.args.interval_ms}/",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app",
               "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.args.workers)]
        self.gateway = Server("bridge", cmd, self.dir / "gunicorn.log", env=env, cwd=REPO)
        self.gateway.wait_http(f"http://127.0.0.1:{self.port}/healthz", 60)
        deadline = time.monotonic() + 30
        while len(self.workers()) < self.args.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        self.boot_workers = self.workers()

    def workers(self) -> list[int]:
        return sorted(set(tree(self.gateway.pid)) - {self.gateway.pid})

    def sample_rss(self, label: str) -> None:
        self.rss[label] = {pid: status_kb(pid, "VmRSS") for pid in self.workers()}

    def stop(self) -> None:
        for server in (getattr(self, "gateway", None), getattr(self, "mock", None)):
            if server is not None:
                server.stop()

    # -- load --------------------------------------------------------------------------------

    def client(self, index: int, token: str, until: float) -> None:
        gevent.sleep(self.args.ramp * index / self.args.streams)  # spread the connects over the ramp
        conn: http.client.HTTPConnection | None = None
        n = index
        while time.monotonic() < until:
            api = APIS[n % 2]
            n += 1
            body = json.dumps(bodies.REQUEST_BUILDERS[api](True)).encode()
            headers = ({"x-api-key": token, "anthropic-version": "2023-06-01"} if api == "anthropic"
                       else {"Authorization": f"Bearer {token}"})
            headers["Content-Type"] = "application/json"
            provider = "anthropic" if api == "anthropic" else "openai"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.started += 1
                conn.request("POST", f"/api/v2/aibridge/{provider}/{bodies.API_PATHS[api]}", body, headers)
                response = conn.getresponse()
                data = response.read()
                interception_id = response.getheader("X-AIBridge-Interception-Id")
                if interception_id:
                    self.ids.add(interception_id)
                if response.status != 200:
                    self.fail(f"HTTP {response.status}", data[:200])
                elif bodies.final_marker(api) not in data or b'"error"' in data:
                    self.fail("incomplete stream", data[-200:])
                else:
                    self.answered += 1
                    self.events += data.count(b"\n\n")
                if response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                self.fail(type(exc).__name__, str(exc)[:200])
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def fail(self, kind: str, detail: object) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {detail!r}")

    def run(self) -> bool:
        token = self.token()
        self.start()
        self.sample_rss("boot")
        # warm-up: a few streams per worker, so "start" is a worker that has served
        warm_until = time.monotonic() + 3
        gevent.joinall([gevent.spawn(self.client, i, token, warm_until) for i in range(8)], timeout=60)
        self.sample_rss("warm")
        self.errors.clear()
        self.error_examples.clear()
        warm_ids, self.ids = self.ids, set()
        warm_answered, self.answered, self.started, self.events = self.answered, 0, 0, 0

        began = time.monotonic()
        until = began + self.args.seconds
        samples: list[tuple[float, dict[int, int]]] = []
        clients = [gevent.spawn(self.client, i, token, until) for i in range(self.args.streams)]
        while time.monotonic() < until:
            gevent.sleep(5)
            samples.append((time.monotonic() - began, {pid: status_kb(pid, "VmRSS") for pid in self.workers()}))
        gevent.joinall(clients, timeout=self.args.events * self.args.interval_ms / 1000 + 90)
        elapsed = time.monotonic() - began
        hung = sum(1 for c in clients if not c.dead)
        gevent.killall([c for c in clients if not c.dead], block=False)
        self.sample_rss("end")

        recorded, ended, missing = self.wait_for_records(warm_ids | self.ids, warm_answered + self.answered)
        workers_now = self.workers()
        peak = {pid: status_kb(pid, "VmHWM") for pid in workers_now}
        self.report(elapsed, hung, recorded, ended, missing, warm_answered, samples, peak, workers_now)
        return (not self.errors and hung == 0 and not missing and recorded == ended == warm_answered + self.answered
                and workers_now == self.boot_workers)

    def wait_for_records(self, ids: set[str], expected: int) -> tuple[int, int, int]:
        deadline = time.monotonic() + 60
        recorded = ended = 0
        missing = len(ids)
        while time.monotonic() < deadline:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as db:
                recorded = db.execute("SELECT count(*) FROM aibridge_interceptions").fetchone()[0]
                ended = db.execute("SELECT count(*) FROM aibridge_interceptions WHERE ended_at IS NOT NULL").fetchone()[0]
                if ended >= expected:
                    stored = {row[0] for row in db.execute("SELECT id FROM aibridge_interceptions")}
                    missing = len(ids - stored)
                    break
            time.sleep(0.5)
        return recorded, ended, missing

    def report(self, elapsed: float, hung: int, recorded: int, ended: int, missing: int, warm: int,
               samples: list, peak: dict[int, int], workers_now: list[int]) -> None:
        mb = lambda kb: f"{kb / 1024:.1f} MB"  # noqa: E731
        print(f"soak: {self.args.streams} concurrent streams, {self.args.seconds}s, {self.args.workers} workers, "
              f"{self.args.events} events x {self.args.interval_ms} ms per stream (OpenAI chat + Anthropic Messages)")
        print(f"  streams answered   {self.answered} ({self.answered / elapsed:.1f}/s), events relayed {self.events} "
              f"({self.events / elapsed:.0f}/s), requests sent {self.started}, elapsed {elapsed:.1f}s")
        print(f"  errors             {sum(self.errors.values())} {dict(self.errors) or ''}")
        for example in self.error_examples:
            print(f"    {example}")
        print(f"  clients hung       {hung}")
        print(f"  records            {recorded} in the store, {ended} ended; expected {warm + self.answered} "
              f"(warm-up {warm} + load {self.answered}); ids seen but not stored: {missing}")
        print(f"  workers            boot {self.boot_workers}, end {workers_now}"
              f"{'' if workers_now == self.boot_workers else '  <- a worker was replaced'}")
        for pid in self.boot_workers:
            figures = "  ".join(f"{label} {mb(self.rss.get(label, {}).get(pid, 0))}" for label in ("boot", "warm", "end"))
            print(f"  RSS worker {pid:<7} {figures}  peak {mb(peak.get(pid, 0))}")
        if samples:
            print("  RSS over time      " + "  ".join(
                f"{t:.0f}s:" + "/".join(f"{kb / 1024:.0f}" for _, kb in sorted(rss.items())) for t, rss in samples) + " MB")
        print(f"  logs               {self.dir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--interval-ms", type=int, default=200)
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the clients connect")
    args = parser.parse_args()
    raise_nofile()
    soak = Soak(args)
    watchdog = gevent.spawn_later(args.seconds + 180, lambda: (print("soak: hard deadline reached", flush=True),
                                                               soak.stop(), os._exit(2)))
    try:
        ok = soak.run()
    finally:
        watchdog.kill()
        soak.stop()
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
