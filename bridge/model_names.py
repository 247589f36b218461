"""Model names as one model: a Bedrock id and a dated snapshot grouped with the model they name.

``model_family`` is the one rule (the API's ``model_family:`` filter and ``usage?by=model_family``, and
pricing, which prices a Bedrock id as its Anthropic model, use it), so it is exact and small:

- A Bedrock Anthropic id: an optional cross-region prefix (``us.``, ``us-gov.``, ``eu.``, ``apac.``,
  ``jp.``, ``au.``, ``global.``), ``anthropic.``, the model, ``-vN:M``. The model is kept, then its
  date dropped as below: ``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` -> ``claude-sonnet-4-5``.
  Legacy ids whose model part has no version number (``anthropic.claude-v2:1``: the ``v2`` *is* the
  model) stay as they are.
- A dated snapshot: a trailing ``-YYYYMMDD`` (Anthropic) or ``-YYYY-MM-DD`` (OpenAI) with a real
  month and day is dropped: ``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``,
  ``gpt-4o-2024-08-06`` -> ``gpt-4o``.
- Anything else is its own family, unchanged (``gpt-4o``, ``claude-sonnet-4-5``, ``amazon.nova-pro-v1:0``).
"""

from __future__ import annotations

import re

_BEDROCK_ANTHROPIC = re.compile(r"(?:(?:us|us-gov|eu|apac|jp|au|global)\.)?anthropic\.(?P<model>.+)-v\d+:\d+")
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
_SNAPSHOT_DATE = re.compile(rf"(?P<model>.+?)-20\d\d(?:{_MONTH}{_DAY}|-{_MONTH}-{_DAY})")


def model_family(name: str) -> str:
    """The model ``name`` (a recorded model name) belongs to; see the module's rules."""
    bedrock = _BEDROCK_ANTHROPIC.fullmatch(name)
    if bedrock is not None:
        if not any(ch.isdigit() for ch in bedrock["model"]):
            return name
        name = bedrock["model"]
    snapshot = _SNAPSHOT_DATE.fullmatch(name)
    return snapshot["model"] if snapshot is not None else name


def group_by_family(names: list[str]) -> list[dict[str, object]]:
    """Recorded names grouped: ``[{"model": family, "names": [names...]}]``, both sorted."""
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(model_family(name), []).append(name)
    return [{"model": family, "names": sorted(members)} for family, members in sorted(families.items())]
