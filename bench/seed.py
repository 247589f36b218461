"""Fill a database with realistic interception records for benchmarks and the dashboard.

    python bench/seed.py --database /tmp/bridge-bench.db            # 1,000,000 interceptions
    python bench/seed.py --database /tmp/small.db -n 20000 --force

Several users with skewed activity, each with a favourite client and models, spread over the last
90 days with office-hours and weekday peaks, inserted in time order as the gateway writes them.
Every interception has token usage; some have model thoughts.

Sessions (SPEC §9) have realistic lengths: most 1-10 turns, a long tail of tens, and a few hundred
turns long (200+). A session keeps its client and mostly its model; clients that send a session id
(Claude Code, Codex, Copilot) send the same one on every turn, the others none (every interception
is then a session of its own). A turn answering the previous turn's tool calls records no prompt
and carries ``correlating_tool_call_id`` = one of those calls; a turn after an answer without tool
calls (and now and then one that interrupts a tool loop) is a new user prompt: a new thread.

The schema is the gateway's own (``open_store(migrate=True)``); users are created through the store
(``admin`` is an administrator). Speed: one big transaction per chunk, ``synchronous=OFF``, and the
record tables' secondary indexes dropped during the load and rebuilt at the end (their definitions
are read from the schema, so they come back exactly as the migrations made them). Rows are written
with the columns a recorded interception has; what write_records would derive from them (the usage
rollups, sessions and threads) is rebuilt once at the end, as the migrations backfill it. No ANALYZE:
the API must be fast without planner statistics, as a database the gateway grew itself has none.
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
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.store import open_store  # noqa: E402
from bridge.timestamps import format_timestamp  # noqa: E402

# client -> (user agent, [(provider, provider_name, model, weight)], tools)
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
# Clients that send a session id on every request (Claude Code: X-Claude-Code-Session-Id); the others send none.
SESSION_CLIENTS = {"Claude Code", "Codex", "GitHub Copilot"}
# How often a turn of the client's calls tools: agents loop on tools, SDK scripts mostly ask once.
TOOL_RATE = {"openai-python": 0.3, "anthropic-python": 0.3, "Unknown": 0.2}
AGENT_TOOL_RATE = 0.75
# The columns seed writes: what a recorded interception has. What the gateway derives when it writes
# records (rollups, sessions, threads; later migrations' columns) is rebuilt at the end.
COLUMNS = {
    "aibridge_interceptions": ("id", "initiator_id", "provider", "provider_name", "model", "client",
                               "client_session_id", "user_agent", "credential_kind", "credential_hint",
                               "correlating_tool_call_id", "started_at", "ended_at", "metadata"),
    "aibridge_token_usages": ("id", "interception_id", "provider_response_id", "input_tokens", "output_tokens",
                              "cache_read_input_tokens", "cache_write_input_tokens", "metadata", "created_at"),
    "aibridge_user_prompts": ("id", "interception_id", "provider_response_id", "prompt", "metadata", "created_at"),
    "aibridge_tool_usages": ("id", "interception_id", "provider_response_id", "provider_tool_call_id", "tool", "input",
                             "server_url", "injected", "invocation_error", "metadata", "created_at"),
    "aibridge_model_thoughts": ("id", "interception_id", "content", "metadata", "created_at"),
}
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


@dataclass(slots=True)
class _Session:
    """A user's session in progress: its client, user agent and main model stay; turns count down."""

    id: str | None  # the client session id; None when the client sends none
    client: str
    agent: str
    model: tuple[str, str, str, int]
    turns_left: int
    calls: list[str]  # the tool calls of its last turn, answered by the next one


def _session_length(rng: random.Random) -> int:
    """Turns in a session: most 1-10, a long tail of tens, 1 in 40 a hundred or more (half of those 200+)."""
    roll = rng.random()
    if roll < 0.72:
        return rng.randint(1, 10)
    if roll < 0.975:
        return rng.randint(11, 99)
    return rng.randint(100, 400)


def seed(path: str, count: int, users: int, days: float, seed_value: int,
         chunk: int = 50_000) -> tuple[dict[str, int], Counter[str]]:
    """Seed ``path``; returns the rows written per table and the interceptions of each client session id."""
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
    sessions: dict[str, _Session] = {}  # user -> the session in progress
    turns: Counter[str] = Counter()  # client session id -> interceptions, for the summary
    totals = dict.fromkeys(COLUMNS, 0)
    inserts = {
        table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        for table, cols in COLUMNS.items()
    }
    started = time.monotonic()
    for base in range(0, count, chunk):
        rows: dict[str, list[tuple]] = {table: [] for table in COLUMNS}
        for t in times[base:base + chunk]:
            user = rng.choices(ids, cum_weights=user_weights)[0]
            session = sessions.get(user)
            if session is None or session.turns_left <= 0:
                client = (favourite[user] if rng.random() < 0.75
                          else rng.choices(client_names, cum_weights=client_weights)[0])
                agent, models, _ = CLIENTS[client]
                session = sessions[user] = _Session(
                    _uuid(rng) if client in SESSION_CLIENTS else None, client, agent.format(v=rng.randint(0, 9)),
                    rng.choices(models, cum_weights=model_weights[client])[0], _session_length(rng), [])
            session.turns_left -= 1
            client = session.client
            _, models, tools = CLIENTS[client]
            # Mostly the session's model; now and then another (a small model for a side task).
            choice = session.model if rng.random() < 0.9 else rng.choices(models, cum_weights=model_weights[client])[0]
            provider, provider_name, model, _ = choice
            iid = _uuid(rng)
            start = datetime.fromtimestamp(t, timezone.utc)
            duration = rng.lognormvariate(1.3, 0.9)
            created = format_timestamp(start + timedelta(seconds=duration * 0.9))
            byok = provider == "copilot" or rng.random() < 0.1
            # The turn after tool calls sends their results, unless the user interrupts with a new prompt.
            correlating = rng.choice(session.calls) if session.calls and rng.random() < 0.92 else None
            if session.id is not None:
                turns[session.id] += 1
            rows["aibridge_interceptions"].append((
                iid, user, provider, provider_name, model, client, session.id, session.agent,
                "byok" if byok else "centralized",
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
            if correlating is None and rng.random() < 0.96:  # the rest: neither a prompt nor a tool result
                prompt = rng.choice(PROMPTS).format(f=rng.choice(FILES))
                rows["aibridge_user_prompts"].append((_uuid(rng), iid, response_id, prompt, "{}", format_timestamp(start)))
            session.calls = []
            if rng.random() < TOOL_RATE.get(client, AGENT_TOOL_RATE):
                for _ in range(rng.choice((1, 1, 1, 2, 3))):
                    call_id = ("toolu_" if provider == "anthropic" else "call_") + uuid.UUID(int=rng.getrandbits(128)).hex[:22]
                    tool = rng.choice(tools)
                    rows["aibridge_tool_usages"].append((
                        _uuid(rng), iid, response_id, call_id, tool,
                        json.dumps({"path": rng.choice(FILES)} if rng.random() < 0.6 else {"command": "pytest -q"}),
                        None, 0, None, "{}", created,
                    ))
                    session.calls.append(call_id)
            if rng.random() < 0.25:
                source = "thinking" if provider == "anthropic" else rng.choice(("reasoning_summary", "commentary"))
                rows["aibridge_model_thoughts"].append((_uuid(rng), iid, rng.choice(THOUGHTS),
                                                        json.dumps({"source": source}), created))
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
    # The rows went in behind write_records' back: count what it keeps with them now, as the
    # migrations that added them backfill it: the usage rollups, and the sessions and threads.
    with open_store(path) as store:
        for name, rebuild in (("usage rollups", store.rollups.rebuild),
                              ("sessions and threads", store.sessions.rebuild)):
            t0 = time.monotonic()
            rebuild()
            print(f"{name}: {time.monotonic() - t0:.1f}s", file=sys.stderr)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return totals, turns


def _lengths(turns: Counter[str]) -> str:
    """How long the sessions with a client session id are, in buckets."""
    buckets = Counter("1-10" if n <= 10 else "11-99" if n < 100 else "100-199" if n < 200 else "200+"
                      for n in turns.values())
    shown = ", ".join(f"{buckets[b]:,} of {b}" for b in ("1-10", "11-99", "100-199", "200+"))
    return f"{len(turns):,} ({shown} turns; longest {max(turns.values(), default=0)})"


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
    totals, turns = seed(args.database, args.count, args.users, args.days, args.seed)
    size = os.path.getsize(args.database) / 1e6
    print(f"seeded {args.database} in {time.monotonic() - started:.1f}s ({size:,.0f} MB):")
    for table, rows in totals.items():
        print(f"  {table:<26} {rows:>10,}")
    print(f"  sessions with a client session id: {_lengths(turns)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
