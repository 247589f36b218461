"""Masking of secrets (provider keys, gateway tokens, AWS secrets) wherever one must be referred to.

One Masker serves the audit records (prompts, tool inputs, thoughts, and so the structured logs made
of them) and the debug dumps: a single compiled regex, run once per text, matches every configured
secret as a literal and every string shaped like a gateway token or a common public key format.
It is cheap on short fields too (well under 1 µs for a model name or a user agent), so client-chosen
fields of a record can go through it. holds_gateway_token and without_gateway_tokens find the tokens
that must never go upstream: in a header (also inside a Basic credential) or a query string.
"""

from __future__ import annotations

import base64
import functools
import re
import urllib.parse
from typing import AnyStr, Iterable, Protocol

# A gateway token as bridge/store creates it: <10 lowercase alphanumerics>-<token_urlsafe(32)>.
_TOKEN_ID_LENGTH = 10
_TOKEN_RANDOM_LENGTH = 43
_KEY = r"[A-Za-z0-9_-]"  # the characters of tokens and keys: a match starts where a run of them starts
_KEY_CHARS_MAX = 250  # bound of a key's variable part: keeps the stream hold-back of dumps bounded


def _starts_run(width: int) -> str:
    r"""A check, made ``width`` characters into a match, that the match starts a run of key characters:
    nothing but a non-key character (or the text's start) before it, or an escape whose last
    characters are key characters: JSON's ``\n \t \r \b \f \uXXXX`` (a tool call's arguments are JSON
    text, stored as sent) and URL's ``%XX``."""
    ahead = f".{{{width}}}"
    return (rf"(?:(?<!{_KEY}{ahead})|(?<=\\[bfnrt]{ahead})|(?<=\\u[0-9A-Fa-f]{{4}}{ahead})"
            rf"|(?<=%[0-9A-Fa-f]{{2}}{ahead}))")


# A token is found from its dash (its id before it is added back to the match). Besides a token that
# starts a run, one glued to a word by "_" or "-" (``gw_<token>``, ``token-<token>``) is a token when
# its run ends with it: random base64url (a JWT, an Azure key) holds "_/-<10 lowercase>-<43>" every
# ~600,000 characters, but almost never exactly at the end of a run.
_TOKEN_AT = (rf"-(?<=[a-z0-9]{{{_TOKEN_ID_LENGTH}}}-)(?:{_starts_run(_TOKEN_ID_LENGTH + 1)}"
             rf"|(?<=[_-].{{{_TOKEN_ID_LENGTH + 1}}})(?={_KEY}{{{_TOKEN_RANDOM_LENGTH}}}(?!{_KEY})))")
# Each shape begins with a literal character and checks what precedes it with a lookbehind: a regex
# whose branches all begin with literals is searched for those characters first, which made masking
# a 100 KB prompt 5 times faster than a leading lookbehind did (and the characters that follow it
# before the lookbehinds: most "s" and "g" in a text start no key). A token's random part must hold an
# uppercase letter to be masked (it lacks one with odds of 2e-10), so that lowercase kebab-case names
# of a token's lengths stay unmasked.
_SHAPES = (
    rf"{_TOKEN_AT}(?={_KEY}{{0,{_TOKEN_RANDOM_LENGTH - 1}}}[A-Z])(?P<token>{_KEY}{{{_TOKEN_RANDOM_LENGTH}}})"
    rf"|s(?=k-){_starts_run(1)}k-{_KEY}{{20,{_KEY_CHARS_MAX}}}"  # OpenAI (sk-proj-, sk-svcacct-), Anthropic (sk-ant-)
    rf"|A(?=[KS]IA){_starts_run(1)}[KS]IA[0-9A-Z]{{16}}"  # AWS access key ids (long-lived, temporary)
    rf"|g(?=h[pousr]_|ithub_pat_){_starts_run(1)}(?:h[pousr]_[A-Za-z0-9]{{36,{_KEY_CHARS_MAX}}}|ithub_pat_[A-Za-z0-9_]{{22,{_KEY_CHARS_MAX}}})"
)
_SHAPE_LONGEST = len("github_pat_") + _KEY_CHARS_MAX
_KEY_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_ESCAPE_STARTS = (b"\\", b"%")
# Any case: a drop, not a mask.
_GATEWAY_TOKEN_RE = re.compile(rf"{_TOKEN_AT}{_KEY}{{{_TOKEN_RANDOM_LENGTH}}}".encode())
# A Basic credential (RFC 7617): base64 of "user:password"; headers are bounded by gunicorn (8 KB).
_BASIC_RE = re.compile(rb"\bbasic\s+([A-Za-z0-9+/_-]{16,8192})", re.IGNORECASE)
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def mask_secret(secret: str | None) -> str:
    """Return a hint that identifies a secret without revealing it: ``sk-a...xyz1``.

    Short secrets reveal proportionally less, down to nothing at all.
    """
    if not secret:
        return ""
    if len(secret) >= 16:
        return f"{secret[:4]}...{secret[-4:]}"
    if len(secret) >= 8:
        return f"{secret[:2]}...{secret[-2:]}"
    return "..."


def holds_gateway_token(value: str | bytes) -> bool:
    """Whether ``value`` (a header's) contains something shaped like a gateway token (any user's),
    as it is or inside a Basic credential."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if _GATEWAY_TOKEN_RE.search(data):
        return True
    return any(_GATEWAY_TOKEN_RE.search(_base64_decoded(match[1])) for match in _BASIC_RE.finditer(data))


def without_gateway_tokens(query: bytes) -> bytes:
    """A URL's query string (``a=1&api_key=...``) without the parameters that hold a gateway token
    (name or value, once percent-decoded); the others are kept byte for byte."""
    kept = [pair for pair in query.split(b"&")
            if not holds_gateway_token(urllib.parse.unquote_to_bytes(pair.replace(b"+", b" ")))]
    return b"&".join(kept)


def _base64_decoded(data: bytes) -> bytes:
    """``data`` decoded as base64 (standard or URL-safe, padded or not); b"" when it is none."""
    data = data.translate(_URLSAFE_TO_STANDARD)
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except ValueError:  # binascii.Error
        return b""


class _AwsCredentials(Protocol):  # bridge.config.BedrockSettings (config imports this module)
    @property
    def access_key(self) -> str | None: ...
    @property
    def access_key_secret(self) -> str | None: ...


class _ProviderCredentials(Protocol):  # bridge.config.ProviderSettings
    @property
    def key(self) -> str | None: ...
    @property
    def bedrock(self) -> _AwsCredentials | None: ...


class _ProvidersSettings(Protocol):  # bridge.config.Settings
    @property
    def providers(self) -> Iterable[_ProviderCredentials]: ...


def provider_secrets(provider: _ProviderCredentials) -> list[str]:
    """A provider's key and AWS credentials."""
    found = [provider.key]
    if provider.bedrock is not None:
        found += [provider.bedrock.access_key, provider.bedrock.access_key_secret]
    return [secret for secret in found if secret]


def configured_secrets(settings: _ProvidersSettings) -> list[str]:
    """Every secret in the settings: provider keys and AWS credentials of every provider."""
    return [secret for provider in settings.providers for secret in provider_secrets(provider)]


class Masker:
    """Replaces every secret in a text by its mask: the given ones (longest first, so that a secret
    containing another goes whole) and whatever has the shape of a gateway token or a public key."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({secret for secret in secrets if secret}, key=len, reverse=True))
        literals = "|".join(re.escape(secret) for secret in self.secrets)
        pattern = f"{literals}|{_SHAPES}" if literals else _SHAPES
        self._text = re.compile(pattern)
        self._bytes = re.compile(pattern.encode("utf-8", "replace"))
        self._longest_secret = max((len(secret.encode("utf-8", "replace")) for secret in self.secrets), default=0)

    def including(self, *secrets: str | None) -> Masker:
        """This masker plus ``secrets`` (e.g. a client's own key); itself when it masks them whole already."""
        extra = tuple(secret for secret in secrets if secret and self.text(secret) != mask_secret(secret))
        return _masker(tuple(sorted(set(self.secrets + extra)))) if extra else self

    def text(self, text: str | None) -> str | None:
        """``text`` with every secret in it masked."""
        return self._masked(text, self._text, len(text))[0] if text else text

    def data(self, data: bytes) -> bytes:
        return self._masked(data, self._bytes, len(data))[0] if data else data

    def stream_part(self, data: bytes) -> tuple[bytes, bytes]:
        """``data`` split where no secret can straddle into the bytes that follow it: the masked part
        before, and the raw rest to hold back until more arrives (or the stream ends). Held back:
        the last bytes a given secret could span, and the run of key characters at the end that a
        shape could start in (usually none: an event ends with a blank line) with the character
        before it."""
        run = len(data) - len(data.rstrip(_KEY_BYTES))
        # and the character before that run: a shape after an escape (\n, %2C) needs its backslash
        context = run + 1 if run or data.endswith(_ESCAPE_STARTS) else 0
        cut = len(data) - max(self._longest_secret - 1, min(context, _SHAPE_LONGEST))
        if cut <= 0:
            return b"", data
        masked, cut = self._masked(data, self._bytes, cut)
        return masked, data[cut:]

    @staticmethod
    def _masked(data: AnyStr, pattern: re.Pattern, cut: int) -> tuple[AnyStr, int]:
        """``data[:cut]`` with its secrets masked, and the cut (moved back to the start of a secret across it)."""
        parts, done = [], 0
        for match in pattern.finditer(data):
            start = match.start() - _TOKEN_ID_LENGTH if match.lastgroup == "token" else match.start()
            start = max(start, done)
            if match.end() > cut:
                cut = min(cut, start)
                break
            parts += (data[done:start], _mask(data[start:match.end()]))
            done = match.end()
        if not parts and cut == len(data):
            return data, cut
        parts.append(data[done:cut])
        return data[:0].join(parts), cut


@functools.lru_cache(maxsize=256)
def _masker(secrets: tuple[str, ...]) -> Masker:
    """Maskers by their secrets: a client's own key is compiled in once per worker, not per call."""
    return Masker(secrets)


def _mask(secret: AnyStr) -> AnyStr:
    if isinstance(secret, str):
        return mask_secret(secret)
    return mask_secret(secret.decode("utf-8", "replace")).encode()
