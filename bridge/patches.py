"""Every process-wide patch, installed from here and nowhere else.

Each one replaces something another library (or the interpreter) looks up at call time, for a
cost measured in profiles of the gateway. The replacements live next to what they serve; this
module only installs them. Those touching private APIs are pinned below the libraries' next
major version in requirements.txt, and tests/test_patches.py fails if a patched API changes shape.

The patches, what installs each, and why (measured; commit or issue in brackets):

- gunicorn ``http.wsgi.Response`` -> ``bridge.worker.OneWriteResponse``, by the worker's
  init_process: a response's head goes out with its first body bytes, one socket write fewer per
  answer; on loopback each send cost about as much as the rest of a call's Python work [f4a6928].
- gunicorn ``http.parser.SocketUnreader`` -> ``bridge.worker._HeadTimedUnreader``, by the worker's
  init_process: a request head is due within the header timeout from its first byte; clients
  sending a head one line at a time held every connection of a worker [issue 15].
- gunicorn ``util.http_date`` -> ``bridge.worker._DateHeader``, by the worker's init_process: the
  Date header made once a second; the email package's formatting was 1.6% of a worker's CPU at
  concurrency 16 [9af4561].
- ``http.client.parse_headers`` -> ``bridge.response_head.parse_headers``, by the upstream client
  on its first use in a worker: plain upstream heads parsed by one regular expression; the email
  feed parser was about 4% of the gateway's CPU [fababee].
- prometheus_client ``values.ValueClass`` -> ``MultiProcessValue`` with a cached pid, by
  bridge.metrics at import (multiprocess mode only): the pid is refreshed at fork instead of a
  dozen getpid() syscalls per request [fababee].
- ``gc.freeze()`` of the loaded app, by gunicorn_conf's post_worker_init: full collections no
  longer walk the app's objects; single calls of 30-40 ms at concurrency 1 fell to about 10 ms at
  most [18ac53e].

Not here: gevent's ``monkey.patch_all()``, gevent's public contract, run by gunicorn's gevent worker
and first thing in bridge/wsgi.py (it must precede every other import).

Each function imports what it patches when called, so that importing this module (gunicorn's
master does, through the worker class, before the workers patch the standard library) loads none
of them.
"""

from __future__ import annotations

import gc
from typing import Callable


def gunicorn_worker(response: type, socket_unreader: type, http_date: Callable[..., str]) -> None:
    """gunicorn builds each HTTP/1 response with ``wsgi.create()`` and each parser's socket reader
    with the classes of their modules, and formats the Date header with ``util.http_date()``: the
    three are looked up in those modules on every use. Call in the worker, before it serves."""
    from gunicorn import util
    from gunicorn.http import parser, wsgi

    wsgi.Response = response
    parser.SocketUnreader = socket_unreader
    util.http_date = http_date


def upstream_response_heads() -> None:
    """http.client reads every response head through ``parse_headers``, looked up by its module
    name on each response (so urllib3 and requests get it too). Idempotent."""
    import http.client

    from bridge.response_head import parse_headers

    http.client.parse_headers = parse_headers


def metrics_process_identifier(process_identifier: Callable[[], int]) -> None:
    """prometheus_client's multiprocess values name their files by ``process_identifier()``, called
    on every increment (``os.getpid()`` by default); metrics made after this use the given one."""
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)


def freeze_loaded_objects() -> None:
    """Move every object alive now out of the garbage collector's view (call once the app is
    loaded: its objects live as long as the worker)."""
    gc.collect()
    gc.freeze()
