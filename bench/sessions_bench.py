"""Time the sessions API (SPEC §9) through the real gateway on a seeded database (see bench/seed.py).

    python bench/seed.py --database /tmp/bridge-bench.db          # once: 1,000,000 interceptions
    python bench/sessions_bench.py --database /tmp/bridge-bench.db

Opening the store applies pending migrations first (timed and reported: on a database seeded before
sessions existed, that is their backfill). Then gunicorn serves the gateway (``bridge.wsgi:app``,
``--workers 1``) on the seeded store, and every case is requested over one keep-alive HTTP connection
on 127.0.0.1: one warm-up, then ``--repeat`` timed runs. The table shows p50 and p95 of the time the
client waited for the whole response, and the load average (other work on the machine inflates the
figures). Target: every case under 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from procs import Server, free_port  # noqa: E402

TARGET_MS = 100.0
LONG_SESSION = 200  # turns of the session whose page is timed
API = "/api/v2/aibridge"


def _iso(days_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Client:
    """GET requests over one keep-alive connection to the gateway."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str, token: str, params: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """(status, body, milliseconds from sending the request to the body's last byte)."""
        target = f"{API}/{path}" + (f"?{urlencode(params)}" if params else "")
        started = time.perf_counter()
        self.connection.request("GET", target, headers={"Authorization": f"Bearer {token}"})
        response = self.connection.getresponse()
        body = response.read()
        return response.status, body, (time.perf_counter() - started) * 1000

    def json(self, path: str, token: str, params: dict[str, str] | None = None) -> object:
        status, body, _ = self.get(path, token, params)
        if status != 200:
            raise RuntimeError(f"GET {path} {params}: {status} {body[:500]!r}")
        return json.loads(body)


def _prepare(database: str) -> dict[str, object]:
    """Apply migrations; tokens for the admin and the busiest user; the subjects of the cases."""
    from bridge.store import open_store

    started = time.perf_counter()
    with open_store(database, migrate=True) as store:
        migrated = time.perf_counter() - started
        interceptions = store.queries.count_records()["aibridge_interceptions"]
        busiest = store.db.execute(
            "SELECT u.username FROM users u WHERE u.deleted_at IS NULL AND NOT u.is_admin ORDER BY"
            " (SELECT count(*) FROM aibridge_interceptions WHERE initiator_id = u.id) DESC LIMIT 1"
        ).fetchone()[0]
        # The client session with the fewest turns among those of LONG_SESSION or more.
        long_session = store.db.execute(
            "SELECT client_session_id, count(*) AS turns FROM aibridge_interceptions"
            " WHERE client_session_id IS NOT NULL GROUP BY initiator_id, client_session_id"
            " HAVING count(*) >= ? ORDER BY turns LIMIT 1", [LONG_SESSION],
        ).fetchone()
        if long_session is None:
            raise SystemExit(f"no session of {LONG_SESSION}+ turns in {database}: seed more interceptions")
        admin_token, _ = store.identity.create_token("admin", lifetime=3600, name="sessions-bench")
        user_token, _ = store.identity.create_token(busiest, lifetime=3600, name="sessions-bench")
    return {"migrated": migrated, "interceptions": interceptions, "busiest": busiest,
            "client_session_id": long_session[0], "turns": long_session[1],
            "admin": admin_token, "user": user_token}


def _start_gateway(database: str, workdir: Path) -> tuple[Server, int]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CODER_")}
    env.update({
        "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}",
        "CODER_AIBRIDGE_RETENTION": "0",  # never purge the seeded months
        "CODER_AIBRIDGE_ENABLED": "false",  # the API only: no provider routes needed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    })
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app",
               "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    server = Server("bridge", command, workdir / "sessions-bench-gunicorn.log", env=env, cwd=REPO)
    server.wait_http(f"http://127.0.0.1:{port}/healthz", 120)
    return server, port


def _cases(client: Client, subjects: dict[str, object]) -> list[tuple[str, str, str, dict[str, str]]]:
    """(name, token, path, params) of every timed request. Cursors are found through the API itself."""
    admin, user, busiest = subjects["admin"], subjects["user"], subjects["busiest"]
    first = client.json("sessions", admin)["sessions"]
    later = first[-1]["id"]
    deep = later
    for _ in range(49):  # the cursor of page 51 of 100 sessions
        deep = client.json("sessions", admin, {"after_session_id": deep})["sessions"][-1]["id"]
    claude = client.json("sessions", admin, {"q": 'client:"Claude Code"'})["sessions"][-1]["id"]
    found = client.json("sessions", admin, {"q": f"session_id:{subjects['client_session_id']}"})["sessions"]
    if len(found) != 1:
        raise RuntimeError(f"session_id:{subjects['client_session_id']} found {len(found)} sessions")
    long_id = found[0]["id"]
    detail = client.json(f"sessions/{long_id}", admin)
    turns = [i for thread in detail["threads"] for i in thread["interceptions"]]
    middle = turns[len(turns) // 2]["id"]
    week = _iso(7)
    return [
        ("sessions: first page", admin, "sessions", {}),
        ("sessions: page of 1000", admin, "sessions", {"limit": "1000"}),
        (f"sessions: initiator:{busiest}", admin, "sessions", {"q": f"initiator:{busiest}"}),
        ('sessions: client:"Claude Code"', admin, "sessions", {"q": 'client:"Claude Code"'}),
        ("sessions: model:claude-opus-4-1", admin, "sessions", {"q": "model:claude-opus-4-1"}),
        ("sessions: provider_name:team-b", admin, "sessions", {"q": "provider_name:team-b"}),
        ("sessions: started_after:7d ago", admin, "sessions", {"q": f"started_after:{week}"}),
        ("sessions: client + started_after", admin, "sessions", {"q": f'client:"Claude Code" started_after:{week}'}),
        ("sessions: session_id:<id>", admin, "sessions", {"q": f"session_id:{subjects['client_session_id']}"}),
        ("sessions: page 2 (after_session_id)", admin, "sessions", {"after_session_id": later}),
        ("sessions: page 51 (after_session_id)", admin, "sessions", {"after_session_id": deep}),
        ('sessions: client:"Claude Code" page 2', admin, "sessions",
         {"q": 'client:"Claude Code"', "after_session_id": claude}),
        ("sessions: offset 10,000", admin, "sessions", {"offset": "10000"}),
        ("sessions: user, own, first page", user, "sessions", {}),
        (f"session of {subjects['turns']} turns", admin, f"sessions/{long_id}", {}),
        (f"session of {subjects['turns']} turns, limit=1000", admin, f"sessions/{long_id}", {"limit": "1000"}),
        (f"session of {subjects['turns']} turns, after_id", admin, f"sessions/{long_id}", {"after_id": middle}),
        ("interception by id", admin, f"interceptions/{middle}", {}),
        ("models", admin, "models", {}),
    ]


def _describe(body: object) -> str:
    """What a response held: sessions, threads/interceptions, or items."""
    if isinstance(body, dict) and "sessions" in body:
        return f"{len(body['sessions'])} of {body.get('count')}"
    if isinstance(body, dict) and "threads" in body:
        return f"{len(body['threads'])} thr, {sum(len(t['interceptions']) for t in body['threads'])} int"
    if isinstance(body, list):
        return f"{len(body)} items"
    return "1 object"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="/tmp/bridge-bench.db", help="seeded SQLite file (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per case (default: %(default)s)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.database):
        parser.error(f"{args.database} does not exist: run bench/seed.py first")

    subjects = _prepare(args.database)
    if subjects["migrated"] > 1:
        print(f"migrations applied in {subjects['migrated']:.1f}s")
    server, port = _start_gateway(args.database, Path(args.database).resolve().parent)
    try:
        client = Client(port)
        cases = _cases(client, subjects)
        print(f"database: {args.database} ({subjects['interceptions']:,} interceptions); gunicorn, 1 worker;"
              f" {args.repeat} runs per case after a warm-up; {os.cpu_count()} CPUs,"
              f" load average {os.getloadavg()[0]:.1f} at the start")
        print(f"{'case':<44} {'status':>6} {'returned':>18} {'p50 ms':>8} {'p95 ms':>8}")
        slow = 0
        for name, token, path, params in cases:
            client.get(path, token, params)  # warm-up
            times = []
            for _ in range(args.repeat):
                status, body, elapsed = client.get(path, token, params)
                times.append(elapsed)
            p50, p95 = statistics.median(times), _p95(times)
            slow += p50 > TARGET_MS
            flag = "" if p50 <= TARGET_MS else "  <-- over target"
            shown = _describe(json.loads(body)) if status == 200 else body[:60].decode(errors="replace")
            print(f"{name:<44} {status:>6} {shown:>18} {p50:>8.1f} {p95:>8.1f}{flag}")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end; cases over {TARGET_MS:.0f} ms (p50): {slow}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
