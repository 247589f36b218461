"""What the record writer's batches cost as the store grows.

    python bench/store_growth.py                          # 60,000 interceptions, ~30 s
    python bench/store_growth.py --random-ids             # the same with random (version 4) ids

Interceptions are built as the gateway builds them (an OpenAI chat call with its answer: the
interception and its token usage and prompt rows), queued in batches of 250 and written with
store.records.write_records into a fresh SQLite file in a temporary directory, as the writer thread does.
Every 40 batches it prints the mean write time per batch (wall clock and process CPU) and the
file's size. With time-ordered ids the cost stays flat; --random-ids shows it growing with the
store. Bounded by --interceptions; nothing but the temporary directory is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bodies  # noqa: E402
from bridge import interception as interception_module  # noqa: E402
from bridge.auth import Caller  # noqa: E402
from bridge.config import ProviderSettings  # noqa: E402
from bridge.intercept.chat_completions import ChatCompletionsInterceptor  # noqa: E402
from bridge.interception import Interception  # noqa: E402
from bridge.providers.openai import OpenAIProvider  # noqa: E402
from bridge.recorder import _to_batch  # noqa: E402
from bridge.store import open_store  # noqa: E402

BATCH = 250  # interceptions per batch: what the writer takes at ~1,000 calls/s
REPORT_EVERY = 40  # batches


class _Collected:
    """Stands in for the Recorder: keeps what an interception records."""

    owner = "bench-store-growth"  # the process an interception names as its owner

    def __init__(self) -> None:
        self.items: list = []

    def record(self, item) -> None:
        self.items.append(item)


def _batch_of_calls(provider: OpenAIProvider, caller: Caller, request: bytes, answer: bytes) -> list:
    collected = _Collected()
    headers = {"User-Agent": "OpenAI/Python 2.0", "Content-Type": "application/json"}
    for _ in range(BATCH):
        interceptor = ChatCompletionsInterceptor(orjson.loads(request), request)
        call = Interception(provider, interceptor, caller, headers, collected, False)
        call.begin()
        call.status = 200
        interceptor.observe_response(200, answer)
        call.end()
    return collected.items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interceptions", type=int, default=60_000, help="how many to write (default: %(default)s)")
    parser.add_argument("--random-ids", action="store_true", help="random (version 4) record ids instead")
    args = parser.parse_args(argv)
    if args.random_ids:
        interception_module.new_id = lambda: str(uuid.uuid4())
    provider = OpenAIProvider(ProviderSettings(type="openai", name="openai", base_url="http://127.0.0.1:9/v1/",
                                               key="sk-bench-0123456789"))
    caller = Caller(user_id="u1", username="bench", is_admin=False, token_id="t1", byok=False,
                    token="tok-bench-0123456789")
    request, answer = orjson.dumps(bodies.openai_request(False)), bodies.openai_blocking()
    with tempfile.TemporaryDirectory(prefix="bridge-store-growth-") as directory:
        path = os.path.join(directory, "bridge.db")
        store = open_store(path)
        store.migrate()
        print(f"record ids: {'random (version 4)' if args.random_ids else 'time-ordered (version 7)'}; "
              f"batches of {BATCH} interceptions")
        wall = cpu = 0.0
        for number in range(1, args.interceptions // BATCH + 1):
            batch = _to_batch(_batch_of_calls(provider, caller, request, answer))
            started, started_cpu = time.perf_counter(), time.process_time()
            store.records.write_records(batch)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            if number % REPORT_EVERY == 0:
                print(f"  {number * BATCH:>8,} interceptions: {wall / REPORT_EVERY * 1e3:6.2f} ms per batch "
                      f"({cpu / REPORT_EVERY * 1e3:6.2f} ms CPU), file {os.path.getsize(path) / 1e6:5.0f} MB", flush=True)
                wall = cpu = 0.0
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
