"""`make run`'s supervisor: up with embedded Postgres and NATS, one instance at a time, restarts a dead
process, stops cleanly on SIGTERM, and keeps data across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from services.local.infra import free_port
from services.local.stack import DEFS, http_ok

ROOT = Path(__file__).resolve().parents[2]


def _env(run_dir: Path, models_dir: Path, http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EASEL_DATABASE_URL", "EASEL_NATS_URL")}
    env.update(
        EASEL_RUN_DIR=str(run_dir),
        EASEL_MODELS_DIR=str(models_dir),
        EASEL_HTTP_PORT=str(http_port),
        EASEL_PG_PORT=str(free_port()),
        EASEL_NATS_PORT=str(free_port()),
        EASEL_SHUTDOWN_GRACE_S="10",
        PYTHONUNBUFFERED="1",
    )
    for name, spec in DEFS.items():
        key = name.upper().replace("-", "_")
        if spec.grpc_port:
            env[f"EASEL_{key}_GRPC_PORT"] = str(free_port())
        if spec.metrics_port:
            env[f"EASEL_{key}_METRICS_PORT"] = str(free_port())
    return env


class Supervisor:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.local", "run"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{env['EASEL_HTTP_PORT']}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-4000:]
            if http_ok(f"{self.url}/readyz"):
                return
            time.sleep(0.3)
        raise AssertionError("studio not ready:\n" + self.output()[-4000:])

    def child(self, module: str) -> psutil.Process:
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if module in proc.cmdline():
                    return proc
            except psutil.NoSuchProcess:
                continue
        raise AssertionError(f"no child running {module}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        finally:
            self._log.close()


def _post(url: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture
def run_env(tmp_path: Path, models_dir: Path) -> Iterator[dict[str, str]]:
    yield _env(tmp_path / "run", models_dir, free_port())


def test_supervisor_lifecycle(run_env: dict[str, str], tmp_path: Path) -> None:
    first = Supervisor(run_env, tmp_path / "first.log")
    try:
        first.wait_ready()
        # The URL is printed once the supervisor has seen every process healthy, a moment after /readyz.
        deadline = time.monotonic() + 30
        while f"Easel is up: {first.url}" not in first.output():
            assert time.monotonic() < deadline, first.output()[-3000:]
            time.sleep(0.1)
        # With only the bundled test models, the banner says their pictures are noise and how to add one.
        assert "random weights for testing" in first.output() and "checkpoints" in first.output()
        name = f"sv{uuid.uuid4().hex[:8]}"
        password = "a long and unusual passphrase"
        status, _ = _post(
            f"{first.url}/api/v1/auth/register",
            {"username": name, "email": f"{name}@example.com", "password": password},
        )
        assert status == 201

        # A second `make run` says so instead of failing obscurely.
        second = subprocess.run(
            [sys.executable, "-m", "services.local", "run"],
            cwd=ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "already running" in second.stderr
        assert first.proc.poll() is None

        # A process that dies is restarted, with a log line saying so.
        victim = first.child("services.gallery")
        victim.kill()
        deadline = time.monotonic() + 60
        while "process gallery exited" not in first.output():
            assert time.monotonic() < deadline, first.output()[-3000:]
            time.sleep(0.2)
        first.wait_ready(timeout=60)
        assert first.child("services.gallery").pid != victim.pid

        children = psutil.Process(first.proc.pid).children(recursive=True)
    finally:
        code = first.stop()
    assert code == 0, first.output()[-3000:]
    assert "stopped cleanly" in first.output()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"

    # Data survives a restart: the account registered above can log in.
    again = Supervisor(run_env, tmp_path / "again.log")
    try:
        again.wait_ready()
        status, body = _post(f"{again.url}/api/v1/auth/login", {"username": name, "password": password})
        assert status == 200, body
        assert body["token"]
    finally:
        code = again.stop()
    assert code == 0, again.output()[-3000:]
