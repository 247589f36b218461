"""Time the interceptions, usage and tools API and the usage summary on a seeded database
(see bench/seed.py).

    python bench/seed.py --database /tmp/bridge-bench.db          # once: 1,000,000 interceptions
    python bench/api_bench.py --database /tmp/bridge-bench.db

Opening the store applies pending migrations first (on an older database: 0004's rollup backfill,
timed and reported). Each API case goes through the real app (Flask test client: authentication,
query parsing, the store on its native thread, JSON) and is timed over several runs after one
warm-up; the table shows the median and the slowest wall-clock time, and the median CPU time of
the process (which a busy machine inflates less). The usage summary (``python -m bridge usage``)
is timed on the store directly. Target: every case under 100 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS = 100.0


def _iso(days_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="/tmp/bridge-bench.db", help="seeded SQLite file (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per case (default: %(default)s)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.database):
        parser.error(f"{args.database} does not exist: run bench/seed.py first")

    os.environ.update({
        "CODER_AIBRIDGE_DATABASE_URL": args.database,
        "CODER_AIBRIDGE_RETENTION": "0",  # never purge the seeded months
        "CODER_AIBRIDGE_ENABLED": "false",
        "CODER_LOGGING_HUMAN": "/dev/null",
    })
    from bridge.app import create_app
    from bridge.store import open_store

    started = time.perf_counter()
    with open_store(args.database, migrate=True) as store:
        migrated = time.perf_counter() - started
        if migrated > 1:
            print(f"migrations applied in {migrated:.1f}s")
        interceptions = store.queries.count_records()["aibridge_interceptions"]
        busiest = store.db.execute(
            "SELECT u.username FROM users u WHERE u.deleted_at IS NULL AND NOT u.is_admin ORDER BY"
            " (SELECT count(*) FROM aibridge_interceptions WHERE initiator_id = u.id) DESC LIMIT 1"
        ).fetchone()[0]
        admin_token, _ = store.identity.create_token("admin", lifetime=3600, name="api-bench")
        user_token, _ = store.identity.create_token(busiest, lifetime=3600, name="api-bench")
        # Cursors deep in the list: the interception at the middle, overall and among one model.
        middle = store.db.execute(
            "SELECT id FROM aibridge_interceptions ORDER BY started_at DESC, id DESC LIMIT 1 OFFSET ?",
            [interceptions // 2],
        ).fetchone()[0]
        model_middle = store.db.execute(
            "SELECT id FROM aibridge_interceptions WHERE model = 'claude-sonnet-4-5'"
            " ORDER BY started_at DESC, id DESC LIMIT 1 OFFSET ?", [interceptions // 10],
        ).fetchone()[0]

    client = create_app().test_client()
    admin = {"Authorization": f"Bearer {admin_token}"}
    user = {"Coder-Session-Token": user_token}
    week, two_months = _iso(7), _iso(60)
    cases = [
        ("first page (no filter)", admin, {}),
        ("count only (no filter, limit=1)", admin, {"limit": "1"}),
        ("page of 1000", admin, {"limit": "1000"}),
        (f"initiator:{busiest}", admin, {"q": f"initiator:{busiest}"}),
        ("provider:anthropic", admin, {"q": "provider:anthropic"}),
        ("provider_name:team-b", admin, {"q": "provider_name:team-b"}),
        ("model:claude-sonnet-4-5", admin, {"q": "model:claude-sonnet-4-5"}),
        ('client:"Claude Code"', admin, {"q": 'client:"Claude Code"'}),
        ("started_after:7d ago", admin, {"q": f"started_after:{week}"}),
        ("started_before:60d ago", admin, {"q": f"started_before:{two_months}"}),
        ("provider + model + client", admin,
         {"q": 'provider:anthropic model:claude-sonnet-4-5 client:"Claude Code"'}),
        ("provider:openai + last 7 days", admin, {"q": f"provider:openai started_after:{week}"}),
        (f"initiator:{busiest} + model", admin, {"q": f"initiator:{busiest} model:claude-sonnet-4-5"}),
        ("user: initiator:me", user, {"q": "initiator:me"}),
        ("user: no filter (own only)", user, {}),
        ("user: me + client + 7 days", user, {"q": f'client:"Claude Code" started_after:{week}'}),
        ("deep keyset page (middle)", admin, {"after_id": middle}),
        ("deep keyset page, model filter", admin, {"q": "model:claude-sonnet-4-5", "after_id": model_middle}),
        ("offset 10,000", admin, {"offset": "10000"}),
        (f"offset {interceptions // 2:,}", admin, {"offset": str(interceptions // 2)}),
        ("offset 100,000, model filter", admin, {"q": "model:claude-sonnet-4-5", "offset": "100000"}),
        ("clients (admin)", admin, "clients"),
        ("clients (user)", user, "clients"),
        ("usage: default (model, day, 30d)", admin, ("usage", {})),
        ("usage: by user, day, 30d", admin, ("usage", {"by": "user"})),
        ("usage: by client, day, 30d", admin, ("usage", {"by": "client"})),
        ("usage: by provider, day, 30d", admin, ("usage", {"by": "provider"})),
        ("usage: by user, day, 90d", admin, ("usage", {"by": "user", "since": "90d"})),
        ("usage: by model, day, 365d", admin, ("usage", {"by": "model", "since": "365d"})),
        ("usage: by user, hour, 1d", admin, ("usage", {"by": "user", "bucket": "hour", "since": "1d"})),
        ("usage: by model, hour, 7d", admin, ("usage", {"by": "model", "bucket": "hour", "since": "7d"})),
        ("usage: by user, hour, 7d", admin, ("usage", {"by": "user", "bucket": "hour", "since": "7d"})),
        ("usage: by client, hour, 30d", admin, ("usage", {"by": "client", "bucket": "hour"})),
        ("usage: ragged range (hours+days)", admin,
         ("usage", {"by": "model", "since": _iso(40.3), "until": _iso(3.6)})),
        ("usage: user, own, day, 30d", user, ("usage", {"by": "model"})),
        ("usage: user, own, hour, 7d", user, ("usage", {"by": "client", "bucket": "hour", "since": "7d"})),
        ("tools: top 20, 30d", admin, ("tools", {})),
        ("tools: top 20, 7d", admin, ("tools", {"since": "7d"})),
        ("tools: top 20, 90d", admin, ("tools", {"since": "90d"})),
        ("tools: user, own, 30d", user, ("tools", {})),
    ]

    print(f"database: {args.database} ({interceptions:,} interceptions); {args.repeat} runs per case after a warm-up")
    print(f"{'case':<38} {'status':>6} {'count':>9} {'rows':>5} {'median ms':>10} {'max ms':>8} {'cpu ms':>7}")
    print("(usage: count = series, rows = points; tools: count = rows = tools)")
    slow = 0
    for name, headers, params in cases:
        if params == "clients":
            path, query = "/api/v2/aibridge/clients", None
        elif isinstance(params, tuple):
            path, query = f"/api/v2/aibridge/{params[0]}", params[1]
        else:
            path, query = "/api/v2/aibridge/interceptions", params
        times, cpu = [], []
        response = client.get(path, query_string=query, headers=headers)  # warm-up
        for _ in range(args.repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            response = client.get(path, query_string=query, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        body = response.get_json()
        if isinstance(body, dict) and "series" in body:  # usage: series, points
            count, rows = len(body["series"]), sum(len(s["points"]) for s in body["series"])
        elif isinstance(body, dict) and "tools" in body:
            count, rows = len(body["tools"]), len(body["tools"])
        else:
            count = body.get("count", "") if isinstance(body, dict) else len(body)
            rows = len(body["results"]) if isinstance(body, dict) and "results" in body else len(body)
        median, worst = statistics.median(times), max(times)
        slow += median > TARGET_MS
        flag = "" if median <= TARGET_MS else "  <-- over target"
        print(f"{name:<38} {response.status_code:>6} {count!s:>9} {rows!s:>5} {median:>10.1f} {worst:>8.1f}"
              f" {statistics.median(cpu):>7.1f}{flag}")

    print()
    print(f"{'usage summary (CLI, store)':<38} {'groups':>6} {'':>9} {'':>5} {'median ms':>10} {'max ms':>8}"
          f" {'cpu ms':>7}")
    slow_summaries = 0
    with open_store(args.database) as store:
        store.tune_for_queries()
        since = (datetime.now(timezone.utc) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for by in ("user", "model", "client", "provider"):
            for label, cutoff in (("--since 7d", since), ("all time", None)):
                times, cpu = [], []
                store.queries.usage_summary(by, cutoff)
                for _ in range(max(1, args.repeat // 2)):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    summary = store.queries.usage_summary(by, cutoff)
                    times.append((time.perf_counter() - started) * 1000)
                    cpu.append((time.process_time() - started_cpu) * 1000)
                median = statistics.median(times)
                slow_summaries += median > TARGET_MS
                flag = "" if median <= TARGET_MS else "  <-- over target"
                print(f"{f'--by {by} {label}':<38} {len(summary):>6} {'':>9} {'':>5} {median:>10.1f} {max(times):>8.1f}"
                      f" {statistics.median(cpu):>7.1f}{flag}")
    print()
    print(f"API cases over {TARGET_MS:.0f} ms (median): {slow}; usage summaries over: {slow_summaries}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
