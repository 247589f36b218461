"""A tiny Chrome DevTools Protocol client for the dashboard tests: Debian's headless Chromium driven
over ``--remote-debugging-pipe`` (no port, no extra package), every wait bounded.

Chromium reads commands from fd 3 and writes replies and events to fd 4, each a JSON object ended by
a NUL byte. A reader thread files replies by id and events per session; ``Page`` wraps one tab.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

CHROMIUM = "/usr/bin/chromium"
COMMAND_TIMEOUT = 15.0
WAIT_TIMEOUT = 15.0
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe"]
# Puts our two pipe ends on fds 3 and 4 of chromium without a preexec_fn (unsafe with threads).
_EXEC_WITH_PIPES = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"


class CDPError(RuntimeError):
    pass


def _high_fd(fd: int) -> int:
    """A close-on-exec copy at 10 or above (so the dup2 onto 3 and 4 never clobbers the other end)."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


class Browser:
    def __init__(self, profile_dir: Path, binary: str = CHROMIUM, window: tuple[int, int] = (1440, 1000)) -> None:
        self.profile_dir = profile_dir
        self.binary = binary
        self.window = window
        self.process: subprocess.Popen | None = None
        self.log_path = profile_dir.parent / f"{profile_dir.name}-chromium.log"
        self._lock = threading.Condition()
        self._write_lock = threading.Lock()
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []
        self._listeners: list[Callable[[dict], None]] = []
        self._closed = False

    def start(self) -> "Browser":
        to_chrome_r, to_chrome_w = (_high_fd(fd) for fd in os.pipe())
        from_chrome_r, from_chrome_w = (_high_fd(fd) for fd in os.pipe())
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, *FLAGS, f"--user-data-dir={self.profile_dir}",
                f"--window-size={self.window[0]},{self.window[1]}", "about:blank"]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_PIPES, str(to_chrome_r), str(from_chrome_w), *args],
            pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._write_fd = to_chrome_w
        self._read_fd = from_chrome_r
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        self.call("Browser.getVersion", timeout=30)  # the first answer can take a while on a cold start
        return self

    # -- transport

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                if not raw:
                    continue
                message = json.loads(raw)
                with self._lock:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._events.append(message)
                    self._lock.notify_all()
                if "id" not in message:
                    for listener in list(self._listeners):
                        listener(message)
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session_id: str | None = None) -> int:
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        data = json.dumps(message).encode() + b"\0"
        with self._write_lock:  # the reader thread answers dialogs: never interleave two messages
            while data:
                written = os.write(self._write_fd, data)
                data = data[written:]
        return message_id

    def call(self, method: str, params: dict | None = None, session_id: str | None = None,
             timeout: float = COMMAND_TIMEOUT) -> dict:
        message_id = self.send(method, params, session_id)
        deadline = time.monotonic() + timeout
        with self._lock:
            while message_id not in self._replies:
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise CDPError(f"chromium went away during {method}:\n{self.log()}")
                if remaining <= 0:
                    raise TimeoutError(f"no answer to {method} within {timeout}s")
                self._lock.wait(remaining)
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip())
        return reply.get("result", {})

    def events(self, session_id: str | None, method: str) -> list[dict]:
        with self._lock:
            return [e["params"] for e in self._events if e.get("method") == method and e.get("sessionId") == session_id]

    def wait_event(self, session_id: str | None, method: str, predicate: Callable[[dict], bool] = lambda _: True,
                   since: int = 0, timeout: float = WAIT_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for event in self._events[since:]:
                    if event.get("method") == method and event.get("sessionId") == session_id and predicate(event["params"]):
                        return event["params"]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise TimeoutError(f"no {method} event within {timeout}s")
                self._lock.wait(remaining)

    def event_mark(self) -> int:
        with self._lock:
            return len(self._events)

    def new_page(self, fresh_context: bool = False) -> "Page":
        """A new tab; ``fresh_context``: in a browser context of its own (no storage shared with other tabs)."""
        context = self.call("Target.createBrowserContext")["browserContextId"] if fresh_context else None
        target = self.call("Target.createTarget", {"url": "about:blank", **({"browserContextId": context} if context else {})})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, target, session, context)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.call("Browser.close", timeout=5)
            except (CDPError, TimeoutError, OSError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=5)
        for fd in (self._write_fd, self._read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reader.join(timeout=5)
        self._log.close()
        self.process = None


class Page:
    """One tab: navigate, evaluate, wait for a condition, click, type, take screenshots."""

    def __init__(self, browser: Browser, target_id: str, session_id: str, context_id: str | None = None) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.context_id = context_id
        browser._listeners.append(self._on_event)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        width, height = browser.window
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _on_event(self, event: dict) -> None:
        # A dialog blocks the page until answered: dismiss it at once (the tests assert none opened).
        if event.get("sessionId") == self.session_id and event.get("method") == "Page.javascriptDialogOpening":
            self.browser.send("Page.handleJavaScriptDialog", {"accept": False}, self.session_id)

    def call(self, method: str, timeout: float = COMMAND_TIMEOUT, **params: Any) -> dict:
        return self.browser.call(method, params, self.session_id, timeout=timeout)

    def close(self) -> None:
        """Close the tab (and its own browser context, if it has one)."""
        self.browser.call("Target.closeTarget", {"targetId": self.target_id})
        if self.context_id:
            self.browser.call("Target.disposeBrowserContext", {"browserContextId": self.context_id})

    def set_timezone(self, zone: str) -> None:
        """The tab's time zone (an IANA name), as a viewer there would have it; set before the page loads."""
        self.call("Emulation.setTimezoneOverride", timezoneId=zone)

    # -- what happened

    @property
    def dialogs(self) -> list[dict]:
        return self.browser.events(self.session_id, "Page.javascriptDialogOpening")

    @property
    def exceptions(self) -> list[str]:
        return [e["exceptionDetails"].get("exception", {}).get("description") or e["exceptionDetails"].get("text", "")
                for e in self.browser.events(self.session_id, "Runtime.exceptionThrown")]

    @property
    def console_errors(self) -> list[str]:
        logged = [e["entry"]["text"] for e in self.browser.events(self.session_id, "Log.entryAdded")
                  if e["entry"].get("level") == "error"]
        console = [" ".join(str(a.get("value", a.get("description", ""))) for a in e.get("args", []))
                   for e in self.browser.events(self.session_id, "Runtime.consoleAPICalled") if e.get("type") == "error"]
        return logged + console

    # -- actions

    def navigate(self, url: str, timeout: float = WAIT_TIMEOUT) -> None:
        mark = self.browser.event_mark()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        self.browser.wait_event(self.session_id, "Page.loadEventFired", since=mark, timeout=timeout)

    def reload(self, timeout: float = WAIT_TIMEOUT) -> None:
        mark = self.browser.event_mark()
        self.call("Page.reload", ignoreCache=True)
        self.browser.wait_event(self.session_id, "Page.loadEventFired", since=mark, timeout=timeout)

    def evaluate(self, expression: str, timeout: float = COMMAND_TIMEOUT) -> Any:
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression[:80]!r} threw: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = WAIT_TIMEOUT, what: str | None = None) -> Any:
        """Poll ``expression`` until it is truthy; its value. On timeout: an AssertionError saying what was awaited."""
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except CDPError as error:  # e.g. the page is between two documents
                last_error = error
            if time.monotonic() >= deadline:
                text = ""
                try:
                    text = self.evaluate("document.body ? document.body.innerText.slice(0, 1500) : ''")
                except CDPError:
                    pass
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}"
                                     f"{f' (last error: {last_error})' if last_error else ''}; page text:\n{text}")
            time.sleep(0.1)

    def set_hash(self, fragment: str) -> None:
        self.evaluate(f"window.location.hash = {json.dumps(fragment)}")

    def center_of(self, selector: str) -> tuple[float, float]:
        box = self.wait_for(
            f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
                if (!el) return null; el.scrollIntoView({{block: 'center'}});
                const r = el.getBoundingClientRect(); return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()""",
            what=f"a visible {selector}")
        return box[0], box[1]

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = self.center_of(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none",
                      clickCount=1 if kind != "mouseMoved" else 0)

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field, clear it, and type ``text`` as keyboard input."""
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", what=selector)
        self.evaluate(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.focus(); el.select && el.select(); }})()")
        self.call("Input.dispatchKeyEvent", type="keyDown", key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
        if text:
            self.call("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      **({"text": "\r"} if kind == "keyDown" else {}))

    def screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width = max(int(size["width"]), self.browser.window[0])
        height = min(max(int(size["height"]), 200), 6000)
        data = self.call("Page.captureScreenshot", timeout=30, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
