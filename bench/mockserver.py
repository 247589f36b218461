"""A small gevent HTTP/1.1 upstream: paced SSE streams, and canned files when nginx is absent.

    python bench/mockserver.py --port P [--root DIR]

``POST /p/<api>/<events>/<interval_ms>/...``: a stream of <events> events of <api> (openai,
anthropic, responses), one HTTP chunk per event written as soon as it is due (TCP_NODELAY),
the first at once and the next every <interval_ms> on a fixed schedule. Each text delta carries
``#T<ns>#``, the CLOCK_MONOTONIC time at which the event was written, so a client on the same
machine can measure how long every event took to reach it.

``* /s/...`` (only with --root): the file under DIR, like nginx does with the canned bodies; the
content type is text/event-stream when the first path segment ends in ``-stream``.

Keep-alive, Content-Length request bodies only: just what the gateways and bench/load.py send.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bodies  # noqa: E402

_STAMP = bodies.STAMP.encode()
_EVENTS_CACHE: dict[tuple[str, int], list[bytes]] = {}
ROOT: Path | None = None


def _events(api: str, n: int) -> list[bytes]:
    key = (api, n)
    if key not in _EVENTS_CACHE:
        _EVENTS_CACHE[key] = bodies.STREAM_EVENT_BUILDERS[api](n, stamp=True)
    return _EVENTS_CACHE[key]


def _read_request(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(method, path, rest of buffer) or None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            return None
        rest += data
    return method, path, rest[length:]


def _paced(sock: socket.socket, parts: list[str]) -> None:
    api, n, interval = parts[0], int(parts[1]), int(parts[2]) / 1000.0
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                 b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
    start = time.monotonic()
    for i, event in enumerate(_events(api, n)):
        due = start + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        if _STAMP in event:
            event = event.replace(_STAMP, b"#T%d#" % time.monotonic_ns())
        sock.sendall(b"%x\r\n%s\r\n" % (len(event), event))
    sock.sendall(b"0\r\n\r\n")


def _static(sock: socket.socket, path: str) -> None:
    file = (ROOT / path.lstrip("/")).resolve() if ROOT else None
    if file is None or not file.is_file() or ROOT not in file.parents:
        sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return
    body = file.read_bytes()
    first = path.strip("/").split("/")[1] if path.count("/") > 1 else ""
    ctype = b"text/event-stream" if first.endswith("-stream") else b"application/json"
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (ctype, len(body), body))


def handle(sock: socket.socket, _addr) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            request = _read_request(sock, buf)
            if request is None:
                return
            _method, raw_path, buf = request
            path = raw_path.decode("latin-1").split("?", 1)[0]
            if path.startswith("/p/"):
                _paced(sock, path[3:].split("/"))
            elif path.startswith("/s/"):
                _static(sock, path)
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    ROOT = args.root.resolve() if args.root else None
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    server = StreamServer(listener, handle, spawn=10000)
    print(f"mockserver pid {os.getpid()} on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
