"""Several `tiered-mcp serve --transport http` replicas (real processes) behind a real haproxy, sharing one ledger.

`replica_set(...)` starts N replicas on free loopback ports and haproxy running examples/haproxy.cfg with only its
ports rewritten (and a stats socket added, so that a test can see what haproxy thinks of each replica), waits until
haproxy reports every replica UP, yields a `ReplicaSet`, and stops everything it started. Synchronous on purpose:
the tests and benchmarks/replicas.py both use it.

To add a check that needs replicas (a decision taken once across replicas, a task that survives a restart): use
the `replica_set` fixture in tests/conftest.py, which skips without haproxy and gives a PostgreSQL schema of its own:

    async def test_x(replica_set):
        with replica_set(config="[budgets]\\ndaily_usd = 1.0\\n") as rs:
            ... rs.url (the balancer), rs.dsn (the ledger), rs.replicas[1].kill() / .restart(), rs.status()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "examples" / "haproxy.cfg"
ENV_REQUIRE = "TIERED_MCP_REQUIRE_HAPROXY"  # set (as .ci/run does) to fail rather than skip without haproxy


class Unavailable(Exception):
    """haproxy cannot be had; the message says how to get it."""


def haproxy_binary() -> str:
    """The haproxy executable (PATH, else Debian's /usr/sbin, which a non-root PATH may lack).

    Raises:
        Unavailable: haproxy is not installed.
    """
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                             if os.access(p, os.X_OK)), None)
    if not found:
        raise Unavailable("haproxy is not installed (Debian: apt-get install haproxy)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def haproxy_config(template: str, lb_port: int, replica_ports: Sequence[int], stats_port: int) -> str:
    """The shipped config with its frontend on `lb_port`, one `server` line per replica port, and the runtime API on
    loopback TCP `stats_port` (a TCP socket rather than a Unix one: the tests' network guard allows loopback only).

    Raises:
        ValueError: the template no longer has the lines this rewrites (keep examples/haproxy.cfg in step).
    """
    lines = template.splitlines()
    servers = [i for i, line in enumerate(lines) if re.match(r"\s+server r\d+ 127\.0\.0\.1:\d+\s*$", line)]
    binds = [i for i, line in enumerate(lines) if re.match(r"\s+bind 127\.0\.0\.1:\d+\s*$", line)]
    globals_ = [i for i, line in enumerate(lines) if line.strip() == "global"]
    if not servers or len(binds) != 1 or len(globals_) != 1:
        raise ValueError("examples/haproxy.cfg must keep one `global`, one `bind 127.0.0.1:PORT` and "
                         "`server rN 127.0.0.1:PORT` lines")
    indent = re.match(r"\s+", lines[servers[0]]).group(0)  # type: ignore[union-attr]
    new_servers = [f"{indent}server r{k + 1} 127.0.0.1:{p}" for k, p in enumerate(replica_ports)]
    lines[binds[0]] = re.sub(r":\d+", f":{lb_port}", lines[binds[0]])
    lines[servers[0]:servers[-1] + 1] = new_servers
    lines.insert(globals_[0] + 1, f"    stats socket ipv4@127.0.0.1:{stats_port} level admin")
    return "\n".join(lines) + "\n"


class Replica:
    """One `tiered-mcp serve --transport http` process on a fixed port; its logs in `folder`."""

    def __init__(self, name: str, port: int, argv: Sequence[str], env: Mapping[str, str], folder: Path) -> None:
        self.name, self.port, self.argv, self.env, self.folder = name, port, list(argv), dict(env), folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        with (open(self.folder / f"stdout.{self.starts}.log", "wb") as out,
              open(self.folder / f"stderr.{self.starts}.log", "wb") as err):
            self.proc = subprocess.Popen([*self.argv, "--port", str(self.port)], env=self.env, stdout=out,
                                         stderr=err)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not healthy(self.base):
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.name} not healthy after {timeout} s: {self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return (self.folder / f"stderr.{self.starts}.log").read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: uvicorn's graceful shutdown lets the requests in flight finish."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever it had in flight is lost."""
        self._end(signal.SIGKILL, 10)

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def _end(self, sig: int, timeout: float) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Balancer:
    """haproxy in the foreground (-db) with a config written to `folder`."""

    def __init__(self, binary: str, config: str, folder: Path, port: int, stats_port: int) -> None:
        self.port, self.stats_port = port, stats_port
        self.config = folder / "haproxy.cfg"
        self.config.write_text(config, encoding="utf-8")
        self.log = folder / "haproxy.log"
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False)
        if check.returncode:
            raise RuntimeError(f"haproxy rejects the config: {check.stdout}{check.stderr}")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=out,
                                         stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        """One command on haproxy's runtime API (the stats socket), e.g. "show stat"."""
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=5) as s:
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self) -> dict[str, str]:
        """haproxy's view of each replica: {"r1": "UP", "r2": "DOWN", ...} (transitions read "UP 1/2" etc.)."""
        text = self.command("show stat")
        header, *rows = [line for line in text.splitlines() if line]
        names = header.lstrip("# ").split(",")
        out = {}
        for row in rows:
            values = dict(zip(names, row.split(","), strict=False))
            if values.get("pxname") == "tiered" and values.get("svname") not in ("BACKEND", "FRONTEND"):
                out[values["svname"]] = values["status"]
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ReplicaSet:
    """What `replica_set` started: `url` is the balancer (clients use `url + "/mcp"`), `dsn` the shared ledger."""

    def __init__(self, balancer: Balancer, replicas: list[Replica], dsn: str) -> None:
        self.balancer, self.replicas, self.dsn = balancer, replicas, dsn

    @property
    def url(self) -> str:
        return self.balancer.url

    def status(self) -> dict[str, str]:
        return self.balancer.status()

    def wait_status(self, want: Mapping[str, str], timeout: float = 30) -> None:
        """Until haproxy reports each named replica in the given state ("UP" or "DOWN")."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.status()
            if all(seen.get(name) == state for name, state in want.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy reports {seen}, waited for {dict(want)}")
            time.sleep(0.05)


def replica_env(upstream_base_url: str, state: Path, api_key: str) -> dict[str, str]:
    """A replica's environment: the upstream and its key, a state dir of its own; never the developer's config."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "PYTHONPATH") if k in os.environ}
    env.update(OPENAI_API_KEY=api_key, OPENAI_BASE_URL=upstream_base_url, XDG_STATE_HOME=str(state / "state"),
               XDG_CONFIG_HOME=str(state / "config"))
    return env


@contextlib.contextmanager
def replica_set(dsn: str, upstream_base_url: str, folder: Path, n: int = 3, *, config: str | None = None,
                args: Sequence[str] = ("--stateless",), api_key: str = "sk-test-replicas",
                env: Mapping[str, str] | None = None, python: str = sys.executable) -> Iterator[ReplicaSet]:
    """N replicas on ledger `dsn` behind haproxy, all UP; stopped (SIGTERM) and haproxy with them afterwards.

    Args:
        dsn: the shared ledger (a postgresql:// URL; a SQLite file would work for one replica only).
        upstream_base_url: the OpenAI-compatible upstream, ending in /v1.
        folder: where configs and logs go (a test's tmp_path).
        n: how many replicas.
        config: TOML for every replica's --config (e.g. a shared `[budgets]`), or None for the built-in one.
        args: more `serve` arguments for every replica (--stateless by default, as examples/haproxy.cfg expects).
        api_key: OPENAI_API_KEY for the replicas.
        env: more environment for the replicas.
        python: the interpreter that runs `-m tiered_mcp`.
    """
    binary = haproxy_binary()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [python, "-m", "tiered_mcp", "serve", "--transport", "http", "--ledger", dsn, *args]
    if config is not None:
        (folder / "config.toml").write_text(config, encoding="utf-8")
        argv += ["--config", str(folder / "config.toml")]
    base_env = {**replica_env(upstream_base_url, folder, api_key), **(env or {})}
    replicas = [Replica(f"r{k + 1}", free_port(), argv, base_env, folder / f"r{k + 1}") for k in range(n)]
    balancer: Balancer | None = None
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        lb_port, stats_port = free_port(), free_port()
        cfg = haproxy_config(HAPROXY_CFG.read_text(encoding="utf-8"), lb_port, [r.port for r in replicas],
                             stats_port)
        balancer = Balancer(binary, cfg, folder, lb_port, stats_port)
        rs = ReplicaSet(balancer, replicas, dsn)
        deadline = time.monotonic() + 30
        while not _listening(stats_port):
            if balancer.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {balancer.log.read_text(encoding='utf-8')}")
            time.sleep(0.02)
        rs.wait_status({r.name: "UP" for r in replicas})
        yield rs
    finally:
        if balancer is not None:
            balancer.stop()
        for r in replicas:
            r.stop()
