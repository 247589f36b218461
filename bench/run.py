#!/usr/bin/env python3
"""bridge benchmark: what the gateway adds to every call, next to the mock itself and LiteLLM.

    python bench/run.py --quick            # < 2 minutes
    python bench/run.py                    # the fuller run (~6-8 minutes with LiteLLM)
    python bench/run.py --baseline-rev REV # also bridge at REV, before/after in the same run
    python bench/run.py --budgets --targets bridge --skip-paced --slow-streams 0 --quick
                                           # budgets on (a default nobody reaches) vs off, this tree

Everything runs on 127.0.0.1 and stops by itself; every loop is bounded by a request count and by
seconds. Nothing is installed unless asked (--install, --install-litellm). CI does not run this.

What runs
  mock      nginx (Debian's nginx-light) serving canned bodies built from tests/fixtures: OpenAI chat,
            Anthropic messages and Responses API, blocking and streamed (40 events). Without nginx,
            bench/mockserver.py (gevent) serves them and the "direct" row shows its own cost.
            bench/mockserver.py also serves the paced streams (one event every 20 ms / 250 ms).
  targets   direct   straight to the mock: the floor.
            bridge   gunicorn -c gunicorn.conf.py bridge.wsgi:app --workers 1 (gevent), a real gateway
                     token from a fresh SQLite store, recording on (structured logging: --structured-logging).
            litellm  LiteLLM proxy from bench/litellm-venv (--install-litellm creates it), 1 worker,
                     master-key auth, no database. Skipped with a note when absent.
            baseline with --baseline DIR (another checkout of bridge) or --baseline-rev REV (a git
                     worktree of REV made in a temp dir, removed after the run): bridge's command run
                     from that tree with this interpreter, importing that tree's bridge package. It
                     and bridge alternate in every scenario, A B B A (--rounds); then each scenario's
                     CPU per request current/baseline, PASS when <= 1.05 (issue 17). The 1,000 slow
                     streams run on bridge only. --baseline . compares this tree with itself: the noise.
                     --budgets: this tree as the baseline (no budget) and as bridge with a default
                     budget nobody reaches, so each worker's budget guard refreshes and every call is
                     checked (SPEC §11): the cost of budgets, PASS when <= 1.05.

What is measured, per scenario and target
  - concurrency 1 (latency) and concurrency N (throughput, --concurrency): req/s, latency p50/p99,
    time to first body byte (TTFB) p50/p99 from a raw-socket keep-alive client (bench/load.py);
  - the server's CPU per request: utime+stime of its whole process tree (gunicorn master + worker,
    all threads) from /proc/<pid>/stat, read just before and just after the timed window
    (+0.7 s for records written after the last answer); peak RSS: the largest VmHWM of its processes.
    nginx sends a canned stream at once (Content-Length), so a gateway reads it in a few large pieces;
    the paced runs, where every event arrives on its own, show the per-event relay cost (CPU ms/stream).
  - paced streams: per-event delay (client arrival - mock send time, same clock), through each
    target; "added" = the target's percentile minus direct's; gaps between consecutive events.
  - 1,000 concurrent slow streams (40 events x 250 ms) on one bridge worker, started fresh:
    errors, incomplete streams, VmRSS before and peak during.
Then the ratios bridge/direct and LiteLLM/bridge, and issue 5's targets with PASS/FAIL.
Scenarios that a target answers with 404 (e.g. no Responses route yet) are skipped with a note.
Figures go to bench/results.json (--output). Load from other processes on the machine shows up in
latency and req/s; CPU per request is the stable figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bodies  # noqa: E402
import load  # noqa: E402
import report  # noqa: E402
from mock import PyMock, canned_mock, nginx_binary, nginx_version  # noqa: E402
from procs import Usage, rss_mb  # noqa: E402
from scenarios import CANNED, CANNED_BY_NAME, CPU_TARGET_SCENARIOS, Scenario, paced  # noqa: E402
from targets import (LITELLM_VENV, REPO, Bridge, Direct, LiteLLM, Target, git_rev, litellm_available,  # noqa: E402
                     litellm_version)
import baseline  # noqa: E402

SETTLE_S = 0.7  # after the last answer: bridge's recorder batches for 0.5 s before writing
SENT: dict[str, int] = {}  # requests sent to each target (to compare with the records bridge wrote)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (finishes in < 2 minutes)")
    p.add_argument("--scenarios", help="comma-separated canned scenarios (default: all: "
                   f"{','.join(s.name for s in CANNED)}; quick: the four of the CPU target, {','.join(CPU_TARGET_SCENARIOS)})")
    p.add_argument("--targets", default="direct,bridge,litellm", help="comma-separated (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="connections in the throughput run (default 16)")
    p.add_argument("--requests", type=int, help="max requests per throughput run (default 5000; quick 500)")
    p.add_argument("--seconds", type=float, help="max seconds per throughput run (default 15; quick 1.5)")
    p.add_argument("--latency-requests", type=int, help="max requests per concurrency-1 run (default 2000; quick 300)")
    p.add_argument("--latency-seconds", type=float, help="max seconds per concurrency-1 run (default 10; quick 1)")
    p.add_argument("--paced-streams", type=int, help="streams per paced run (default 24; quick 6), 3 at a time")
    p.add_argument("--paced-apis", help="APIs of the paced runs (default openai,anthropic; quick anthropic)")
    p.add_argument("--paced-interval-ms", type=int, default=20, help="paced mock: ms between events (default 20)")
    p.add_argument("--slow-streams", type=int, default=1000, help="concurrent slow streams (default 1000; 0 skips)")
    p.add_argument("--slow-events", type=int, help="events per slow stream (default 40; quick 20)")
    p.add_argument("--slow-interval-ms", type=int, default=250, help="ms between slow-stream events (default 250)")
    p.add_argument("--skip-paced", action="store_true", help="skip the paced-stream runs")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--baseline", type=Path, metavar="DIR",
                      help="also measure the bridge tree in DIR (same requirements), alternating with this one")
    base.add_argument("--baseline-rev", metavar="REV",
                      help="like --baseline, with a detached git worktree of REV made for the run and removed after")
    base.add_argument("--budgets", action="store_true",
                      help="budgets on vs off: this tree as the baseline, and as bridge with a default budget "
                           "nobody reaches (issue 19)")
    p.add_argument("--rounds", type=int, default=2, choices=range(1, 11), metavar="{1..10}",
                   help="with a baseline: runs of each tree per scenario, the order flipped each round "
                        "(default 2: A B B A)")
    p.add_argument("--structured-logging", action="store_true",
                   help="bridge with CODER_AIBRIDGE_STRUCTURED_LOGGING on (JSON log file in the temp dir)")
    p.add_argument("--python-mock", action="store_true", help="serve the canned bodies with mockserver.py, not nginx")
    p.add_argument("--output", type=Path, default=HERE / "results.json", help="JSON results (default bench/results.json)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, the bridge DB)")
    p.add_argument("--nice", type=int, default=0,
                   help="change the niceness of this run and every process it starts (all targets alike), e.g. "
                        "-10 as root on a busy machine to be less disturbed by other work (default 0)")
    p.add_argument("--install", action="store_true", help="apt-get install nginx-light first (needs root), then run")
    p.add_argument("--install-litellm", action="store_true",
                   help="create bench/litellm-venv with pip install 'litellm[proxy]' first, then run")
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (("requests", 5000, 500), ("seconds", 15.0, 1.5), ("latency_requests", 2000, 300),
                              ("latency_seconds", 10.0, 1.0), ("paced_streams", 24, 6), ("slow_events", 40, 20),
                              ("scenarios", ",".join(s.name for s in CANNED), ",".join(CPU_TARGET_SCENARIOS)),
                              ("paced_apis", "openai,anthropic", "anthropic")):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.budgets:
        args.baseline = REPO  # the same tree, without a budget
    return args


def install(args: argparse.Namespace) -> None:
    if args.install and not nginx_binary():
        print("installing nginx-light (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if args.install_litellm and not litellm_available():
        print(f"creating {LITELLM_VENV} with litellm[proxy] (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)


# ---------------------------------------------------------------- one load run

def raw_request(port: int, ep) -> str:
    body = json.dumps(ep.body, separators=(",", ":"))
    head = [f"POST {ep.path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "User-Agent: bridge-bench/1",
            "Accept: */*", "Content-Type: application/json", f"Content-Length: {len(body.encode())}"]
    head += [f"{k}: {v}" for k, v in ep.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode().decode("latin-1")


def probe(target: Target, scenario: Scenario) -> str | None:
    """None when the target answers the scenario properly, else why it is skipped."""
    ep = target.endpoint(scenario)
    SENT[target.name] = SENT.get(target.name, 0) + 1
    conn = load.Conn("127.0.0.1", ep.port)
    try:
        status, _, _, body = conn.roundtrip(raw_request(ep.port, ep).encode("latin-1"))
    except Exception as exc:  # noqa: BLE001
        return f"probe failed: {exc!r}"
    finally:
        conn.close()
    if status == 404:
        return f"skipped: {target.name} answers 404 ({body[:120].decode(errors='replace')})"
    if status != 200:
        return f"skipped: {target.name} answers {status}: {body[:200].decode(errors='replace')}"
    if scenario.stream and bodies.final_marker(scenario.api) not in body:
        return f"skipped: {target.name} stream did not end properly: {body[-200:]!r}"
    return None


def run_load(target: Target, scenario: Scenario, spec: dict, timeout: float) -> dict:
    """Run bench/load.py against the target; measure the target's CPU and memory around the timed window."""
    ep = target.endpoint(scenario)
    spec = {"host": "127.0.0.1", "port": ep.port, "request": raw_request(ep.port, ep),
            "final_marker": bodies.final_marker(scenario.api).decode() if scenario.stream else "", **spec}
    pid = target.cost_pid(scenario)
    proc = subprocess.Popen([sys.executable, str(HERE / "load.py"), json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    deadline = time.monotonic() + timeout
    rss_samples: list[float] = []
    try:
        def expect(word: str) -> None:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.25)
                if spec["mode"] == "slow":
                    rss_samples.append(rss_mb(pid))
                if ready:
                    line = proc.stdout.readline()
                    if line.strip() == word:
                        return
                    if not line:
                        raise RuntimeError(f"load generator exited: {proc.stderr.read()[-2000:]}")
            raise RuntimeError(f"load generator did not say {word} in time")

        expect("READY")
        rss_before = rss_mb(pid)
        before = Usage(pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        expect("DONE")
        time.sleep(SETTLE_S)
        after = Usage(pid)
        result = json.loads(proc.stdout.readline())
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cpu = after.cpu_since(before)
    done = result.get("ok", 0) + result.get("errors", 0)
    warmup = spec.get("warmup", 0) if spec["mode"] == "closed" else spec["concurrency"] if spec["mode"] == "paced" else 0
    SENT[target.name] = SENT.get(target.name, 0) + done + warmup
    result.update({"cpu_s": cpu, "cpu_ms_per_req": cpu * 1000 / done if done else None,
                   "peak_rss_mb": rss_mb(pid, "VmHWM"), "rss_before_mb": rss_before})
    if rss_samples:
        result["rss_peak_sampled_mb"] = max(rss_samples)
    return result


# ---------------------------------------------------------------- the phases

def canned_runs(args, targets: list[Target], scenarios: list[Scenario], results: dict) -> None:
    for scenario in scenarios:
        for target, nth in baseline.run_order(targets, args.rounds):
            tag = {"target": target.name, **({"round": nth} if nth else {})}
            who = report.label(tag)
            note = probe(target, scenario)
            if note:
                print(f"  {scenario.name:12} {who:11} {note}", flush=True)
                results["runs"].append({"scenario": scenario.name, **tag, "status": "skipped", "note": note})
                continue
            for conc, n, secs in ((1, args.latency_requests, args.latency_seconds),
                                  (args.concurrency, args.requests, args.seconds)):
                spec = {"mode": "closed", "concurrency": conc, "requests": n, "seconds": secs,
                        "warmup": 20 if args.quick else 100}
                try:
                    r = run_load(target, scenario, spec, timeout=secs + 120)
                except Exception as exc:  # noqa: BLE001
                    r = {"status": "failed", "note": f"failed: {exc}", "concurrency": conc}
                    traceback.print_exc()
                else:
                    r["status"] = "ok"
                r.update({"scenario": scenario.name, **tag})
                results["runs"].append(r)
                if r["status"] == "ok":
                    print(f"  {scenario.name:12} {who:11} c={conc:<3} {r['rps']:8.0f} req/s  "
                          f"p50 {r['latency_ms'].get('p50') or 0:7.2f} ms  p99 {r['latency_ms'].get('p99') or 0:7.2f} ms  "
                          f"CPU {r['cpu_ms_per_req'] or 0:6.2f} ms/req  errors {r['errors']}", flush=True)


def paced_runs(args, targets: list[Target], scenarios: list[Scenario], results: dict) -> None:
    for scenario in scenarios:
        rows = []
        for target, nth in baseline.run_order(targets, args.rounds):
            tag = {"target": target.name, **({"round": nth} if nth else {})}
            who = report.label(tag)
            spec = {"mode": "paced", "concurrency": 3, "requests": args.paced_streams}
            note = probe(target, scenario)
            if note:
                rows.append({"scenario": scenario.name, **tag, "status": "skipped", "note": note})
                print(f"  {scenario.name:14} {who:11} {note}", flush=True)
                continue
            try:
                seconds = (args.paced_streams / 3 + 2) * scenario.events * scenario.interval_ms / 1000
                r = run_load(target, scenario, spec, timeout=seconds + 60)
                r["status"] = "ok"
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                r = {"status": "failed", "note": f"failed: {exc}"}
            r.update({"scenario": scenario.name, **tag})
            rows.append(r)
            if r["status"] == "ok":
                d = r["event_delay_ms"]
                print(f"  {scenario.name:14} {who:11} events {r['stamped_events']:5}  delay p50 "
                      f"{d.get('p50') or 0:.3f} p99 {d.get('p99') or 0:.3f} max {d.get('max') or 0:.3f} ms  "
                      f"errors {r['errors']}", flush=True)
        direct = next((r for r in rows if r["target"] == "direct" and r["status"] == "ok"), None)
        for r in rows:
            if direct and r["status"] == "ok" and r is not direct:
                r["added_delay_ms"] = {k: r["event_delay_ms"][k] - direct["event_delay_ms"][k]
                                       for k in ("p50", "p90", "p99", "max")}
        results["paced"].extend(rows)


def slow_run(args, bridge: Bridge, scenario: Scenario, results: dict) -> None:
    bridge.restart()  # a fresh worker: RSS at start is what the streams start from
    note = probe(bridge, scenario)
    if note:
        results["slow"] = {"status": "skipped", "note": note, "target": "bridge"}
        return
    time.sleep(0.5)
    rss_start = rss_mb(bridge.server.pid)
    stream_s = scenario.events * scenario.interval_ms / 1000
    spec = {"mode": "slow", "concurrency": args.slow_streams, "ramp": 2.0, "seconds": stream_s + 60}
    r = run_load(bridge, scenario, spec, timeout=stream_s + 120)
    r.update({"status": "ok", "target": "bridge", "scenario": scenario.name, "rss_start_mb": rss_start,
              "rss_peak_mb": max(r["peak_rss_mb"], r.get("rss_peak_sampled_mb", 0)),
              "events_per_stream": scenario.events, "interval_ms": scenario.interval_ms})
    results["slow"] = r
    print(f"  {r['streams']} streams: ok {r['ok']} errors {r['errors']} incomplete {r['incomplete']} "
          f"unfinished {r['unfinished']}; worker RSS {rss_start:.1f} MB at start, {r['rss_peak_mb']:.1f} MB peak",
          flush=True)


# ---------------------------------------------------------------- main

def start_bridges(args, workdir: Path, mocks: list, results: dict, stoppers: list) -> list[Bridge]:
    """The bridge targets, started: the baseline tree's first when there is one, then this tree's.
    Each is refused unless its server imports bridge from its own tree."""
    trees = ([(args.baseline.resolve(), baseline.NAME)] if args.baseline else []) + [(REPO, baseline.CURRENT)]
    started = []
    for tree, name in trees:
        target = Bridge(workdir, mocks, structured_logging=args.structured_logging, repo=tree, name=name,
                        budget=args.budgets and name == baseline.CURRENT)
        results["meta"][name] = {**target.features, **baseline.check_tree(target)}
        print(f"{name}: {results['meta'][name]['git']} from {results['meta'][name]['bridge_module']}", flush=True)
        stoppers.append(target.stop)
        started.append(target.start())
    return started


def baseline_error(args, wanted_targets: list[str]) -> str | None:
    if not (args.baseline or args.baseline_rev):
        return None
    if "bridge" not in wanted_targets:
        return "--baseline/--baseline-rev compare with bridge: keep bridge in --targets"
    if args.baseline and not (args.baseline / "bridge" / "__init__.py").is_file():
        return f"--baseline {args.baseline}: no bridge package there"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install(args)
    if args.nice:
        try:
            os.nice(args.nice)  # inherited by the mocks, the targets and the load generator
        except PermissionError:
            print(f"--nice {args.nice}: not permitted, running at the current priority", file=sys.stderr)
            args.nice = 0
    started = time.monotonic()
    wanted_targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [s for s in args.scenarios.split(",") if s and s not in CANNED_BY_NAME]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(CANNED_BY_NAME)}", file=sys.stderr)
        return 2
    error = baseline_error(args, wanted_targets)
    if error:
        print(error, file=sys.stderr)
        return 2
    canned = [CANNED_BY_NAME[s] for s in args.scenarios.split(",") if s]
    short = {"openai": "oai", "anthropic": "ant", "responses": "resp"}
    paced_apis = [a.strip() for a in args.paced_apis.split(",") if a.strip()]
    if any(a not in short for a in paced_apis):
        print(f"--paced-apis: choose among {', '.join(short)}", file=sys.stderr)
        return 2
    paced_scenarios = [] if args.skip_paced else [
        paced(api, bodies.STREAM_EVENTS, args.paced_interval_ms, f"paced-{short[api]}") for api in paced_apis]
    slow_scenario = paced("anthropic", args.slow_events, args.slow_interval_ms, "slow-ant")

    notes: list[str] = []
    results: dict = {
        "meta": {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "mode": "quick" if args.quick else "full", "git": git_rev(), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                 "nginx": nginx_version(), "litellm": litellm_version()},
        "config": {"scenarios": [s.name for s in canned], "throughput_concurrency": args.concurrency,
                   "requests": args.requests, "seconds": args.seconds, "latency_requests": args.latency_requests,
                   "latency_seconds": args.latency_seconds, "paced_streams": args.paced_streams,
                   "paced_interval_ms": args.paced_interval_ms, "slow_streams": args.slow_streams,
                   "slow_events": args.slow_events, "slow_interval_ms": args.slow_interval_ms,
                   "stream_events": bodies.STREAM_EVENTS, "paced_apis": args.paced_apis, "nice": args.nice,
                   "rounds": args.rounds if args.baseline or args.baseline_rev else 1},
        "runs": [], "paced": [], "slow": None, "notes": notes,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    stoppers: list = []
    try:
        if args.baseline_rev:
            args.baseline = baseline.make_worktree(args.baseline_rev)
            stoppers.append(lambda tree=args.baseline: baseline.remove_worktree(tree))  # last: after the servers
        mock = canned_mock(workdir, canned, want_nginx=not args.python_mock)
        stoppers.append(mock.stop)
        results["meta"]["mock"] = mock.kind
        if mock.kind != "nginx":
            notes.append("canned bodies served by bench/mockserver.py (nginx absent or --python-mock): the direct "
                         "rows' CPU ms/req is that mock's own cost; install nginx (--install) for a faster floor")
        paced_mock = PyMock(workdir, "paced-mock")
        stoppers.append(paced_mock.stop)
        mocks = [(s, mock) for s in canned] + [(s, paced_mock) for s in paced_scenarios + [slow_scenario]]

        targets: list[Target] = []
        if "direct" in wanted_targets:
            targets.append(Direct(mock, paced_mock))
        bridges = start_bridges(args, workdir, mocks, results, stoppers) if "bridge" in wanted_targets else []
        targets += bridges
        bridge = bridges[-1] if bridges else None
        if args.baseline and args.slow_streams > 0:
            notes.append(f"the {args.slow_streams} slow streams ran on bridge only, not on the baseline")
        if "litellm" in wanted_targets:
            if litellm_available():
                print("starting LiteLLM proxy ...", flush=True)
                t0 = time.monotonic()
                lite = LiteLLM(workdir, [(s, m) for s, m in mocks if s is not slow_scenario])
                stoppers.append(lite.stop)
                targets.append(lite)
                print(f"  LiteLLM up after {time.monotonic() - t0:.1f}s", flush=True)
            else:
                notes.append(f"LiteLLM skipped: {LITELLM_VENV} does not exist (create it with --install-litellm)")
        print(f"targets: {', '.join(t.name for t in targets)}; mock: {mock.kind}; temp dir {workdir}", flush=True)

        print("canned scenarios:", flush=True)
        canned_runs(args, targets, canned, results)
        if paced_scenarios:
            print(f"paced streams ({bodies.STREAM_EVENTS} events, one every {args.paced_interval_ms} ms):", flush=True)
            paced_runs(args, targets, paced_scenarios, results)
        if bridge and args.slow_streams > 0:
            print(f"{args.slow_streams} slow streams ({args.slow_events} events x {args.slow_interval_ms} ms) "
                  f"on one bridge worker:", flush=True)
            try:
                slow_run(args, bridge, slow_scenario, results)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                results["slow"] = {"status": "failed", "note": f"failed: {exc}", "target": "bridge"}
        if bridge:
            results["meta"]["bridge_records"] = bridge.records()
            bridge.stop()
            results["meta"]["bridge_records"] = bridge.records()
        for base in bridges[:-1]:
            base.stop()
            results["meta"][base.name]["records"] = base.records()
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")

    results["ratios"] = report.ratios(results)
    results["targets"] = report.targets(results, results["ratios"])
    if args.baseline:
        results["comparison"] = baseline.compare(results)
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if results["meta"].get("bridge_records") is not None:
        results["meta"]["bridge_requests_sent"] = SENT.get("bridge", 0)
        notes.append(f"bridge recorded {results['meta']['bridge_records']} interceptions in its store for "
                     f"{SENT.get('bridge', 0)} requests sent to it (recording was on)")
    base_meta = results["meta"].get(baseline.NAME)
    if base_meta and base_meta.get("records") is not None:
        notes.append(f"the baseline recorded {base_meta['records']} interceptions for "
                     f"{SENT.get(baseline.NAME, 0)} requests sent to it")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.render(results))
    if args.baseline:
        print("\n" + baseline.render(results["comparison"], results["meta"].get(baseline.NAME, {}),
                                     results["meta"]["git"]))
    print(f"\nwritten {args.output} in {results['meta']['elapsed_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
