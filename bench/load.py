"""The load generator: raw sockets, HTTP/1.1 keep-alive, one process per run.

    python bench/load.py '<json spec>'      (run.py starts it; not meant to be run by hand)

Modes (spec["mode"]):
  closed  ``concurrency`` connections send the same request back to back until ``requests`` answers
          or ``seconds`` elapsed; reports req/s, latency and time to first body byte (TTFB).
  paced   ``concurrency`` streams from the paced mock; each text delta carries the mock's send time
          (``#T<ns>#``, CLOCK_MONOTONIC), so every event's delay to the client is measured, and the
          gaps between consecutive events.
  slow    ``concurrency`` long streams opened within ``ramp`` seconds and held until they end; counts
          errors and incomplete streams.

Protocol with run.py: after warm-up the process prints ``READY`` and waits for a line on stdin;
it prints ``DONE`` the moment the last answer arrived (run.py reads the server's CPU around that
window), then one JSON line with the results. Concurrency > 1 uses gevent, patched in this process
only; concurrency 1 uses plain blocking sockets.
"""

from __future__ import annotations

import json
import re
import sys
import time

_STAMP_RE = re.compile(rb"#T(\d+)#")
now = time.monotonic_ns


class Dechunker:
    """Incremental decoder of a chunked body."""

    __slots__ = ("buf", "left", "state", "done", "rest")

    def __init__(self) -> None:
        self.buf, self.left, self.state, self.done, self.rest = b"", 0, 0, False, b""

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            if self.state == 0:  # size line
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(buf[:i].split(b";", 1)[0], 16)
                buf = buf[i + 2:]
                self.left, self.state = size, (1 if size else 3)
            elif self.state == 1:  # data
                if not buf:
                    break
                take = buf[:self.left]
                out.append(take)
                buf = buf[len(take):]
                self.left -= len(take)
                if not self.left:
                    self.state = 2
            elif self.state == 2:  # CRLF after data
                if len(buf) < 2:
                    break
                buf, self.state = buf[2:], 0
            else:  # trailers, until an empty line
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + 2:]
                if not line:
                    self.done, self.rest, buf = True, buf, b""
                    break
        self.buf = buf
        return b"".join(out)


def framing(head: bytes) -> tuple[int | None, bool, bool]:
    """An HTTP/1.1 head's body framing: (Content-Length or None, chunked, Connection: close)."""
    length, chunked, close = None, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    return length, chunked, close


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock = None
        self.buf = b""

    def connect(self) -> None:
        import socket

        self.sock = socket.create_connection((self.host, self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def roundtrip(self, request: bytes, on_body=None) -> tuple[int, int, int, bytes]:
        """(status, ttfb_ns, total_ns, body). ``on_body(bytes, t_ns)`` sees body bytes as they arrive
        (then the returned body is empty)."""
        if self.sock is None:
            self.connect()
        sock = self.sock
        recv = sock.recv
        t0 = now()
        sock.sendall(request)
        buf = self.buf
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            data = recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buf += data
        t = now()
        head, body = buf[:i], buf[i + 4:]
        status = int(head[9:12])
        length, chunked, close = framing(head)
        parts = []
        ttfb = None
        if chunked:
            dech = Dechunker()
            data = body
            while True:
                if data:
                    piece = dech.feed(data)
                    if piece:
                        if ttfb is None:
                            ttfb = t - t0
                        if on_body:
                            on_body(piece, t)
                        else:
                            parts.append(piece)
                    if dech.done:
                        self.buf = dech.rest
                        break
                data = recv(65536)
                t = now()
                if not data:
                    raise ConnectionError("server closed the connection mid-body")
        elif length is not None:
            got = body[:length]
            self.buf = body[length:]
            if got:
                ttfb = t - t0
                on_body(got, t) if on_body else parts.append(got)
            need = length - len(got)
            while need > 0:
                data = recv(min(need, 262144))
                t = now()
                if not data:
                    raise ConnectionError("server closed the connection mid-body")
                if ttfb is None:
                    ttfb = t - t0
                on_body(data, t) if on_body else parts.append(data)
                need -= len(data)
        else:  # read to EOF
            close = True
            data = body
            while True:
                if data:
                    if ttfb is None:
                        ttfb = t - t0
                    on_body(data, t) if on_body else parts.append(data)
                data = recv(65536)
                t = now()
                if not data:
                    break
        total = now() - t0
        if close:
            self.close()
        return status, (ttfb if ttfb is not None else total), total, b"".join(parts)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def summary_ms(values_ns: list[int]) -> dict:
    ms = [v / 1e6 for v in values_ns]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "mean": sum(ms) / len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90),
            "p99": pct(ms, 99), "max": max(ms), "min": min(ms)}


def handshake() -> None:
    print("READY", flush=True)
    sys.stdin.readline()


# ---------------------------------------------------------------- closed loop

def closed(spec: dict) -> dict:
    request = spec["request"].encode("latin-1")
    marker = spec.get("final_marker", "").encode() or None
    conc, limit, seconds = spec["concurrency"], spec["requests"], spec["seconds"]
    conns = [Conn(spec["host"], spec["port"]) for _ in range(conc)]
    lat, ttfb, errors, err_samples = [], [], 0, []

    def one(conn: Conn, keep: bool) -> None:
        nonlocal errors
        try:
            status, first, total, body = conn.roundtrip(request)
            ok = status == 200 and body and (marker is None or marker in body[-4096:])
        except (OSError, ValueError) as exc:
            conn.close()
            status, ok, body = repr(exc), False, b""
        if not ok:
            errors += 1
            if len(err_samples) < 3:
                err_samples.append(f"{status}: {body[:200]!r}")
        elif keep:
            lat.append(total)
            ttfb.append(first)

    for i in range(spec.get("warmup", 20)):
        one(conns[i % conc], False)
    errors, err_samples = 0, []
    handshake()
    state = {"left": limit}
    deadline = time.monotonic() + seconds

    def worker(conn: Conn) -> None:
        while state["left"] > 0 and time.monotonic() < deadline:
            state["left"] -= 1
            one(conn, True)

    t0 = time.monotonic()
    if conc == 1:
        worker(conns[0])
    else:
        import gevent

        gevent.joinall([gevent.spawn(worker, c) for c in conns])
    elapsed = time.monotonic() - t0
    print("DONE", flush=True)
    for c in conns:
        c.close()
    done = len(lat)
    return {"mode": "closed", "concurrency": conc, "ok": done, "errors": errors, "error_samples": err_samples,
            "elapsed_s": elapsed, "rps": done / elapsed if elapsed else 0.0,
            "latency_ms": summary_ms(lat), "ttfb_ms": summary_ms(ttfb)}


# ---------------------------------------------------------------- paced streams

def paced(spec: dict) -> dict:
    request = spec["request"].encode("latin-1")
    marker = spec["final_marker"].encode()
    conc, streams = spec["concurrency"], spec["requests"]
    delays, gaps, errors, err_samples = [], [], 0, []
    events_seen = []

    def one(conn: Conn, keep: bool) -> None:
        nonlocal errors
        pending = [b""]
        arrivals: list[tuple[int, int]] = []  # (arrival ns, stamp ns) per stamped event
        complete = [False]

        def on_body(data: bytes, t: int) -> None:
            buf = pending[0] + data
            end = buf.rfind(b"\n\n")
            if end < 0:
                pending[0] = buf
                return
            whole, pending[0] = buf[:end + 2], buf[end + 2:]
            for m in _STAMP_RE.finditer(whole):
                arrivals.append((t, int(m.group(1))))
            if marker in whole:
                complete[0] = True

        try:
            status, _first, _total, _ = conn.roundtrip(request, on_body)
            ok = status == 200 and complete[0]
        except (OSError, ValueError) as exc:
            conn.close()
            status, ok = repr(exc), False
        if not ok:
            errors += 1
            if len(err_samples) < 3:
                err_samples.append(str(status))
            return
        if keep:
            events_seen.append(len(arrivals))
            delays.extend(t - s for t, s in arrivals)
            gaps.extend(arrivals[i][0] - arrivals[i - 1][0] for i in range(1, len(arrivals)))

    conns = [Conn(spec["host"], spec["port"]) for _ in range(conc)]
    import gevent

    gevent.joinall([gevent.spawn(one, c, False) for c in conns])  # warm-up: one stream per connection
    errors, err_samples = 0, []
    handshake()
    state = {"left": streams}

    def worker(conn: Conn) -> None:
        while state["left"] > 0:
            state["left"] -= 1
            one(conn, True)

    t0 = time.monotonic()
    gevent.joinall([gevent.spawn(worker, c) for c in conns])
    elapsed = time.monotonic() - t0
    print("DONE", flush=True)
    return {"mode": "paced", "concurrency": conc, "ok": len(events_seen), "errors": errors,
            "error_samples": err_samples, "elapsed_s": elapsed, "stamped_events": sum(events_seen),
            "event_delay_ms": summary_ms(delays), "event_gap_ms": summary_ms(gaps)}


# ---------------------------------------------------------------- many slow streams

def slow(spec: dict) -> dict:
    import gevent

    request = spec["request"].encode("latin-1")
    marker = spec["final_marker"].encode()
    n, ramp = spec["concurrency"], spec.get("ramp", 2.0)
    results = {"ok": 0, "errors": 0, "incomplete": 0}
    samples: list[str] = []
    connected = [0]
    durations: list[int] = []

    def one(i: int) -> None:
        gevent.sleep(ramp * i / n)
        conn = Conn(spec["host"], spec["port"])
        tail = [b""]

        def on_body(data: bytes, _t: int) -> None:
            tail[0] = (tail[0] + data)[-4096:]

        try:
            conn.connect()
            connected[0] += 1
            status, _first, total, _ = conn.roundtrip(request, on_body)
            if status != 200:
                results["errors"] += 1
                if len(samples) < 3:
                    samples.append(f"status {status}")
            elif marker not in tail[0]:
                results["incomplete"] += 1
            else:
                results["ok"] += 1
                durations.append(total)
        except (OSError, ValueError) as exc:
            results["errors"] += 1
            if len(samples) < 3:
                samples.append(repr(exc))
        finally:
            conn.close()

    handshake()
    t0 = time.monotonic()
    gevent.joinall([gevent.spawn(one, i) for i in range(n)], timeout=spec["seconds"])
    elapsed = time.monotonic() - t0
    print("DONE", flush=True)
    unfinished = n - results["ok"] - results["errors"] - results["incomplete"]
    return {"mode": "slow", "streams": n, **results, "unfinished": unfinished, "connected": connected[0],
            "error_samples": samples, "elapsed_s": elapsed, "stream_duration_ms": summary_ms(durations)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mode"] != "closed" or spec["concurrency"] > 1:
        from gevent import monkey

        monkey.patch_all()
    if spec["mode"] == "slow":
        from procs import raise_nofile  # bench/ is this script's directory

        raise_nofile()
    result = {"closed": closed, "paced": paced, "slow": slow}[spec["mode"]](spec)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
