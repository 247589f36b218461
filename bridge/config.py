"""Settings of the gateway (SPEC §2): every variable, validated, with one-line errors.

Values come in layers, later ones winning: defaults < YAML file < environment < CLI flags. The YAML
file and the flags are first flattened into environment-variable names, so all layers speak the same
language and ``CODER_AIBRIDGE_PROVIDER_0_KEY`` overrides ``aibridge.providers[0].key``.

This module is imported by the gunicorn master before gevent patches the standard library: it must
not import requests, flask, ssl or gevent.

Choices where SPEC §2 is silent:
- Values are stripped of surrounding whitespace. An empty value counts as set and means "the default",
  so a flag can reset what env or YAML set; CODER_LOGGING_HUMAN is the exception: empty turns human
  logs off (as in Coder).
- Booleans accept true/false, 1/0, yes/no, on/off in any case; provider TYPE is case-insensitive.
- Key aliases (``KEYS``, ``BEDROCK_ACCESS_KEYS``, ``BEDROCK_ACCESS_KEY_SECRETS``) are resolved within
  one layer, so an alias in env overrides the canonical key in YAML; in one layer both set to
  different values is an error.
- Keys and AWS credentials must be printable ASCII without spaces (else every upstream call would fail).
- Base URLs must not hold ``user:password@``, a query or a fragment (they would leak into logs and
  break path joining); the values of such URLs are not echoed.
- A provider's DUMP_DIR defaults to CODER_AIBRIDGE_DUMP_DIR.
- Bedrock: other BEDROCK_* without BEDROCK_REGION or BEDROCK_BASE_URL is an error; ACCESS_KEY and
  ACCESS_KEY_SECRET go in pairs (neither: botocore's default credential chain); without a region, the
  region is read from an AWS BEDROCK_BASE_URL host (``bedrock-runtime.us-west-2.amazonaws.com``); a
  base URL that names none (a proxy) needs BEDROCK_REGION, since SigV4 signs for a region.
- Provider names ``interceptions``, ``clients``, ``usage``, ``tools``, ``sessions`` and ``models`` are reserved:
  /api/v2/aibridge/ serves them (§8, §9).
- Provider indices are plain numbers: ``01`` is rejected rather than silently read as 1.
- INCLUDE_USAGE on a non-openai provider, legacy variables that cannot take effect (e.g.
  OPENAI_BASE_URL without OPENAI_KEY), a keyless provider while BYOK is off, and an enabled gateway
  without providers each give a warning.
- ``--config`` is in FLAG_VARIABLES (as CODER_CONFIG_PATH) so the CLI can pass it like any other flag.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from bridge.masking import mask_secret
from bridge.pricing import PricesFile, load_prices_file
from bridge.units import parse_duration, parse_size

PROVIDER_TYPES = ("openai", "anthropic", "copilot")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1/",
    "anthropic": "https://api.anthropic.com/",
    "copilot": "https://api.individual.githubcopilot.com/",
}
DISABLED_WARNING = "AI Gateway is disabled (set CODER_AIBRIDGE_ENABLED=true)"
CONFIG_PATH_VARIABLE = "CODER_CONFIG_PATH"


class ConfigError(ValueError):
    """A setting that stops startup. ``str(err)`` is one line naming the variable."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # why: startup prints it as a single log line


# --- Settings objects -------------------------------------------------------------------------

_SECRET = {"secret": True}


def _masked_repr(self: Any) -> str:
    """A dataclass repr that shows secrets only as a mask (``sk-a...xyz1``)."""
    parts = []
    for item in fields(self):
        value = getattr(self, item.name)
        if item.metadata.get("secret") and value is not None:
            value = mask_secret(value)
        parts.append(f"{item.name}={value!r}")
    return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class BedrockSettings:
    region: str | None = None
    base_url: str | None = None
    access_key: str | None = field(default=None, metadata=_SECRET)
    access_key_secret: str | None = field(default=None, metadata=_SECRET)
    model: str | None = None
    small_fast_model: str | None = None

    __repr__ = _masked_repr


@dataclass(frozen=True, repr=False)
class ProviderSettings:
    type: str
    name: str
    base_url: str
    key: str | None = field(default=None, metadata=_SECRET)
    max_retries: int = 2
    dump_dir: str | None = None
    include_usage: bool = True
    bedrock: BedrockSettings | None = None

    __repr__ = _masked_repr


@dataclass(frozen=True)
class CircuitBreakerSettings:
    enabled: bool = False
    failure_threshold: int = 5
    interval: float = 10.0
    timeout: float = 30.0
    max_requests: int = 3


@dataclass(frozen=True)
class Settings:
    enabled: bool
    providers: tuple[ProviderSettings, ...]
    retention: float
    structured_logging: bool
    allow_byok: bool
    max_concurrency: int
    rate_limit: float
    circuit_breaker: CircuitBreakerSettings
    dump_dir: str | None
    max_body_size: int
    max_recorded_text: int
    database_path: str
    log_human: str | None
    log_json: str | None
    upstream_connect_timeout: float
    upstream_read_timeout: float
    header_timeout: float
    body_timeout: float
    prices: PricesFile | None = None
    warnings: tuple[str, ...] = ()
    metrics_token: str | None = field(default=None, repr=False)  # a secret: never shown

    def provider(self, name: str) -> ProviderSettings | None:
        return next((p for p in self.providers if p.name == name), None)


# --- Value parsers: raw text -> value, or ValueError("expected ..., got 'x'") ---------------------

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _bool(raw: str) -> bool:
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(f"expected true or false (or 1/0, yes/no, on/off), got {raw!r}")


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}, got {raw!r}")
        return value

    return parse


def _rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a number >= 0, got {raw!r}")
    return value


def _duration(allow_zero: bool) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = parse_duration(raw)
        except ValueError:
            value = None
        if value is None or (value == 0 and not allow_zero):
            example = "90d, 720h, 30m, 1h30m or 0" if allow_zero else "10s, 5m or 1h30m (not 0)"
            raise ValueError(f"expected a duration such as {example}, got {raw!r}")
        return value

    return parse


def _size(raw: str) -> int:
    try:
        value = parse_size(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"expected a size greater than 0 such as 64MiB, 10MB or 1048576, got {raw!r}")
    return value


def _text(raw: str) -> str:
    return raw


def _base_url(raw: str) -> str:
    """An http(s) URL with a host, ending with "/" so that relative paths join under its path."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        parts = None
    if "@" in raw or (parts is not None and (parts.query or parts.fragment)):
        raise ValueError(
            "must be a plain http(s) URL without user:password@, query string or fragment "
            "(value not shown: it may hold a secret)"
        )
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL with a host, got {raw!r}")
    return raw if raw.endswith("/") else raw + "/"


def _database_path(raw: str) -> str:
    scheme, separator, rest = raw.partition("://")
    if not separator:
        if not raw:
            raise ValueError("expected sqlite:///PATH or a file path, got ''")
        return os.path.expanduser(raw)
    scheme = scheme.lower()
    # The scheme alone is named, never the URL: a postgres URL carries a password.
    if scheme in ("postgres", "postgresql"):
        try:
            urlsplit(raw).port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise ValueError("invalid PostgreSQL URL: the port is not a number "
                             "(use postgres://USER:PASSWORD@HOST:PORT/DATABASE)") from None
        return raw  # the URL itself: the store (bridge.store.postgres) connects with it
    if scheme != "sqlite":
        raise ValueError(f"unsupported database scheme {scheme!r} (use sqlite:///PATH, a file path or postgres://...)")
    if not rest.startswith("/") or rest == "/":
        raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return os.path.expanduser(rest[1:])


_PROVIDER_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
# Gateway routes that live next to the provider instances under /api/v2/aibridge/ (SPEC §8, §9).
_RESERVED_NAMES = ("interceptions", "clients", "usage", "tools", "sessions", "models")


def _provider_type(raw: str) -> str:
    if raw.lower() not in PROVIDER_TYPES:
        raise ValueError(f"unknown provider type {raw!r} (expected openai, anthropic or copilot)")
    return raw.lower()


def _provider_name(raw: str) -> str:
    if not _PROVIDER_NAME.fullmatch(raw):
        raise ValueError(
            f"expected a name of lowercase letters and digits in hyphen-separated words "
            f"(e.g. anthropic-corp), got {raw!r}"
        )
    if raw in _RESERVED_NAMES:
        raise ValueError(f"name {raw!r} is reserved for the gateway's own /api/v2/aibridge/{raw} route")
    return raw


def _region(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", raw):
        raise ValueError(f"expected an AWS region such as us-west-2, got {raw!r}")
    return raw


# --- The tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """How one variable is read. The default is raw text, parsed like a user's value."""

    variable: str  # full variable name; for per-provider keys the suffix after PROVIDER_<N>_
    default: str | None
    parse: Callable[[str], Any]
    secret: bool = False  # never echoed in messages; checked to be a usable header value
    flag: str | None = None  # the CLI flag, when it is not the one derived from the variable
    empty_disables: bool = False  # an explicit empty value means "off" instead of "the default"


# Top-level settings, by their name in Settings (circuit_breaker_* go into CircuitBreakerSettings).
_SETTINGS: dict[str, _Setting] = {
    "enabled": _Setting("CODER_AIBRIDGE_ENABLED", "false", _bool),
    "retention": _Setting("CODER_AIBRIDGE_RETENTION", "60d", _duration(allow_zero=True)),
    "structured_logging": _Setting("CODER_AIBRIDGE_STRUCTURED_LOGGING", "false", _bool),
    "allow_byok": _Setting("CODER_AIBRIDGE_ALLOW_BYOK", "true", _bool),
    "max_concurrency": _Setting("CODER_AIBRIDGE_MAX_CONCURRENCY", "0", _integer(0)),
    "rate_limit": _Setting("CODER_AIBRIDGE_RATE_LIMIT", "0", _rate),
    "circuit_breaker_enabled": _Setting("CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED", "false", _bool),
    "circuit_breaker_failure_threshold": _Setting("CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5", _integer(1)),
    "circuit_breaker_interval": _Setting("CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL", "10s", _duration(allow_zero=True)),
    "circuit_breaker_timeout": _Setting("CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT", "30s", _duration(allow_zero=False)),
    "circuit_breaker_max_requests": _Setting("CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS", "3", _integer(1)),
    "dump_dir": _Setting("CODER_AIBRIDGE_DUMP_DIR", None, _text),
    "max_body_size": _Setting("CODER_AIBRIDGE_MAX_BODY_SIZE", "64MiB", _size),
    # Bytes of each prompt, tool input and thought kept in the records (and so in the logs and the API).
    "max_recorded_text": _Setting("CODER_AIBRIDGE_MAX_RECORDED_TEXT", "64KiB", _size),
    # When set, /metrics answers only `Authorization: Bearer <it>` (metrics name models and clients).
    "metrics_token": _Setting("CODER_AIBRIDGE_METRICS_TOKEN", None, _text, secret=True),
    "database_path": _Setting("CODER_AIBRIDGE_DATABASE_URL", "sqlite:///aibridge.db", _database_path),
    "upstream_connect_timeout": _Setting("CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT", "10s", _duration(allow_zero=False)),
    "upstream_read_timeout": _Setting("CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT", "300s", _duration(allow_zero=False)),
    # A request's head (request line and headers) is due within this once its first byte came (on a
    # new connection: from the connect), so slow clients cannot hold every connection of a worker.
    "header_timeout": _Setting("CODER_AIBRIDGE_HEADER_TIMEOUT", "10s", _duration(allow_zero=False)),
    # A request's whole body is due within this from the end of its head (answered 408 after it), so
    # a client stalling an upload cannot hold a worker's memory and connections.
    "body_timeout": _Setting("CODER_AIBRIDGE_BODY_TIMEOUT", "60s", _duration(allow_zero=False)),
    # Prices that add to or override genai-prices' table (negotiated rates, self-hosted models).
    "prices": _Setting("CODER_AIBRIDGE_PRICES_FILE", None, load_prices_file),
    "log_human": _Setting("CODER_LOGGING_HUMAN", "/dev/stderr", _text, flag="--log-human", empty_disables=True),
    "log_json": _Setting("CODER_LOGGING_JSON", None, _text, flag="--log-json"),
}

# Per-provider keys: CODER_AIBRIDGE_PROVIDER_<N>_<KEY>, and the legacy variables below.
_PROVIDER_KEYS: dict[str, _Setting] = {
    setting.variable: setting
    for setting in (
        _Setting("TYPE", None, _provider_type),
        _Setting("NAME", None, _provider_name),
        _Setting("KEY", None, _text, secret=True),
        _Setting("BASE_URL", None, _base_url),  # default depends on the type
        _Setting("BEDROCK_BASE_URL", None, _base_url),
        _Setting("BEDROCK_REGION", None, _region),
        _Setting("BEDROCK_ACCESS_KEY", None, _text, secret=True),
        _Setting("BEDROCK_ACCESS_KEY_SECRET", None, _text, secret=True),
        _Setting("BEDROCK_MODEL", None, _text),
        _Setting("BEDROCK_SMALL_FAST_MODEL", None, _text),
        _Setting("MAX_RETRIES", "2", _integer(0)),
        _Setting("DUMP_DIR", None, _text),
        _Setting("INCLUDE_USAGE", "true", _bool),
    )
}
_PROVIDER_ALIASES = {
    "KEYS": "KEY",
    "BEDROCK_ACCESS_KEYS": "BEDROCK_ACCESS_KEY",
    "BEDROCK_ACCESS_KEY_SECRETS": "BEDROCK_ACCESS_KEY_SECRET",
}
_BEDROCK_KEYS = tuple(key for key in _PROVIDER_KEYS if key.startswith("BEDROCK_"))

# Legacy single providers (named after their type): per-provider key -> variable.
_LEGACY_PROVIDERS: dict[str, dict[str, str]] = {
    "openai": {"KEY": "CODER_AIBRIDGE_OPENAI_KEY", "BASE_URL": "CODER_AIBRIDGE_OPENAI_BASE_URL"},
    "anthropic": {
        "KEY": "CODER_AIBRIDGE_ANTHROPIC_KEY",
        "BASE_URL": "CODER_AIBRIDGE_ANTHROPIC_BASE_URL",
        **{key: f"CODER_AIBRIDGE_{key}" for key in _BEDROCK_KEYS},
    },
}
# The keys whose presence creates a legacy provider; the others only tune it.
_LEGACY_TRIGGERS = {"openai": ("KEY",), "anthropic": ("KEY", "BEDROCK_REGION", "BEDROCK_BASE_URL")}

_PREFIX = "CODER_AIBRIDGE_"
_PROVIDER_PREFIX = "CODER_AIBRIDGE_PROVIDER_"
_KNOWN_VARIABLES = frozenset(
    [s.variable for s in _SETTINGS.values()] + [v for keys in _LEGACY_PROVIDERS.values() for v in keys.values()]
)
# YAML sections and the variable prefix their keys map to (``aibridge.retention`` -> CODER_AIBRIDGE_RETENTION).
_YAML_SECTIONS = {"aibridge": _PREFIX, "logging": "CODER_LOGGING_"}


def _derived_flag(variable: str) -> str:
    return "--" + variable.removeprefix("CODER_").lower().replace("_", "-")


FLAG_VARIABLES: dict[str, str] = {
    "--config": CONFIG_PATH_VARIABLE,
    **{setting.flag or _derived_flag(setting.variable): setting.variable for setting in _SETTINGS.values()},
    **{_derived_flag(v): v for keys in _LEGACY_PROVIDERS.values() for v in keys.values()},
}
_FLAG_OF = {variable: flag for flag, variable in FLAG_VARIABLES.items()}


# --- Layers: every source flattened to {variable: _Entry} ---------------------------------------


class _Entry(NamedTuple):
    value: str
    label: str  # how messages name it: the variable, plus where it came from when not the env


_Layer = dict[str, _Entry]


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _env_layer(env: Mapping[str, str]) -> _Layer:
    return {
        name: _Entry(_as_text(value), name)
        for name, value in env.items()
        if value is not None and (name.startswith(_PREFIX) or name in _KNOWN_VARIABLES)
    }


def _flag_layer(flags: Mapping[str, str]) -> _Layer:
    return {
        name: _Entry(_as_text(value), f"{name} (from {_FLAG_OF.get(name) or _derived_flag(name)})")
        for name, value in flags.items()
        if value is not None and name != CONFIG_PATH_VARIABLE
    }


def _yaml_layer(path: str) -> tuple[_Layer, list[str]]:
    try:
        with open(path, "rb") as stream:  # binary: PyYAML detects the encoding and reports bad bytes
            document = yaml.safe_load(stream)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # why: str(err) quotes the offending line, which may hold a key
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or "cannot be parsed"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None

    layer: _Layer = {}
    warnings: list[str] = []

    def put(variable: str, value: object, yaml_key: str) -> None:
        label = f"{variable} (from {yaml_key} in {path})"
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{label}: expected a single value, got a {type(value).__name__}")
        if value is not None:  # `key:` with nothing after it is left unset
            layer[variable] = _Entry(_as_text(value), label)

    for section, values in _yaml_mapping(document, "the top level", path).items():
        prefix = _YAML_SECTIONS.get(section)
        if prefix is None:
            warnings.append(
                f"{path}: unknown top-level key {section!r}, ignored (settings go under aibridge: or logging:)"
            )
            continue
        for key, value in _yaml_mapping(values, section, path).items():
            if section == "aibridge" and key == "providers":
                for index, provider in enumerate(_yaml_list(value, "aibridge.providers", path)):
                    where = f"aibridge.providers[{index}]"
                    for provider_key, item in _yaml_mapping(provider, where, path).items():
                        put(f"{_PROVIDER_PREFIX}{index}_{str(provider_key).upper()}", item, f"{where}.{provider_key}")
            else:
                put(prefix + str(key).upper(), value, f"{section}.{key}")
    return layer, warnings


def _yaml_mapping(value: object, where: str, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping at {where}, got a {type(value).__name__}")
    return value


def _yaml_list(value: object, where: str, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list at {where}, got a {type(value).__name__}")
    return value


def _read_layers(
    env: Mapping[str, str] | None, flags: Mapping[str, str] | None, config_path: str | None
) -> tuple[list[_Layer], list[str]]:
    """The layers from lowest to highest precedence (YAML, env, flags), and the YAML warnings."""
    env = os.environ if env is None else env
    flags = flags or {}
    path = config_path or flags.get(CONFIG_PATH_VARIABLE) or env.get(CONFIG_PATH_VARIABLE)
    yaml_layer, warnings = _yaml_layer(path) if path else ({}, [])
    return [yaml_layer, _env_layer(env), _flag_layer(flags)], warnings


def _merge(layers: Iterable[_Layer]) -> _Layer:
    merged: _Layer = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _split_provider_variable(variable: str) -> tuple[str, str] | None:
    """``CODER_AIBRIDGE_PROVIDER_3_BASE_URL`` -> ("3", "BASE_URL")."""
    if not variable.startswith(_PROVIDER_PREFIX):
        return None
    index, _, key = variable.removeprefix(_PROVIDER_PREFIX).partition("_")
    return index, key


def _resolve_aliases(layer: _Layer) -> _Layer:
    """Rename alias keys (KEYS -> KEY) within one layer; both set differently is an error."""
    resolved = dict(layer)
    for variable, entry in layer.items():
        split = _split_provider_variable(variable)
        if split is None or split[1] not in _PROVIDER_ALIASES:
            continue
        canonical = f"{_PROVIDER_PREFIX}{split[0]}_{_PROVIDER_ALIASES[split[1]]}"
        del resolved[variable]
        other = layer.get(canonical)
        if other is None or not other.value:
            resolved[canonical] = entry
        elif entry.value and entry.value != other.value:
            raise ConfigError(
                f"{entry.label}: conflicts with {other.label}: both are set, to different values; set only one"
            )
    return resolved


# --- Reading values ----------------------------------------------------------------------------

_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def _resolve(setting: _Setting, entry: _Entry | None) -> Any:
    if entry is None or entry.value == "":
        if entry is not None and setting.empty_disables:
            return None
        return None if setting.default is None else setting.parse(setting.default)
    try:
        if setting.secret and not _HEADER_SAFE.fullmatch(entry.value):
            raise ValueError("must be printable ASCII without spaces (value not shown: it is a secret)")
        return setting.parse(entry.value)
    except ValueError as err:
        raise ConfigError(f"{entry.label}: {err}") from None


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


# --- Providers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """The raw values of one provider, by per-provider key (TYPE, KEY, ...)."""

    entries: Mapping[str, _Entry]
    variable: Callable[[str], str]  # the variable behind a key, to name keys that are not set
    unknown: tuple[str, ...] = ()  # labels of unknown keys, to explain a missing TYPE (a typo such as TPYE)

    def is_set(self, key: str) -> bool:
        entry = self.entries.get(key)
        return bool(entry and entry.value)

    def label(self, key: str) -> str:
        return self.entries[key].label if key in self.entries else self.variable(key)

    def get(self, key: str) -> Any:
        return _resolve(_PROVIDER_KEYS[key], self.entries.get(key))


def _indexed_variable(index: int, key: str) -> str:
    return f"{_PROVIDER_PREFIX}{index}_{key}"


def _indexed_sources(merged: _Layer, warnings: list[str]) -> list[_Source]:
    """Group CODER_AIBRIDGE_PROVIDER_<N>_* by index; indices must run 0, 1, 2, ... without gaps."""
    groups: dict[int, dict[str, _Entry]] = {}
    unknown: dict[int, list[str]] = {}
    for variable, entry in sorted(merged.items()):
        split = _split_provider_variable(variable)
        if split is None:
            continue
        index, key = split
        if not re.fullmatch(r"0|[1-9][0-9]*", index):
            raise ConfigError(
                f"{entry.label}: provider index {index!r} is not a number "
                f"(expected CODER_AIBRIDGE_PROVIDER_<N>_<KEY> with N = 0, 1, 2, ...)"
            )
        keys = groups.setdefault(int(index), {})  # any variable, even a typo, makes the index exist
        if key in _PROVIDER_KEYS:
            keys[key] = entry
        else:
            unknown.setdefault(int(index), []).append(entry.label)
            hint = _did_you_mean(key, _PROVIDER_KEYS)
            warnings.append(f"{entry.label}: unknown provider setting {key!r}, ignored{hint}")
    indices = sorted(groups)
    for expected, index in enumerate(indices):
        if index != expected:
            raise ConfigError(
                f"{_indexed_variable(expected, 'TYPE')}: not set, but provider {index} is configured: "
                f"provider indices must be contiguous from 0 (found {', '.join(map(str, indices))})"
            )
    return [
        _Source(groups[index], functools.partial(_indexed_variable, index), tuple(unknown.get(index, ())))
        for index in indices
    ]


def _build_provider(
    ptype: str, name: str, source: _Source, dump_dir: str | None, warnings: list[str]
) -> ProviderSettings:
    if ptype != "anthropic":
        for key in _BEDROCK_KEYS:
            if source.is_set(key):
                raise ConfigError(
                    f"{source.label(key)}: Bedrock settings apply only to anthropic providers, this one is {ptype}"
                )
    if ptype == "copilot" and source.is_set("KEY"):
        raise ConfigError(
            f"{source.label('KEY')}: copilot providers take no key: copilot is always BYOK "
            f"(each user sends their own GitHub token)"
        )
    if ptype != "openai" and source.is_set("INCLUDE_USAGE"):
        warnings.append(f"{source.label('INCLUDE_USAGE')}: applies to openai providers only, ignored for {ptype}")
    return ProviderSettings(
        type=ptype,
        name=name,
        base_url=source.get("BASE_URL") or DEFAULT_BASE_URLS[ptype],
        key=source.get("KEY"),
        max_retries=source.get("MAX_RETRIES"),
        dump_dir=source.get("DUMP_DIR") or dump_dir,
        include_usage=source.get("INCLUDE_USAGE"),
        bedrock=_bedrock(source) if ptype == "anthropic" else None,
    )


_AWS_REGION_IN_HOST = re.compile(r"\.([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:vpce\.)?amazonaws\.com")


def _bedrock(source: _Source) -> BedrockSettings | None:
    """Bedrock is used when a region or a Bedrock base URL is given."""
    region, base_url = source.get("BEDROCK_REGION"), source.get("BEDROCK_BASE_URL")
    if not region and not base_url:
        for key in _BEDROCK_KEYS:
            if source.is_set(key):
                raise ConfigError(
                    f"{source.label(key)}: has no effect without {source.variable('BEDROCK_REGION')} "
                    f"or {source.variable('BEDROCK_BASE_URL')}"
                )
        return None
    access_key, access_key_secret = source.get("BEDROCK_ACCESS_KEY"), source.get("BEDROCK_ACCESS_KEY_SECRET")
    if bool(access_key) != bool(access_key_secret):
        given, missing = "BEDROCK_ACCESS_KEY", "BEDROCK_ACCESS_KEY_SECRET"
        if not access_key:
            given, missing = missing, given
        raise ConfigError(f"{source.variable(missing)}: required when {source.label(given)} is set")
    if not region:  # SigV4 needs one; AWS endpoints name it in their host
        match = _AWS_REGION_IN_HOST.search(urlsplit(base_url).hostname or "")
        region = match.group(1) if match else None
        if region is None:
            raise ConfigError(
                f"{source.variable('BEDROCK_REGION')}: required: {source.label('BEDROCK_BASE_URL')} does not "
                f"name an AWS region, and requests to Bedrock are signed for one"
            )
    return BedrockSettings(
        region=region,
        base_url=base_url,
        access_key=access_key,
        access_key_secret=access_key_secret,
        model=source.get("BEDROCK_MODEL"),
        small_fast_model=source.get("BEDROCK_SMALL_FAST_MODEL"),
    )


def _legacy_providers(
    merged: _Layer, dump_dir: str | None, warnings: list[str]
) -> list[tuple[ProviderSettings, str]]:
    """The legacy ``openai`` / ``anthropic`` providers, each with the label of the variable that created it."""
    found: list[tuple[ProviderSettings, str]] = []
    for ptype, variables in _LEGACY_PROVIDERS.items():
        source = _Source({key: merged[v] for key, v in variables.items() if v in merged}, variables.__getitem__)
        trigger = next((key for key in _LEGACY_TRIGGERS[ptype] if source.is_set(key)), None)
        if trigger is not None:
            found.append((_build_provider(ptype, ptype, source, dump_dir, warnings), source.label(trigger)))
        elif stray := [source.label(key) for key in variables if source.is_set(key)]:
            needed = " or ".join(variables[key] for key in _LEGACY_TRIGGERS[ptype])
            warnings.append(
                f"{', '.join(stray)}: ignored: the legacy {ptype} provider exists only when {needed} is set"
            )
    return found


def _indexed_providers(
    sources: list[_Source], legacy: list[tuple[ProviderSettings, str]], dump_dir: str | None, warnings: list[str]
) -> list[ProviderSettings]:
    legacy_origin = {provider.name: origin for provider, origin in legacy}
    seen: dict[str, int] = {}
    providers = []
    for index, source in enumerate(sources):
        ptype = source.get("TYPE")
        if ptype is None:
            typos = f"; not known: {', '.join(source.unknown)}" if source.unknown else ""
            raise ConfigError(
                f"{source.variable('TYPE')}: required for provider {index} (openai, anthropic or copilot){typos}"
            )
        named = source.is_set("NAME")
        name = source.get("NAME") if named else ptype
        where = source.label("NAME") if named else f"{source.variable('NAME')} (not set, so the name is the type)"
        if name in legacy_origin:
            raise ConfigError(
                f"{where}: provider name {name!r} is already used by the legacy provider set by "
                f"{legacy_origin[name]}; remove one or the other"
            )
        if name in seen:
            hint = "" if named else "; two providers of one type without a NAME collide, give each a distinct NAME"
            raise ConfigError(f"{where}: duplicate provider name {name!r} (provider {seen[name]} has it too){hint}")
        seen[name] = index
        providers.append(_build_provider(ptype, name, source, dump_dir, warnings))
    return providers


# --- Public entry points -----------------------------------------------------------------------


def load_settings(
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Read and validate every setting. Precedence: flag > env > YAML > default.

    ``flags`` maps variable names (CODER_AIBRIDGE_OPENAI_KEY) to values; see FLAG_VARIABLES.
    Raises ConfigError (one line naming the variable) on the first bad value.
    """
    layers, warnings = _read_layers(env, flags, config_path)
    merged = _merge(_resolve_aliases(layer) for layer in layers)
    values = {name: _resolve(setting, merged.get(setting.variable)) for name, setting in _SETTINGS.items()}

    for variable, entry in sorted(merged.items()):
        if variable not in _KNOWN_VARIABLES and _split_provider_variable(variable) is None:
            warnings.append(f"{entry.label}: unknown setting, ignored{_did_you_mean(variable, _KNOWN_VARIABLES)}")
    legacy = _legacy_providers(merged, values["dump_dir"], warnings)
    indexed = _indexed_providers(_indexed_sources(merged, warnings), legacy, values["dump_dir"], warnings)
    providers = (*(provider for provider, _ in legacy), *indexed)

    if not values["enabled"]:
        warnings.append(DISABLED_WARNING)
    elif not providers:
        warnings.append(
            "no AI providers are configured: set CODER_AIBRIDGE_OPENAI_KEY, CODER_AIBRIDGE_ANTHROPIC_KEY "
            "or CODER_AIBRIDGE_PROVIDER_0_TYPE"
        )
    if not values["allow_byok"]:
        for provider in providers:
            if provider.type != "copilot" and provider.key is None and provider.bedrock is None:
                warnings.append(
                    f"provider {provider.name!r} has no key and CODER_AIBRIDGE_ALLOW_BYOK is false: "
                    f"no request to it can be authenticated"
                )

    breaker_names = [name for name in values if name.startswith("circuit_breaker_")]
    breaker = {name.removeprefix("circuit_breaker_"): values.pop(name) for name in breaker_names}
    return Settings(
        **values,
        providers=providers,
        circuit_breaker=CircuitBreakerSettings(**breaker),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class ServingSettings:
    """How gunicorn serves the app: read by the gunicorn config, which must not import the rest."""

    bind: str
    workers: int
    worker_connections: int


def serving_settings(env: Mapping[str, str] | None = None) -> ServingSettings:
    """CODER_HTTP_ADDRESS, WEB_CONCURRENCY and BRIDGE_WORKER_CONNECTIONS, validated (ConfigError naming
    the variable): gunicorn would otherwise stop with a traceback (a worker count that is no number) or
    retry binding an address that cannot be one."""
    env = os.environ if env is None else env
    values = {}
    for variable, default, parse in (("CODER_HTTP_ADDRESS", "127.0.0.1:3000", _listen_address),
                                     ("WEB_CONCURRENCY", "2", _integer(1)),
                                     ("BRIDGE_WORKER_CONNECTIONS", "1000", _integer(1))):
        raw = (env.get(variable) or "").strip() or default
        try:
            values[variable] = parse(raw)
        except ValueError as err:
            raise ConfigError(f"{variable}: {err}") from None
    return ServingSettings(values["CODER_HTTP_ADDRESS"], values["WEB_CONCURRENCY"], values["BRIDGE_WORKER_CONNECTIONS"])


def _listen_address(raw: str) -> str:
    """HOST:PORT ([IPv6]:PORT), or unix:PATH, as gunicorn binds it."""
    if raw.startswith("unix:"):
        if not raw[5:]:
            raise ValueError("expected unix:PATH")
        return raw
    host, separator, port = raw.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:3000 or 0.0.0.0:8080 (or unix:PATH), got {raw!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return raw


def store_problem(database_path: str, error: BaseException) -> str:
    """One line, naming the variable, for a store that cannot be opened at startup: which directory
    is missing or read-only for a SQLite file, else the error's own words (a URL's password masked)."""
    variable = _SETTINGS["database_path"].variable
    if "://" not in database_path:
        directory = os.path.dirname(os.path.abspath(database_path))
        if not os.path.isdir(directory):
            return f"{variable}: the directory {directory} does not exist (SQLite creates the file, not its directory)"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{variable}: the directory {directory} is not writable by this user"
    from bridge.store import mask_url  # not at import: the store is not needed to read settings

    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{variable}: cannot open the store ({mask_url(reason)})"


def database_path_from_url(url: str) -> str:
    """``sqlite:///aibridge.db`` -> ``aibridge.db``, ``sqlite:////abs/x.db`` -> ``/abs/x.db``, a path or a
    ``postgres://`` / ``postgresql://`` URL -> itself."""
    try:
        return _database_path(url.strip())
    except ValueError as err:
        raise ConfigError(f"{_SETTINGS['database_path'].variable}: {err}") from None


def resolve_database_path(
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> str:
    """The database path alone (flag > env > YAML > default), without validating providers: for the CLI."""
    layers, _ = _read_layers(env, flags, config_path)
    setting = _SETTINGS["database_path"]
    return _resolve(setting, _merge(layers).get(setting.variable))
