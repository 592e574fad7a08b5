"""The whole studio as local processes: one definition used by `make run` and by the tests.

`Stack` starts the embedded Postgres and NATS (unless external URLs are given), then auth, gallery,
inference api, inference worker and gateway as `python -m ...` children on loopback, each with its
own ports, and waits for each to report healthy before starting the next.
"""

from __future__ import annotations

import os
import signal
import subprocess  # nosec B404  # starts this project's own processes with fixed argument lists
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .infra import EmbeddedNats, EmbeddedPostgres, free_port

ORDER = ("auth", "gallery", "inference-api", "inference-worker", "gateway")


@dataclass(frozen=True)
class ServiceDef:
    name: str
    module: str
    grpc_port: int | None  # local default; None for processes without a gRPC server
    metrics_port: int | None
    http_port: int | None = None


DEFS: dict[str, ServiceDef] = {
    "auth": ServiceDef("auth", "services.auth", 50051, 9101),
    "gallery": ServiceDef("gallery", "services.gallery", 50052, 9102),
    "inference-api": ServiceDef("inference-api", "services.inference.api", 50053, 9103),
    "inference-worker": ServiceDef("inference-worker", "services.inference.worker", None, 9104),
    "gateway": ServiceDef("gateway", "services.gateway", None, 9105, 8080),
}


@dataclass
class Ports:
    grpc: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    http: int = 8080
    postgres: int = 55432
    nats: int = 14222

    @classmethod
    def defaults(cls) -> Ports:
        return cls(
            grpc={d.name: d.grpc_port for d in DEFS.values() if d.grpc_port},
            metrics={d.name: d.metrics_port for d in DEFS.values() if d.metrics_port},
            http=int(os.environ.get("EASEL_HTTP_PORT", "8080")),
        )

    @classmethod
    def free(cls) -> Ports:
        return cls(
            grpc={d.name: free_port() for d in DEFS.values() if d.grpc_port},
            metrics={d.name: free_port() for d in DEFS.values() if d.metrics_port},
            http=free_port(),
            postgres=free_port(),
            nats=free_port(),
        )


def grpc_serving(target: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(target) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # nosec B310  # loopback URL we built
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Child:
    spec: ServiceDef
    env: dict[str, str]
    log_path: Path | None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _log: IO[bytes] | None = None

    def start(self) -> None:
        out: IO[bytes] | int | None = None
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
            out = self._log
        self.proc = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", self.spec.module],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive and self.proc is not None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float) -> int | None:
        if not self.alive:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        code = self.wait(grace)
        if code is None and self.proc is not None:
            self.proc.kill()
            code = self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


class Stack:
    def __init__(
        self,
        run_dir: Path,
        models_dir: Path,
        ports: Ports | None = None,
        database_url: str | None = None,
        nats_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        grace: float = 20.0,
    ) -> None:
        self.run_dir = run_dir
        self.models_dir = models_dir
        self.ports = ports or Ports.defaults()
        self.log_dir = log_dir
        self.grace = grace
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        if database_url is None:
            self.postgres = EmbeddedPostgres(
                run_dir / "postgres", self.ports.postgres, log_file=self._log("postgres")
            )
            database_url = self.postgres.url
        if nats_url is None:
            self.nats = EmbeddedNats(run_dir / "nats", self.ports.nats, log_file=self._log("nats"))
            nats_url = self.nats.url
        self.database_url = database_url
        self.nats_url = nats_url
        self.extra_env = dict(extra_env or {})
        self.children: dict[str, Child] = {}

    def _log(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports.grpc[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports.metrics[name]}/metrics"

    def env_for(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "EASEL_DATABASE_URL": self.database_url,
                "EASEL_NATS_URL": self.nats_url,
                "EASEL_MODELS_DIR": str(self.models_dir),
                "EASEL_BLOB_DIR": str(self.run_dir / "blobs"),
                "EASEL_AUTH_TARGET": self.target("auth"),
                "EASEL_GALLERY_TARGET": self.target("gallery"),
                "EASEL_INFERENCE_TARGET": self.target("inference-api"),
                "EASEL_GRPC_HOST": "127.0.0.1",
                "EASEL_METRICS_HOST": "127.0.0.1",
                "EASEL_HTTP_HOST": "127.0.0.1",
                "EASEL_HTTP_PORT": str(self.ports.http),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        spec = DEFS[name]
        if spec.grpc_port is not None:
            env["EASEL_GRPC_PORT"] = str(self.ports.grpc[name])
        if spec.metrics_port is not None:
            env["EASEL_METRICS_PORT"] = str(self.ports.metrics[name])
        env.update(self.extra_env)
        return env

    def start_infra(self) -> None:
        if self.postgres is not None:
            self.postgres.start()
        if self.nats is not None:
            self.nats.start()

    def is_ready(self, name: str) -> bool:
        spec = DEFS[name]
        if spec.grpc_port is not None:
            return grpc_serving(self.target(name))
        if name == "gateway":
            return http_ok(f"{self.gateway_url}/healthz")
        return http_ok(f"http://127.0.0.1:{self.ports.metrics[name]}/readyz")

    def start_one(self, name: str, timeout: float = 120.0) -> Child:
        child = Child(DEFS[name], self.env_for(name), self._log(name))
        old = self.children.get(name)
        if old is not None:
            child.restarts = old.restarts + 1
        self.children[name] = child
        child.start()
        self.wait_ready(name, timeout)
        return child

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        child = self.children[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive:
                code = child.proc.returncode if child.proc else None
                raise RuntimeError(f"{name} exited with code {code} while starting{self._tail(name)}")
            if self.is_ready(name):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready after {timeout}s{self._tail(name)}")

    def _tail(self, name: str) -> str:
        path = self._log(name)
        if path is None or not path.exists():
            return ""
        lines = path.read_text(errors="replace").splitlines()[-15:]
        return "; last log lines:\n" + "\n".join(lines)

    def start(self, names: tuple[str, ...] | list[str] = ORDER) -> None:
        self.start_infra()
        for name in names:
            self.start_one(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        child = self.children[name]
        child.signal(sig)
        child.wait(30)

    def stop(self) -> None:
        for name in reversed(list(self.children)):
            self.children[name].stop(self.grace)
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()
