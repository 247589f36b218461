"""Socket calls on the hot path."""

from __future__ import annotations

import select
import socket

from gevent import monkey

_native_poll = monkey.get_original("select", "poll")


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)``, cheaper for what goes out in one send (nearly every write here): gevent's
    sendall first asks the kernel for the socket's send-buffer size, a syscall on every call."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def readable_now(sock: socket.socket) -> bool:
    """Whether bytes (or the peer's end) wait on ``sock``: one zero-timeout poll() on the real
    descriptor, not gevent's Python-level one."""
    poller = _native_poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))
