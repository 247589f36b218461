"""Large request bodies: peak RSS of one gateway worker while N concurrent requests of SIZE each pass.

    python bench/big_bodies.py [--requests 10] [--size 60MiB] [--stream] [--structured-logging]

One gunicorn gevent worker, recording on, an in-process upstream that drains each body and
answers a short OpenAI chat completion (streamed with ``--stream``). Each request is a chat body
whose last user message is SIZE of text (under the default 64 MiB body limit for 60MiB). Prints
the worker's RSS before, its peak (VmHWM) and RSS after, and how much of one prompt the store
kept. Loopback only, bounded in time; the gateway it started is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bridge.units import parse_size  # noqa: E402
from procs import Server, free_port, status_kb, tree  # noqa: E402

_COMPLETION = json.dumps({
    "id": "chatcmpl-big", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}).encode()
_STREAM = (b'data: {"id":"chatcmpl-big","choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
           b'data: {"id":"chatcmpl-big","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1}}\n\n'
           b"data: [DONE]\n\n")


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        left = int(self.headers.get("Content-Length") or 0)
        streaming = False
        while left > 0:  # drained, not kept: the bench measures the gateway, not this server
            piece = self.rfile.read(min(left, 1 << 20))
            if not piece:
                break
            streaming = streaming or b'"stream":true' in piece
            left -= len(piece)
        body = _STREAM if streaming else _COMPLETION
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if streaming else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--size", default="60MiB")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--structured-logging", action="store_true")
    args = parser.parse_args(argv)
    size = parse_size(args.size)

    workdir = Path(tempfile.mkdtemp(prefix="bridge-big-"))
    db = workdir / "bridge.db"
    from bridge.store import open_store

    store = open_store(str(db))
    store.migrate()
    store.identity.create_user("big")
    token, _ = store.identity.create_token("big")
    store.close()

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env.update({
        "CODER_AIBRIDGE_ENABLED": "true",
        "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{db}",
        "CODER_AIBRIDGE_OPENAI_KEY": "sk-big-bodies-openai-key-000000",
        "CODER_AIBRIDGE_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream.server_address[1]}/v1/",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true" if args.structured_logging else "false",
        "CODER_LOGGING_HUMAN": str(workdir / "human.log"),
    })
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app",
           "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    gateway = Server("bridge", cmd, workdir / "gunicorn.log", env=env, cwd=REPO)
    try:
        gateway.wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        worker = max(set(tree(gateway.pid)) - {gateway.pid})
        # The prompt fills the body up to SIZE; one body shared by every client thread.
        head = b'{"model":"gpt-4o","stream":%s,"messages":[{"role":"user","content":"' % (
            b"true" if args.stream else b"false")
        tail = b'"}]}'
        body = head + b"x" * (size - len(head) - len(tail)) + tail
        before = status_kb(worker, "VmRSS")
        results: list[str] = []

        def send() -> None:
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/api/v2/aibridge/openai/v1/chat/completions",
                                       data=body, timeout=120, headers={"Authorization": f"Bearer {token}",
                                                                        "Content-Type": "application/json"})
                results.append(str(answer.status_code))
            except requests.RequestException as exc:
                results.append(type(exc).__name__)

        started = time.monotonic()
        clients = [threading.Thread(target=send) for _ in range(args.requests)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=180)
        elapsed = time.monotonic() - started
        peak, after = status_kb(worker, "VmHWM"), status_kb(worker, "VmRSS")
        deadline = time.monotonic() + 30
        stored = None
        while stored is None and time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT max(length(prompt)), count(*) FROM aibridge_user_prompts").fetchone()
            if row[1] >= args.requests:
                stored = row[0]
            else:
                time.sleep(0.2)
        print(f"{args.requests} x {args.size} {'streamed' if args.stream else 'blocking'} requests in {elapsed:.1f} s: "
              f"answers {sorted(results)}")
        print(f"worker RSS before {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB, after {after / 1024:.0f} MB")
        print(f"longest stored prompt: {stored} characters")
        return 0 if results and all(r == "200" for r in results) else 1
    finally:
        gateway.stop()
        upstream.shutdown()


if __name__ == "__main__":
    sys.exit(main())
