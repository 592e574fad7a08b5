"""Who holds each job, and whether it is finished: the KV bucket `EASEL_JOB_CLAIMS`, shared by every
worker, so nothing is done twice.

JetStream's ack window is the lease on a job: a delivery not kept alive by `in_progress` goes to
another worker, which cannot tell a dead worker from a paused one (SIGSTOP, a stalled VM, a long GC)
and so must run the job. The claim makes that safe:
- opening a delivery takes the job's claim (value `running`); the revision written is the fence.
- a claim already final (`completed`, `failed`, `cancelled`) means the job is finished (say its ack
  was lost, or a paused worker finished it): the message is acked without work.
- a worker that finds its claim taken by a later delivery (its heartbeat or its hand-off checks)
  drops the job: the generation stops at its next step, nothing is stored or reported, and the
  message is not settled (its ack or nak could settle the other worker's delivery).
- a job's final outcome is written to its claim before its message is settled; final wins.

The gallery keys results by (job id, index) and the completed event is de-duplicated by
`<job_id>.completed`, so a race between the checks and the writes leaves one image set and one
completion. With NATS unreachable the claim is unknown and the job runs, as before claims.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from .delivery import NATS_ERRORS

log = logging.getLogger(__name__)

CLAIMS_BUCKET = "EASEL_JOB_CLAIMS"
# A claim only matters while its job message can still be delivered (as the cancel bucket's).
CLAIMS_TTL_S = 24 * 3600.0
FINAL = frozenset({"completed", "failed", "cancelled"})


async def claims_bucket(js: JetStreamContext) -> KeyValue:
    """The claims bucket, created if missing (every worker calls this)."""
    try:
        return await js.key_value(CLAIMS_BUCKET)
    except BucketNotFoundError:
        pass  # made below
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=CLAIMS_BUCKET, ttl=CLAIMS_TTL_S, storage=StorageType.FILE, history=1)
        )
    except BadRequestError:
        # Another worker created it between our two calls.
        return await js.key_value(CLAIMS_BUCKET)


@dataclass(frozen=True)
class Taken:
    """The outcome of opening a delivery: `final` set when the job is finished; `revision` the
    fence of our claim (None when it could not be written: the job runs unfenced)."""

    final: str | None = None
    revision: int | None = None


def _value(state: str, worker: str, attempt: int) -> bytes:
    return json.dumps({"state": state, "worker": worker, "attempt": attempt}).encode()


def _state(value: bytes | None) -> str:
    try:
        return str(json.loads(value or b"{}").get("state", ""))
    except (ValueError, AttributeError):
        return ""


class Claims:
    def __init__(self, kv: KeyValue, worker: str) -> None:
        self.kv = kv
        self.worker = worker

    async def take(self, job_id: str, attempt: int) -> Taken:
        """Claims the job for this delivery, or says it is finished."""
        value = _value("running", self.worker, attempt)
        try:
            for _ in range(3):
                try:
                    entry = await self.kv.get(job_id)
                except KeyNotFoundError:
                    try:
                        return Taken(revision=await self.kv.create(job_id, value))
                    except KeyWrongLastSequenceError:
                        continue  # another delivery claimed it between the two calls: look again
                state = _state(entry.value)
                if state in FINAL:
                    return Taken(final=state)
                try:
                    return Taken(revision=await self.kv.update(job_id, value, last=entry.revision))
                except KeyWrongLastSequenceError:
                    continue
        except NATS_ERRORS as exc:
            log.warning("could not claim the job: %s", type(exc).__name__, extra={"job_id": job_id})
        return Taken()

    async def still_ours(self, job_id: str, revision: int | None) -> bool:
        """False only when a later delivery (or a final outcome) has replaced our claim."""
        if revision is None:
            return True
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return True  # expired or purged: nobody else holds it
        except NATS_ERRORS:
            return True  # unknown: carry on; the gallery and the events are idempotent
        return entry.revision == revision

    async def finish(self, job_id: str, state: str, attempt: int) -> None:
        """Records the job's final outcome (unconditionally: a final state is never undone)."""
        try:
            await self.kv.put(job_id, _value(state, self.worker, attempt))
        except NATS_ERRORS as exc:
            log.warning(
                "could not record the job's outcome: %s", type(exc).__name__, extra={"job_id": job_id}
            )
