"""Turning the figures into tables, ratios and the issue's targets (PASS/FAIL)."""

from __future__ import annotations

from typing import Any

from scenarios import CPU_TARGET_SCENARIOS

# Issue 5's targets.
CPU_RATIO_MAX = 0.10          # bridge CPU/request <= 1/10 of LiteLLM's
ADDED_P50_MS, ADDED_P99_MS = 1.0, 3.0
ADDED_TTFB_P50_MS = 1.0
EVENT_DELAY_MS = 1.0
SLOW_RSS_MB = 150.0


def fmt(value: Any, pattern: str = "{:.2f}") -> str:
    """A figure for a table: "-" when not measured."""
    return "-" if value is None else pattern.format(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def find(runs: list[dict], scenario: str, target: str, concurrency: int | None = None) -> dict | None:
    for r in runs:
        if r["scenario"] == scenario and r["target"] == target and r.get("status") == "ok" and \
                (concurrency is None or r["concurrency"] == concurrency):
            return r
    return None


def _get(run: dict | None, *keys: str) -> float | None:
    value: Any = run
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return value


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def label(run: dict) -> str:
    """The target's name, with the round when it was measured in several (a baseline comparison)."""
    return run["target"] + (f" #{run['round']}" if run.get("round") else "")


def main_table(results: dict) -> str:
    rows = []
    for r in results["runs"]:
        if r.get("status") != "ok":
            rows.append([r["scenario"], label(r), str(r.get("concurrency", "")), *["-"] * 7, r.get("status", "")])
            continue
        rows.append([r["scenario"], label(r), str(r["concurrency"]), fmt(r["rps"], "{:.0f}"),
                     fmt(_get(r, "latency_ms", "p50")), fmt(_get(r, "latency_ms", "p99")),
                     fmt(_get(r, "ttfb_ms", "p50")), fmt(_get(r, "ttfb_ms", "p99")),
                     fmt(r.get("cpu_ms_per_req")), fmt(r.get("peak_rss_mb"), "{:.0f}"),
                     str(r["errors"]) + (f"  (of {r['ok'] + r['errors']})" if r["errors"] else "")])
    return table(["scenario", "target", "conc", "req/s", "p50 ms", "p99 ms", "ttfb p50", "ttfb p99",
                  "CPU ms/req", "peak RSS MB", "errors"], rows)


def ratios(results: dict) -> dict:
    """bridge vs direct (added latency, c=1) and LiteLLM vs bridge (CPU per request, latency)."""
    out: dict[str, dict] = {}
    conc = results["config"]["throughput_concurrency"]
    for scenario in results["config"]["scenarios"]:
        d1, b1, l1 = (find(results["runs"], scenario, t, 1) for t in ("direct", "bridge", "litellm"))
        dn, bn, ln = (find(results["runs"], scenario, t, conc) for t in ("direct", "bridge", "litellm"))
        if not b1 and not bn:
            continue
        entry = {
            "bridge_added_p50_ms": _sub(_get(b1, "latency_ms", "p50"), _get(d1, "latency_ms", "p50")),
            "bridge_added_p99_ms": _sub(_get(b1, "latency_ms", "p99"), _get(d1, "latency_ms", "p99")),
            "bridge_added_ttfb_p50_ms": _sub(_get(b1, "ttfb_ms", "p50"), _get(d1, "ttfb_ms", "p50")),
            "bridge_over_direct_p50": _div(_get(b1, "latency_ms", "p50"), _get(d1, "latency_ms", "p50")),
            "bridge_over_direct_rps": _div(_get(bn, "rps"), _get(dn, "rps")),
            "bridge_cpu_ms_per_req": _get(bn, "cpu_ms_per_req"),
            "litellm_cpu_ms_per_req": _get(ln, "cpu_ms_per_req"),
            "litellm_over_bridge_cpu": _div(_get(ln, "cpu_ms_per_req"), _get(bn, "cpu_ms_per_req")),
            "bridge_cpu_ms_per_req_c1": _get(b1, "cpu_ms_per_req"),
            "litellm_cpu_ms_per_req_c1": _get(l1, "cpu_ms_per_req"),
            "litellm_added_p50_ms": _sub(_get(l1, "latency_ms", "p50"), _get(d1, "latency_ms", "p50")),
            "litellm_over_bridge_added_p50": _div(_sub(_get(l1, "latency_ms", "p50"), _get(d1, "latency_ms", "p50")),
                                                  _sub(_get(b1, "latency_ms", "p50"), _get(d1, "latency_ms", "p50"))),
            "litellm_over_bridge_rps": _div(_get(ln, "rps"), _get(bn, "rps")),
        }
        out[scenario] = entry
    return out


def ratio_table(rat: dict) -> str:
    rows = [[s, "", "", fmt(e["bridge_added_p50_ms"]), fmt(e["bridge_added_p99_ms"]), fmt(e["bridge_added_ttfb_p50_ms"]),
             fmt(e["bridge_over_direct_p50"], "{:.2f}x"), fmt(e["bridge_over_direct_rps"], "{:.2f}x"),
             fmt(e["litellm_added_p50_ms"]), fmt(e["litellm_over_bridge_cpu"], "{:.1f}x"),
             fmt(e["litellm_over_bridge_rps"], "{:.2f}x")] for s, e in rat.items()]
    return table(["scenario", "", "", "bridge +p50", "+p99", "+ttfb p50", "b/d p50", "b/d req/s",
                  "litellm +p50", "L/b CPU", "L/b req/s"], rows)


def paced_table(results: dict) -> str:
    rows = []
    for p in results.get("paced", []):
        if p.get("status") != "ok":
            rows.append([p["scenario"], label(p), "", *["-"] * 9, p.get("status", "")])
            continue
        d, g = p["event_delay_ms"], p["event_gap_ms"]
        added = p.get("added_delay_ms") or {}
        rows.append([p["scenario"], label(p), str(p["stamped_events"]), fmt(d.get("p50"), "{:.3f}"),
                     fmt(d.get("p99"), "{:.3f}"), fmt(d.get("max"), "{:.3f}"), fmt(added.get("p50"), "{:+.3f}"),
                     fmt(added.get("p99"), "{:+.3f}"), fmt(added.get("max"), "{:+.3f}"), fmt(g.get("p50")),
                     fmt(g.get("p99")), fmt(p.get("cpu_ms_per_req")), str(p["errors"])])
    return table(["scenario", "target", "events", "delay p50", "p99", "max", "added p50", "p99", "max",
                  "gap p50", "gap p99", "CPU ms/stream", "errors"], rows)


def slow_table(results: dict) -> str:
    s = results.get("slow")
    if not s:
        return "(not run)"
    if s.get("status") != "ok":
        return f"not run: {s.get('note')}"
    dur = s.get("stream_duration_ms") or {}
    return table(["target", "streams", "ok", "errors", "incomplete", "unfinished", "RSS start MB", "RSS peak MB",
                  "duration p50 ms", "p99 ms", "CPU s"],
                 [[s["target"], str(s["streams"]), str(s["ok"]), str(s["errors"]), str(s["incomplete"]),
                   str(s["unfinished"]), fmt(s["rss_start_mb"], "{:.1f}"), fmt(s["rss_peak_mb"], "{:.1f}"),
                   fmt(dur.get("p50"), "{:.0f}"), fmt(dur.get("p99"), "{:.0f}"), fmt(s.get("cpu_s"))]])


def targets(results: dict, rat: dict) -> list[dict]:
    """The issue's targets, each with the measured value and PASS / FAIL / N/A."""
    checks: list[dict] = []

    def check(name: str, value: float | None, limit: float, unit: str, why_na: str = "") -> None:
        if value is None:
            checks.append({"target": name, "value": None, "limit": limit, "result": "N/A", "note": why_na})
        else:
            checks.append({"target": name, "value": value, "limit": limit, "unit": unit,
                           "result": "PASS" if value <= limit else "FAIL"})

    # Both concurrencies: LiteLLM's asyncio loop spends less per request under load than alone.
    conc = results["config"]["throughput_concurrency"]
    for s in CPU_TARGET_SCENARIOS:
        e = rat.get(s, {})
        for label, suffix in (("c=1", "_c1"), (f"c={conc}", "")):
            ratio = _div(e.get("bridge_cpu_ms_per_req" + suffix), e.get("litellm_cpu_ms_per_req" + suffix))
            check(f"CPU/request {label} {s}: bridge/LiteLLM <= 0.10", ratio, CPU_RATIO_MAX, "x",
                  "LiteLLM not measured in this run" if e.get("litellm_cpu_ms_per_req" + suffix) is None
                  else "not measured")
    for s in CPU_TARGET_SCENARIOS:
        e = rat.get(s, {})
        check(f"added latency c=1 {s}: p50 <= 1 ms", e.get("bridge_added_p50_ms"), ADDED_P50_MS, "ms", "not measured")
        check(f"added latency c=1 {s}: p99 <= 3 ms", e.get("bridge_added_p99_ms"), ADDED_P99_MS, "ms", "not measured")
        if s.endswith("stream"):
            check(f"added TTFB c=1 {s}: p50 <= 1 ms", e.get("bridge_added_ttfb_p50_ms"), ADDED_TTFB_P50_MS, "ms",
                  "not measured")
    for p in results.get("paced", []):
        if p["target"] == "bridge":
            added = p.get("added_delay_ms") or {}
            nth = f" #{p['round']}" if p.get("round") else ""
            check(f"per-event added delay {p['scenario']}{nth} (p99; max in table) <= 1 ms", added.get("p99"),
                  EVENT_DELAY_MS, "ms", p.get("note", "not measured"))
    s = results.get("slow")
    if s and s.get("status") == "ok":
        failed = s["errors"] + s["incomplete"] + s["unfinished"]
        checks.append({"target": f"{s['streams']} slow streams on 1 worker: no errors", "value": failed, "limit": 0,
                       "result": "PASS" if failed == 0 else "FAIL"})
        check(f"{s['streams']} slow streams on 1 worker: peak RSS <= 150 MB", s["rss_peak_mb"], SLOW_RSS_MB, "MB")
    else:
        checks.append({"target": "1000 slow streams", "value": None, "limit": None, "result": "N/A",
                       "note": (s or {}).get("note", "not run")})
    return checks


def targets_text(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        value = "-" if c["value"] is None else (f"{c['value']:.3f}" if isinstance(c["value"], float) else str(c["value"]))
        unit = c.get("unit", "")
        note = f"  ({c['note']})" if c.get("note") and c["result"] == "N/A" else ""
        lines.append(f"  [{c['result']:4}] {c['target']}: {value}{unit if value != '-' else ''}{note}")
    return "\n".join(lines)


def render(results: dict) -> str:
    rat = results["ratios"]
    parts = [
        f"bridge benchmark — {results['meta']['started']}  ({results['meta']['mode']} mode; mock: "
        f"{results['meta']['mock']}; load average at start {results['meta']['loadavg']}, at end "
        f"{results['meta'].get('loadavg_end', '-')} on {results['meta']['cpus']} CPUs)",
        "",
        "Per scenario and target (CPU = server process tree utime+stime per request; RSS = max VmHWM of its processes)",
        main_table(results),
        "",
        f"Ratios (added = bridge or LiteLLM minus direct at concurrency 1; CPU and req/s at concurrency "
        f"{results['config']['throughput_concurrency']})",
        ratio_table(rat),
        "",
        "Paced streams (one event every 20 ms): delay = client arrival − mock send time (ms); added = minus direct",
        paced_table(results),
        "",
        "Slow streams",
        slow_table(results),
        "",
        "Issue 5 targets",
        targets_text(results["targets"]),
    ]
    skipped = [f"{r['scenario']} / {r['target']}" + (f" c={r['concurrency']}" if r.get("concurrency") else "") +
               f": {r.get('note', '')}" for r in results["runs"] + results.get("paced", []) if r.get("status") != "ok"]
    notes = list(results.get("notes") or []) + skipped
    if notes:
        parts += ["", "Notes"] + [f"  - {n}" for n in notes]
    return "\n".join(parts)
