"""Prices per million tokens: from the config first, else the genai-prices table, else unknown (never made up).

A call is priced at its real token counts: input tokens the provider served from its prompt cache at the
cached-input rate (the plain input rate where none is known), the rest at the input rate, and every output token
(reasoning included: providers count it inside the output) at the output rate. The genai-prices fallback is asked
about the call's own usage, so a model whose table has long-context tiers is priced at the tier the call is in;
the per-million rates shown in tables are read at a small call (1,000 tokens), never at a million.

A request served at a provider's service tier (OpenAI's `service_tier`, as the response reports it) is priced at
that service tier's rates: the tier's `service_tier_prices` entry, else for flex on a gpt-5 model half the
standard rates (OpenAI prices flex at Batch API rates, half the standard ones), else unknown. "default", "auto"
and a response that names no service tier are priced at the standard rates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from tiered_mcp.core.config import STANDARD_SERVICE_TIERS, Tier

_PROBE = 1000  # tokens: small enough to stay in any table's first (short-context) tier
FLEX_SHARE = 0.5
"""Flex processing's share of the standard price where the config names none (OpenAI's gpt-5 models)."""
_FLEX_MODEL = re.compile(r"gpt-5(?![0-9])")


def standard_service(service_tier: str | None) -> bool:
    """Whether a reported service tier is priced at the tier's standard rates."""
    return service_tier is None or service_tier in STANDARD_SERVICE_TIERS


def _flex_share(tier: Tier, service_tier: str | None) -> float | None:
    """The default share of the standard price for a non-standard service tier, or None when none is known."""
    if service_tier == "flex" and _FLEX_MODEL.match(tier.model.rsplit("/", 1)[-1]):
        return FLEX_SHARE
    return None


@dataclass(frozen=True)
class Price:
    """USD per million input, output and cached-input tokens, and where the figures came from."""

    input: float
    output: float
    source: str
    cached_input: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """USD for one request; `cached_input_tokens` are part of `input_tokens`."""
        cached = min(max(cached_input_tokens, 0), input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((input_tokens - cached) * self.input + cached * cached_rate + output_tokens * self.output) / 1_000_000


@lru_cache(maxsize=256)
def _table_rates(model: str) -> Price | None:
    try:
        from genai_prices import Usage, calc_price

        plain = calc_price(Usage(input_tokens=_PROBE, output_tokens=_PROBE), model_ref=model)
        cached = calc_price(Usage(input_tokens=_PROBE, cache_read_tokens=_PROBE, output_tokens=0), model_ref=model)
    except Exception:  # LookupError for unknown models; anything else from the table is not worth failing a call
        return None
    scale = 1_000_000 / _PROBE
    return Price(float(plain.input_price) * scale, float(plain.output_price) * scale, "genai-prices",
                 float(cached.input_price) * scale)


def _table_cost(model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> float | None:
    try:
        from genai_prices import Usage, calc_price

        calc = calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                                cache_read_tokens=cached_input_tokens or None), model_ref=model)
    except Exception:
        return None
    return float(calc.input_price) + float(calc.output_price)


def _table_model(tier: Tier) -> str | None:
    # Provider prefixes such as "openai/gpt-5.4-mini" (OpenRouter) name the same model.
    for name in (tier.model, tier.model.rsplit("/", 1)[-1]):
        if _table_rates(name) is not None:
            return name
    return None


def price_of(tier: Tier, service_tier: str | None = None) -> Price | None:
    """The tier's rates per million tokens at `service_tier` (None: standard), or None when neither the config
    nor the price table knows them."""
    if not standard_service(service_tier):
        assert service_tier is not None
        own = tier.service_tier_prices.get(service_tier)  # type: ignore[call-overload]
        if own is not None:
            return Price(own.input_price, own.output_price, f"config ({service_tier})", own.cached_input_price)
        share, standard = _flex_share(tier, service_tier), price_of(tier)
        if share is None or standard is None:
            return None
        cached = None if standard.cached_input is None else standard.cached_input * share
        return replace(standard, input=standard.input * share, output=standard.output * share, cached_input=cached,
                       source=f"{standard.source} x{share:g} ({service_tier})")
    if tier.input_price is not None and tier.output_price is not None:
        return Price(tier.input_price, tier.output_price, "config", tier.cached_input_price)
    name = _table_model(tier)
    return None if name is None else _table_rates(name)


def cost_of(tier: Tier, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
            service_tier: str | None = None) -> float | None:
    """USD for these tokens on this tier at `service_tier` (None: standard), or None when its price is unknown.
    Unrounded."""
    if input_tokens == 0 and output_tokens == 0:
        return 0.0
    if not standard_service(service_tier):
        assert service_tier is not None
        if service_tier in tier.service_tier_prices:
            price = price_of(tier, service_tier)
            assert price is not None
            return price.cost(input_tokens, output_tokens, cached_input_tokens)
        share, standard = _flex_share(tier, service_tier), cost_of(tier, input_tokens, output_tokens,
                                                                   cached_input_tokens)
        return None if share is None or standard is None else standard * share
    if tier.input_price is not None and tier.output_price is not None:
        return Price(tier.input_price, tier.output_price, "config", tier.cached_input_price).cost(
            input_tokens, output_tokens, cached_input_tokens)
    name = _table_model(tier)
    return None if name is None else _table_cost(name, input_tokens, output_tokens, cached_input_tokens)
