"""The `inference.jobs` table: creating jobs under per-user limits, reading them, applying events."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.common.errors import EaselError, conflict, invalid, not_found, too_many
from services.inference.messages import TERMINAL, JobEventMessage, JobParams, params_dict

JOB_COLUMNS = (
    "id, owner_id, owner_username, kind, model, status, params, request_hash, idempotency_key, cache_key, "
    "cached, step, steps, images, error_code, error_message, event_seq, created_at, started_at, finished_at"
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


class JobStore:
    def __init__(self, pool: asyncpg.Pool, in_flight_limit: int, daily_limit: int) -> None:
        self.pool = pool
        self.in_flight_limit = in_flight_limit
        self.daily_limit = daily_limit

    async def find_by_key(self, owner_id: str, key: str) -> JobRow | None:
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
        self, job: NewJob, cached_images: list[dict[str, Any]] | None = None
    ) -> tuple[JobRow, bool, int]:
        """`create`, plus the new job's queue position (0 unless it is new and queued).

        One round trip: the lock, the key lookup, the limits, the insert and the position are the
        `submit_job` function of migration 0002 (one submit at a time per user, so two racing
        submits cannot both slip under a limit).
        """
        now = datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        record = await self.pool.fetchrow(
            "SELECT outcome, amount, queue_position, job FROM submit_job("
            "$1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14::jsonb, $15, $16, $17, $18)",
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
        )
        if record is None:  # the statement always returns its one row
            raise RuntimeError("the job insert returned no row")
        outcome = record["outcome"]
        if outcome == "in_flight":
            raise self._in_flight_error(int(record["amount"]))
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

    async def check_limits(self, owner_id: str, in_flight: bool = True) -> None:
        """Raises the limit the owner is at, if any (`create` checks again, under a lock)."""
        async with self.pool.acquire() as conn:
            await self._check_limits(conn, owner_id, in_flight)

    async def _check_limits(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], owner_id: str, in_flight: bool
    ) -> None:
        if in_flight:
            count = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE owner_id = $1 AND status IN ('queued', 'running')", owner_id
            )
            if count >= self.in_flight_limit:
                raise self._in_flight_error(count)
        now = datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE owner_id = $1 AND created_at >= $2", owner_id, midnight
        )
        if today >= self.daily_limit:
            raise self._daily_error(now, midnight)

    async def delete(self, job_id: str) -> None:
        await self.pool.execute("DELETE FROM jobs WHERE id = $1", uuid.UUID(job_id))

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
        """1-based place among the queued jobs of the same model; 0 when not queued."""
        if row.status != "queued":
            return 0
        ahead = await self.pool.fetchval(
            """SELECT count(*) FROM jobs
               WHERE status = 'queued' AND model = $1 AND (created_at, id) < ($2, $3)""",
            row.model,
            row.created_at,
            uuid.UUID(row.id),
        )
        return int(ahead) + 1

    async def find_cached(self, cache_key: str) -> JobRow | None:
        record = await self.pool.fetchrow(
            f"""SELECT {JOB_COLUMNS} FROM jobs WHERE cache_key = $1 AND status = 'completed'
                AND jsonb_array_length(images) > 0 ORDER BY finished_at DESC LIMIT 1""",  # nosec B608  # constant SQL only; values are $n parameters
            cache_key,
        )
        return JobRow.from_record(record) if record else None

    async def cancel_queued(self, job_id: str) -> JobRow | None:
        record = await self.pool.fetchrow(
            f"""UPDATE jobs SET status = 'cancelled', finished_at = now()
                WHERE id = $1 AND status = 'queued' RETURNING {JOB_COLUMNS}""",  # nosec B608  # constant SQL only; values are $n parameters
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
