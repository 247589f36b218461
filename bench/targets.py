"""The servers a scenario is sent to: the mock itself (direct), bridge, and LiteLLM proxy.

Every target answers ``endpoint(scenario)`` with where to send the scenario's request and how,
and ``cost_pid(scenario)``, the root of the process tree whose CPU and memory are its cost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mock import Mock
from procs import Server, free_port
from scenarios import Scenario

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LITELLM_VENV = HERE / "litellm-venv"
PROVIDER_KEYS = {"openai": "sk-mock-openai-0000", "anthropic": "sk-ant-mock-0000", "responses": "sk-mock-openai-0000"}


@dataclass
class Endpoint:
    port: int
    path: str
    headers: dict[str, str]
    body: dict


class Target:
    name = ""
    note = ""

    def endpoint(self, scenario: Scenario) -> Endpoint | None:
        raise NotImplementedError

    def cost_pid(self, scenario: Scenario) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        pass


def _client_headers(api: str, token: str) -> dict[str, str]:
    if api == "anthropic":
        return {"x-api-key": token, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {token}"}


class Direct(Target):
    """Straight to the mock: the floor every gateway adds to. Its cost is the mock's own."""

    name = "direct"

    def __init__(self, canned: Mock, paced: Mock) -> None:
        self.canned, self.paced = canned, paced

    def _mock(self, scenario: Scenario) -> Mock:
        return self.paced if scenario.kind == "paced" else self.canned

    def endpoint(self, scenario: Scenario) -> Endpoint:
        return Endpoint(self._mock(scenario).port, scenario.mock_prefix() + scenario.api_path(),
                        _client_headers(scenario.api, PROVIDER_KEYS[scenario.api]), scenario.request_body())

    def cost_pid(self, scenario: Scenario) -> int:
        return self._mock(scenario).pid


def _base_url(mock: Mock, scenario: Scenario) -> str:
    """The provider base URL for a scenario: OpenAI-style base URLs carry the version."""
    base = mock.url + scenario.mock_prefix()
    return base if scenario.api == "anthropic" else base + "v1/"


class Bridge(Target):
    """``gunicorn -c gunicorn.conf.py bridge.wsgi:app --workers 1``, one provider per scenario, a real
    gateway token from a fresh SQLite store, recording on (``budget``: with a default budget nobody reaches).

    ``repo`` is the bridge tree to run (this one by default; another checkout for a before/after
    comparison): the server and the CLI run from it with it first on PYTHONPATH, so its own
    ``bridge`` package is imported, with this interpreter (the same venv for both trees)."""

    def __init__(self, workdir: Path, scenarios: list[tuple[Scenario, Mock]], workers: int = 1,
                 structured_logging: bool = False, repo: Path = REPO, name: str = "bridge", budget: bool = False) -> None:
        self.name, self.repo = name, repo
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "bridge.db"
        self.workers = workers
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
        self.env.update({"CODER_AIBRIDGE_ENABLED": "true", "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{self.db}",
                         "PYTHONDONTWRITEBYTECODE": "1",
                         "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))})
        if structured_logging:
            self.env.update({"CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",
                             "CODER_LOGGING_JSON": str(self.dir / "bridge.jsonl")})
        for i, (scenario, mock) in enumerate(scenarios):
            api_type = "anthropic" if scenario.api == "anthropic" else "openai"
            self.env.update({f"CODER_AIBRIDGE_PROVIDER_{i}_TYPE": api_type,
                             f"CODER_AIBRIDGE_PROVIDER_{i}_NAME": scenario.name,
                             f"CODER_AIBRIDGE_PROVIDER_{i}_KEY": PROVIDER_KEYS[scenario.api],
                             f"CODER_AIBRIDGE_PROVIDER_{i}_BASE_URL": _base_url(mock, scenario)})
        self.features = {"auth": "gateway token (SQLite store)", "recording": "on",
                         "structured_logging": "on" if structured_logging else "off", "workers": workers,
                         "tree": str(repo), "budgets": "a default nobody reaches" if budget else "none"}
        self.token = self._make_token()
        if budget:  # every call checked against it, the spend of every user refreshed in the background
            self._cli("budgets", "set", "--default", "--period", "month", "--usd", "1000000000")
        self.server: Server | None = None
        self.starts = 0

    def _cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "bridge", *args, "--database-url", f"sqlite:///{self.db}"],
                             cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"python -m bridge {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def _make_token(self) -> str:
        self._cli("users", "create", "bench")
        return self._cli("tokens", "create", "bench").splitlines()[-1].strip()

    def start(self) -> "Bridge":
        self.port = free_port()
        self.starts += 1
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app",
               "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)]
        self.server = Server(self.name, cmd, self.dir / f"gunicorn-{self.starts}.log", env=self.env, cwd=self.repo)
        self.server.wait_http(f"http://127.0.0.1:{self.port}/healthz", 60)
        return self

    def restart(self) -> "Bridge":
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    def endpoint(self, scenario: Scenario) -> Endpoint:
        return Endpoint(self.port, f"/api/v2/aibridge/{scenario.name}/{scenario.api_path()}",
                        _client_headers(scenario.api, self.token), scenario.request_body())

    def cost_pid(self, scenario: Scenario) -> int:
        return self.server.pid

    def module_path(self) -> Path:
        """Where the ``bridge`` package comes from with this target's interpreter, cwd and environment."""
        out = subprocess.run([sys.executable, "-c", "import bridge; print(bridge.__file__)"], cwd=self.repo,
                             env=self.env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{self.name}: import bridge failed: {out.stderr.strip()[-500:]}")
        return Path(out.stdout.strip()).resolve()

    def records(self) -> int | None:
        """Interceptions in the store (a check that recording was really on)."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                return db.execute("SELECT count(*) FROM aibridge_interceptions").fetchone()[0]
        except sqlite3.Error:
            return None


def git_rev(tree: Path = REPO) -> str:
    """The tree's commit (git rev-parse HEAD), ``+dirty`` when its bridge/ has uncommitted changes."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "bridge"], cwd=tree, capture_output=True, text=True)
    return (out.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def litellm_version() -> str | None:
    if not litellm_available():
        return None
    out = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"], capture_output=True, text=True)
    return out.stdout.strip() or None


class LiteLLM(Target):
    """``litellm --config config.yaml --num_workers 1`` from bench/litellm-venv: master key auth, no database.
    Every scenario is a model alias whose api_base is the mock."""

    name = "litellm"
    MASTER_KEY = "sk-bench-master-key"
    _MODELS = {"openai": "openai/gpt-4o-2024-08-06", "anthropic": "anthropic/claude-sonnet-4-5-20250929",
               "responses": "openai/gpt-4.1"}

    def __init__(self, workdir: Path, scenarios: list[tuple[Scenario, Mock]]) -> None:
        self.dir = workdir / "litellm"
        self.dir.mkdir(parents=True, exist_ok=True)
        models = []
        for scenario, mock in scenarios:
            base = _base_url(mock, scenario).rstrip("/")
            models.append({"model_name": scenario.name,
                           "litellm_params": {"model": self._MODELS[scenario.api], "api_base": base,
                                              "api_key": PROVIDER_KEYS[scenario.api]}})
        config = {"model_list": models, "general_settings": {"master_key": self.MASTER_KEY},
                  "litellm_settings": {"telemetry": False}}
        (self.dir / "config.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "DATABASE_URL", "VIRTUAL_ENV"))}
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                    "DISABLE_SCHEMA_UPDATE": "True", "PYTHONDONTWRITEBYTECODE": "1"})
        cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(self.dir / "config.yaml"),
               "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"]
        self.server = Server("litellm", cmd, self.dir / "litellm.log", env=env, cwd=self.dir)
        self.server.wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", 180)

    def endpoint(self, scenario: Scenario) -> Endpoint:
        body = {**scenario.request_body(), "model": scenario.name}
        return Endpoint(self.port, "/" + scenario.api_path(),
                        {**_client_headers(scenario.api, self.MASTER_KEY), "Authorization": f"Bearer {self.MASTER_KEY}"},
                        body)

    def cost_pid(self, scenario: Scenario) -> int:
        return self.server.pid

    def stop(self) -> None:
        self.server.stop()
