"""Debug dumps of intercepted calls: ``CODER_AIBRIDGE_DUMP_DIR`` (or a provider's ``_DUMP_DIR``).

For each intercepted call the gateway writes, under ``<dir>/<provider name>/``:

- ``<interception id>.request.json``: ``{"method", "url", "headers", "body"}`` of the upstream request
  (``body`` is the JSON the gateway sent, or ``body_text`` when it is not JSON or is nested too deep
  to be written back as JSON);
- ``<interception id>.response``: ``HTTP <status>``, the response headers (one ``Name: value`` a line),
  a blank line, then the body as the client got it. A stream is appended event by event as the
  relay passes it on, so the file of a stream in flight shows how far it got; a gateway error
  (e.g. an unreachable upstream) is dumped as the error response the client got. A gzip or deflate
  body (sent by an upstream despite ``Accept-Encoding: identity``) is dumped inflated, so that it
  is masked too, at most DECODED_MAX bytes of it (bridge.content_coding), and a header line
  ``X-Bridge-Dump: ...`` says so.

Secrets never reach the files: the values of credential headers (``Authorization``, ``X-Api-Key``,
``X-Coder-AI-Governance-Token``, ``Coder-Session-Token``, cookies) are masked (``sk-a...xyz1``),
and the configured provider keys and AWS secrets of every provider, the caller's own credentials,
any user's gateway token and the common public key formats are replaced by their mask wherever they
appear (URL, headers, bodies, across stream chunks too), by the masker of the audit records
(bridge.masking).
Files are readable by the gateway's user only (they hold prompts).

Dumping is for debugging: a failure to write is logged once (until a dump succeeds again) and the
call goes on undumped; it never fails or delays the relay beyond the local file writes. Unset, the
provider routes never call into this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import orjson
from loguru import logger

from bridge.config import ProviderSettings, Settings
from bridge.content_coding import Inflater, content_coding
from bridge.credentials import split_scheme
from bridge.masking import Masker, configured_secrets, mask_secret

#: Headers whose values are credentials (request or response).
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "x-coder-ai-governance-token", "coder-session-token",
    "cookie", "set-cookie",
})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "aws4-hmac-sha256"})
_FILE_MODE = 0o600
_DIR_MODE = 0o700


def request_secrets(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The credentials a client sent: its gateway token and, bringing its own key, that key."""
    found = []
    for name, value in headers:
        lower = name.lower()
        if lower in SECRET_HEADERS and lower not in ("cookie", "set-cookie"):
            found.append(_split_scheme(value)[1])
    return [secret for secret in found if secret]


def mask_header(name: str, value: str | bytes) -> str:
    """A credential header's value with the secret part masked; other headers unchanged."""
    if isinstance(value, bytes):  # a non-ASCII value, forwarded as received (bridge.upstream.upstream_headers)
        value = value.decode("latin-1")
    lower = name.lower()
    if lower not in SECRET_HEADERS:
        return value
    if lower == "cookie":
        return "; ".join(_mask_cookie(pair) for pair in value.split(";"))
    if lower == "set-cookie":
        first, sep, attributes = value.partition(";")
        return _mask_cookie(first) + sep + attributes
    prefix, secret = _split_scheme(value)
    return prefix + mask_secret(secret)


def _split_scheme(value: str) -> tuple[str, str]:
    """A credential header value as ``("Bearer ", secret)`` when it names an auth scheme, else ``("", value)``."""
    scheme, secret = split_scheme(value)
    if scheme.lower() in _AUTH_SCHEMES:
        return f"{scheme} ", secret
    return "", value.strip()


def _mask_cookie(pair: str) -> str:
    name, sep, value = pair.strip().partition("=")
    return f"{name}{sep}{mask_secret(value)}" if sep else mask_secret(name)


class Dumper:
    """Writes the dumps of one provider instance's intercepted calls."""

    def __init__(self, directory: str, provider_name: str, secrets: Iterable[str]) -> None:
        self.directory = Path(directory) / provider_name
        self._masker = Masker(secrets)
        self._ready = False
        self._warned = False

    @classmethod
    def for_provider(cls, provider: ProviderSettings, settings: Settings) -> Dumper | None:
        """The provider's dumper, or None when dumps are off for it."""
        if not provider.dump_dir:
            return None
        return cls(provider.dump_dir, provider.name, configured_secrets(settings))

    def begin(self, interception_id: str, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
              incoming: Iterable[tuple[str, str]]) -> Dump:
        """Write the request dump; the returned Dump takes the response. Never raises."""
        dump = Dump(self, self.directory / f"{interception_id}.response",
                    self._masker.including(*request_secrets(incoming)))
        try:
            self._prepare()
            masker = dump.masker
            content: dict = {
                "method": method,
                "url": masker.text(url),
                "headers": {name: masker.text(mask_header(name, value)) for name, value in headers.items()},
            }
            masked = masker.data(body or b"")
            try:
                content["body"] = orjson.loads(masked) if masked else None
                document = orjson.dumps(content, option=orjson.OPT_INDENT_2)
            except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # not JSON, or nested deeper than orjson writes
                content.pop("body", None)
                content["body_text"] = masked.decode("utf-8", "replace")
                document = orjson.dumps(content, option=orjson.OPT_INDENT_2)
            _write_new(self.directory / f"{interception_id}.request.json", document + b"\n")
            self.succeeded()
        except Exception as exc:
            self.failed(exc)
        return dump

    def _prepare(self) -> None:
        if not self._ready:
            self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self._ready = True

    def succeeded(self) -> None:
        self._warned = False

    def failed(self, exc: BaseException) -> None:
        """Log the first failure (paths and the OS's reason only: no contents, no secrets)."""
        self._ready = False  # e.g. the directory was removed: make it again next time
        if not self._warned:
            self._warned = True
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            logger.bind(record_type="server").warning(
                "debug dump under {} failed ({}); calls go on without dumps until writing works again",
                self.directory, reason)


class Dump:
    """The response side of one call's dump."""

    def __init__(self, dumper: Dumper, path: Path, masker: Masker) -> None:
        self._dumper = dumper
        self._path = path
        self.masker = masker
        self._file = None
        self._pending = b""  # a stream's last bytes, held back until no secret can straddle them
        self._inflater: Inflater | None = None  # of a compressed body: what the masking must read

    def whole(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """A blocking answer (or an error response): the whole response at once."""
        if self._open(status, headers):
            self._write(self.masker.data(b"".join(self._inflated(body))))
            self._write(self._inflation_stop())
            self.close()

    def stream(self, relay: Iterable[bytes], status: int, headers: Iterable[tuple[str, str]]) -> Iterable[bytes]:
        """The relay's body, dumped as it passes; the relay unchanged if the dump cannot be written."""
        return DumpedStream(relay, self) if self._open(status, headers) else relay

    def write(self, chunk: bytes) -> None:
        for piece in self._inflated(chunk):
            if self._file is None:
                return
            data, self._pending = self.masker.stream_part(self._pending + piece)
            self._write(data)

    def close(self) -> None:
        if self._file is None:
            return
        rest, self._pending = self._pending, b""
        if rest:
            self._write(self.masker.data(rest))
        self._write(self._inflation_stop())
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except Exception as exc:
                self._dumper.failed(exc)

    def _inflated(self, data: bytes) -> Iterable[bytes]:
        """The body's bytes as the dump holds them: inflated (bounded) if the upstream compressed them."""
        if self._inflater is None:
            return (data,) if self._file is not None else ()
        return self._inflater.feed(data) if self._file is not None else ()

    def _inflation_stop(self) -> bytes:
        """A last line saying why the inflated body ends early, once; b"" when it does not."""
        inflater, self._inflater = self._inflater, None
        if inflater is None or inflater.stopped is None:
            return b""
        return f"\n[dump: {inflater.stopped}; the rest is not dumped]\n".encode()

    def _open(self, status: int, headers: Iterable[tuple[str, str]]) -> bool:
        headers = list(headers)
        head = [f"HTTP {status}"]
        head += [f"{name}: {self.masker.text(mask_header(name, value))}" for name, value in headers]
        coding = content_coding(headers)
        if coding is not None:
            inflater = Inflater(coding)
            if inflater.stopped is None:
                self._inflater = inflater
                head.append(f"X-Bridge-Dump: body inflated from {coding} for this dump (the client got it {coding}-encoded)")
            else:  # e.g. br: dumped as sent, and masking cannot read it
                head.append(f"X-Bridge-Dump: body dumped {coding}-encoded as sent ({inflater.stopped})")
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
            self._file = os.fdopen(fd, "wb", buffering=0)
            self._file.write(("\n".join(head) + "\n\n").encode("utf-8", "replace"))
            return True
        except Exception as exc:
            self._dumper.failed(exc)
            self._abandon()
            return False

    def _write(self, data: bytes) -> None:
        if self._file is None or not data:
            return
        try:
            self._file.write(data)
        except Exception as exc:
            self._dumper.failed(exc)
            self._abandon()

    def _abandon(self) -> None:
        file, self._file = self._file, None
        self._pending = b""
        self._inflater = None
        if file is not None:
            try:
                file.close()
            except Exception:
                pass


class DumpedStream:
    """A relayed stream that appends what it yields to the dump; closing it closes both."""

    def __init__(self, relay: Iterable[bytes], dump: Dump) -> None:
        self._relay = relay
        self._dump = dump

    def __iter__(self) -> Iterator[bytes]:
        dump = self._dump
        for chunk in self._relay:
            dump.write(chunk)
            yield chunk
        dump.close()

    def close(self) -> None:
        try:
            close = getattr(self._relay, "close", None)
            if close is not None:
                close()
        finally:
            self._dump.close()


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
