"""Budgets: USD caps per UTC day, per server session and per tool, enforced before spending.

Before each model request the worst case is estimated (the prompt's o200k tokens at the input price plus the
tier's whole output cap at the output price) and the request is refused if it could pass a cap. What was spent
comes from the ledger, so caps hold across restarts; what this process has in flight or not yet written is added
from memory, so concurrent calls cannot jointly overrun a cap.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from tiered_mcp.core.config import Config, Tier
from tiered_mcp.core.errors import BudgetExceeded
from tiered_mcp.core.prices import price_of
from tiered_mcp.core.tokens import count_messages
from tiered_mcp.ledger.sqlite import Ledger


def worst_case_usd(tier: Tier, messages: list[dict[str, str]]) -> float | None:
    """The most one request can cost on `tier`: None when the tier's price is unknown."""
    price = price_of(tier)
    if price is None:
        return None
    return price.cost(count_messages(messages), tier.max_output_tokens)


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT00:00:00")


class Budget:
    """Checks and accounts spending against the config's caps.

    Args:
        config: holds `budgets.daily_usd`, `budgets.session_usd` and `[tools.X] daily_usd`.
        ledger: where spending is read from (None: only this process's memory counts).
        session: this server process's id (its rows in the ledger carry it).
    """

    def __init__(self, config: Config, ledger: Ledger | None, session: str) -> None:
        self.config, self.ledger, self.session = config, ledger, session
        self._unwritten: dict[str, float] = defaultdict(float)  # per tool: reserved or spent, not yet in the ledger

    def _caps(self, tool: str) -> list[tuple[str, float, str | None, str | None]]:
        """(config key, cap, tool filter, session filter) for each cap that applies to `tool`."""
        b, settings = self.config.budgets, self.config.tools.get(tool)
        caps = []
        if b.daily_usd is not None:
            caps.append(("budgets.daily_usd", b.daily_usd, None, None))
        if b.session_usd is not None:
            caps.append(("budgets.session_usd", b.session_usd, None, self.session))
        if settings and settings.daily_usd is not None:
            caps.append((f"tools.{tool}.daily_usd", settings.daily_usd, tool, None))
        return caps

    def _spent(self, tool_filter: str | None, session_filter: str | None) -> float:
        since = "" if session_filter else _today()
        written = self.ledger.spent(since, tool_filter, session_filter) if self.ledger else 0.0
        unwritten = self._unwritten[tool_filter] if tool_filter else sum(self._unwritten.values())
        return written + unwritten

    def status(self, tool: str) -> dict[str, dict[str, float]]:
        """Each applicable cap with what is spent and what remains, for the receipt."""
        out = {}
        for key, cap, t, s in self._caps(tool):
            spent = self._spent(t, s)
            out[key] = {"cap_usd": cap, "spent_usd": round(spent, 6), "remaining_usd": round(max(0.0, cap - spent), 6)}
        return out

    def reserve(self, tool: str, tier_name: str, tier: Tier, messages: list[dict[str, str]]) -> float:
        """Reserve the worst case of one request, or refuse it.

        Returns:
            The amount reserved (give it back to `settle`).

        Raises:
            BudgetExceeded: naming the cap, what is spent, what the request could cost and what remains.
        """
        caps = self._caps(tool)
        if not caps:
            return 0.0
        worst = worst_case_usd(tier, messages)
        if worst is None:
            return 0.0  # an unpriced model cannot be held to a USD cap; its calls are flagged "unknown" cost
        for key, cap, t, s in caps:
            spent = self._spent(t, s)
            if spent + worst > cap:
                raise BudgetExceeded(
                    f"budget {key} = ${cap:.2f} would be passed: ${spent:.4f} spent, and this {tier_name} request "
                    f"({tier.model}) could cost up to ${worst:.4f}; ${max(0.0, cap - spent):.4f} remains. Raise {key} "
                    "in the config" + (", or wait for the next UTC day" if "daily" in key else "")
                )
        self._unwritten[tool] += worst
        return worst

    def settle(self, tool: str, reserved: float, actual: float | None) -> None:
        """Swap a reservation for what the request actually cost."""
        self._unwritten[tool] += (actual or 0.0) - reserved

    def written(self, tool: str, receipt_cost: float | None) -> None:
        """The call's row is in the ledger now: stop counting its cost from memory."""
        if self._unwritten[tool]:
            self._unwritten[tool] = max(0.0, self._unwritten[tool] - (receipt_cost or 0.0))

    def describe(self) -> dict[str, Any]:
        return self.config.budgets.model_dump()
