"""The exceptions tiered-mcp raises, in one tree.

    TieredError
    ├── SetupError              the operator's mistake, raised loudly at start-up
    │   ├── ConfigError         a bad config file or value
    │   └── SpecError           a bad tool spec file
    ├── CallError               a tool call that cannot run; becomes an is_error result
    │   ├── ArgumentsError      arguments break the tool's input schema
    │   ├── TierNotAllowed      a per-call tier above the configured ceiling, or not configured
    │   ├── LocalTierError      the local tier cannot serve this call (not installed, or the wrong tool)
    │   ├── BudgetExceeded      the call could pass a USD cap; names the cap and what remains
    │   ├── ToolFailed          every tier on the ladder failed; carries the attempts
    │   └── NotRecorded         ledger_durable: the call's ledger row could not be committed, so no answer is given
    └── ModelError              one model attempt failed (raised by a Model, handled by the runner)
        ├── Transient           worth retrying on the same tier
        │   ├── RateLimited     429, with the server's Retry-After when it gave one
        │   │   └── ServiceTierUnavailable  429 resource_unavailable: no capacity at the requested service tier (flex)
        │   ├── UpstreamUnavailable   5xx
        │   ├── UpstreamTimeout
        │   ├── UpstreamUnreachable   connection refused, DNS, TLS
        │   ├── UpstreamDisconnected  the connection closed before an answer came
        │   ├── UpstreamMalformed     a body that is not a chat completion (bad JSON, missing choices)
        │   ├── UpstreamErrorObject   a 200 whose body is an error object (the provider's message kept)
        │   └── BatchUnanswered       the provider's Batch API gave no answer for an item (expired, failed)
        └── Permanent           retrying the same request will not help
            ├── UpstreamRejected      4xx other than 429 (bad key, unknown model, bad request)
            ├── UpstreamNotAPI        an HTML or other non-JSON page (proxy error, captive portal, a web UI)
            ├── UpstreamMisconfigured the provider's settings cannot work (e.g. credentials twice)
            └── MissingKey            the provider's key variable is not set

Every ModelError escalates to the next tier once its tier gives up (Transient: after the provider's max_retries).

Model errors never carry an API key: messages are built from status codes and the provider's error text only.
"""

from __future__ import annotations

from typing import Any


class TieredError(Exception):
    """Base of every error tiered-mcp raises on purpose."""


class SetupError(TieredError):
    """A mistake in configuration or spec files; start-up stops with this message."""


class ConfigError(SetupError):
    """A config file or value is wrong."""


class SpecError(SetupError):
    """A tool spec file is wrong.

    Args:
        source: the file (or other origin) of the spec.
        field: dotted path of the offending field, or "" for the whole file.
        problem: what is wrong and, where it helps, how to fix it.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source, self.field, self.problem = source, field, problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class CallError(TieredError):
    """A tool call that cannot run; reported to the caller as an is_error result. `kind` names it in the receipt's
    `error_kind` ("arguments", "tier", "local", "budget", "failed", "ledger").

    Attributes:
        receipt: the receipt of the call so far (set by the runner), or None.
    """

    kind = "error"

    def __init__(self, message: str, receipt: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.receipt = receipt


class ArgumentsError(CallError):
    """Arguments that break the tool's input schema (or the schema a caller supplied)."""

    kind = "arguments"


class TierNotAllowed(CallError):
    """A per-call tier that the config does not allow."""

    kind = "tier"


class LocalTierError(CallError):
    """The local tier cannot serve this call."""

    kind = "local"


class BudgetExceeded(CallError):
    """A request that could pass a budget cap was refused before it was made."""

    kind = "budget"


class ToolFailed(CallError):
    """Every tier on the ladder failed; the receipt lists every attempt with its reason."""

    kind = "failed"


class NotRecorded(CallError):
    """With `ledger_durable`, the call's ledger row (with its spend and cache entry) could not be committed after
    the writer's retries: the answer is withheld rather than given without a record."""

    kind = "ledger"


class ModelError(TieredError):
    """One attempt at a model failed. `kind` is a short stable word used in receipts."""

    kind = "error"


class Transient(ModelError):
    """Worth retrying the same request on the same tier after a pause."""


class RateLimited(Transient):
    """The provider said 429. `retry_after` is its Retry-After in seconds, when given."""

    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceTierUnavailable(RateLimited):
    """429 `resource_unavailable`: the requested service tier (flex) has no capacity now; nothing was charged.
    Retried like any 429, then (with the tier's `service_tier_fallback`) once more on the fallback service tier."""

    kind = "resource_unavailable"


class UpstreamUnavailable(Transient):
    kind = "server_error"


class UpstreamTimeout(Transient):
    kind = "timeout"


class UpstreamUnreachable(Transient):
    kind = "unreachable"


class UpstreamDisconnected(Transient):
    kind = "disconnected"


class UpstreamMalformed(Transient):
    kind = "malformed"


class UpstreamErrorObject(Transient):
    """A 200 whose body is `{"error": {...}}` (gateways relaying a failed upstream); the message is the provider's."""

    kind = "error_object"


class BatchUnanswered(Transient):
    """A batch item the provider's Batch API did not answer: the batch expired, failed or was cancelled first."""

    kind = "batch_unanswered"


class Permanent(ModelError):
    """Retrying the same request on the same tier will not help."""


class UpstreamRejected(Permanent):
    kind = "rejected"


class MissingKey(Permanent):
    kind = "missing_key"


class UpstreamNotAPI(Permanent):
    """The endpoint answered with a page that is not the API (HTML, plain text): a wrong base_url, a proxy error
    page or a captive portal. Retrying the same URL will not help; the next tier may be elsewhere."""

    kind = "not_api"


class UpstreamMisconfigured(Permanent):
    kind = "misconfigured"
