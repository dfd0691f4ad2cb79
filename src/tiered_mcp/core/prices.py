"""Prices per million tokens: from the config first, else the genai-prices table, else unknown (never made up)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tiered_mcp.core.config import Tier


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens, and where the figures came from."""

    input: float
    output: float
    source: str

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


@lru_cache(maxsize=256)
def _table_price(model: str) -> Price | None:
    try:
        from genai_prices import Usage, calc_price

        # Pricing a million of each gives the per-million rates, whatever tiering the table applies further up.
        calc = calc_price(Usage(input_tokens=1_000_000, output_tokens=1_000_000), model_ref=model)
    except Exception:  # LookupError for unknown models; anything else from the table is not worth failing a call
        return None
    return Price(float(calc.input_price), float(calc.output_price), "genai-prices")


def price_of(tier: Tier) -> Price | None:
    """The tier's price, or None when neither the config nor the price table knows it."""
    if tier.input_price is not None and tier.output_price is not None:
        return Price(tier.input_price, tier.output_price, "config")
    # Provider prefixes such as "openai/gpt-5.4-mini" (OpenRouter) name the same model.
    return _table_price(tier.model) or _table_price(tier.model.rsplit("/", 1)[-1])


def cost_of(tier: Tier, input_tokens: int, output_tokens: int) -> float | None:
    """USD for these tokens on this tier, or None when its price is unknown."""
    if input_tokens == 0 and output_tokens == 0:
        return 0.0
    price = price_of(tier)
    return None if price is None else price.cost(input_tokens, output_tokens)
