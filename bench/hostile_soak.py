"""Hostile-client soak (issue 15): normal streams must not notice hostile clients running at once.

    python bench/hostile_soak.py [--duration 60] [--normal 50] [--models 3000] [--slow-sockets 300]
                                 [--large 3] [--large-total 9] [--keep]

A two-worker gateway (``gunicorn -c gunicorn.conf.py bridge.wsgi:app``, structured logging, JSON
log and dumps on, recording on) in front of bench/mockserver.py's paced streams, all on 127.0.0.1.
For ``--duration`` seconds, at the same time:

- normal: ``--normal`` clients, each on its own keep-alive connection, run streams back to back
  (OpenAI chat and Anthropic Messages alternately, ``--events`` events ``--interval-ms`` apart);
- models: one client sends streams, each with a new model name (up to ``--models``, at most
  ``--models-rate`` per second), through a provider of its own on the same mock;
- slow headers: ``--slow-sockets`` connections send a request line, then one header line every
  ``--slow-interval`` seconds, never finishing the head (reconnecting when the gateway closes one);
- large bodies: ``--large`` concurrent chat requests whose prompt is 20-60 MiB (``--large-total``
  in all), through a provider whose upstream (a sink in this process) drains the body and answers;
- a scraper: GET /metrics, then ``--scrape-interval`` seconds of pause, again.

Then it prints the normal clients' errors by kind (must be 0), their stream count and latency
(first event and whole stream, p50/p99), each worker's RSS before and after (VmRSS from /proc,
and the peak), /metrics body size and scrape time at the end, the size of the metrics directory,
the store, the logs and the dumps, what the hostile clients saw, and the CPU time each process used.

Bounded: every client stops at the deadline, the hostile ones are also capped in requests, and a
watchdog ends the run at ``--duration`` + 240 s. The servers it started are stopped by their own
pids; the temporary directory is removed unless ``--keep``. Exit status 1 when a normal client saw
an error (or hung), 0 otherwise. Not run by CI.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bodies  # noqa: E402
from load import Conn, Dechunker, framing, pct  # noqa: E402
from procs import Server, Usage, cpu_seconds, free_port, raise_nofile, status_kb, tree  # noqa: E402

MiB = 1024 * 1024
APIS = ("openai", "anthropic")
_LARGE_TEXT = (b"The tide returns to the shore it left, patient as stone. " * (61 * MiB // 57 + 1))[:61 * MiB]


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # a dump or metrics file removed while we walk
                pass
    return total


def _human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= 100 * 1024 else f"{n / 1024:.1f} KiB"


class Sink:
    """The large bodies' upstream: drains each request body (Content-Length or chunked) without
    keeping it, then answers a short chat completion. bench/mockserver.py would keep the body,
    grown by concatenation: seconds of CPU per 60 MiB."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answer = bodies.openai_blocking()
        self.drained = 0
        self.server = StreamServer(("127.0.0.1", self.port), self._handle, spawn=100)
        self.server.start()

    def _handle(self, sock: socket.socket, _address) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data or len(buf) > 65536:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length, chunked, _ = framing(head)
                buf = self._drain_chunked(sock, rest) if chunked else self._drain(sock, rest, length or 0)
                if buf is None:
                    return
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(self.answer), self.answer))
        except OSError:
            pass
        finally:
            sock.close()

    def _drain(self, sock: socket.socket, rest: bytes, length: int) -> bytes | None:
        """What follows the body (b"" unless pipelined), or None when the client went away."""
        need = length - len(rest)
        while need > 0:
            data = sock.recv(min(need, MiB))
            if not data:
                return None
            need -= len(data)
        self.drained += length
        return rest[length:]

    def _drain_chunked(self, sock: socket.socket, rest: bytes) -> bytes | None:
        decoder = Dechunker()
        data = rest
        while True:
            self.drained += len(decoder.feed(data)) if data else 0
            if decoder.done:
                return decoder.rest
            data = sock.recv(MiB)
            if not data:
                return None

    def stop(self) -> None:
        self.server.stop(timeout=1)


class HostileSoak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-hostile-"))
        self.db = self.dir / "bridge.db"
        self.metrics_dir = self.dir / "metrics"
        self.dumps = self.dir / "dumps"
        self.json_log = self.dir / "bridge.json"
        self.rng = random.Random(15)
        # normal clients
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        self.streams = 0
        self.first_event: list[float] = []
        self.whole: list[float] = []
        # hostile clients
        self.model_status: Counter[str] = Counter()
        self.models_sent = 0
        self.slow: Counter[str] = Counter()
        self.slow_held: list[float] = []
        self.large_status: Counter[str] = Counter()
        self.large_sent = 0
        self.large_times: list[float] = []
        self.scrapes: list[tuple[float, int]] = []
        self.scrape_status: Counter[str] = Counter()
        self.rss_peak: dict[int, int] = {}

    # -- setup -------------------------------------------------------------------------------

    def tokens(self) -> tuple[str, str]:
        from bridge.store import open_store

        store = open_store(str(self.db))
        try:
            store.migrate()
            store.identity.create_user("normal")
            store.identity.create_user("mallory")
            return store.identity.create_token("normal")[0], store.identity.create_token("mallory")[0]
        finally:
            store.close()

    def start(self) -> None:
        args = self.args
        self.metrics_dir.mkdir()
        self.sink = Sink()
        self.mock_port, self.port = free_port(), free_port()
        self.mock = Server("mock", [sys.executable, str(REPO / "bench" / "mockserver.py"), "--port", str(self.mock_port)],
                           self.dir / "mock.log")
        self.mock.wait_http(f"http://127.0.0.1:{self.mock_port}/", 30, ok=(404,))
        mock = f"http://127.0.0.1:{self.mock_port}/p"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "PROMETHEUS_"))}
        env.update({
            "CODER_AIBRIDGE_ENABLED": "true",
            "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{self.db}",
            "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",
            "CODER_AIBRIDGE_DUMP_DIR": str(self.dumps),
            "CODER_LOGGING_JSON": str(self.json_log),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "CODER_AIBRIDGE_OPENAI_KEY": "sk-soak-openai-key-0000000000",
            "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{mock}/openai/{args.events}/{args.interval_ms}/v1/",
            "CODER_AIBRIDGE_ANTHROPIC_KEY": "sk-ant-soak-key-00000000000",
            "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": f"{mock}/anthropic/{args.events}/{args.interval_ms}/",
            # the model spammer: short unpaced streams, so thousands of models fit in a minute
            "CODER_AIBRIDGE_PROVIDER_0_TYPE": "openai",
            "CODER_AIBRIDGE_PROVIDER_0_NAME": "spam",
            "CODER_AIBRIDGE_PROVIDER_0_KEY": "sk-soak-spam-key-00000000000",
            "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": f"{mock}/openai/5/0/v1/",
            "CODER_AIBRIDGE_PROVIDER_1_TYPE": "openai",
            "CODER_AIBRIDGE_PROVIDER_1_NAME": "bulk",
            "CODER_AIBRIDGE_PROVIDER_1_KEY": "sk-soak-bulk-key-00000000000",
            "CODER_AIBRIDGE_PROVIDER_1_BASE_URL": f"http://127.0.0.1:{self.sink.port}/v1/",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app",
               "--bind", f"127.0.0.1:{self.port}", "--workers", str(args.workers)]
        self.gateway = Server("bridge", cmd, self.dir / "gunicorn.log", env=env, cwd=REPO)
        self.gateway.wait_http(f"http://127.0.0.1:{self.port}/healthz", 60)
        deadline = time.monotonic() + 30
        while len(self.workers()) < args.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def workers(self) -> list[int]:
        return sorted(set(tree(self.gateway.pid)) - {self.gateway.pid})

    def rss(self) -> dict[int, int]:
        return {pid: status_kb(pid, "VmRSS") for pid in self.workers()}

    def stop(self) -> None:
        for server in (getattr(self, "gateway", None), getattr(self, "mock", None), getattr(self, "sink", None)):
            if server is not None:
                server.stop()

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    # -- normal clients ------------------------------------------------------------------------

    def normal_client(self, index: int, token: str, until: float, measured: bool = True) -> None:
        gevent.sleep(2.0 * index / self.args.normal)  # spread the connects over 2 s
        conn = Conn("127.0.0.1", self.port)
        n = index
        while time.monotonic() < until:
            api = APIS[n % 2]
            n += 1
            headers = ({"x-api-key": token, "anthropic-version": "2023-06-01"} if api == "anthropic"
                       else {"Authorization": f"Bearer {token}"})
            request = self._request(f"/api/v2/aibridge/{api}/{bodies.API_PATHS[api]}",
                                    json.dumps(bodies.REQUEST_BUILDERS[api](True)).encode(), headers)
            try:
                status, first_ns, total_ns, data = conn.roundtrip(request)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
                conn.close()
                if measured:
                    self.fail(type(exc).__name__, str(exc)[:200])
                continue
            if not measured:
                continue
            if status != 200:
                self.fail(f"HTTP {status}", data[:200])
            elif bodies.final_marker(api) not in data or b'"error"' in data:
                self.fail("incomplete stream", data[-200:])
            else:
                self.streams += 1
                self.first_event.append(first_ns / 1e9)
                self.whole.append(total_ns / 1e9)
        conn.close()

    def fail(self, kind: str, detail: object) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 8:
            self.error_examples.append(f"{kind}: {detail!r}")

    # -- hostile clients -----------------------------------------------------------------------

    def model_spammer(self, token: str, until: float, began: float) -> None:
        conn = Conn("127.0.0.1", self.port)
        body = bodies.REQUEST_BUILDERS["openai"](True)
        while time.monotonic() < until and self.models_sent < self.args.models:
            k = self.models_sent
            self.models_sent += 1
            due = began + k / self.args.models_rate
            if due > time.monotonic():
                gevent.sleep(due - time.monotonic())
            body["model"] = f"hostile-model-{k:06d}-{self.rng.getrandbits(64):016x}"
            request = self._request("/api/v2/aibridge/spam/v1/chat/completions", json.dumps(body).encode(),
                                    {"Authorization": f"Bearer {token}"})
            try:
                status, _, _, _ = conn.roundtrip(request)
                self.model_status[str(status)] += 1
            except Exception as exc:  # noqa: BLE001
                conn.close()
                self.model_status[type(exc).__name__] += 1
        conn.close()

    def slow_headers(self, index: int, until: float) -> None:
        """One slot of the attack: a connection sends a request line, then a header line every
        interval, never ending the head; when the gateway lets it go, the next one opens."""
        gevent.sleep(2.0 * index / max(1, self.args.slow_sockets))
        head = b"POST /api/v2/aibridge/openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        while time.monotonic() < until:
            opened = time.monotonic()
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError as exc:
                self.slow[f"connect failed: {type(exc).__name__}"] += 1
                gevent.sleep(1)
                continue
            self.slow["connections"] += 1
            outcome = "held until the end"
            try:
                sock.sendall(head)
                line = 0
                while time.monotonic() < until:
                    sock.settimeout(min(self.args.slow_interval, max(0.01, until - time.monotonic())))
                    try:
                        answer = sock.recv(4096)
                    except socket.timeout:
                        line += 1
                        sock.sendall(b"X-Slow-%d: %d\r\n" % (line, line))
                        continue
                    outcome = f"answered {answer[9:12].decode(errors='replace')}" if answer else "closed by the gateway"
                    break
            except OSError as exc:
                outcome = f"closed by the gateway ({type(exc).__name__})"
            finally:
                sock.close()
            self.slow[outcome] += 1
            if outcome != "held until the end":
                self.slow_held.append(time.monotonic() - opened)

    def large_bodies(self, token: str, until: float) -> None:
        conn = Conn("127.0.0.1", self.port)
        prefix = b'{"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":"'
        while time.monotonic() < until and self.large_sent < self.args.large_total:
            self.large_sent += 1
            size = self.rng.randint(20 * MiB, 60 * MiB)
            request = self._request("/api/v2/aibridge/bulk/v1/chat/completions",
                                    prefix + _LARGE_TEXT[:size] + b'"}]}', {"Authorization": f"Bearer {token}"})
            started = time.monotonic()
            try:
                status, _, _, _ = conn.roundtrip(request)
                self.large_status[str(status)] += 1
                self.large_times.append(time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001
                conn.close()
                self.large_status[type(exc).__name__] += 1
            del request
        conn.close()

    def scrape(self, timeout: float = 60) -> tuple[float, int, str]:
        """(seconds, body bytes, status or error) of one GET /metrics."""
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            return time.monotonic() - started, len(body), str(response.status)
        except Exception as exc:  # noqa: BLE001
            return time.monotonic() - started, 0, type(exc).__name__
        finally:
            conn.close()

    def scraper(self, until: float) -> None:
        while time.monotonic() < until:
            seconds, size, status = self.scrape(timeout=30)
            self.scrape_status[status] += 1
            if status == "200":
                self.scrapes.append((seconds, size))
            gevent.sleep(self.args.scrape_interval)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> bool:
        args = self.args
        normal_token, hostile_token = self.tokens()
        self.start()
        warm_until = time.monotonic() + 2
        gevent.joinall([gevent.spawn(self.normal_client, i, normal_token, warm_until, False) for i in range(4)],
                       timeout=60)
        boot_workers = self.workers()
        rss_before = self.rss()
        gateway_cpu, mock_cpu, own_cpu = Usage(self.gateway.pid), cpu_seconds(self.mock.pid), _own_cpu()

        began = time.monotonic()
        until = began + args.duration
        normal = [gevent.spawn(self.normal_client, i, normal_token, until) for i in range(args.normal)]
        hostile = [gevent.spawn(self.model_spammer, hostile_token, until, began) for _ in range(args.models_concurrency)]
        hostile += [gevent.spawn(self.slow_headers, i, until) for i in range(args.slow_sockets)]
        hostile += [gevent.spawn(self.large_bodies, hostile_token, until) for _ in range(args.large)]
        hostile.append(gevent.spawn(self.scraper, until))
        while time.monotonic() < until:
            gevent.sleep(min(2.0, max(0.0, until - time.monotonic())))
            for pid, kb in self.rss().items():
                self.rss_peak[pid] = max(kb, self.rss_peak.get(pid, 0))
        gevent.joinall(normal, timeout=args.events * args.interval_ms / 1000 + 60)
        hung = [g for g in normal if not g.dead]
        gevent.joinall(hostile, timeout=60)
        gevent.killall([g for g in hostile if not g.dead], block=True, timeout=10)
        gevent.killall(hung, block=True, timeout=10)
        elapsed = time.monotonic() - began
        if hung:
            self.errors["client hung"] += len(hung)
        rss_after = self.rss()
        cpu = (Usage(self.gateway.pid).cpu_since(gateway_cpu), cpu_seconds(self.mock.pid) - mock_cpu,
               _own_cpu() - own_cpu)
        final_scrape = self.scrape(timeout=60)
        self.report(elapsed, boot_workers, rss_before, rss_after, final_scrape, cpu)
        return not self.errors

    def report(self, elapsed: float, boot_workers: list[int], before: dict[int, int], after: dict[int, int],
               final_scrape: tuple[float, int, str], cpu: tuple[float, float, float]) -> None:
        args = self.args
        print(f"hostile soak: {elapsed:.0f}s, {args.workers} workers (structured logging, JSON log, dumps on), "
              f"{args.normal} normal clients x {args.events} events / {args.interval_ms} ms")
        print("normal clients")
        print(f"  errors             {sum(self.errors.values())} {dict(self.errors) or ''}")
        for example in self.error_examples:
            print(f"    {example}")
        print(f"  streams            {self.streams} ({self.streams / elapsed:.1f}/s)")
        print(f"  first event        p50 {_ms(pct(self.first_event, 50))}  p99 {_ms(pct(self.first_event, 99))}  "
              f"max {_ms(max(self.first_event, default=None))}")
        print(f"  whole stream       p50 {_ms(pct(self.whole, 50))}  p99 {_ms(pct(self.whole, 99))}  "
              f"(pacing alone: {(args.events - 1) * args.interval_ms} ms)")
        print("workers (VmRSS)")
        now_workers = self.workers()
        for pid in sorted(set(boot_workers) | set(now_workers)):
            state = "" if pid in boot_workers and pid in now_workers else (
                "  <- gone (killed or replaced)" if pid in boot_workers else "  <- started during the soak")
            print(f"  worker {pid:<8} before {_mb(before.get(pid, 0)):>8}  after {_mb(after.get(pid, 0)):>8}  "
                  f"peak {_mb(max(status_kb(pid, 'VmHWM'), self.rss_peak.get(pid, 0))):>8}{state}")
        seconds, size, status = final_scrape
        print("/metrics")
        print(f"  at the end         {_human(size)} in {_ms(seconds)} (status {status})")
        times = [s for s, _ in self.scrapes]
        print(f"  during the soak    {sum(self.scrape_status.values())} scrapes {dict(self.scrape_status)}, "
              f"time p50 {_ms(pct(times, 50))} max {_ms(max(times, default=None))}, "
              f"largest {_human(max((b for _, b in self.scrapes), default=0))}")
        print(f"  metrics directory  {_human(_dir_bytes(self.metrics_dir))} "
              f"({sum(1 for _ in self.metrics_dir.iterdir())} files)")
        print("disk")
        store = sum(_size(p) for p in self.dir.glob("bridge.db*"))
        print(f"  store {_human(store)}, human log {_human(_size(self.dir / 'gunicorn.log'))}, "
              f"JSON log {_human(_size(self.json_log))}, dumps {_human(_dir_bytes(self.dumps))}")
        errors, markers, examples = _log_problems(self.dir / "gunicorn.log")
        print(f"gateway log          {errors} ERROR/CRITICAL lines, {dict(markers)}")
        for example in examples:
            print(f"    {example}")
        print("hostile clients")
        print(f"  distinct models    {self.models_sent} sent {dict(self.model_status)}")
        print(f"  slow headers       {args.slow_sockets} at a time, a line every {args.slow_interval:g}s: "
              f"{dict(self.slow)}; held before the gateway let go: p50 {_ms(pct(self.slow_held, 50))}, "
              f"max {_ms(max(self.slow_held, default=None))}")
        print(f"  large bodies       {self.large_sent} of 20-60 MiB, {args.large} at a time: {dict(self.large_status)}, "
              f"p50 {_ms(pct(self.large_times, 50))}, upstream drained {_human(self.sink.drained)}")
        gateway, mock, own = cpu
        print(f"cpu                  gateway {gateway:.1f}s, mock {mock:.1f}s, this process {own:.1f}s "
              f"(over {elapsed:.0f}s on {os.cpu_count()} cores)")
        print(f"files                {self.dir}{'' if self.args.keep else ' (removed)'}")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _log_problems(path: Path) -> tuple[int, Counter[str], list[str]]:
    """ERROR/CRITICAL lines of the gateway's human log, crash markers, and a few distinct messages."""
    errors, markers, examples = 0, Counter(), []
    with open(path, "rb") as log:
        for line in log:
            for marker in (b"Traceback", b"WORKER TIMEOUT", b"Worker exiting", b"Booting worker"):
                if marker in line:
                    markers[marker.decode()] += 1
            for level in (b" ERROR ", b" CRITICAL "):
                at = line.find(level, 0, 64)
                if at >= 0:
                    errors += 1
                    text = line[at:at + 160].decode(errors="replace").split(None, 1)[-1].strip()
                    if len(examples) < 3 and not any(text[:60] == e[:60] for e in examples):
                        examples.append(text)
    return errors, markers, examples


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--normal", type=int, default=50, help="normal streaming clients")
    parser.add_argument("--events", type=int, default=20, help="events per normal stream")
    parser.add_argument("--interval-ms", type=int, default=100, help="between the events of a normal stream")
    parser.add_argument("--models", type=int, default=3000, help="distinct model names sent, at most")
    parser.add_argument("--models-rate", type=float, default=60, help="model-spam requests per second, at most")
    parser.add_argument("--models-concurrency", type=int, default=4)
    parser.add_argument("--slow-sockets", type=int, default=300, help="slow-header connections at a time")
    parser.add_argument("--slow-interval", type=float, default=5, help="seconds between their header lines")
    parser.add_argument("--large", type=int, default=3, help="concurrent large-body requests")
    parser.add_argument("--large-total", type=int, default=9, help="large-body requests in all")
    parser.add_argument("--scrape-interval", type=float, default=2, help="pause between /metrics scrapes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, store, dumps)")
    args = parser.parse_args()
    raise_nofile()
    soak = HostileSoak(args)
    watchdog = gevent.spawn_later(args.duration + 240, lambda: (print("hostile soak: hard deadline reached", flush=True),
                                                                soak.stop(), os._exit(3)))
    ok = None
    try:
        ok = soak.run()
    finally:
        watchdog.kill()
        soak.stop()
        if ok is not None and not args.keep:  # a run that broke off keeps its logs for reading
            shutil.rmtree(soak.dir, ignore_errors=True)
    print(f"hostile soak: {'PASS' if ok else 'FAIL: the normal clients saw errors'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
