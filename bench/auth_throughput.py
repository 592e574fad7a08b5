"""Authenticate calls per second through the gateway, next to a bare gRPC no-op in the same run.

Starts a real Postgres, the auth service and the gateway on free loopback ports, registers a user,
creates an API key, then for a fixed time and concurrency measures:
  1. bare gRPC no-op: the standard health Check against the auth service (the floor of one gRPC hop),
  2. Auth.Authenticate called directly over gRPC with the API key,
  3. GET /api/v1/auth/me through the gateway with `Authorization: Bearer <api key>`
     (HTTP parse + Authenticate over gRPC + JSON answer).
Prints calls/s, p50 and p99 latency, and each figure's ratio to the no-op baseline.

With --flood, also times Auth.Login (the service's own argon2 cost) idle, then while `--concurrency`
callers sign up as fast as they can from 8 client addresses (the per-address sign-up limit lifted,
as if each came from many), and prints the ratio: sign-up hashing must not starve sign-ins.

    .venv/bin/python bench/auth_throughput.py [--seconds 10] [--concurrency 32] [--flood]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easel.auth.v1 import auth_pb2, auth_pb2_grpc
from services.local.stack import Ports, Stack


async def _drive(
    call: Callable[[], Awaitable[None]], seconds: float, concurrency: int
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return len(latencies), latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


FLOOD_ADDRESSES = 8
UNLIMITED = "100000000"
LOGIN_SAMPLES = 7


async def login_under_flood(
    auth: auth_pb2_grpc.AuthStub, name: str, password: str, concurrency: int
) -> list[tuple[str, float, float, float]]:
    """Login latency idle and during a sign-up flood, as (label, ratio to idle, p50 ms, max ms)."""
    request = auth_pb2.LoginRequest(username=name, password=password, client_address="192.0.2.1")

    async def timed_logins() -> list[float]:
        out = []
        for _ in range(LOGIN_SAMPLES):
            t0 = time.perf_counter()
            await auth.Login(request, timeout=120)
            out.append(time.perf_counter() - t0)
        return out

    await auth.Login(request, timeout=120)  # warm: the address becomes known, the path is hot
    idle = await timed_logins()
    stop = asyncio.Event()
    signups = 0

    async def flooder(i: int) -> None:
        nonlocal signups
        while not stop.is_set():
            user = f"flood{uuid.uuid4().hex[:12]}"
            await auth.Register(
                auth_pb2.RegisterRequest(
                    username=user,
                    email=f"{user}@example.com",
                    password="flood passphrase 123",
                    client_address=f"198.51.100.{i % FLOOD_ADDRESSES}",
                ),
                timeout=300,
            )
            signups += 1

    tasks = [asyncio.create_task(flooder(i)) for i in range(concurrency)]
    await asyncio.sleep(1.0)  # let the sign-up hash queue fill
    busy = await timed_logins()
    stop.set()
    await asyncio.gather(*tasks)
    idle_p50, busy_p50 = _pct(idle, 0.5), _pct(busy, 0.5)
    print(f"sign-ups completed during the flood: {signups}")
    return [
        ("Auth.Login idle", 1.0, idle_p50, max(idle) * 1000),
        ("Auth.Login in a sign-up flood", busy_p50 / idle_p50, busy_p50, max(busy) * 1000),
    ]


async def run(
    stack: Stack, seconds: float, concurrency: int, flood: bool = False
) -> list[tuple[str, float, float, float]]:
    base = stack.gateway_url
    name = f"bench{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        reg = {"username": name, "email": f"{name}@example.com", "password": "bench passphrase 123"}
        async with http.post(f"{base}/api/v1/auth/register", json=reg) as resp:
            assert resp.status == 201, await resp.text()
        login = {"username": name, "password": reg["password"]}
        async with http.post(f"{base}/api/v1/auth/login", json=login) as resp:
            token = (await resp.json())["token"]
        async with http.post(
            f"{base}/api/v1/keys", json={"name": "bench"}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            key = (await resp.json())["key"]

        channel = grpc.aio.insecure_channel(stack.target("auth"))
        health = health_pb2_grpc.HealthStub(channel)
        auth = auth_pb2_grpc.AuthStub(channel)

        async def noop() -> None:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)

        async def authenticate() -> None:
            await auth.Authenticate(auth_pb2.AuthenticateRequest(token=key), timeout=10)

        headers = {"Authorization": f"Bearer {key}"}

        async def through_gateway() -> None:
            async with http.get(f"{base}/api/v1/auth/me", headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

        rows = []
        if flood:
            rows.extend(await login_under_flood(auth, name, reg["password"], concurrency))
        for label, call in (
            ("gRPC no-op (health Check)", noop),
            ("Auth.Authenticate over gRPC", authenticate),
            ("gateway GET /api/v1/auth/me", through_gateway),
        ):
            await _drive(call, min(2.0, seconds / 5), concurrency)  # warm-up
            count, lat = await _drive(call, seconds, concurrency)
            rows.append((label, count / seconds, _pct(lat, 0.5), _pct(lat, 0.99)))
        await channel.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--flood", action="store_true", help="also time logins during a sign-up flood")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easel-bench-") as tmp:
        run_dir = Path(tmp)
        stack = Stack(
            run_dir,
            run_dir / "models",
            ports=Ports.free(),
            nats_url="nats://127.0.0.1:1",
            log_dir=run_dir / "logs",
            grace=5,
            # One user and one address make every request here: the gateway's request rate limits
            # and the per-address sign-up limit would measure themselves instead.
            extra_env={
                "EASEL_AUTH_SIGNUP_PER_ADDRESS": UNLIMITED,
                "EASEL_RATE_LIMIT_USER_PER_S": UNLIMITED,
                "EASEL_RATE_LIMIT_USER_BURST": UNLIMITED,
                "EASEL_RATE_LIMIT_CLIENT_PER_S": UNLIMITED,
                "EASEL_RATE_LIMIT_CLIENT_BURST": UNLIMITED,
            },
        )
        try:
            stack.start_infra()
            stack.start_one("auth")
            stack.start_one("gateway")
            rows = asyncio.run(run(stack, args.seconds, args.concurrency, args.flood))
        finally:
            stack.stop()
    if args.flood:
        flood, rows = rows[:2], rows[2:]
        head = f"| {'login (argon2 at the service defaults)':<40} | {'p50 ms':>8} | {'max ms':>8} |"
        print(f"\n{head} {'vs idle':>7} |")
        print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
        for label, ratio, p50, worst in flood:
            print(f"| {label:<40} | {p50:>8.1f} | {worst:>8.1f} | {ratio:>7.2f} |")
    baseline = rows[0][1]
    print(f"\nconcurrency {args.concurrency}, {args.seconds:.0f} s per row, all processes on this machine\n")
    print(f"| {'path':<30} | {'calls/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'vs no-op':>8} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for label, rate, p50, p99 in rows:
        print(f"| {label:<30} | {rate:>9.0f} | {p50:>7.2f} | {p99:>7.2f} | {rate / baseline:>8.2f} |")


if __name__ == "__main__":
    main()
