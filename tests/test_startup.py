"""Startup of the real server (SPEC §1, §2, §7): every way of starting it, with good and broken settings.

Each test starts its own process (repo as cwd, except where a test needs to be away from
gunicorn.conf.py), with os.environ minus CODER_* plus its own settings, on a free loopback port,
and stops it with SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.harness import REPO, GatewayProcess, free_port
from tests.sdk_calls import anthropic_client, call_anthropic, call_openai, load_fixtures, openai_client

EXIT_TIMEOUT = 30.0  # a broken configuration must stop the server well within this

ANTHROPIC_REQUEST = dict(load_fixtures("anthropic"))["anthropic/simple_text"]["request"]
OPENAI_REQUEST = dict(load_fixtures("openai_chat"))["openai_chat/simple_text"]["request"]
ANTHROPIC_ANSWER = dict(load_fixtures("anthropic"))["anthropic/simple_text"]["blocking"]["body"]["content"][0]["text"]
OPENAI_ANSWER = dict(load_fixtures("openai_chat"))["openai_chat/simple_text"]["blocking"]["body"]["choices"][0]["message"]["content"]

# Secrets only these tests use, so finding one in output can only come from this file's processes.
YAML_KEY = "sk-ant-yaml-test-0f1e2d3c4b5a69788796"
FLAG_KEY = "sk-flag-test-a1b2c3d4e5f60718293a"
INDEXED_KEY = "sk-indexed-test-77aa88bb99cc00dd11ee"
COPILOT_KEY = "ghu_copilottest0123456789abcdefABCDEF"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYtest"
SECRETS = [OPENAI_KEY, ANTHROPIC_KEY, YAML_KEY, FLAG_KEY, INDEXED_KEY, COPILOT_KEY, AWS_SECRET]

PYTHON = sys.executable
GUNICORN_CONF = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bridge.wsgi:app"]
GUNICORN_PLAIN = [PYTHON, "-m", "gunicorn", "-k", "gevent", "bridge.wsgi:app"]
BRIDGE_SERVER = [PYTHON, "-m", "bridge", "server"]


# ---------------------------------------------------------------- processes

def build_env(settings: dict[str, str], home: Path, cwd: Path) -> dict[str, str]:
    """os.environ minus CODER_* (and variables that would change gunicorn's or the gateway's
    behaviour), plus ``settings``. HOME is private: plain gunicorn puts its control socket there."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CODER_") and key not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "BRIDGE_WORKER_CONNECTIONS")}
    env["HOME"] = str(home)
    if cwd != REPO:  # away from the repo, bridge is importable through PYTHONPATH (as if installed)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


class Server(GatewayProcess):
    """GatewayProcess for any command line: ``argv`` gets ``bind_flag 127.0.0.1:PORT`` appended;
    ``cwd`` defaults to the repo."""

    def __init__(self, argv: list[str], settings: dict[str, str], tmp: Path, *, cwd: Path = REPO,
                 bind_flag: str = "--bind", workers: int | None = 1) -> None:
        super().__init__(settings, tmp / f"server-{time.monotonic_ns()}.log", workers=workers or 0)
        self.argv = argv
        self.cwd = cwd
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.bind_flag = bind_flag
        self.worker_count = workers

    def command(self) -> list[str]:
        extra = [self.bind_flag, f"127.0.0.1:{self.port}"]
        if self.worker_count:
            extra += ["--workers", str(self.worker_count)]
        return [*self.argv, *extra]

    def process_env(self) -> dict[str, str]:
        return build_env(self.env, self.home, self.cwd)

    def stop(self) -> None:
        super().stop()
        assert self.process is None or self.process.returncode == 0, (
            f"the server did not stop cleanly on SIGTERM (exit {self.process.returncode}):\n{self.log()}")


def run_to_exit(argv: list[str], settings: dict[str, str], tmp: Path, *, cwd: Path = REPO) -> tuple[int, str, str]:
    """Run a command that is expected to stop by itself; (exit code, stdout, stderr).
    Fails the test (after SIGTERM, then SIGKILL) when it is still running after EXIT_TIMEOUT."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    out_path, err_path = tmp / f"out-{time.monotonic_ns()}", tmp / f"err-{time.monotonic_ns()}"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(argv, cwd=cwd, env=build_env(settings, home, cwd),
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            pytest.fail(f"{argv} still running after {EXIT_TIMEOUT}s:\n{out_path.read_text(errors='replace')}"
                        f"{err_path.read_text(errors='replace')}")
    return process.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")


def assert_no_secret(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output, f"a secret ({secret[:6]}...) appears in the output:\n{output}"


def base_settings(database: Path) -> dict[str, str]:
    return {"CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}"}


# ---------------------------------------------------------------- a broken configuration stops startup

BROKEN = {
    "unknown type": ({"CODER_AIBRIDGE_PROVIDER_0_TYPE": "foo", "CODER_AIBRIDGE_PROVIDER_0_KEY": INDEXED_KEY},
                     "CODER_AIBRIDGE_PROVIDER_0_TYPE"),
    "bad retention": ({"CODER_AIBRIDGE_RETENTION": "forever"}, "CODER_AIBRIDGE_RETENTION"),
    "indices not contiguous": ({"CODER_AIBRIDGE_PROVIDER_0_TYPE": "openai", "CODER_AIBRIDGE_PROVIDER_0_KEY": INDEXED_KEY,
                                "CODER_AIBRIDGE_PROVIDER_2_TYPE": "anthropic", "CODER_AIBRIDGE_PROVIDER_2_NAME": "two"},
                               "CODER_AIBRIDGE_PROVIDER_"),
    "key on copilot": ({"CODER_AIBRIDGE_PROVIDER_0_TYPE": "copilot", "CODER_AIBRIDGE_PROVIDER_0_KEY": COPILOT_KEY},
                       "CODER_AIBRIDGE_PROVIDER_0_KEY"),
    "bad boolean": ({"CODER_AIBRIDGE_ENABLED": "maybe"}, "CODER_AIBRIDGE_ENABLED"),
}


def _naming_lines(output: str, variable: str) -> set[str]:
    return {line.strip() for line in output.splitlines() if variable in line}


_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+', re.MULTILINE)


def _frames_in_bridge(output: str) -> list[str]:
    """Traceback frames in bridge's own code, by file under this checkout's package: where the
    checkout lives (a clone named bridge/, a virtualenv inside it) cannot match by accident."""
    package = REPO / "bridge"
    return [path for path in _FRAME.findall(output) if Path(path).resolve().is_relative_to(package)]


def _traceback_exceptions(output: str) -> list[str]:
    """The exception line that ends each traceback in ``output``. Other processes write to the same
    stream meanwhile: gunicorn's own log lines (starting with "[") and the other workers' one-line
    configuration errors (starting with the variable's name) may land inside a traceback."""
    return [next((line for line in block.splitlines()
                  if line and not line[0].isspace() and line[0] != "[" and not line.startswith("CODER_")), "")
            for block in output.split("Traceback (most recent call last):")[1:]]


@pytest.mark.parametrize("how", ["gunicorn -c gunicorn.conf.py", "gunicorn -k gevent (no conf file)"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_setting_stops_gunicorn_with_one_line_naming_it(case, how, tmp_path, upstream):
    settings, variable = BROKEN[case]
    env = {**base_settings(tmp_path / "bridge.db"), "CODER_AIBRIDGE_ENABLED": "true",
           "CODER_AIBRIDGE_OPENAI_KEY": OPENAI_KEY, "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{upstream.url}/v1/",
           "CODER_AIBRIDGE_ANTHROPIC_KEY": ANTHROPIC_KEY, **settings}
    port = ["--bind", f"127.0.0.1:{free_port()}"]
    if how.startswith("gunicorn -c"):
        code, out, err = run_to_exit([*GUNICORN_CONF, *port], env, tmp_path)
    else:
        # Away from the repo: gunicorn would otherwise load ./gunicorn.conf.py by itself. The worker
        # fails to import the app, prints the line and exits 3; the master then stops.
        away = tmp_path / "elsewhere"
        away.mkdir()
        code, out, err = run_to_exit([*GUNICORN_PLAIN, *port], env, tmp_path, cwd=away)
    output = out + err
    assert code != 0, output
    if how.startswith("gunicorn -k"):
        assert code == 3, output  # gunicorn's "worker failed to boot": the master stopped, did not respawn
    lines = _naming_lines(output, variable)
    assert len(lines) == 1, f"expected one line naming {variable}, got {lines}:\n{output}"
    assert "Traceback" not in output, output
    assert_no_secret(output)


def test_broken_setting_stops_the_plain_gunicorn_master_even_with_several_workers(tmp_path):
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**base_settings(tmp_path / "bridge.db"), "CODER_AIBRIDGE_RETENTION": "forever"}
    code, out, err = run_to_exit([*GUNICORN_PLAIN, "--bind", f"127.0.0.1:{free_port()}", "--workers", "3"],
                                 env, tmp_path, cwd=away)
    output = out + err
    assert code != 0, output
    assert len(_naming_lines(output, "CODER_AIBRIDGE_RETENTION")) == 1, output
    # Each worker prints the line; when a second worker exits 3 while the master is already halting,
    # gunicorn itself may print a HaltServer traceback (gunicorn/arbiter.py halt -> stop ->
    # reap_workers). That is gunicorn's; nothing of bridge's may be in a traceback.
    assert _frames_in_bridge(output) == [], output
    assert all(line.startswith("gunicorn.errors.HaltServer") for line in _traceback_exceptions(output)), output
    assert "bridge.config" not in output, output


def test_bridge_server_with_a_bad_flag_exits_1_with_an_error_line(tmp_path):
    code, out, err = run_to_exit([*BRIDGE_SERVER, "--aibridge-retention", "bogus",
                                  "--aibridge-openai-key", FLAG_KEY], base_settings(tmp_path / "bridge.db"), tmp_path)
    assert code == 1, out + err
    error_lines = [line for line in err.splitlines() if line.startswith("error: CODER_AIBRIDGE_RETENTION")]
    assert len(error_lines) == 1, err
    assert "bogus" in error_lines[0]
    assert "Traceback" not in out + err
    assert_no_secret(out + err)


def test_bridge_server_with_a_bad_env_value_exits_1_naming_it(tmp_path):
    settings = {**base_settings(tmp_path / "bridge.db"), "CODER_AIBRIDGE_PROVIDER_0_TYPE": "foo"}
    code, out, err = run_to_exit([*BRIDGE_SERVER], settings, tmp_path)
    assert code == 1, out + err
    assert [line for line in err.splitlines() if line.startswith("error: CODER_AIBRIDGE_PROVIDER_0_TYPE")], err
    assert "Traceback" not in out + err


# ---------------------------------------------------------------- python -m bridge server

def _openai_through(server: Server, token: str, provider: str = "openai") -> dict:
    # Clients are closed after use: an idle keep-alive connection would hold up the server's stop.
    with openai_client(f"{server.base(provider)}/v1", token, "openai_chat/simple_text") as client:
        return call_openai(client, OPENAI_REQUEST, stream=False)


def _anthropic_through(server: Server, token: str, provider: str, stream: bool) -> dict:
    with anthropic_client(server.base(provider), token, "anthropic/simple_text") as client:
        return call_anthropic(client, ANTHROPIC_REQUEST, stream=stream)


def _anthropic_text(result: dict) -> str:
    if "message" in result:
        return "".join(block.get("text", "") for block in result["message"]["content"])
    return "".join(e["delta"].get("text", "") for e in result["events"] if e["type"] == "content_block_delta")


def test_bridge_server_with_flags_starts_and_relays(tmp_path, upstream, identities, database):
    server = Server([*BRIDGE_SERVER, "--aibridge-enabled", "--aibridge-openai-key", FLAG_KEY,
                     "--aibridge-openai-base-url", f"{upstream.url}/v1/"],
                    base_settings(database), tmp_path, bind_flag="--http-address")
    try:
        server.start()
        result = _openai_through(server, identities.alice)
        assert "error" not in result, result
        assert result["completion"]["choices"][0]["message"]["content"] == OPENAI_ANSWER
        sent = upstream.requests[-1]
        assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
        assert sent.headers["authorization"] == f"Bearer {FLAG_KEY}"
    finally:
        server.stop()
    assert_no_secret(server.log())
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("env_value, flag, enabled", [
    ("false", "--aibridge-enabled=true", True),
    ("false", "--aibridge-enabled", True),
    ("true", "--aibridge-enabled=false", False),
])
def test_a_flag_beats_the_environment(env_value, flag, enabled, tmp_path, upstream, identities, database):
    settings = {**base_settings(database), "CODER_AIBRIDGE_ENABLED": env_value,
                "CODER_AIBRIDGE_OPENAI_KEY": OPENAI_KEY, "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{upstream.url}/v1/"}
    server = Server([*BRIDGE_SERVER, flag], settings, tmp_path, bind_flag="--http-address")
    try:
        server.start()
        result = _openai_through(server, identities.alice)
        if enabled:
            assert "error" not in result, result
            assert result["completion"]["choices"][0]["message"]["content"] == OPENAI_ANSWER
        else:
            name, status, body = result["error"]
            assert (name, status) == ("NotFoundError", 404), result
            assert "AI Gateway is disabled" in str(body)
    finally:
        server.stop()
    assert_no_secret(server.log())


def _yaml_config(path: Path, upstream_url: str, enabled: bool) -> Path:
    path.write_text(yaml.safe_dump({"aibridge": {
        "enabled": enabled,
        "retention": "90d",
        "providers": [
            {"type": "anthropic", "name": "anthropic-yaml", "key": YAML_KEY, "base_url": f"{upstream_url}/yaml/anthropic"},
            {"type": "openai", "name": "openai-yaml", "key": INDEXED_KEY, "base_url": f"{upstream_url}/yaml/openai/v1/"},
        ],
    }}))
    return path


@pytest.mark.parametrize("how", ["--config", "CODER_CONFIG_PATH", "env beats YAML"])
def test_bridge_server_with_a_yaml_config(how, tmp_path, upstream, identities, database):
    config = _yaml_config(tmp_path / "bridge.yaml", upstream.url, enabled=how != "env beats YAML")
    settings = base_settings(database)
    argv = [*BRIDGE_SERVER]
    if how == "CODER_CONFIG_PATH":
        settings["CODER_CONFIG_PATH"] = str(config)
    else:
        argv += ["--config", str(config)]
    if how == "env beats YAML":
        settings["CODER_AIBRIDGE_ENABLED"] = "true"
    server = Server(argv, settings, tmp_path, bind_flag="--http-address")
    try:
        server.start()
        result = _anthropic_through(server, identities.alice, "anthropic-yaml", stream=True)
        assert "error" not in result, result
        assert _anthropic_text(result) == ANTHROPIC_ANSWER
        sent = upstream.requests[-1]
        assert (sent.method, sent.path) == ("POST", "/yaml/anthropic/v1/messages")
        assert sent.headers["x-api-key"] == YAML_KEY

        result = _openai_through(server, identities.alice, "openai-yaml")
        assert "error" not in result, result
        sent = upstream.requests[-1]
        assert sent.path == "/yaml/openai/v1/chat/completions"
        assert sent.headers["authorization"] == f"Bearer {INDEXED_KEY}"
    finally:
        server.stop()
    assert_no_secret(server.log())


def test_bridge_server_rejects_a_broken_yaml_file_naming_it(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("aibridge:\n  retention: forever\n")
    code, out, err = run_to_exit([*BRIDGE_SERVER, "--config", str(config)], base_settings(tmp_path / "bridge.db"), tmp_path)
    assert code == 1, out + err
    assert [line for line in err.splitlines() if line.startswith("error:") and "retention" in line.lower()], err
    assert "Traceback" not in out + err


# ---------------------------------------------------------------- plain gunicorn serves too

@pytest.mark.parametrize("stream", [False, True])
def test_plain_gunicorn_without_a_conf_file_serves(stream, tmp_path, upstream, identities, database):
    away = tmp_path / "elsewhere"
    away.mkdir()
    settings = {**base_settings(database), "CODER_AIBRIDGE_ENABLED": "true",
                "CODER_AIBRIDGE_ANTHROPIC_KEY": ANTHROPIC_KEY, "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": f"{upstream.url}/"}
    server = Server(GUNICORN_PLAIN, settings, tmp_path, cwd=away)
    try:
        server.start()
        result = _anthropic_through(server, identities.alice, "anthropic", stream=stream)
        assert "error" not in result, result
        assert _anthropic_text(result) == ANTHROPIC_ANSWER
        assert upstream.requests[-1].headers["x-api-key"] == ANTHROPIC_KEY
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert "Traceback" not in server.log()
    assert_no_secret(server.log())


# ---------------------------------------------------------------- secrets stay out of startup output

def test_no_secret_in_startup_output(tmp_path, upstream, identities, database):
    settings = {
        **base_settings(database),
        "CODER_AIBRIDGE_ENABLED": "true",
        "CODER_AIBRIDGE_OPENAI_KEY": OPENAI_KEY, "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{upstream.url}/v1/",
        "CODER_AIBRIDGE_ANTHROPIC_KEY": ANTHROPIC_KEY, "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": f"{upstream.url}/",
        "CODER_AIBRIDGE_PROVIDER_0_TYPE": "openai", "CODER_AIBRIDGE_PROVIDER_0_NAME": "team-x",
        "CODER_AIBRIDGE_PROVIDER_0_KEY": INDEXED_KEY, "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": f"{upstream.url}/x/v1/",
        "CODER_AIBRIDGE_PROVIDER_1_TYPE": "anthropic", "CODER_AIBRIDGE_PROVIDER_1_NAME": "bedrock-x",
        "CODER_AIBRIDGE_PROVIDER_1_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_PROVIDER_1_BEDROCK_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
        "CODER_AIBRIDGE_PROVIDER_1_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
        "CODER_AIBRIDGE_PROVIDER_1_BEDROCK_MODEL": "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "CODER_AIBRIDGE_PROVIDER_1_BEDROCK_BASE_URL": f"{upstream.url}/bedrock",
        "CODER_AIBRIDGE_PROVIDER_2_TYPE": "openai", "CODER_AIBRIDGE_PROVIDER_2_NAME": "flagged",
        "CODER_AIBRIDGE_PROVIDER_2_KEY": FLAG_KEY,
        "CODER_AIBRIDGE_PROVIDER_2_TPYE": "typo",  # an unknown suffix: a warning naming it, nothing secret
    }
    for argv, bind_flag in [(GUNICORN_CONF, "--bind"), (BRIDGE_SERVER, "--http-address")]:
        server = Server(argv, settings, tmp_path, bind_flag=bind_flag)
        try:
            server.start()
            result = _openai_through(server, identities.alice)  # a request, so workers log their first work too
            assert "error" not in result, result
        finally:
            server.stop()
        output = server.log()
        assert "CODER_AIBRIDGE_PROVIDER_2_TPYE" in output, output  # the startup warnings were captured
        assert "Traceback" not in output, output
        assert_no_secret(output)
        assert identities.alice not in output


# ---------------------------------------------------------------- stopping

def test_sigterm_with_an_idle_keep_alive_connection_stops_promptly(tmp_path, database):
    server = Server(GUNICORN_CONF, base_settings(database), tmp_path).start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        # The connection stays open and idle, as an SDK's pool keeps it.
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {time.monotonic() - started:.0f}s after SIGTERM with one idle connection open")
    finally:
        connection.close()
        server.stop()
