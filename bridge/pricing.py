"""What a call cost (SPEC §11): USD for one token-usage row, from the price table that ships inside
``genai-prices`` (no network: its bundled snapshot) and the prices file (CODER_AIBRIDGE_PRICES_FILE).

The table is read once per (provider type, model) and turned into plain per-token floats: pricing a
row is then a few multiplications (genai-prices' own ``calc_price`` takes ~90 µs, a tenth of what
the gateway spends on a whole call). Only the bundled snapshot's public lookups are used
(``find_provider_by_id``, ``Provider.find_model``, ``ModelInfo.get_prices``): they keep no cache of
their own, so the bounded cache here is the only one a client's model names can fill.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from threading import Lock
from typing import Any, Mapping

import yaml

from bridge.model_names import model_family

#: USD per million tokens in the prices file and in genai-prices; per token here.
_MILLION = 1_000_000
#: The prices file's fields, each USD per million tokens.
PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
#: Anthropic's usage splits cache writes by lifetime (flattened into the row's metadata).
_WRITES_1H = "cache_creation.ephemeral_1h_input_tokens"
#: Distinct (provider type, model) lookups kept: model names are the client's to choose.
_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per token, and the long-context tiers: above ``start`` input tokens (cache reads and
    writes included) every token of the call is priced at the tier's rate, as the providers bill."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()  # (start, USD per token), ascending

    def at(self, input_tokens: int) -> float:
        price = self.base
        for start, tier_price in self.tiers:
            if input_tokens <= start:
                break
            price = tier_price
        return price


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input: Rate
    output: Rate
    cache_read: Rate
    cache_write: Rate  # 5-minute writes, and writes whose lifetime the usage does not say
    cache_write_1h: Rate
    source: str  # "genai-prices <version>" or the prices file's path

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
             metadata: Mapping[str, Any] | None) -> float:
        """USD for one usage row (SPEC §6 figures: ``input_tokens`` excludes cache reads and writes)."""
        total_input = input_tokens + cache_read + cache_write
        writes_1h = _count(metadata.get(_WRITES_1H)) if metadata else 0
        writes_1h = min(writes_1h, cache_write)
        usd = (input_tokens * self.input.at(total_input)
               + cache_read * self.cache_read.at(total_input)
               + (cache_write - writes_1h) * self.cache_write.at(total_input)
               + writes_1h * self.cache_write_1h.at(total_input)
               + output_tokens * self.output.at(total_input))
        return round(usd, 10)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class PricesFile:
    """CODER_AIBRIDGE_PRICES_FILE, read and checked (``load_prices_file``)."""

    path: str
    models: Mapping[str, Mapping[str, float]]  # model name -> {field: USD per million tokens}


class Prices:
    """The price of each model, and so of each token-usage row. Thread-safe (the request greenlets
    of a worker and its record writer share one)."""

    def __init__(self, prices_file: PricesFile | None = None) -> None:
        self._overrides = dict(prices_file.models) if prices_file else {}
        self._source = f"prices file {prices_file.path}" if prices_file else ""
        self._cache: OrderedDict[tuple[str, str], ModelPrice | None] = OrderedDict()
        self._lock = Lock()

    def cost(self, provider_type: str, model: str | None, input_tokens: int, output_tokens: int,
             cache_read: int, cache_write: int, metadata: Mapping[str, Any] | None) -> float | None:
        """USD for one usage row of a call to ``model`` through a provider of ``provider_type``;
        None when no price is known (never 0 for a model the table does not know)."""
        price = self.price(provider_type, model or "")
        if price is None:
            return None
        return price.cost(_count(input_tokens), _count(output_tokens), _count(cache_read), _count(cache_write),
                          metadata)

    def price(self, provider_type: str, model: str) -> ModelPrice | None:
        key = (provider_type, model)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        price = self._find(provider_type, model)
        with self._lock:
            self._cache[key] = price
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return price

    def _find(self, provider_type: str, model: str) -> ModelPrice | None:
        family = model_family(model) if model else ""
        listed = table_price(provider_type, model) or (table_price(provider_type, family) if family != model else None)
        fields = self._overrides.get(model) or self._overrides.get(family)
        if fields is None:
            return listed
        return _overridden(listed, fields, self._source)


def load_prices_file(path: str) -> PricesFile:
    """The prices file: ``model: {input: USD/Mtok, output: …, cache_read: …, cache_write: …,
    cache_write_1h: …}``. Raises ValueError with a one-line message naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{path!r}: invalid YAML{where}") from None  # not str(exc): it quotes the line
    if document is None:
        return PricesFile(path, {})
    if not isinstance(document, dict):
        raise ValueError(f"{path!r}: expected a mapping of model names to prices, got {type(document).__name__}")
    overrides: dict[str, dict[str, float]] = {}
    for model, fields in document.items():
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"{path!r}: a model name must be non-empty text, got {model!r}")
        if not isinstance(fields, dict) or not fields:
            raise ValueError(f"{path!r}: model {model!r}: expected a mapping of {', '.join(PRICE_FIELDS)}"
                             " (USD per million tokens)")
        checked: dict[str, float] = {}
        for name, value in fields.items():
            if name not in PRICE_FIELDS:
                raise ValueError(f"{path!r}: model {model!r}: unknown field {name!r} (expected one of"
                                 f" {', '.join(PRICE_FIELDS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{path!r}: model {model!r}: {name} must be a number >= 0 (USD per million"
                                 f" tokens), got {value!r}")
            checked[name] = float(value)
        missing = [name for name in ("input", "output") if name not in checked]
        if missing:
            raise ValueError(f"{path!r}: model {model!r}: {' and '.join(missing)} missing (input and output are"
                             " required; cache prices default to the table's, else to input)")
        overrides[model] = checked
    return PricesFile(path, overrides)


def _overridden(listed: ModelPrice | None, fields: Mapping[str, float], source: str) -> ModelPrice:
    """The file's prices; a cache price it leaves out is the table's, else input's. The file's
    prices have no long-context tiers: a negotiated rate is one rate."""
    rates = {name: Rate(value / _MILLION) for name, value in fields.items()}
    if listed is not None:
        return replace(listed, **rates, source=source)
    cache_write = rates.get("cache_write", rates["input"])
    return ModelPrice(input=rates["input"], output=rates["output"], cache_read=rates.get("cache_read", rates["input"]),
                      cache_write=cache_write, cache_write_1h=rates.get("cache_write_1h", cache_write), source=source)


# --- genai-prices -----------------------------------------------------------------------------

#: genai-prices' provider for each provider type's models. Bedrock providers are of type anthropic:
#: a Bedrock id is priced as the Anthropic model it names (``model_family``), as SPEC §11 asks
#: (not at AWS's regional rates). Copilot's models are priced as their makers list them.
_TABLE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}


def _table_provider(provider_type: str, model: str) -> str | None:
    if provider_type in _TABLE_PROVIDERS:
        return _TABLE_PROVIDERS[provider_type]
    if provider_type == "copilot":
        lowered = model.lower()
        if lowered.startswith("claude"):
            return "anthropic"
        if lowered.startswith("gemini"):
            return "google"
        return "openai"
    return None


def load_table() -> None:
    """Import genai-prices now (~150 ms), not in the first call priced. Not in a gunicorn master:
    it imports ssl (through httpx2), which the gevent workers must patch before anything imports it."""
    import genai_prices  # noqa: F401


def table_price(provider_type: str, model: str) -> ModelPrice | None:
    """genai-prices' current price of ``model``, None when its table does not list it."""
    if not model:
        return None
    from genai_prices import __version__, data_snapshot, types  # see load_table

    provider_id = _table_provider(provider_type, model)
    snapshot = data_snapshot.get_snapshot()
    provider = data_snapshot.find_provider_by_id(snapshot.providers, provider_id) if provider_id else None
    if provider is None:
        return None
    info = provider.find_model(model.lower(), all_providers=snapshot.providers)
    if info is None:
        return None
    listed = info.get_prices(datetime.now(timezone.utc))

    def rate(value: Any) -> Rate | None:
        if value is None:
            return None
        if isinstance(value, types.TieredPrices):
            return Rate(float(value.base) / _MILLION,
                        tuple((int(tier.start), float(tier.price) / _MILLION) for tier in value.tiers))
        return Rate(float(value) / _MILLION)

    input_rate, output_rate = rate(listed.input_mtok), rate(listed.output_mtok)
    if input_rate is None or output_rate is None:
        return None
    # A figure the table leaves out is priced as genai-prices prices it: as the tokens it is part of.
    cache_write = rate(listed.cache_write_mtok) or input_rate
    return ModelPrice(input=input_rate, output=output_rate, cache_read=rate(listed.cache_read_mtok) or input_rate,
                      cache_write=cache_write, cache_write_1h=rate(getattr(listed, "cache_write_1h_mtok", None)) or cache_write,
                      source=f"genai-prices {__version__}")
