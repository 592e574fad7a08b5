"""The `inference.jobs` table: creating jobs under per-user limits, reading them, applying events."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.common.errors import EaselError, conflict, invalid, not_found, too_many
from services.inference.messages import TERMINAL, JobEventMessage, JobParams, params_dict

JOB_COLUMNS = (
    "id, owner_id, owner_username, kind, model, status, params, request_hash, idempotency_key, cache_key, "
    "cached, step, steps, images, error_code, error_message, event_seq, created_at, started_at, finished_at, "
    "cost, vstart, dispatched_at, trace"
)

# Seconds a client is told to wait when it has too many jobs in flight: about one small job.
IN_FLIGHT_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class JobRow:
    id: str
    owner_id: str
    owner_username: str
    kind: str
    model: str
    status: str
    params: dict[str, Any]
    request_hash: str
    idempotency_key: str | None
    cache_key: str | None
    cached: bool
    step: int
    steps: int
    images: list[dict[str, Any]]
    error_code: str | None
    error_message: str | None
    event_seq: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Fair dispatch (migration 0003): see services/inference/api/dispatch.py.
    cost: int = 0
    vstart: float = 0.0
    dispatched_at: datetime | None = None
    trace: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> JobRow:
        return cls(
            id=str(r["id"]),
            owner_id=r["owner_id"],
            owner_username=r["owner_username"],
            kind=r["kind"],
            model=r["model"],
            status=r["status"],
            params=json.loads(r["params"]),
            request_hash=r["request_hash"],
            idempotency_key=r["idempotency_key"],
            cache_key=r["cache_key"],
            cached=r["cached"],
            step=r["step"],
            steps=r["steps"],
            images=json.loads(r["images"]),
            error_code=r["error_code"],
            error_message=r["error_message"],
            event_seq=r["event_seq"],
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            cost=r["cost"],
            vstart=r["vstart"],
            dispatched_at=r["dispatched_at"],
            trace=json.loads(r["trace"]),
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def job_params(self) -> JobParams:
        return JobParams.model_validate(self.params)


@dataclass(frozen=True)
class NewJob:
    id: str
    owner_id: str
    owner_username: str
    kind: str
    model: str
    params: JobParams
    request_hash: str
    idempotency_key: str | None
    cache_key: str | None
    # width x height x steps x images; 0: computed from `params` (see `job_cost`).
    cost: int = 0
    # The submit's trace context (W3C headers), carried into the work message sent later.
    trace: dict[str, str] = field(default_factory=dict)


def job_cost(params: JobParams) -> int:
    """What a job asks of a GPU, in pixel-steps: width x height x steps x images.

    An edit whose size is still unknown (0) counts as one pixel per step: the api resolves edit sizes
    from the init image before it stores a job, so that happens only where no gallery is reachable.
    """
    return max(params.width, 1) * max(params.height, 1) * max(params.steps, 1) * max(params.n, 1)


def refuse_nul(value: str | None, name: str, label: str) -> None:
    """Postgres cannot store NUL in text or JSON: say so as bad input instead of failing in the driver.

    The gateway refuses NUL at the edge; this is the store's own guard (defence in depth).
    """
    if value and "\x00" in value:
        raise invalid(
            "invalid_field",
            f"The {label} contains a NUL character (\\0); remove it and try again.",
            field=name,
        )


def _check_text(job: NewJob) -> None:
    refuse_nul(job.owner_id, "owner_id", "user id")
    refuse_nul(job.owner_username, "owner_username", "user name")
    refuse_nul(job.idempotency_key, "idempotency_key", "idempotency key")
    p = job.params
    for name, value in (
        ("prompt", p.prompt),
        ("negative_prompt", p.negative_prompt),
        ("sampler", p.sampler),
        ("init_image_id", p.init_image_id),
        ("mask_image_id", p.mask_image_id),
    ):
        refuse_nul(value, name, name.replace("_", " "))


def parse_job_id(job_id: str) -> uuid.UUID:
    """A malformed id is simply a job that does not exist."""
    try:
        return uuid.UUID(job_id)
    except (ValueError, TypeError):
        raise job_not_found() from None


def job_not_found() -> EaselError:
    return not_found("job_not_found", "No such job; check the job id (jobs are visible to their owner only).")


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _encode_cursor(row: JobRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise invalid(
            "invalid_cursor",
            "The cursor is not one this API gave out; start again without it.",
            field="cursor",
        ) from None


# The default allowance of pixel-steps in flight per user: eight 1024x1024 single images of 30 steps.
DEFAULT_COST_LIMIT = 8 * 1024 * 1024 * 30


class JobStore:
    def __init__(
        self, pool: asyncpg.Pool, in_flight_limit: int, daily_limit: int, cost_limit: int = DEFAULT_COST_LIMIT
    ) -> None:
        self.pool = pool
        self.in_flight_limit = in_flight_limit
        self.daily_limit = daily_limit
        self.cost_limit = cost_limit

    async def find_by_key(self, owner_id: str, key: str) -> JobRow | None:
        refuse_nul(owner_id, "owner_id", "user id")
        refuse_nul(key, "idempotency_key", "idempotency key")
        record = await self.pool.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1 AND idempotency_key = $2",  # nosec B608  # constant SQL only; values are $n parameters
            owner_id,
            key,
        )
        return JobRow.from_record(record) if record else None

    async def create(
        self, job: NewJob, cached_images: list[dict[str, Any]] | None = None
    ) -> tuple[JobRow, bool]:
        """Inserts a queued job (or, with `cached_images`, one the result cache answered: completed).

        Returns the row and whether it is new; a known idempotency key returns the existing job.
        """
        row, created, _ = await self.submit(job, cached_images)
        return row, created

    async def submit(
        self,
        job: NewJob,
        cached_images: list[dict[str, Any]] | None = None,
        hold_s: float = 0.0,
    ) -> tuple[JobRow, bool, int]:
        """`create`, plus the new job's queue position (0 unless it is new and queued).

        One round trip: the lock, the key lookup, the limits (jobs and cost in flight, jobs today),
        the fair-queueing start tag, the insert and the position are the `submit_job` function of
        migration 0003 (one submit at a time per user, so two racing submits cannot both slip under
        a limit). A queued job waits in the table until the dispatcher sends it; `hold_s` keeps it
        back that long (a submit the result cache may still answer).
        """
        _check_text(job)
        now = datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        cost = job.cost or job_cost(job.params)
        record = await self.pool.fetchrow(
            "SELECT outcome, amount, queue_position, job FROM submit_job("
            "$1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14::jsonb, $15, $16, $17, $18, "
            "$19, $20, $21, $22::jsonb)",
            uuid.UUID(job.id),
            job.owner_id,
            job.owner_username,
            job.kind,
            job.model,
            "queued" if cached_images is None else "completed",
            json.dumps(params_dict(job.params)),
            job.request_hash,
            job.idempotency_key or None,
            job.cache_key,
            cached_images is not None,
            job.params.steps,
            0 if cached_images is None else job.params.steps,
            json.dumps(cached_images or []),
            None if cached_images is None else now,
            self.in_flight_limit if cached_images is None else None,
            self.daily_limit,
            midnight,
            cost,
            self.cost_limit,
            hold_s,
            json.dumps(job.trace),
        )
        if record is None:  # the statement always returns its one row
            raise RuntimeError("the job insert returned no row")
        outcome = record["outcome"]
        if outcome == "in_flight":
            raise self._in_flight_error(int(record["amount"]))
        if outcome == "cost":
            raise self._cost_error(int(record["amount"]), cost)
        if outcome == "daily":
            raise self._daily_error(now, midnight)
        row = JobRow.from_record(record["job"])
        if outcome == "existing":
            if row.request_hash != job.request_hash:
                raise conflict(
                    "idempotency_key_reused",
                    "This idempotency key was already used for a different request; "
                    "use a new key for a new request.",
                    field="idempotency_key",
                )
            return row, False, 0
        return row, True, int(record["queue_position"])

    def _cost_error(self, in_flight: int, cost: int) -> EaselError:
        return too_many(
            "too_many_jobs_in_flight",
            f"Your queued and running jobs already need {in_flight / 1e6:,.1f} million pixel-steps "
            f"(width x height x steps x images) and this one {cost / 1e6:,.1f} million more; at most "
            f"{self.cost_limit / 1e6:,.1f} million may be in flight at once. Wait for a job to finish, "
            "cancel one, or ask for fewer, smaller or shorter images.",
            IN_FLIGHT_RETRY_AFTER_S,
        )

    async def complete_cached(self, job_id: str, images: list[dict[str, Any]]) -> JobRow | None:
        """Marks a held job answered by the result cache; None when it was sent or cancelled meanwhile.

        Its cost is given back to the owner's virtual finish: no GPU work was done for it.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(
                f"""UPDATE jobs SET status = 'completed', cached = true, images = $2::jsonb, step = steps,
                       started_at = now(), finished_at = now()
                    WHERE id = $1 AND status = 'queued' AND dispatched_at IS NULL
                    RETURNING {JOB_COLUMNS}""",  # nosec B608  # constant SQL only; values are $n parameters
                uuid.UUID(job_id),
                json.dumps(images),
            )
            if record is None:
                return None
            await conn.execute(
                "UPDATE dispatch_owners SET vfinish = GREATEST(vfinish - $2, 0) WHERE owner_id = $1",
                record["owner_id"],
                float(record["cost"]),
            )
        return JobRow.from_record(record)

    async def release(self, job_id: str) -> None:
        """Lets a held job be sent now (the result cache could not answer it)."""
        await self.pool.execute(
            "UPDATE jobs SET dispatch_after = now() WHERE id = $1 AND status = 'queued'", uuid.UUID(job_id)
        )

    def _in_flight_error(self, count: int) -> EaselError:
        return too_many(
            "too_many_jobs_in_flight",
            f"You already have {count} jobs queued or running (the limit is "
            f"{self.in_flight_limit}); wait for one to finish or cancel one.",
            IN_FLIGHT_RETRY_AFTER_S,
        )

    def _daily_error(self, now: datetime, midnight: datetime) -> EaselError:
        retry = int((midnight + timedelta(days=1) - now).total_seconds()) + 1
        return too_many(
            "daily_job_limit_reached",
            f"You have submitted {self.daily_limit} jobs today, the daily limit; "
            "try again after midnight UTC.",
            retry,
        )

    async def get(self, job_id: str) -> JobRow | None:
        record = await self.pool.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1",  # nosec B608  # constant SQL only; values are $n parameters
            parse_job_id(job_id),
        )
        return JobRow.from_record(record) if record else None

    async def get_owned(self, job_id: str, owner_id: str) -> JobRow:
        row = await self.get(job_id)
        if row is None or not owner_id or row.owner_id != owner_id:
            raise job_not_found()
        return row

    async def list(self, owner_id: str, limit: int, cursor: str) -> tuple[list[JobRow], str]:
        refuse_nul(owner_id, "owner_id", "user id")
        if cursor:
            created, last_id = _decode_cursor(cursor)
            records = await self.pool.fetch(
                f"""SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1 AND (created_at, id) < ($2, $3)
                    ORDER BY created_at DESC, id DESC LIMIT $4""",  # nosec B608  # constant SQL only; values are $n parameters
                owner_id,
                created,
                last_id,
                limit + 1,
            )
        else:
            records = await self.pool.fetch(
                f"""SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1
                    ORDER BY created_at DESC, id DESC LIMIT $2""",  # nosec B608  # constant SQL only; values are $n parameters
                owner_id,
                limit + 1,
            )
        rows = [JobRow.from_record(r) for r in records]
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else ""
        return rows[:limit], next_cursor

    async def position(self, row: JobRow) -> int:
        """1-based place among every model's waiting jobs, in the order the dispatcher sends them.

        Jobs already sent to the workers come first (in the order sent), then the held ones by their
        fair-queueing start tag (`job_position` of migration 0003); 0 when not queued.
        """
        if row.status != "queued":
            return 0
        position = await self.pool.fetchval(
            "SELECT job_position(j) FROM jobs j WHERE j.id = $1",
            uuid.UUID(row.id),
        )
        return int(position or 0)

    async def find_cached(self, cache_key: str, owner_id: str) -> JobRow | None:
        """The owner's latest finished job with this cache key.

        Only the owner's own: a hit from another user's job would tell the caller (by `cached` and by
        its speed) that someone already made exactly this prompt and seed.
        """
        record = await self.pool.fetchrow(
            f"""SELECT {JOB_COLUMNS} FROM jobs WHERE cache_key = $1 AND owner_id = $2 AND status = 'completed'
                AND jsonb_array_length(images) > 0 ORDER BY finished_at DESC LIMIT 1""",  # nosec B608  # constant SQL only; values are $n parameters
            cache_key,
            owner_id,
        )
        return JobRow.from_record(record) if record else None

    async def cancel_queued(self, job_id: str) -> JobRow | None:
        """Cancels a job that has not started; None when it has (or is finished).

        A job cancelled before it was sent gives its cost back to its owner's virtual finish (never
        below the clock), so cancelling a backlog does not push the owner's next job behind others.
        """
        record = await self.pool.fetchrow(
            f"""WITH cancelled AS (
                    UPDATE jobs SET status = 'cancelled', finished_at = now()
                    WHERE id = $1 AND status = 'queued' RETURNING *
                ), refund AS (
                    UPDATE dispatch_owners o
                    SET vfinish = GREATEST(o.vfinish - c.cost, (SELECT vtime FROM dispatch_clock))
                    FROM cancelled c WHERE o.owner_id = c.owner_id AND c.dispatched_at IS NULL
                )
                SELECT {JOB_COLUMNS} FROM cancelled""",  # nosec B608  # constant SQL only; values are $n parameters
            uuid.UUID(job_id),
        )
        return JobRow.from_record(record) if record else None

    async def note_seq(self, job_id: str, seq: int) -> None:
        """Records that the job's own event at `seq` is reflected in the row already."""
        await self.pool.execute(
            "UPDATE jobs SET event_seq = GREATEST(event_seq, $2) WHERE id = $1", uuid.UUID(job_id), seq
        )

    async def apply_event(self, event: JobEventMessage, seq: int) -> JobRow | None:
        """Applies one worker event; returns the new row, or None when the event was stale.

        Stale: older than the last event applied (by stream sequence), or for a finished job.
        """
        try:
            job_id = uuid.UUID(event.job_id)
        except ValueError:
            return None
        at = _ts(event.at)
        where = "WHERE id = $1 AND event_seq < $2 AND status IN ('queued', 'running')"
        if event.type in ("running", "progress"):
            sql = f"""UPDATE jobs SET status = 'running', step = $3, steps = GREATEST($4, 1),
                      started_at = COALESCE(started_at, $5), event_seq = $2 {where}
                      RETURNING {JOB_COLUMNS}"""  # nosec B608  # constant SQL only; values are $n parameters
            args: tuple[Any, ...] = (event.step, event.steps or 1, at)
        elif event.type == "completed":
            images = [{"id": i.id, "index": i.index} for i in event.images]
            sql = f"""UPDATE jobs SET status = 'completed', step = steps, images = $3::jsonb, cached = $4,
                      started_at = COALESCE(started_at, $5), finished_at = $5, event_seq = $2 {where}
                      RETURNING {JOB_COLUMNS}"""  # nosec B608  # constant SQL only; values are $n parameters
            args = (json.dumps(images), event.cached, at)
        elif event.type == "failed":
            sql = f"""UPDATE jobs SET status = 'failed', error_code = $3, error_message = $4,
                      finished_at = $5, event_seq = $2 {where} RETURNING {JOB_COLUMNS}"""  # nosec B608  # constant SQL only; values are $n parameters
            args = (event.error_code or "generation_failed", event.error_message, at)
        elif event.type == "cancelled":
            sql = f"""UPDATE jobs SET status = 'cancelled', step = GREATEST(step, $3), finished_at = $4,
                      event_seq = $2 {where} RETURNING {JOB_COLUMNS}"""  # nosec B608  # constant SQL only; values are $n parameters
            args = (event.step, at)
        else:
            return None
        record = await self.pool.fetchrow(sql, job_id, seq, *args)
        return JobRow.from_record(record) if record else None
