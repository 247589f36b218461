"""The process-wide patches (bridge/patches.py): installed from that module only, and every API they
replace still has the shape they were written against. A failure here after a library upgrade means
a patch must be revisited (or dropped) before the upgrade ships; it must not be silenced."""

from __future__ import annotations

import ast
import gc
import http.client
import importlib.util
import inspect
import pathlib
from types import SimpleNamespace

import pytest
from gunicorn import util
from gunicorn.http import parser, unreader, wsgi
from prometheus_client import metrics as prometheus_metrics
from prometheus_client import values

from bridge import patches, response_head, worker

BRIDGE = pathlib.Path(__file__).resolve().parent.parent / "bridge"


def _names_looked_up(function) -> set[str]:
    """The global and attribute names a function's code looks up when it runs."""
    return set(function.__code__.co_names)


def _parameters(function) -> list[tuple[str, object]]:
    """Names and defaults of the parameters (annotations aside)."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


# --- gunicorn ------------------------------------------------------------------------------------

def test_gunicorn_builds_responses_with_the_class_its_wsgi_module_holds():
    assert "Response" in _names_looked_up(wsgi.create)  # looked up when called, not bound at import
    assert wsgi.create.__globals__ is vars(wsgi)
    assert _parameters(wsgi.Response.__init__) == [("self", inspect.Parameter.empty), ("req", inspect.Parameter.empty),
                                                   ("sock", inspect.Parameter.empty), ("cfg", inspect.Parameter.empty)]


@pytest.mark.parametrize("name", ["send_headers", "_emit_body", "close", "sendfile"])
def test_one_write_response_overrides_methods_gunicorn_has_with_the_same_signatures(name):
    assert name in vars(worker.OneWriteResponse)
    stock = getattr(wsgi.Response, name, None)
    assert callable(stock), f"gunicorn's Response has no {name}() any more"
    assert _parameters(getattr(worker.OneWriteResponse, name)) == _parameters(stock)


def test_gunicorn_response_writes_through_the_methods_one_write_response_replaces():
    # write() puts its head out through send_headers() and its body through _emit_body(); close()
    # and sendfile() send the head themselves; the head is made by default_headers().
    assert {"send_headers", "_emit_body"} <= _names_looked_up(wsgi.Response.write)
    assert {"send_headers", "headers_sent"} <= _names_looked_up(wsgi.Response.close)
    assert "send_headers" in _names_looked_up(wsgi.Response.sendfile)
    assert callable(wsgi.Response.default_headers)
    response = wsgi.Response(SimpleNamespace(), SimpleNamespace(), SimpleNamespace())
    for attribute in ("headers", "headers_sent", "chunked", "sock"):  # what OneWriteResponse reads and sets
        assert hasattr(response, attribute), attribute


def test_gunicorn_parser_makes_its_socket_reader_from_its_module_attribute():
    assert "SocketUnreader" in _names_looked_up(parser.Parser.__init__)
    assert parser.Parser.__init__.__globals__ is vars(parser)
    assert parser.SocketUnreader is unreader.SocketUnreader or parser.SocketUnreader.__module__ == "bridge.worker"
    assert _parameters(unreader.SocketUnreader.chunk) == [("self", inspect.Parameter.empty), ("size_hint", None)]
    assert "sock" in _names_looked_up(unreader.SocketUnreader.__init__)  # the head-timed reader reads self.sock


def test_gunicorn_formats_the_date_header_with_util_http_date():
    assert {"util", "http_date"} <= _names_looked_up(wsgi.Response.default_headers)
    assert _parameters(worker._STOCK_HTTP_DATE) == [("timestamp", None)]
    assert worker._STOCK_HTTP_DATE.__module__ == "gunicorn.util"


# --- http.client (the Python version, not a pin) -------------------------------------------------

def test_http_client_reads_response_heads_through_parse_headers_looked_up_at_call_time():
    assert "parse_headers" in _names_looked_up(http.client.HTTPResponse.begin)
    assert http.client.HTTPResponse.begin.__globals__ is vars(http.client)
    assert callable(http.client._read_headers)
    assert _parameters(http.client._read_headers) == [("fp", inspect.Parameter.empty)]
    assert inspect.signature(response_head.parse_headers).parameters.keys() == \
        inspect.signature(http.client.parse_headers).parameters.keys() == {"fp", "_class"}
    assert http.client.HTTPMessage()._headers == []  # the email.message.Message field parse_headers fills


# --- prometheus_client ---------------------------------------------------------------------------

def test_prometheus_metrics_take_their_value_class_from_values_at_creation():
    assert "values" in vars(prometheus_metrics) and prometheus_metrics.values is values
    assert "ValueClass" in _names_looked_up(prometheus_metrics.Counter._metric_init)
    assert "ValueClass" in _names_looked_up(prometheus_metrics.Gauge._metric_init)
    assert "ValueClass" in _names_looked_up(prometheus_metrics.Histogram._metric_init)
    assert list(inspect.signature(values.MultiProcessValue).parameters) == ["process_identifier"]


# --- installing ----------------------------------------------------------------------------------

def test_installing_replaces_what_each_library_looks_up(monkeypatch):
    for module, name in ((wsgi, "Response"), (parser, "SocketUnreader"), (util, "http_date"),
                         (http.client, "parse_headers"), (values, "ValueClass")):
        monkeypatch.setattr(module, name, getattr(module, name))  # put back after the test
    date = worker._DateHeader()
    patches.gunicorn_worker(worker.OneWriteResponse, worker._HeadTimedUnreader, date)
    assert (wsgi.Response, parser.SocketUnreader, util.http_date) == (worker.OneWriteResponse,
                                                                      worker._HeadTimedUnreader, date)
    patches.upstream_response_heads()
    assert http.client.parse_headers is response_head.parse_headers
    patches.metrics_process_identifier(lambda: 4242)
    assert values.ValueClass.__name__ == "MmapedValue"


def test_freezing_moves_live_objects_out_of_the_collectors_view():
    try:
        patches.freeze_loaded_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _is_module(package: str, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # package is a module, not a package
        return False


def _foreign_module_names(tree: ast.Module) -> set[str]:
    """Names bound to modules outside bridge by a module's imports (``import x``, ``from x import y``
    where y is a module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname or alias.name.partition(".")[0] for alias in node.names
                      if not alias.name.startswith("bridge")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not node.module.startswith("bridge"):
            names |= {alias.asname or alias.name for alias in node.names if _is_module(node.module, alias.name)}
    return names


def test_no_module_but_patches_assigns_into_another_librarys_module():
    """``lib.attr = ...`` (or setattr(lib, ...)) on an imported library outside bridge/patches.py."""
    found = []
    for path in sorted(BRIDGE.rglob("*.py")):
        if path.name == "patches.py" and path.parent == BRIDGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        foreign = _foreign_module_names(tree)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in foreign:
                found.append(f"{path.relative_to(BRIDGE.parent)}:{node.lineno}: {ast.unparse(node)}")
            for target in targets:
                base = target
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in foreign:
                    found.append(f"{path.relative_to(BRIDGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "patch another library only from bridge/patches.py:\n" + "\n".join(found)


def test_patched_libraries_are_pinned_below_their_next_major_version():
    requirements = (BRIDGE.parent / "requirements.txt").read_text()
    pins = {line.split("#")[0].split(">=")[0].split("[")[0].strip(): line.split("#")[0]
            for line in requirements.splitlines() if line.strip() and not line.startswith("#")}
    assert ",<28" in pins["gunicorn"], pins["gunicorn"]
    assert ",<1" in pins["prometheus-client"], pins["prometheus-client"]
