"""`make run`: the whole studio on one machine, kept alive the way Kubernetes would keep it.

Starts embedded Postgres and NATS (unless `EASEL_DATABASE_URL` / `EASEL_NATS_URL` point elsewhere),
then every service in dependency order, prints the URL, restarts a process that dies (with a log line
saying so, and a growing back-off), and stops everything cleanly on Ctrl-C or SIGTERM. A lock file
makes a second `make run` say that one is already up instead of failing on a busy port.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from services.common.logs import setup_logging

from .infra import EmbeddedNats, EmbeddedPostgres, port_open
from .stack import DEFS, ORDER, Ports, Stack

log = logging.getLogger("easel.supervisor")

MAX_BACKOFF_S = 30.0


def models_note(models_dir: Path) -> str:
    """Says, when only the bundled test models are installed, that their pictures are noise and how
    to add a real model (the first thing a new user needs to know)."""
    try:
        installed = [p.name for p in models_dir.iterdir() if (p / "easel-model.json").is_file()]
    except OSError:
        return ""
    if any(not name.startswith("tiny-") for name in installed):
        return ""
    return (
        "  The bundled models (tiny-*) are random weights for testing: their pictures are noise.\n"
        "  Add a real one: drop a .safetensors checkpoint into "
        f"{models_dir / 'checkpoints'}/ (picked up in seconds),\n"
        "  or `make models MODELS=/path/to/model.safetensors` (or a hub id, where the network allows).\n"
        "  See docs/models.md.\n"
    )


class AlreadyRunning(SystemExit):
    pass


def _acquire_lock(run_dir: Path) -> IO[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / "supervisor.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        raise AlreadyRunning(
            f"easel: the studio is already running (supervisor pid {pid}) from {run_dir.resolve()}; "
            f"open it in your browser, or stop it with Ctrl-C in its terminal or `kill {pid}`."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _check_ports(ports: Ports, external_db: bool, external_nats: bool) -> None:
    wanted: list[tuple[str, int, str]] = [("gateway", ports.http, "EASEL_HTTP_PORT")]
    if not external_db:
        wanted.append(("postgres", ports.postgres, "EASEL_PG_PORT"))
    if not external_nats:
        wanted.append(("nats", ports.nats, "EASEL_NATS_PORT"))
    for name, port in ports.grpc.items():
        wanted.append((name, port, f"EASEL_{name.upper().replace('-', '_')}_GRPC_PORT"))
    for name, port in ports.metrics.items():
        wanted.append((name, port, f"EASEL_{name.upper().replace('-', '_')}_METRICS_PORT"))
    busy = [(n, p, v) for n, p, v in wanted if port_open("127.0.0.1", p)]
    if busy:
        lines = [f"port {p} ({n}) is in use by another program; free it or set {v}" for n, p, v in busy]
        raise SystemExit("easel: " + "; ".join(lines))


def _ports_from_env() -> Ports:
    ports = Ports.defaults()
    env = os.environ
    ports.postgres = int(env.get("EASEL_PG_PORT", ports.postgres))
    ports.nats = int(env.get("EASEL_NATS_PORT", ports.nats))
    for name in ports.grpc:
        ports.grpc[name] = int(env.get(f"EASEL_{name.upper().replace('-', '_')}_GRPC_PORT", ports.grpc[name]))
    for name in ports.metrics:
        key = f"EASEL_{name.upper().replace('-', '_')}_METRICS_PORT"
        ports.metrics[name] = int(env.get(key, ports.metrics[name]))
    return ports


@dataclass
class Supervisor:
    stack: Stack
    stopping: bool = False
    next_restart: dict[str, float] = field(default_factory=dict)
    backoff: dict[str, float] = field(default_factory=dict)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stop requested (%s): stopping every process", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self.stack.start_infra()
            for name in ORDER:
                if self.stopping:
                    break
                log.info("starting %s", name)
                self.stack.start_one(name, timeout=600)
            if not self.stopping:
                url = self.stack.gateway_url
                log.info("studio ready at %s", url)
                print(
                    f"\n  Easel is up: {url}\n  Press Ctrl-C to stop.\n{models_note(self.stack.models_dir)}",
                    flush=True,
                )
            while not self.stopping:
                self._watch()
                time.sleep(0.5)
        finally:
            self.stack.stop()
            log.info("stopped cleanly")
        return 0

    def _watch(self) -> None:
        self._watch_infra("postgres", self.stack.postgres)
        self._watch_infra("nats", self.stack.nats)
        for name, child in list(self.stack.children.items()):
            if child.alive:
                if self.backoff.get(name) and time.monotonic() - self.next_restart.get(name, 0) > 60:
                    self.backoff[name] = 0.0  # stayed up a minute: forget earlier crashes
                continue
            now = time.monotonic()
            due = self.next_restart.get(name)
            if due is None:
                code = child.proc.returncode if child.proc else None
                delay = min(MAX_BACKOFF_S, max(1.0, self.backoff.get(name, 0.0) * 2))
                self.backoff[name] = delay
                self.next_restart[name] = now + delay
                log.warning(
                    "process %s exited with code %s; restarting in %.0fs",
                    name,
                    code,
                    delay,
                    extra={"service_name": name, "exit_code": code, "restarts": child.restarts},
                )
            elif now >= due:
                del self.next_restart[name]
                log.info("restarting %s (restart #%d)", name, child.restarts + 1)
                try:
                    self.stack.start_one(name, timeout=600)
                except (RuntimeError, TimeoutError) as exc:
                    log.error("restart of %s failed: %s", name, str(exc).splitlines()[0])

    def _watch_infra(self, name: str, server: EmbeddedPostgres | EmbeddedNats | None) -> None:
        if server is None or server.proc is None or server.proc.poll() is None:
            return
        log.warning("%s exited with code %s; restarting it", name, server.proc.returncode)
        try:
            server.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            log.error("restart of %s failed: %s", name, exc)


def main(argv: list[str]) -> int:
    if argv[:1] != ["run"]:
        print("usage: python -m services.local run", file=sys.stderr)
        return 2
    setup_logging("supervisor", os.environ.get("EASEL_LOG_LEVEL", "INFO"))
    root = Path.cwd()
    run_dir = Path(os.environ.get("EASEL_RUN_DIR", root / ".run"))
    models_dir = Path(os.environ.get("EASEL_MODELS_DIR", root / "models")).resolve()
    try:
        lock = _acquire_lock(run_dir)
    except AlreadyRunning as exc:
        print(exc.code, file=sys.stderr)
        return 1
    ports = _ports_from_env()
    database_url = os.environ.get("EASEL_DATABASE_URL")
    nats_url = os.environ.get("EASEL_NATS_URL")
    try:
        _check_ports(ports, database_url is not None, nats_url is not None)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 1
    stack = Stack(
        run_dir=run_dir,
        models_dir=models_dir,
        ports=ports,
        database_url=database_url,
        nats_url=nats_url,
        log_dir=None,
        grace=float(os.environ.get("EASEL_SHUTDOWN_GRACE_S", "20")),
    )
    if set(DEFS) != set(ORDER):
        raise RuntimeError("services.local.stack: DEFS and ORDER name different services")
    try:
        return Supervisor(stack).run()
    finally:
        lock.close()
