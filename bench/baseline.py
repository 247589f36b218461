"""Before and after in one run: a second bridge tree (the baseline) measured beside this one.

The baseline is another checkout of bridge (``--baseline DIR``) or a detached git worktree of a
revision made for the run and removed after it (``--baseline-rev REV``). Both trees run with this
interpreter. Runs of the two alternate, A B B A (more rounds keep flipping the order), so slow
drift of the machine weighs on both alike; each is then judged by its CPU per request pooled over
its rounds (all CPU seconds over all answers), current/baseline <= 1.05 (issue 17).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

from procs import CLK_TCK
from report import fmt, table
from targets import REPO, Bridge, Target, git_rev

NAME = "baseline"   # the baseline's target name in results.json and the tables
CURRENT = "bridge"  # this tree's
MAX_RATIO = 1.05    # issue 17: CPU per request within 5% of the baseline's, or better


# ---------------------------------------------------------------- the tree

def make_worktree(rev: str) -> Path:
    """``git worktree add --detach`` of rev into a new temp dir; remove it with remove_worktree."""
    path = Path(tempfile.mkdtemp(prefix="bridge-baseline-"))
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        path.rmdir()
        raise RuntimeError(f"git worktree add {rev} failed: {out.stderr.strip()}")
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                   capture_output=True, text=True, timeout=120)


def check_tree(bridge: Bridge) -> dict:
    """The tree's commit and where its server imports ``bridge`` from; refuses a package from elsewhere."""
    module = bridge.module_path()
    if not module.is_relative_to(bridge.repo.resolve()):
        raise RuntimeError(f"{bridge.name} imports bridge from {module}, not from its tree {bridge.repo}")
    return {"tree": str(bridge.repo), "git": git_rev(bridge.repo), "bridge_module": str(module)}


# ---------------------------------------------------------------- the order of runs

def run_order(targets: list[Target], rounds: int) -> list[tuple[Target, int | None]]:
    """Each target with its round (None: measured once). The baseline and this tree alternate where
    the baseline stands: round 1 baseline then current, round 2 current then baseline, and so on."""
    pair = [t for t in targets if t.name in (NAME, CURRENT)]
    if len(pair) < 2:
        return [(t, None) for t in targets]
    order: list[tuple[Target, int | None]] = []
    for t in targets:
        if t.name == NAME:
            for i in range(rounds):
                order += [(p, i + 1) for p in (pair if i % 2 == 0 else pair[::-1])]
        elif t not in pair:
            order.append((t, None))
    return order


# ---------------------------------------------------------------- the verdict

def _pooled_cpu_ms(runs: list[dict]) -> float | None:
    answers = sum(r.get("ok", 0) + r.get("errors", 0) for r in runs)
    return sum(r["cpu_s"] for r in runs) * 1000 / answers if answers else None


def _rows_of(results: dict) -> Iterable[tuple[str, str, list[dict]]]:
    """(scenario, concurrency label, runs) for every canned and paced scenario the run measured."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results["runs"]:
        load = f"c={r['concurrency']}" if "concurrency" in r else "probe"  # skipped: answered no 200
        groups.setdefault((r["scenario"], load), []).append(r)
    for r in results.get("paced", []):
        groups.setdefault((r["scenario"], "paced"), []).append(r)
    for (scenario, label), runs in groups.items():
        yield scenario, label, runs


def compare(results: dict) -> list[dict]:
    """Per scenario and concurrency: each tree's CPU ms per request (pooled and per round), the ratio
    current/baseline and PASS (<= 1.05) / FAIL, or N/A when either side has no complete run."""
    rows = []
    for scenario, label, runs in _rows_of(results):
        sides = {name: [r for r in runs if r["target"] == name] for name in (NAME, CURRENT)}
        if not any(sides.values()):
            continue
        ok = {name: [r for r in rs if r.get("status") == "ok"] for name, rs in sides.items()}
        complete = all(len(ok[n]) == len(sides[n]) for n in sides)
        base, cur = (_pooled_cpu_ms(ok[n]) if complete else None for n in (NAME, CURRENT))
        ratio = cur / base if base and cur is not None else None
        ticks = min(round(sum(r["cpu_s"] for r in ok[n]) * CLK_TCK) for n in ok)
        rows.append({"scenario": scenario, "load": label, "baseline_cpu_ms": base, "current_cpu_ms": cur,
                     "cpu_ticks": ticks,
                     "baseline_rounds": [r.get("cpu_ms_per_req") for r in ok[NAME]],
                     "current_rounds": [r.get("cpu_ms_per_req") for r in ok[CURRENT]], "ratio": ratio,
                     "result": "N/A" if ratio is None else "PASS" if ratio <= MAX_RATIO else "FAIL"})
    return rows


def render(rows: list[dict], base: dict, current_git: str) -> str:
    """The comparison table and its one-line verdict; ``base`` is the baseline's meta (check_tree)."""
    def rounds(values: list) -> str:
        return " ".join(fmt(v) for v in values)

    head = "\n".join([
        f"Baseline {base.get('git', '?')} ({base.get('tree', '?')}) vs current {current_git}",
        f"CPU ms per request (per stream when paced), pooled over the rounds; PASS when current/baseline <= "
        f"{MAX_RATIO:.2f}.",
        f"ticks: CPU clock ticks (1/{CLK_TCK} s) behind the side with fewer; a run's CPU is exact to about a "
        f"tick per process, so rows under ~200 ticks are coarse for a 5% verdict."])
    body = table(["scenario", "load", "", "baseline", "rounds", "current", "rounds", "cur/base", "ticks", "verdict"],
                 [[r["scenario"], r["load"], "", fmt(r["baseline_cpu_ms"]), rounds(r["baseline_rounds"]),
                   fmt(r["current_cpu_ms"]), rounds(r["current_rounds"]), fmt(r["ratio"], "{:.3f}"),
                   str(r["cpu_ticks"]), r["result"]] for r in rows])
    worst = max((r["ratio"] for r in rows if r["ratio"] is not None), default=None)
    verdict = "no scenario compared" if not rows else \
        f"worst ratio {fmt(worst, '{:.3f}')}; " + ("every scenario PASS" if all(r["result"] == "PASS" for r in rows)
                                                  else "not every scenario PASS")
    return "\n".join([head, body, verdict])
