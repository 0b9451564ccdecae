"""A throw-away PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` in a temp dir.

The cluster listens on a free loopback port only (its Unix socket lives in its own
directory), uses password authentication, and disables fsync because its data is
discarded. PostgreSQL refuses to run as root, so under root the server processes
run as the ``postgres`` system user (or ``nobody``) and the directory is theirs.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from support import free_loopback_port

SUPERUSER = "secdood"
START_TIMEOUT_S = 60


def find_server_binaries() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's layout)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if debian:
        return Path(debian[0]).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
        "/usr/lib/postgresql/*/bin; `make test-postgres` installs them on Debian"
    )


def _drop_privileges_if_root() -> tuple[Callable[[], None] | None, int | None]:
    """A ``preexec_fn`` that becomes an unprivileged user, and that user's uid."""
    if os.geteuid() != 0:
        return None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        user = pwd.getpwnam("nobody")

    def become() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return become, user.pw_uid


class TemporaryPostgres:
    """One cluster; :meth:`create_database` hands out fresh, empty databases."""

    def __init__(self) -> None:
        self.bin_dir = find_server_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="secdood-pg-"))
        self.data_dir = self.root / "data"
        self.port = free_loopback_port()
        # Characters that need URL quoting, so the URL handling is exercised too.
        self.password = f"pw@{secrets.token_hex(8)}/:"
        self._preexec, uid = _drop_privileges_if_root()
        if uid is not None:
            os.chown(self.root, uid, -1)
        self._count = 0

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            args,
            preexec_fn=self._preexec,  # leaves root before exec (PostgreSQL refuses root)
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> TemporaryPostgres:
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._preexec is not None:
            os.chown(password_file, os.stat(self.root).st_uid, -1)
        self._run(
            str(self.bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        password_file.unlink()
        options = f"-F -k {self.root} -p {self.port} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            f"--pgdata={self.data_dir}",
            f"--log={self.root / 'server.log'}",
            f"--options={options}",
            "--wait",
            f"--timeout={START_TIMEOUT_S}",
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        password = quote(self.password, safe="")
        return f"postgresql+psycopg://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        from sqlalchemy import create_engine, text

        self._count += 1
        name = f"registry_{self._count}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(
                str(self.bin_dir / "pg_ctl"),
                f"--pgdata={self.data_dir}",
                "--mode=immediate",
                "--wait",
                "stop",
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
