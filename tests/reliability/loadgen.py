"""A bounded load generator: simulated users browsing, generating and using their gallery.

Used by `tests/reliability/test_load.py` (a short run inside `make test`) and by
`bench/load_test.py` (the full 50-user, 60-second run). Every request goes through the gateway.

What a run promises (checked by `LoadReport.problems`):
- no 5xx and no transport error, ever;
- 4xx only where a limit applies: 429 on job submission (jobs in flight, daily quota), with a
  Retry-After header; every other answer is 2xx or 304;
- every accepted job ends completed, failed (with an error code and message) or cancelled, within
  the drain time after the load stops;
- the resident memory (RSS, psutil) of every process is flat after warm-up: its peak over the last
  fifth of the run is at most `rss_tolerance` above (and `rss_slack_mib` over) its peak in the fifth
  right after warm-up. A leak of even a few kilobytes per request shows at these rates; the noise of
  allocator arenas and caches settling stays inside.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import psutil

from .client import TERMINAL, User, body_of, create_key, read_events, register

MIB = 1024 * 1024
RATE_LIMITED = frozenset({"POST /api/v1/generations"})
WORDS = (
    "harbour lighthouse orchard meadow fox heron glacier canyon lantern teapot violin comet "
    "garden bridge river tower cloud forest desert island market"
).split()
SQLISH = ("it's", "100%", "snake_case", "a\\b", '"quoted"')


@dataclass
class LoadConfig:
    users: int = 12
    duration_s: float = 15.0
    # Memory is compared from here on; the default is 40% of the run.
    warmup_s: float | None = None
    steps: int = 2
    size: int = 64
    # A user with this many jobs it has not yet seen end polls them instead of submitting more.
    max_outstanding: int = 3
    # Users who keep more jobs in hand than the studio's in-flight limit (8): they meet the 429s.
    greedy_users: int = 1
    greedy_outstanding: int = 10
    think_s: float = 0.15
    drain_timeout_s: float = 180.0
    sample_interval_s: float = 0.25
    rss_tolerance: float = 0.10
    rss_slack_mib: float = 32.0
    seed: int = 20240601

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else 0.4 * self.duration_s


@dataclass
class Call:
    label: str
    status: int
    seconds: float


@dataclass
class LoadReport:
    config: LoadConfig
    calls: list[Call] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected_429: int = 0
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    started: float = 0.0
    elapsed: float = 0.0
    drain_s: float = 0.0

    # --- figures -------------------------------------------------------------------------------

    def statuses(self) -> Counter[int]:
        return Counter(c.status for c in self.calls)

    def by_label(self) -> dict[str, list[Call]]:
        out: dict[str, list[Call]] = defaultdict(list)
        for c in self.calls:
            out[c.label].append(c)
        return dict(sorted(out.items()))

    def job_outcomes(self) -> Counter[str]:
        return Counter(j.get("status", "unknown") for j in self.jobs.values())

    def job_seconds(self) -> list[float]:
        out = []
        for j in self.jobs.values():
            if j.get("status") == "completed" and j.get("created_at") and j.get("finished_at"):
                start = datetime.fromisoformat(j["created_at"].replace("Z", "+00:00"))
                end = datetime.fromisoformat(j["finished_at"].replace("Z", "+00:00"))
                out.append((end - start).total_seconds())
        return out

    def memory(self) -> dict[str, dict[str, float]]:
        """Per process: RSS (MiB) at start, peak right after warm-up, peak at the end, and growth."""
        cfg = self.config
        warm_from, warm_to = cfg.warmup, cfg.warmup + 0.2 * cfg.duration_s
        end_from = 0.8 * cfg.duration_s
        out: dict[str, dict[str, float]] = {}
        for name, samples in sorted(self.rss.items()):
            if not samples:
                continue
            warm = [rss for t, rss in samples if warm_from <= t <= warm_to] or [samples[0][1]]
            end = [rss for t, rss in samples if end_from <= t <= cfg.duration_s] or [samples[-1][1]]
            warm_peak, end_peak = max(warm), max(end)
            limit = warm_peak * (1 + cfg.rss_tolerance) + cfg.rss_slack_mib * MIB
            out[name] = {
                "start_mib": samples[0][1] / MIB,
                "warm_peak_mib": warm_peak / MIB,
                "end_peak_mib": end_peak / MIB,
                "growth_pct": 100.0 * (end_peak - warm_peak) / warm_peak,
                "limit_mib": limit / MIB,
                "flat": float(end_peak <= limit),
            }
        return out

    def memory_problems(self) -> list[str]:
        return [
            f"{name}: RSS {m['warm_peak_mib']:.0f} MiB after warm-up, {m['end_peak_mib']:.0f} MiB at the "
            f"end (limit {m['limit_mib']:.0f} MiB)"
            for name, m in self.memory().items()
            if not m["flat"]
        ]

    def summary(self) -> dict[str, Any]:
        # Event streams last as long as their jobs: their time is no request latency.
        lat = [c.seconds for c in self.calls if not c.label.endswith("/events")]
        jobs = self.job_seconds()
        return {
            "users": self.config.users,
            "duration_s": round(self.elapsed, 1),
            "requests": len(self.calls),
            "requests_per_s": round(len(self.calls) / self.elapsed, 1) if self.elapsed else 0,
            "latency_p50_ms": round(_pct(lat, 0.5) * 1000, 1),
            "latency_p95_ms": round(_pct(lat, 0.95) * 1000, 1),
            "latency_p99_ms": round(_pct(lat, 0.99) * 1000, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses().items())},
            "jobs_accepted": len(self.jobs),
            "jobs_rejected_429": self.rejected_429,
            "job_outcomes": dict(self.job_outcomes()),
            "job_p50_s": round(_pct(jobs, 0.5), 2),
            "job_p95_s": round(_pct(jobs, 0.95), 2),
            "drain_s": round(self.drain_s, 1),
            "problems": self.problems[:50],
            "memory": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in self.memory().items()},
        }

    def table(self) -> str:
        """The figures as Markdown tables."""
        s = self.summary()
        lines = [
            f"Load: {s['users']} users for {s['duration_s']} s: {s['requests']} requests "
            f"({s['requests_per_s']}/s; latency p50 {s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, "
            f"p99 {s['latency_p99_ms']} ms without event streams), statuses {s['statuses']}; "
            f"jobs accepted {s['jobs_accepted']}, "
            f"refused with 429 {s['jobs_rejected_429']}, outcomes {s['job_outcomes']} "
            f"(submit to completed p50 {s['job_p50_s']} s, p95 {s['job_p95_s']} s; drained in "
            f"{s['drain_s']} s); problems: {len(self.problems)}.",
            "",
            "| request | count | p50 ms | p95 ms | p99 ms | statuses |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for label, calls in self.by_label().items():
            lat = [c.seconds for c in calls]
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(c.status for c in calls).items()))
            lines.append(
                f"| {label} | {len(calls)} | {_pct(lat, 0.5) * 1000:.1f} | {_pct(lat, 0.95) * 1000:.1f} "
                f"| {_pct(lat, 0.99) * 1000:.1f} | {statuses} |"
            )
        lines += [
            "",
            "| process | RSS start MiB | peak after warm-up MiB | peak at end MiB | growth | flat |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, m in s["memory"].items():
            lines.append(
                f"| {name} | {m['start_mib']:.0f} | {m['warm_peak_mib']:.0f} | {m['end_peak_mib']:.0f} "
                f"| {m['growth_pct']:+.1f}% | {'yes' if m['flat'] else 'NO'} |"
            )
        return "\n".join(lines)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LoadRun:
    def __init__(self, base: str, config: LoadConfig, processes: dict[str, int]) -> None:
        self.base = base
        self.cfg = config
        self.processes = processes
        self.report = LoadReport(config)
        self.rng = random.Random(config.seed)
        self.deadline = 0.0
        self.outstanding: dict[str, set[str]] = defaultdict(set)
        self.public: list[str] = []
        self.greedy: set[str] = set()
        self.http: aiohttp.ClientSession | None = None

    # --- recording ---------------------------------------------------------------------------------

    async def call(
        self,
        label: str,
        method: str,
        path: str,
        user: User | None = None,
        expect: Callable[[int], bool] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any, aiohttp.ClientResponse | None]:
        assert self.http is not None
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers.update(user.bearer)
        url = path if path.startswith("http") else f"{self.base}{path}"
        t0 = time.perf_counter()
        try:
            async with self.http.request(method, url, headers=headers, **kwargs) as resp:
                body = await body_of(resp) if resp.content_type != "image/png" else await resp.read()
                status = resp.status
                if status == 429 and "Retry-After" not in resp.headers:
                    self.report.problems.append(f"{label}: 429 without Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report.problems.append(f"{label}: transport error {exc!r}")
            self.report.calls.append(Call(label, 0, time.perf_counter() - t0))
            return 0, None, None
        self.report.calls.append(Call(label, status, time.perf_counter() - t0))
        ok = status < 400 or (status == 429 and label in RATE_LIMITED)
        if expect is not None:
            ok = expect(status)
        if not ok:
            self.report.problems.append(f"{label}: {status} {str(body)[:300]}")
        return status, body, resp

    # --- memory --------------------------------------------------------------------------------------

    async def sample_memory(self, stop: asyncio.Event) -> None:
        procs = {}
        for name, pid in self.processes.items():
            try:
                procs[name] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self.report.problems.append(f"{name}: process {pid} is gone")
        while not stop.is_set():
            t = time.monotonic() - self.report.started
            for name, proc in procs.items():
                try:
                    self.report.rss[name].append((t, proc.memory_info().rss))
                except psutil.NoSuchProcess:
                    self.report.problems.append(f"{name}: died during the load")
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.sample_interval_s)
            except TimeoutError:
                pass

    # --- what users do -------------------------------------------------------------------------------

    def words(self, n: int = 3) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    async def browse(self, user: User) -> None:
        pick = self.rng.random()
        if pick < 0.3:
            status, body, _ = await self.call("GET /api/v1/community", "GET", "/api/v1/community?limit=24")
            if status == 200:
                ids = [i["id"] for i in body["items"]]
                self.public = ids or self.public
                if ids:
                    await self.call(
                        "GET /api/v1/images/{id}/file?size=thumb",
                        "GET",
                        f"/api/v1/images/{self.rng.choice(ids)}/file?size=thumb",
                    )
        elif pick < 0.45:
            await self.call("GET /api/v1/models", "GET", "/api/v1/models", user)
        elif pick < 0.65:
            q = self.rng.choice([*WORDS, *SQLISH])
            await self.call("GET /api/v1/search", "GET", "/api/v1/search", user, params={"q": q})
        elif pick < 0.8:
            await self.call("GET /community (page)", "GET", "/community", headers={"Accept": "text/html"})
        elif self.public:
            await self.call(
                "GET /api/v1/images/{id}", "GET", f"/api/v1/images/{self.rng.choice(self.public)}", user
            )
        else:
            await self.call("GET /api/v1/jobs", "GET", "/api/v1/jobs?limit=10", user)

    async def gallery(self, user: User) -> None:
        if not user.images or self.rng.random() < 0.3:
            status, body, _ = await self.call("GET /api/v1/images", "GET", "/api/v1/images?limit=24", user)
            if status == 200:
                user.images = [i["id"] for i in body["items"]]
            return
        image = self.rng.choice(user.images)
        pick = self.rng.random()
        if pick < 0.25:
            await self.call("GET /api/v1/images/{id}", "GET", f"/api/v1/images/{image}", user)
        elif pick < 0.45:
            size = self.rng.choice(["", "?size=thumb"])
            await self.call(
                "GET /api/v1/images/{id}/file" + size, "GET", f"/api/v1/images/{image}/file{size}", user
            )
        elif pick < 0.65:
            # Only ever made public (never back): other users' reads of it stay valid.
            body = {"title": f"{self.words(2)} {self.rng.choice(SQLISH)}", "tags": [self.rng.choice(WORDS)]}
            if self.rng.random() < 0.5:
                body["visibility"] = "public"
            await self.call("PATCH /api/v1/images/{id}", "PATCH", f"/api/v1/images/{image}", user, json=body)
        elif pick < 0.8:
            status, body, _ = await self.call(
                "POST /api/v1/images/{id}/share", "POST", f"/api/v1/images/{image}/share", user
            )
            if status == 200:
                await self.call(
                    "GET /s/{token}", "GET", f"/s/{body['token']}", headers={"Accept": "application/json"}
                )
        elif self.public:
            target = self.rng.choice(self.public)
            method = self.rng.choice(["POST", "DELETE"])
            path = f"/api/v1/images/{target}/like"
            await self.call(f"{method} /api/v1/images/{{id}}/like", method, path, user)
        else:
            await self.call("GET /api/v1/images", "GET", "/api/v1/images?limit=24", user)

    async def generate(self, user: User) -> None:
        mine = self.outstanding[user.username]
        if user.username in self.greedy:
            # A script queuing a batch at once: past the in-flight limit, some are refused (429).
            for _ in range(self.cfg.greedy_outstanding - len(mine)):
                await self.submit(user, follow=False)
            if mine:
                await self.poll(user, self.rng.choice(sorted(mine)))
            return
        if len(mine) >= self.cfg.max_outstanding:
            if self.rng.random() < 0.5:
                await self.poll(user, self.rng.choice(sorted(mine)))
            else:
                await self.gallery(user)
            return
        await self.submit(user, follow=self.rng.random() < 0.4)

    async def submit(self, user: User, follow: bool) -> None:
        mine = self.outstanding[user.username]
        body: dict[str, Any] = {
            "prompt": f"{self.words()} {self.rng.choice(SQLISH)}",
            "width": self.cfg.size,
            "height": self.cfg.size,
            "steps": self.cfg.steps,
        }
        if self.rng.random() < 0.2:
            body["seed"] = self.rng.randrange(4)  # some repeats: answered from the result cache
        status, resp_body, _ = await self.call(
            "POST /api/v1/generations", "POST", "/api/v1/generations", user, json=body
        )
        if status == 429:
            self.report.rejected_429 += 1
            return
        if status != 202:
            return
        job = resp_body["job"]
        self.report.jobs[job["id"]] = {"status": job["status"], "owner": user.username}
        if job["status"] in TERMINAL:
            self.report.jobs[job["id"]] = {**job, "owner": user.username}
            return
        mine.add(job["id"])
        if follow:
            await self.follow(user, job["id"])

    async def poll(self, user: User, job_id: str) -> None:
        status, body, _ = await self.call("GET /api/v1/jobs/{id}", "GET", f"/api/v1/jobs/{job_id}", user)
        if status == 200 and body["status"] in TERMINAL:
            self.report.jobs[job_id] = {**body, "owner": user.username}
            self.outstanding[user.username].discard(job_id)

    async def follow(self, user: User, job_id: str) -> None:
        """Follows the job's server-sent events until it ends (or the run does)."""
        assert self.http is not None
        label = "GET /api/v1/jobs/{id}/events"
        remaining = max(1.0, self.deadline - time.monotonic())
        t0 = time.perf_counter()
        try:
            async with self.http.get(
                f"{self.base}/api/v1/jobs/{job_id}/events",
                headers=user.bearer,
                timeout=aiohttp.ClientTimeout(total=remaining),
            ) as resp:
                status = resp.status
                if status == 200:
                    await read_events(resp)
                elif status != 204:
                    self.report.problems.append(f"{label}: {status} {await body_of(resp)}")
        except TimeoutError:
            status = 200  # the run ended while the job was still going: not a failure
        except aiohttp.ClientError as exc:
            self.report.problems.append(f"{label}: transport error {exc!r}")
            status = 0
        self.report.calls.append(Call(label, status, time.perf_counter() - t0))
        await self.poll(user, job_id)

    async def user_loop(self, user: User) -> None:
        actions: list[tuple[float, Callable[[User], Awaitable[None]]]] = [
            (0.4, self.browse),
            (0.35, self.gallery),
            (0.25, self.generate),
        ]
        while time.monotonic() < self.deadline:
            pick = self.rng.random()
            for weight, action in actions:
                if pick < weight:
                    await action(user)
                    break
                pick -= weight
            await asyncio.sleep(self.rng.uniform(0, 2 * self.cfg.think_s))

    # --- the run -------------------------------------------------------------------------------------

    async def setup_users(self) -> list[User]:
        assert self.http is not None
        users = []
        for i in range(self.cfg.users):
            user = await register(self.http, self.base, prefix="load")
            if i % 2:
                # Half the users call with an API key, as scripts do.
                key = await create_key(self.http, user)
                user.api_key, user.api_key_id = key["key"], key["id"]
            users.append(user)
        self.greedy = {u.username for u in users[: self.cfg.greedy_users]}
        return users

    async def drain(self, users: list[User]) -> None:
        by_name = {u.username: u for u in users}
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        t0 = time.monotonic()
        while True:
            pending = [(name, jid) for name, ids in self.outstanding.items() for jid in ids]
            if not pending:
                break
            if time.monotonic() > deadline:
                for name, jid in pending:
                    self.report.problems.append(
                        f"job {jid} of {name} still {self.report.jobs[jid].get('status')} "
                        f"{self.cfg.drain_timeout_s:.0f}s after the load stopped"
                    )
                break
            for name, jid in pending:
                await self.poll(by_name[name], jid)
            await asyncio.sleep(0.5)
        self.report.drain_s = time.monotonic() - t0
        for jid, job in self.report.jobs.items():
            if job.get("status") == "failed":
                error = job.get("error") or {}
                if not (error.get("code") and error.get("message")):
                    self.report.problems.append(f"job {jid} failed without a reason: {job}")

    async def run(self) -> LoadReport:
        connector = aiohttp.TCPConnector(limit=max(100, 4 * self.cfg.users))
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            self.http = http
            users = await self.setup_users()
            stop = asyncio.Event()
            self.report.started = time.monotonic()
            self.deadline = self.report.started + self.cfg.duration_s
            sampler = asyncio.create_task(self.sample_memory(stop))
            try:
                await asyncio.gather(*(self.user_loop(u) for u in users))
            finally:
                self.report.elapsed = time.monotonic() - self.report.started
                stop.set()
                await sampler
            await self.drain(users)
        self.report.problems.extend(self.report.memory_problems())
        return self.report


def summary_line(report: LoadReport) -> str:
    s = report.summary()
    return (
        f"{s['requests']} requests in {s['duration_s']} s ({s['requests_per_s']}/s), "
        f"p50 {s['latency_p50_ms']} ms, p99 {s['latency_p99_ms']} ms, jobs {s['job_outcomes']}, "
        f"429s {s['jobs_rejected_429']}, median job {statistics.median(report.job_seconds() or [0]):.2f} s"
    )
