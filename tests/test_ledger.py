"""The ledger on both backends (SQLite and PostgreSQL, via the parametrized `ledger_target` fixture): concurrent
writers in threads and processes, usage, budgets' spend, the cache, shadow rows; and the PostgreSQL URL's handling."""

import json
import re
import stat
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone

import pytest

from tiered_mcp.cli.main import main, masked_config
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.errors import ConfigError
from tiered_mcp.core.receipts import Attempt, Receipt
from tiered_mcp.ledger.base import (
    POSTGRES_EXTRA_HINT,
    CacheEntry,
    CallWrite,
    Settle,
    ShadowRow,
    is_postgres_url,
    mask_dsn,
    open_ledger,
)
from tiered_mcp.ledger.sqlite import Ledger

CFG = config_from_dict({})


def receipt(i: int, tool: str = "classify", cost: float | None = None, session: str | None = None) -> Receipt:
    r = Receipt(tool=tool, tier="nano", model="gpt-5.4-nano", ok=True, session=session)
    r.attempts += [Attempt(tier="nano", model="gpt-5.4-nano", reason="first", outcome="invalid", input_tokens=i),
                   Attempt(tier="nano", model="gpt-5.4-nano", reason="repair", outcome="ok", input_tokens=1,
                           cost_usd=cost)]
    return r


def test_threads_lose_no_rows(ledger_target):
    led = open_ledger(ledger_target)
    threads = [threading.Thread(target=lambda k=k: [led.record(receipt(k * 100 + i), CFG) for i in range(50)])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = led.calls()
    assert len(calls) == 400 and len({c["id"] for c in calls}) == 400
    assert all(len(led.attempts(c["id"])) == 2 for c in calls)
    led.close()


def test_processes_lose_no_rows(ledger_target):
    script = textwrap.dedent(f"""
        from tiered_mcp.core.config import config_from_dict
        from tiered_mcp.core.receipts import Receipt
        from tiered_mcp.ledger.base import open_ledger
        led = open_ledger({ledger_target!r})
        for i in range(100):
            led.record(Receipt(tool="rank", tier="nano", model="m", ok=True), config_from_dict({{}}))
        led.close()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(6)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    led = open_ledger(ledger_target)
    assert len(led.calls()) == 600
    led.close()


def test_usage_groups_and_since(ledger):
    ledger.record(receipt(10), CFG)
    ledger.record(receipt(5, tool="rank"), CFG)
    ledger.record(Receipt(tool="rank", tier="mini", model="gpt-5.4-mini", ok=False, kind="shadow"), CFG)
    usage = ledger.usage(by="model")
    assert [r.key for r in usage.rows] == ["gpt-5.4-nano"]  # evidence is not an answer: it has its own lines
    assert [e.key for e in usage.evidence] == ["shadow"] and usage.evidence[0].failed == 1
    assert (usage.total.calls, usage.total.failed, usage.total.input_tokens) == (2, 0, 17)
    assert isinstance(usage.total.cost_usd, float) and isinstance(usage.total.calls, int)
    today = datetime.now(timezone.utc).date()
    assert ledger.usage(since=today.isoformat()).total.calls == 2
    assert ledger.usage(since=(today + timedelta(days=1)).isoformat()).total.calls == 0
    assert ledger.usage(since="2999-01-01").total.calls == 0
    assert ledger.call_counts() == {"classify": 1, "rank": 1}
    with pytest.raises(ValueError):
        ledger.usage(by="nope")


def test_spent_per_utc_day_tool_and_session(ledger):
    ledger.record(receipt(1, cost=0.25, session="a"), CFG)
    ledger.record(receipt(1, tool="rank", cost=0.5, session="b"), CFG)
    ledger.record(receipt(1, cost=None, session="a"), CFG)  # unknown cost: not counted
    midnight = datetime.now(timezone.utc).strftime("%Y-%m-%dT00:00:00")
    assert ledger.spent(midnight) == pytest.approx(0.75)
    assert ledger.spent(midnight, tool="rank") == pytest.approx(0.5)
    assert ledger.spent("", session="a") == pytest.approx(0.25)
    assert ledger.spent("2999-01-01T00:00:00") == 0.0


def test_store_inputs_and_stored_calls(ledger):
    ledger.record(receipt(1), CFG, {"text": "not kept"}, {"label": "x"})
    ledger.store_inputs = True
    ledger.record(receipt(1), CFG, {"text": "kept é"}, {"label": "y"})
    ledger.record(Receipt(tool="classify", ok=False), CFG, {"text": "failed"}, None)
    assert ledger.stored_calls() == [("classify", {"text": "kept é"})]
    assert ledger.stored_calls(tool="rank") == []
    assert json.loads(ledger.calls()[1]["output"]) == {"label": "y"}


def test_cache_entries_ride_with_their_call_and_expire(ledger):
    assert ledger.cache_get("k", 1000.0) is None
    ledger.write([CallWrite(receipt(1, cost=0.1), cache=CacheEntry("k", {"label": "a"}, "nano", "m1", 1060.0))],
                 [], CFG)
    ledger.write([CallWrite(receipt(2, cost=0.1), cache=CacheEntry("k", {"label": "b"}, "mini", "m2", 1060.0))],
                 [], CFG)
    assert ledger.cache_get("k", 1000.0) == ({"label": "b"}, "mini", "m2")
    assert ledger.cache_get("k", 1060.0) is None  # expired at its time, whatever the sweep has done
    assert len(ledger.calls()) == 2
    assert ledger.cache_sweep(1061.0) == 1 and ledger.cache_sweep(1061.0) == 0


def test_cache_lookups_of_many_keys_in_one_query(ledger_target):
    led = open_ledger(ledger_target)
    led.write([CallWrite(receipt(i), cache=CacheEntry(f"k{i}", {"label": f"l{i}"}, "nano", "m", 1000.0 + i))
               for i in range(3)], [], CFG)
    assert led.cache_get_many([f"k{i}" for i in range(600)], 1000.5) == {
        "k1": ({"label": "l1"}, "nano", "m"), "k2": ({"label": "l2"}, "nano", "m")}  # k0 expired; 600 keys, two queries
    assert led.cache_get_many([], 0.0) == {}
    led.close()


def test_shadow_rows_round_trip(ledger):
    row = ShadowRow(tool="classify", call_id="a1", shadow_call_id="b2", tier="nano", comparison_tier="mini",
                    score=0.75, agree=False, detail="fields", cost_usd=0.001, comparison_cost_usd=None,
                    model="gpt-5.4-nano", comparison_model="gpt-5.4-mini", spec_version="1", confidence=0.6,
                    args_key="k1")
    skipped = ShadowRow("rank", None, None, "nano", "mini", None, None, "skipped: busy", None, None, status="skipped")
    ledger.write([], [row, skipped], CFG)
    assert ledger.shadows() == [row, skipped]
    assert ledger.shadows(tool="rank") == [skipped]
    assert ledger.shadows(since="2999-01-01") == []
    assert ledger.compared("classify", "k1", "gpt-5.4-nano", "gpt-5.4-mini", "1")
    assert not ledger.compared("classify", "k1", "gpt-5.5-nano", "gpt-5.4-mini", "1")  # a new model: compare anew


def test_a_batch_is_one_transaction(ledger):
    writes = [CallWrite(receipt(i)) for i in range(5)]
    for i, w in enumerate(writes):
        w.receipt.call_id = f"id{i}"
    ledger.write(writes, [], CFG)
    assert [c["uid"] for c in ledger.calls()] == [f"id{i}" for i in range(5)]
    assert [a["n"] for a in ledger.attempts("id3")] == [1, 2]


def test_budget_holds_are_atomic_and_settle_to_the_actual_cost(ledger):
    caps = [("day:2026-12-01", 1.0), ("tool:rank:2026-12-01", 0.5)]
    assert ledger.budget_reserve(caps, 0.3, "h1", 100.0, 60.0) == (True, {k: 0.0 for k, _ in caps})
    held, committed = ledger.budget_reserve(caps, 0.3, "h2", 100.0, 60.0)
    assert not held and committed == {"day:2026-12-01": 0.3, "tool:rank:2026-12-01": 0.3}  # 0.6 > the tool's 0.5
    ledger.budget_settle("h1", 0.1, 100.0, 60.0)
    assert ledger.budget_reserve(caps, 0.3, "h3", 100.0, 60.0) == (True, {k: 0.1 for k, _ in caps})
    # A hold nobody settles (a process that died) stops counting when it expires.
    assert ledger.budget_reserve(caps, 0.3, "h4", 161.0, 60.0)[0]


def test_settlements_ride_with_a_write_and_a_written_call_drops_its_holds(ledger_target):
    led = open_ledger(ledger_target)
    day = [("day:2026-12-01", 1.0)]
    for hold in ("h1", "h2"):
        assert led.budget_reserve(day, 0.3, hold, 100.0, 60.0)[0]
    done = receipt(1, cost=0.05)
    done.day, done.holds = "2026-12-01", ["h2"]
    # h1 settles to its actual 0.1 (its call still running); h2's call is written in the same transaction, so its
    # settlement is moot: the hold goes and the call's spend (0.05) joins the total.
    led.write([CallWrite(done)], [], CFG, [Settle("h1", 0.1, 160.0), Settle("h2", 0.05, 160.0)])
    assert led.budget_committed(["day:2026-12-01"], 100.0) == {"day:2026-12-01": pytest.approx(0.15)}
    # The settlement moved h1's expiry too: still held after its first 60 s.
    assert led.budget_committed(["day:2026-12-01"], 159.0) == {"day:2026-12-01": pytest.approx(0.15)}
    led.close()


def test_a_ledger_is_private_to_its_user(tmp_path):
    path = tmp_path / "private" / "ledger.sqlite3"
    led = Ledger(path)
    led.record(receipt(1), CFG)
    led.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for p in path.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_an_unwritable_ledger_is_a_setup_error_naming_it(tmp_path):
    with pytest.raises(ConfigError) as e:
        Ledger("/proc/nope/x.db")
    assert "/proc/nope/x.db" in str(e.value) and "cannot open it" in str(e.value)


# ---- PostgreSQL specifics ----------------------------------------------------------------------------------------


def test_replicas_starting_together_create_the_schema_once(pg_url):
    errors, ledgers = [], []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        try:
            ledgers.append(open_ledger(pg_url))
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ledgers) == 8
    for i, led in enumerate(ledgers):
        led.record(receipt(i), CFG)
    assert len(ledgers[0].calls()) == 8
    for led in ledgers:
        led.close()


def test_the_url_password_is_masked_everywhere(pg_url, capsys, tmp_path):
    password = pg_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert mask_dsn(pg_url).startswith("postgresql://tiered:***@") and password not in mask_dsn(pg_url)
    led = open_ledger(pg_url)
    assert password not in led.location
    led.record(receipt(1), CFG)
    led.close()

    config = tmp_path / "c.toml"
    config.write_text(f"ledger = {json.dumps(pg_url)}\n", encoding="utf-8")
    assert masked_config(config_from_dict({"ledger": pg_url}))["ledger"] == mask_dsn(pg_url)
    assert main(["config", "--config", str(config), "--json"]) == 0
    assert main(["usage", "--config", str(config)]) == 0
    assert main(["usage", "--ledger", pg_url, "--json"]) == 0
    assert main(["report", "--ledger", pg_url]) == 0
    wrong_port = re.sub(r"@([^/:]+):\d+/", r"@\1:1/", pg_url)
    assert main(["usage", "--ledger", wrong_port]) == 2
    out = capsys.readouterr()
    assert password not in out.out + out.err
    assert "tiered:***@" in out.out and "cannot open the PostgreSQL ledger" in out.err


def test_a_bad_password_is_a_setup_error_without_the_password(pg_url):
    bad = pg_url.replace("://tiered:", "://tiered:Wr0ng-Secret-Pw", 1).split("?")[0]
    with pytest.raises(ConfigError) as e:
        open_ledger(bad)
    assert "password authentication failed" in str(e.value) and "Wr0ng-Secret-Pw" not in str(e.value)


def test_mask_dsn():
    assert mask_dsn("postgresql://u:p%40ss@db:5432/x?sslmode=require&password=q") == \
        "postgresql://u:***@db:5432/x?sslmode=require&password=***"
    assert mask_dsn("postgres://u@db/x") == "postgres://u@db/x"
    assert mask_dsn("/var/lib/ledger.sqlite3") == "/var/lib/ledger.sqlite3"
    assert is_postgres_url("PostgreSQL://h/db") and not is_postgres_url("/tmp/x.sqlite3")


def test_a_postgres_url_without_the_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(ConfigError) as e:
        open_ledger("postgresql://tiered:S3cret@127.0.0.1:1/db")
    assert POSTGRES_EXTRA_HINT in str(e.value) and "S3cret" not in str(e.value)


def test_the_config_picks_the_backend(tmp_path):
    url = "postgresql://team@db.internal/ledger"
    assert config_from_dict({"ledger": url}).ledger_target() == url
    assert config_from_dict({"ledger": str(tmp_path / "x.sqlite3")}).ledger_target() == str(tmp_path / "x.sqlite3")
    led = open_ledger(tmp_path / "y.sqlite3")
    assert isinstance(led, Ledger)
    led.close()
