"""Budgets: USD caps per UTC day, per tool and day, per caller and day, and per server session, enforced before
spending; and a tool's evidence work (shadow runs, auto guards and probes, judge calls, bake-off runs) per tool and
day (`[tools.X] evidence_daily_usd`), held by the same reservations on the same path as every other request.

Before each model request the worst case is reserved (the prompt's o200k tokens at the input price plus the tier's
whole output cap at the output price) and the request is refused if it could pass a cap; afterwards the
reservation is shrunk to what the request cost. The day caps live in the ledger as running totals per cap and
day plus in-flight holds, checked and taken in one transaction (row locks on PostgreSQL), so replicas sharing one
database cannot jointly overrun a cap, and no call ever sums the ledger. Only the reservation is a transaction of
its own on the request's path: the settlement rides with the ledger writer's next transaction (a hold that stays
at the worst case a moment longer only errs on the safe side), and the call's row drops its holds as it adds their
spend to the totals. A hold that is never settled (a process that died) expires after `HOLD_TTL_S`. The session
cap is this process's own spending, kept in memory.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import anyio

from tiered_mcp.call.writer import LedgerWriter
from tiered_mcp.core.config import Config, Tier
from tiered_mcp.core.errors import BudgetExceeded
from tiered_mcp.core.identity import current_caller
from tiered_mcp.core.prices import price_of
from tiered_mcp.core.tokens import count_messages
from tiered_mcp.ledger.base import LedgerStore, Settle, off_loop, spend_key

HOLD_TTL_S = 900.0
HOLD_MARGIN_S = 60.0  # a hold outlives its request's timeout by this much (a flex request may wait 900 s)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


INLINE_CHARS = 16_384  # prompts longer than this are counted in a worker thread (o200k costs ~8 ms per MB)


def worst_case_usd(tier: Tier, messages: list[dict[str, str]], tokens: int | None = None,
                   service_tier: str | None = None) -> float | None:
    """The most one request can cost on `tier`: None when the tier's price is unknown. A request for a service
    tier may be served at the standard one, so it is held at the dearer of the two (where that one is known)."""
    price = price_of(tier)
    if price is None:
        return None
    tokens = count_messages(messages) if tokens is None else tokens
    worst = price.cost(tokens, tier.max_output_tokens)
    other = None if service_tier is None else price_of(tier, service_tier)
    return worst if other is None else max(worst, other.cost(tokens, tier.max_output_tokens))


async def prompt_tokens(messages: list[dict[str, str]]) -> int:
    """o200k tokens of a prompt; a long one is counted off the event loop."""
    if sum(len(m["content"]) for m in messages) <= INLINE_CHARS:
        return count_messages(messages)
    return await anyio.to_thread.run_sync(count_messages, messages)


@dataclass(frozen=True)
class Cap:
    name: str  # the config key, as messages name it
    key: str | None  # the ledger's running-total key; None for the in-memory session cap
    usd: float


@dataclass
class Hold:
    """A reservation: give it back to `Budget.settle`. `status` is the receipt's budget figure."""

    id: str
    tool: str
    caps: list[Cap]
    amount: float
    status: dict[str, dict[str, float]] = field(default_factory=dict)


class Budget:
    """Checks and accounts spending against the config's caps.

    Args:
        config: holds `budgets.daily_usd`, `budgets.session_usd` and `[tools.X] daily_usd`; a named caller's
            `daily_usd` comes from `core.identity.current_caller`.
        ledger: where the day totals live (None: this process's memory only).
        session: this server process's id.
        clock: now, as an aware UTC datetime (tests move it across midnight).
        writer: takes settlements to the ledger with its next transaction (None: each is written at once).
    """

    def __init__(self, config: Config, ledger: LedgerStore | None, session: str, clock: Clock = utc_now,
                 writer: LedgerWriter | None = None) -> None:
        self.config, self.ledger, self.session, self.clock = config, ledger, session, clock
        self.writer = writer
        self._memory: dict[str, float] = defaultdict(float)  # committed per key when there is no ledger
        self._session = 0.0  # committed (spent + held) by this process

    def caps(self, tool: str, evidence: bool = False) -> list[Cap]:
        """The caps that apply to a request of `tool` now (`evidence`: one of its evidence requests)."""
        b, settings, day = self.config.budgets, self.config.tools.get(tool), self.clock().strftime("%Y-%m-%d")
        caps = []
        if b.daily_usd is not None:
            caps.append(Cap("budgets.daily_usd", spend_key(day), b.daily_usd))
        if settings and settings.daily_usd is not None:
            caps.append(Cap(f"tools.{tool}.daily_usd", spend_key(day, tool=tool), settings.daily_usd))
        if evidence and settings and settings.evidence_daily_usd is not None:
            caps.append(Cap(f"tools.{tool}.evidence_daily_usd", spend_key(day, tool=tool, evidence=True),
                            settings.evidence_daily_usd))
        caller = current_caller.get()
        if caller is not None and caller.daily_usd is not None:
            caps.append(Cap(f"the daily_usd of caller {caller.name!r}", spend_key(day, caller=caller.name),
                            caller.daily_usd))
        if b.session_usd is not None:
            caps.append(Cap("budgets.session_usd", None, b.session_usd))
        return caps

    async def reserve(self, tool: str, tier_name: str, tier: Tier, messages: list[dict[str, str]], *,
                      evidence: bool = False, service_tier: str | None = None,
                      timeout_s: float | None = None) -> Hold | None:
        """Reserve the worst case of one request, or refuse it. None: no cap applies (or the tier is free).

        Args:
            evidence: the request is evidence work (shadow, judge, eval): the tool's `evidence_daily_usd` applies.
            service_tier: the service tier the request asks for (its price may be the dearer one).
            timeout_s: the request's timeout: the hold lasts at least this long (plus a margin) before it expires.

        Raises:
            BudgetExceeded: naming the cap, what is committed, what the request could cost and what remains.
        """
        caps = self.caps(tool, evidence)
        if not caps:
            return None
        worst = worst_case_usd(tier, messages, await prompt_tokens(messages), service_tier)
        if not worst:
            return None  # free (the local tier), or unpriced: a USD cap cannot hold it; such calls say "unknown"
        return await self.reserve_usd(tool, worst, f"this {tier_name} request ({tier.model})",
                                      max(HOLD_TTL_S, (timeout_s or 0.0) + HOLD_MARGIN_S), evidence=evidence)

    async def reserve_usd(self, tool: str, worst: float, what: str, ttl_s: float = HOLD_TTL_S, *,
                          evidence: bool = False) -> Hold | None:
        """Reserve `worst` USD for `what` (e.g. a batch of requests) for `ttl_s`, or refuse it; as `reserve`.

        Raises:
            BudgetExceeded: as `reserve`.
        """
        caps = self.caps(tool, evidence)
        if not caps or not worst:
            return None
        hold = Hold(uuid.uuid4().hex, tool, caps, worst)
        shared = [(c.key, c.usd) for c in caps if c.key is not None]
        committed: dict[str, float] = {}
        if shared:
            if self.ledger is not None:
                ok, committed = await off_loop(self.ledger.budget_reserve, shared, worst, hold.id,
                                               self.clock().timestamp(), ttl_s)
            else:
                committed = {k: self._memory[k] for k, _ in shared}
                ok = all(committed[k] + worst <= cap for k, cap in shared)
                if ok:
                    for k, _ in shared:
                        self._memory[k] += worst
            if not ok:
                self._refuse(next(c for c in caps if c.key is not None and committed[c.key] + worst > c.usd),
                             committed, worst, what)
        session = next((c for c in caps if c.key is None), None)
        if session is not None:
            if self._session + worst > session.usd:
                if shared:
                    await self._release(hold, shared, 0.0)
                self._refuse(session, {"": self._session}, worst, what)
            committed[""] = self._session
            self._session += worst
        hold.status = {c.name: self._figure(c.usd, committed[c.key or ""] + worst) for c in caps}
        return hold

    async def settle(self, hold: Hold | None, actual: float | None, ttl_s: float = HOLD_TTL_S) -> None:
        """Swap a reservation for what the request actually cost (0 for a request that failed before an answer).
        The settled hold counts until its call's row books the spend, or for `ttl_s` (a provider batch's rows may
        take longer than a request's to be written)."""
        if hold is None:
            return
        spent = actual or 0.0
        shared = [(c.key, c.usd) for c in hold.caps if c.key is not None]
        if shared:
            await self._release(hold, shared, spent, ttl_s)
        if any(c.key is None for c in hold.caps):
            self._session += spent - hold.amount
        for c in hold.caps:
            figure = hold.status[c.name]
            hold.status[c.name] = self._figure(c.usd, figure["spent_usd"] - hold.amount + spent)

    async def drop(self, hold: Hold | None, ttl_s: float = HOLD_TTL_S) -> None:
        """Let go of a settled hold whose spend ledger rows already written (or queued before) book: from now on
        it keeps nothing back. The session cap keeps the figure the hold was settled at (it counts in memory, not
        from rows), and so does a budget without a ledger (no rows book anything there)."""
        if hold is None or self.ledger is None:
            return
        shared = [(c.key, c.usd) for c in hold.caps if c.key is not None]
        if shared:
            await self._release(hold, shared, 0.0, ttl_s)

    async def _release(self, hold: Hold, shared: list[tuple[str, float]], spent: float,
                       ttl_s: float = HOLD_TTL_S) -> None:
        if self.ledger is None:
            for k, _ in shared:
                self._memory[k] += spent - hold.amount
        elif self.writer is not None and spent <= hold.amount:
            # Queued: until it lands, the hold (>= what was spent) still counts, so no cap can be passed meanwhile.
            await self.writer.put([], [], [Settle(hold.id, spent, self.clock().timestamp() + ttl_s)])
        else:
            # At once when the request cost more than its hold (a provider counting more tokens than we did): queued,
            # the caps would see less than was spent until the writer's next transaction.
            await off_loop(self.ledger.budget_settle, hold.id, spent, self.clock().timestamp(), ttl_s)

    async def status(self, tool: str) -> dict[str, dict[str, float]]:
        """Each cap that applies to `tool` with what is spent (or held) and what remains."""
        caps = self.caps(tool)
        keys = [c.key for c in caps if c.key is not None]
        if self.ledger is not None and keys:
            committed = await off_loop(self.ledger.budget_committed, keys, self.clock().timestamp())
        else:
            committed = {k: self._memory[k] for k in keys}
        committed[""] = self._session
        return {c.name: self._figure(c.usd, committed[c.key or ""]) for c in caps}

    @staticmethod
    def _figure(cap: float, committed: float) -> dict[str, float]:
        return {"cap_usd": cap, "spent_usd": committed, "remaining_usd": max(0.0, cap - committed)}

    @staticmethod
    def _refuse(cap: Cap, committed: dict[str, float], worst: float, what: str) -> None:
        spent = committed[cap.key or ""]
        raise BudgetExceeded(
            f"budget {cap.name} = ${cap.usd:.2f} would be passed: ${spent:.4f} spent or reserved, and "
            f"{what} could cost up to ${worst:.4f}; ${max(0.0, cap.usd - spent):.4f} "
            f"remains. Raise {cap.name} in the config" + (", or wait for the next UTC day" if cap.key else "")
        )

    def describe(self) -> dict[str, Any]:
        return self.config.budgets.model_dump()
