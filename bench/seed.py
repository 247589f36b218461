"""Fill a database with realistic interception records for benchmarks and the dashboard.

    python bench/seed.py --database /tmp/bridge-bench.db            # 1,000,000 interceptions
    python bench/seed.py --database /tmp/small.db -n 20000 --force

Several users with skewed activity, each with a favourite client and models, spread over the last
90 days with office-hours and weekday peaks, inserted in time order as the gateway writes them.
Every interception has token usage; most have a prompt, some tool calls (with the next turn of the
session correlated to the last call), some model thoughts. The schema is the gateway's own
(``Store.migrate``); users are created through the store (``admin`` is an administrator).

Speed: one big transaction per chunk, ``synchronous=OFF``, and the record tables' secondary
indexes dropped during the load and rebuilt at the end (their definitions are read from the
schema, so they come back exactly as the migrations made them). The usage rollups are counted
once at the end (``store.rollups.rebuild``), as the migration backfills them. No ANALYZE: the API
must be fast without planner statistics, as a database the gateway grew itself has none.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.store import RECORD_COLUMNS, open_store  # noqa: E402
from bridge.timestamps import format_timestamp  # noqa: E402

# (client, user agent, [(provider, provider_name, model, weight)], tools, session header?)
CLIENTS = {
    "Claude Code": (
        "claude-cli/2.1.{v} (external, cli)",
        [("anthropic", "anthropic", "claude-sonnet-4-5", 6), ("anthropic", "anthropic", "claude-opus-4-1", 2),
         ("anthropic", "anthropic", "claude-haiku-4-5", 3), ("anthropic", "anthropic-bedrock",
                                                            "us.anthropic.claude-sonnet-4-5-20250929-v1:0", 2)],
        ["Read", "Edit", "Bash", "Grep", "Glob", "Write", "TodoWrite", "WebFetch"],
    ),
    "Codex": (
        "codex_cli_rs/0.4{v}.0 (Ubuntu 24.04; x86_64) xterm-256color",
        [("openai", "openai", "gpt-5-codex", 5), ("openai", "openai", "gpt-5", 3), ("openai", "team-b", "gpt-5-mini", 1)],
        ["shell", "apply_patch", "update_plan", "view_image"],
    ),
    "Cursor": (
        "Cursor/1.{v}.0",
        [("openai", "openai", "gpt-4.1", 3), ("anthropic", "anthropic", "claude-sonnet-4-5", 4), ("openai", "openai", "gpt-5", 2)],
        ["read_file", "edit_file", "run_terminal_cmd", "codebase_search", "grep_search"],
    ),
    "GitHub Copilot": (
        "GitHubCopilotChat/0.3{v}.0",
        [("copilot", "copilot", "gpt-4.1", 4), ("copilot", "copilot", "claude-sonnet-4", 3), ("copilot", "copilot", "gpt-5-mini", 2)],
        ["read_file", "replace_string_in_file", "run_in_terminal", "semantic_search"],
    ),
    "Zed": (
        "Zed/0.20{v}.3",
        [("anthropic", "anthropic", "claude-sonnet-4-5", 3), ("openai", "openai", "gpt-4.1", 1)],
        ["read_file", "edit_file", "terminal", "find_path"],
    ),
    "Kilo Code": (
        "kilo-code/4.{v}.0",
        [("openai", "team-b", "gpt-4o", 2), ("anthropic", "anthropic", "claude-sonnet-4-5", 2)],
        ["read_file", "apply_diff", "execute_command", "search_files"],
    ),
    "Roo Code": (
        "roo-code/3.2{v}.1",
        [("anthropic", "anthropic", "claude-sonnet-4-5", 3), ("openai", "team-b", "gpt-4o", 1)],
        ["read_file", "apply_diff", "execute_command", "list_files"],
    ),
    "openai-python": (
        "OpenAI/Python 1.10{v}.0",
        [("openai", "openai", "gpt-4o-mini", 4), ("openai", "openai", "gpt-4o", 2), ("openai", "team-b", "gpt-4o-mini", 2)],
        ["get_weather", "lookup_order", "search_docs"],
    ),
    "anthropic-python": (
        "Anthropic/Python 0.6{v}.0",
        [("anthropic", "anthropic", "claude-haiku-4-5", 3), ("anthropic", "anthropic", "claude-sonnet-4-5", 2)],
        ["get_weather", "search_kb", "create_ticket"],
    ),
    "Unknown": (
        "curl/8.{v}.0",
        [("openai", "openai", "gpt-4o-mini", 1), ("anthropic", "anthropic", "claude-haiku-4-5", 1)],
        ["tool"],
    ),
}
CLIENT_WEIGHTS = {"Claude Code": 30, "Codex": 18, "Cursor": 14, "GitHub Copilot": 12, "Zed": 4, "Kilo Code": 4,
                  "Roo Code": 3, "openai-python": 8, "anthropic-python": 5, "Unknown": 2}
PROMPTS = [
    "Fix the failing test in {f}", "Refactor {f} to use dependency injection", "Why does {f} leak memory?",
    "Add type hints to {f}", "Write a migration that adds an index on orders.created_at",
    "Explain what this regex does: ^(?:[a-z0-9-]+\\.)+[a-z]{{2,}}$", "Summarize the changes in the last commit",
    "Make the CI pipeline cache the pip downloads", "Port {f} from callbacks to async/await",
    "Review this diff for security problems", "Generate unit tests for the parser in {f}",
    "Rename the `usr` variable to `user` everywhere in {f}", "What is the time complexity of merge_intervals?",
]
FILES = ["src/billing/invoice.py", "app/models/user.rb", "pkg/server/handler.go", "web/src/App.tsx", "lib/cache.rs",
         "services/auth/token.ts", "internal/db/pool.go", "scripts/deploy.sh", "core/scheduler.py"]
THOUGHTS = [
    "The user wants the test fixed. Let me read the test file first, then the implementation it exercises.",
    "I should check whether the function is called from elsewhere before changing its signature.",
    "**Planning the change**\n\nI'll start by locating the definitions, then make the edit and run the tests.",
    "The error says the fixture is missing; probably the conftest was moved in the last refactor.",
]
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
         "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yolanda"]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _times(rng: random.Random, count: int, days: float, end: datetime) -> list[float]:
    """``count`` start times (epoch seconds), sorted, denser in office hours and on weekdays."""
    start = end.timestamp() - days * 86400
    out: list[float] = []
    while len(out) < count:
        t = start + rng.random() * days * 86400
        moment = datetime.fromtimestamp(t, timezone.utc)
        hour_weight = 0.15 + 0.85 * math.exp(-((moment.hour - 14) / 4.0) ** 2)
        day_weight = 0.25 if moment.weekday() >= 5 else 1.0
        if rng.random() < hour_weight * day_weight:
            out.append(t)
    out.sort()
    return out


def _users(rng: random.Random, count: int) -> list[tuple[str, float, str, list]]:
    """(username, activity weight, favourite client, that client's model weights tweaked per user)."""
    names = [FIRST[i % len(FIRST)] + ("" if i < len(FIRST) else str(i // len(FIRST))) for i in range(count)]
    clients, weights = zip(*CLIENT_WEIGHTS.items())
    users = []
    for rank, name in enumerate(names, 1):
        users.append((name, 1.0 / rank ** 0.8, rng.choices(clients, weights)[0]))
    return users


def seed(path: str, count: int, users: int, days: float, seed_value: int, chunk: int = 50_000) -> dict[str, int]:
    rng = random.Random(seed_value)
    store = open_store(path, migrate=True)
    try:
        admin = store.identity.get_user("admin") or store.identity.create_user("admin", is_admin=True)
        people = []
        for name, weight, favourite in _users(rng, users):
            user = store.identity.get_user(name) or store.identity.create_user(name)
            people.append((user["id"], weight, favourite))
    finally:
        store.close()
    people.append((admin["id"], 0.05, "Claude Code"))

    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA foreign_keys=OFF")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE 'aibridge_%' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")

    ids = [p[0] for p in people]
    user_weights = list(itertools.accumulate(p[1] for p in people))  # cumulative: choices() is O(log n) then
    favourite = {p[0]: p[2] for p in people}
    client_names = list(CLIENT_WEIGHTS)
    client_weights = list(itertools.accumulate(CLIENT_WEIGHTS.values()))
    model_weights = {name: list(itertools.accumulate(m[3] for m in models)) for name, (_, models, _) in CLIENTS.items()}
    end = datetime.now(timezone.utc) - timedelta(minutes=5)
    times = _times(rng, count, days, end)
    sessions: dict[str, tuple[str, str | None, int]] = {}  # user -> (session id, last tool call id, turns left)
    totals = dict.fromkeys(RECORD_COLUMNS, 0)
    inserts = {
        table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        for table, cols in RECORD_COLUMNS.items()
    }
    started = time.monotonic()
    for base in range(0, count, chunk):
        rows: dict[str, list[tuple]] = {table: [] for table in RECORD_COLUMNS}
        for t in times[base:base + chunk]:
            user = rng.choices(ids, cum_weights=user_weights)[0]
            client = favourite[user] if rng.random() < 0.75 else rng.choices(client_names, cum_weights=client_weights)[0]
            agent, models, tools = CLIENTS[client]
            provider, provider_name, model, _ = rng.choices(models, cum_weights=model_weights[client])[0]
            session_id, last_call, turns = sessions.get(user, (None, None, 0))
            if turns <= 0:
                session_id, last_call, turns = _uuid(rng), None, rng.randint(1, 30)
            iid = _uuid(rng)
            start = datetime.fromtimestamp(t, timezone.utc)
            duration = rng.lognormvariate(1.3, 0.9)
            created = format_timestamp(start + timedelta(seconds=duration * 0.9))
            byok = provider == "copilot" or rng.random() < 0.1
            correlating = last_call if last_call and rng.random() < 0.8 else None
            rows["aibridge_interceptions"].append((
                iid, user, provider, provider_name, model, client,
                session_id if client in ("Claude Code", "Codex", "GitHub Copilot") else None,
                agent.format(v=rng.randint(0, 9)), "byok" if byok else "centralized",
                "ghu_...k3Q9" if provider == "copilot" else ("sk-o...a1B2" if byok else "sk-a...9f3e"),
                correlating, format_timestamp(start), format_timestamp(start + timedelta(seconds=duration)),
                json.dumps({"stream": rng.random() < 0.85, "endpoint": "messages" if provider == "anthropic" else
                            "chat/completions"}),
            ))
            response_id = ("msg_" if provider == "anthropic" else "chatcmpl-") + uuid.UUID(int=rng.getrandbits(128)).hex[:24]
            for _ in range(2 if rng.random() < 0.08 else 1):
                input_tokens = int(rng.lognormvariate(7.5, 1.0))
                cached = int(rng.lognormvariate(9.5, 1.0)) if rng.random() < 0.7 else 0
                rows["aibridge_token_usages"].append((
                    _uuid(rng), iid, response_id, input_tokens, int(rng.lognormvariate(5.5, 1.0)), cached,
                    int(rng.lognormvariate(7, 1.2)) if provider == "anthropic" and rng.random() < 0.4 else 0,
                    json.dumps({"reasoning_tokens": rng.randint(0, 900)}) if provider != "anthropic" else "{}",
                    created,
                ))
            if correlating is None and rng.random() < 0.85:
                prompt = rng.choice(PROMPTS).format(f=rng.choice(FILES))
                rows["aibridge_user_prompts"].append((_uuid(rng), iid, response_id, prompt, "{}", format_timestamp(start)))
            last_call = None
            if rng.random() < 0.4:
                for _ in range(rng.choice((1, 1, 1, 2, 3))):
                    call_id = ("toolu_" if provider == "anthropic" else "call_") + uuid.UUID(int=rng.getrandbits(128)).hex[:22]
                    tool = rng.choice(tools)
                    rows["aibridge_tool_usages"].append((
                        _uuid(rng), iid, response_id, call_id, tool,
                        json.dumps({"path": rng.choice(FILES)} if rng.random() < 0.6 else {"command": "pytest -q"}),
                        None, 0, None, "{}", created,
                    ))
                    last_call = call_id
            if rng.random() < 0.25:
                source = "thinking" if provider == "anthropic" else rng.choice(("reasoning_summary", "commentary"))
                rows["aibridge_model_thoughts"].append((_uuid(rng), iid, rng.choice(THOUGHTS),
                                                        json.dumps({"source": source}), created))
            sessions[user] = (session_id, last_call, turns - 1)
        conn.execute("BEGIN")
        for table, values in rows.items():
            conn.executemany(inserts[table], values)
            totals[table] += len(values)
        conn.execute("COMMIT")
        done = min(base + chunk, count)
        print(f"\r{done:>9,} / {count:,} interceptions  {time.monotonic() - started:6.1f}s", end="", file=sys.stderr)
    print(file=sys.stderr)
    for name, sql in indexes:
        t0 = time.monotonic()
        conn.execute(sql)
        print(f"index {name}: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # The rows went in behind write_records' back: count the usage rollups (migration 0004) now.
    t0 = time.monotonic()
    with open_store(path) as store:
        store.rollups.rebuild()
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"usage rollups: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="/tmp/bridge-bench.db", help="SQLite file (default: %(default)s)")
    parser.add_argument("-n", "--count", type=int, default=1_000_000, help="interceptions (default: %(default)s)")
    parser.add_argument("--users", type=int, default=40, help="users besides admin (default: %(default)s)")
    parser.add_argument("--days", type=float, default=90, help="spread over the last N days (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="delete the database first if it exists")
    args = parser.parse_args(argv)
    if os.path.exists(args.database):
        if not args.force:
            parser.error(f"{args.database} exists; pass --force to replace it")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(args.database + suffix):
                os.remove(args.database + suffix)
    started = time.monotonic()
    totals = seed(args.database, args.count, args.users, args.days, args.seed)
    size = os.path.getsize(args.database) / 1e6
    print(f"seeded {args.database} in {time.monotonic() - started:.1f}s ({size:,.0f} MB):")
    for table, rows in totals.items():
        print(f"  {table:<26} {rows:>10,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
