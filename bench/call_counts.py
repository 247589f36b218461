"""Function calls per blocking request, per bridge tree: a figure the machine's load cannot move.

    pip install yappi   # not in requirements-test.txt: only this script uses it
    python bench/call_counts.py [--trees . /tmp/other-checkout] [--scenarios oai-block,ant-block,resp-block]

CPU per request (bench/run.py) moves by several percent between runs on a shared 2-core VM; the
number of Python calls a request costs does not. For each tree and scenario this builds the app of
that tree in a fresh process (its own ``bridge`` package first on the path, a fresh SQLite store, a
real gateway token from its CLI), sends the scenario's request through Flask's test client to the
canned mock (bench/mockserver.py), warms up, then counts every call (yappi, builtins included, every
thread: the request greenlet and the record writer) over ``--requests`` requests and the writes
that follow. Prints calls per request, and with two trees the ratio and the functions whose call
counts moved most. No gunicorn: its share is the same for every tree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scenarios import CANNED_BY_NAME  # noqa: E402

_WARMUP = 300


def _child(tree: Path, name: str, requests: int, out: Path) -> None:
    """In a fresh process: count the calls of ``requests`` requests of scenario ``name`` on ``tree``."""
    from mock import PyMock
    from targets import Bridge

    work = Path(tempfile.mkdtemp(prefix="bridge-calls-"))
    scenario = CANNED_BY_NAME[name]
    mock = PyMock(work, "mock", [scenario])
    try:
        target = Bridge(work, [(scenario, mock)], repo=tree)
        os.environ.clear()
        os.environ.update(target.env)
        sys.path.insert(0, str(tree))
        from bridge.wsgi import app  # patches gevent first

        import gevent
        import yappi

        target.port = 0  # the test client needs only the endpoint's path
        endpoint = target.endpoint(scenario)
        client = app.test_client()

        def send(count: int) -> None:
            for _ in range(count):
                response = client.post(endpoint.path, json=endpoint.body, headers=endpoint.headers)
                if response.status_code != 200:
                    raise SystemExit(f"{tree}: {name} answered {response.status_code}: {response.data[:300]!r}")
                response.close()

        send(_WARMUP)
        gevent.sleep(1.0)  # the warm-up's records written (the writer waits up to 0.5 s for a batch)
        yappi.set_clock_type("cpu")
        yappi.start(builtins=True, profile_threads=True)
        send(requests)
        gevent.sleep(1.5)
        yappi.stop()
        counts: Counter[str] = Counter()
        for stat in yappi.get_func_stats():
            module = re.sub(r".*/(bridge|site-packages|lib/python3\.\d+)/", r"\1/", stat.module)
            counts[f"{module}:{stat.name}"] += stat.ncall
        out.write_text(json.dumps({"total": sum(counts.values()), "functions": counts}))
    finally:
        mock.stop()


def _count(tree: Path, name: str, requests: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        done = subprocess.run([sys.executable, __file__, "--child", str(tree), name, str(requests), out.name],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"{tree} {name}: {done.stderr.strip()[-2000:]}")
        return json.loads(Path(out.name).read_text())


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", default=[str(HERE.parent)], help="bridge checkouts (first: the base)")
    parser.add_argument("--scenarios", default="oai-block,ant-block,resp-block")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--top", type=int, default=12, help="functions whose counts moved most, per scenario")
    args = parser.parse_args()
    try:
        import yappi  # noqa: F401
    except ImportError:
        raise SystemExit("bench/call_counts.py needs yappi: pip install yappi") from None
    trees = [Path(tree).resolve() for tree in args.trees]
    for name in args.scenarios.split(","):
        results = [_count(tree, name, args.requests) for tree in trees]
        base = results[0]["total"] / args.requests
        for tree, result in zip(trees, results):
            per_request = result["total"] / args.requests
            print(f"{name:11s} {per_request:9.1f} calls/request  {per_request / base:6.3f}  {tree}")
        if len(results) > 1:
            first, last = Counter(results[0]["functions"]), Counter(results[-1]["functions"])
            moved = sorted(set(first) | set(last), key=lambda key: -abs(last[key] - first[key]))[:args.top]
            for key in moved:
                print(f"    {(last[key] - first[key]) / args.requests:+8.2f}  {key}")


if __name__ == "__main__":
    main()
