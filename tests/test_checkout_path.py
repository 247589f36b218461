"""The suite passes wherever the repo is checked out (issue 16).

A clone is named ``bridge`` by default and its virtualenv lives inside it, so every path in a
traceback (gunicorn's own, under ``.venv``) then contains ``bridge/``. This runs the startup tests
in such a checkout: a copy of this working tree (tracked files as they are now, plus new files not
ignored: a ``git clone`` would test only what was committed) in ``<tmp>/bridge``, with this
interpreter's virtualenv reached through ``<tmp>/bridge/.venv``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO

RUN_TIMEOUT = 240  # seconds for the copied startup tests (about 30 s on a quiet machine)


def _working_tree_files() -> list[str]:
    """Tracked files (as modified, deleted ones left out) and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True, timeout=30).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def _copy_checkout(destination: Path) -> None:
    for name in _working_tree_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def _interpreter_inside(checkout: Path) -> str:
    """This interpreter, reached through ``checkout/.venv`` when it runs in a virtualenv (its
    installed packages then live under the checkout's path, as in a user's clone)."""
    if sys.prefix == sys.base_prefix:
        return sys.executable
    (checkout / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return str(checkout / ".venv" / Path(sys.executable).relative_to(sys.prefix))


def test_startup_tests_pass_in_a_checkout_named_bridge(tmp_path):
    checkout = tmp_path / "bridge"
    _copy_checkout(checkout)
    python = _interpreter_inside(checkout)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH" and not key.startswith("PYTEST_")}

    # The copy is what runs: its own bridge package and tests, and gunicorn under its path.
    where = subprocess.run([python, "-c", "import bridge, gunicorn, tests.harness as h; "
                                          "print(bridge.__file__, gunicorn.__file__, h.REPO, sep='\\n')"],
                           cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    bridge_file, gunicorn_file, repo = where.stdout.split()
    assert Path(bridge_file) == checkout / "bridge" / "__init__.py"
    assert Path(repo) == checkout
    if python != sys.executable:
        assert Path(gunicorn_file).is_relative_to(checkout / ".venv"), gunicorn_file

    run = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_startup.py",
                          "-k", "broken_setting"],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    summary = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode == 0, summary
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 2, summary
    assert not re.search(r"\d+ (failed|error|skipped|xfailed)", run.stdout), summary
