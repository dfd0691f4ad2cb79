"""The ledger under concurrent writers: threads in one process and several processes on one file."""

import subprocess
import sys
import textwrap
import threading

from tiered_mcp.config import config_from_dict
from tiered_mcp.ledger import Ledger
from tiered_mcp.receipts import Attempt, Receipt

CFG = config_from_dict({})


def receipt(i: int) -> Receipt:
    r = Receipt(tool="classify", tier="nano", model="gpt-5.4-nano", ok=True)
    r.attempts += [Attempt(tier="nano", model="gpt-5.4-nano", reason="first", outcome="invalid", input_tokens=i),
                   Attempt(tier="nano", model="gpt-5.4-nano", reason="repair", outcome="ok", input_tokens=1)]
    return r


def test_threads_lose_no_rows(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    threads = [threading.Thread(target=lambda k=k: [led.record(receipt(k * 100 + i), CFG) for i in range(50)])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(led.calls()) == 400
    assert all(len(led.attempts(c["id"])) == 2 for c in led.calls())


def test_processes_lose_no_rows(tmp_path):
    path = tmp_path / "l.sqlite3"
    script = textwrap.dedent(f"""
        from tiered_mcp.config import config_from_dict
        from tiered_mcp.ledger import Ledger
        from tiered_mcp.receipts import Receipt
        led = Ledger({str(path)!r})
        for i in range(100):
            led.record(Receipt(tool="rank", tier="nano", model="m", ok=True), config_from_dict({{}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(6)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    assert len(Ledger(path).calls()) == 600


def test_usage_groups_and_since(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    led.record(receipt(10), CFG)
    rows, total = led.usage(by="model")
    assert [r.key for r in rows] == ["gpt-5.4-nano"] and total.calls == 1 and total.input_tokens == 11
    assert led.usage(since="2999-01-01")[1].calls == 0
