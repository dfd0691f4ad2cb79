"""A PostgreSQL server for the tests: the one named by $TIERED_MCP_TEST_PG_DSN, else a throwaway cluster.

The throwaway cluster is made with the installed server binaries (`initdb`, `pg_ctl`: on PATH, from `pg_config
--bindir`, or Debian's /usr/lib/postgresql/*/bin) in a temp dir, listens on a free 127.0.0.1 port only, needs a
random password (so the tests also see a URL with a password in it), runs without fsync, and is stopped and deleted
when the session ends. initdb refuses to run as root: under root the cluster runs as the `postgres` user (made by
Debian's packages), else as `nobody`.

Each test gets a schema of its own (`schema_url`), dropped afterwards, so the tests share one server.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV_DSN = "TIERED_MCP_TEST_PG_DSN"
ENV_REQUIRE = "TIERED_MCP_REQUIRE_PG"  # set (as .ci/run does) to fail rather than skip when there is no server


class Unavailable(Exception):
    """No PostgreSQL server can be had for the tests; the message says why and how to get one."""


def bin_dir() -> Path | None:
    """A folder holding both initdb and pg_ctl, newest version first, or None."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if
                    Path(p).parent.name.isdigit() else 0, reverse=True)
    candidates += [Path(p) for p in debian]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A throwaway cluster: `start()` returns its URL, `stop()` removes every trace of it."""

    def __init__(self, bins: Path) -> None:
        self.bins = bins
        self.root = Path(tempfile.mkdtemp(prefix="tiered-mcp-pg-"))
        self.data = self.root / "data"
        self.user: Any = None  # a pwd entry, when running as root
        if getattr(os, "geteuid", lambda: -1)() == 0:
            import pwd

            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.user is None:
                raise Unavailable("running as root and there is no postgres or nobody user to run initdb as")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run([str(self.bins / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=self.root, check=False, **user)  # type: ignore[arg-type]

    def start(self) -> str:
        password = secrets.token_urlsafe(18)
        pwfile = self.root / "pw"
        pwfile.write_text(password + "\n", encoding="utf-8")
        if self.user:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        out = self._run("initdb", "-D", str(self.data), "-U", "tiered", f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        if out.returncode:
            raise Unavailable(f"initdb failed: {out.stderr.strip() or out.stdout.strip()}")
        for _ in range(5):  # the free port may be taken between choosing and binding it
            port = _free_port()
            options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            out = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                            "-w", "-t", "60", "start")
            if out.returncode == 0:
                return f"postgresql://tiered:{password}@127.0.0.1:{port}/postgres"
        log = (self.root / "server.log").read_text(encoding="utf-8", errors="replace")[-2000:]
        raise Unavailable(f"pg_ctl start failed: {out.stderr.strip()}\n{log}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def server() -> Iterator[str]:
    """The URL of a server the tests may create schemas in.

    Raises:
        Unavailable: psycopg is missing, or no DSN is given and no server binaries are installed.
    """
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed: pip install -e '.[test,local,postgres]'") from None
    if os.environ.get(ENV_DSN):
        yield os.environ[ENV_DSN]
        return
    bins = bin_dir()
    if bins is None:
        raise Unavailable(f"no PostgreSQL server: set {ENV_DSN}=postgresql://... or install the server binaries "
                          "(Debian: apt-get install postgresql)")
    cluster = Cluster(bins)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def with_params(dsn: str, **params: str) -> str:
    """The URL with libpq parameters added to its query."""
    from urllib.parse import quote

    extra = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return dsn + ("&" if "?" in dsn else "?") + extra


@contextmanager
def schema_url(dsn: str) -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema; the schema is dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield with_params(dsn, options=f"-csearch_path={name}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
