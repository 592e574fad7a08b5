-- Fair dispatch across owners (issue 18). Jobs wait here, not in NATS: the api sends a model's jobs to
-- its work subject only while fewer than a window of them are sent and not yet started, and picks the
-- next by start-time fair queueing over owners (services/inference/api/dispatch.py).
--
-- cost:           width x height x steps x images ("pixel-steps"); the in-flight allowance counts it.
-- vstart:         the job's virtual start tag, fixed at submit: max(clock, the owner's virtual finish).
--                 Held jobs are sent in (vstart, created_at, id) order, across owners.
-- dispatched_at:  when it was published to NATS; NULL while it waits here.
-- dispatch_after: not sent before this (a submit the result cache may answer holds its job briefly).
-- trace:          the submit's trace context, so the work message sent later continues its trace.
ALTER TABLE jobs
    ADD COLUMN cost bigint NOT NULL DEFAULT 0,
    ADD COLUMN vstart double precision NOT NULL DEFAULT 0,
    ADD COLUMN dispatched_at timestamptz,
    ADD COLUMN dispatch_after timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN trace jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Jobs queued before this migration were published at submit.
UPDATE jobs SET dispatched_at = created_at WHERE status IN ('queued', 'running');

CREATE INDEX jobs_held ON jobs (model, vstart, created_at, id)
    WHERE status = 'queued' AND dispatched_at IS NULL;
CREATE INDEX jobs_sent ON jobs (model) WHERE status = 'queued' AND dispatched_at IS NOT NULL;
CREATE INDEX jobs_waiting ON jobs (vstart, created_at, id) WHERE status = 'queued';

-- The result cache answers an owner from their own jobs only.
DROP INDEX jobs_cache;
CREATE INDEX jobs_cache ON jobs (owner_id, cache_key, finished_at DESC)
    WHERE status = 'completed' AND cache_key IS NOT NULL;

-- Each owner's virtual finish tag: where their next job's virtual start begins if they are backlogged.
CREATE TABLE dispatch_owners (
    owner_id text PRIMARY KEY,
    vfinish  double precision NOT NULL DEFAULT 0
);

-- The virtual clock: the largest start tag sent so far. A newly active owner starts here, so idle
-- time earns no credit and a long backlog does not push newcomers behind it.
CREATE TABLE dispatch_clock (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    vtime double precision NOT NULL DEFAULT 0
);
INSERT INTO dispatch_clock DEFAULT VALUES;

-- submit_job of 0002, plus: the cost allowance, the start tag, the hold, the trace context.
-- outcome 'cost' (amount = the cost already in flight) joins 'created', 'existing', 'in_flight' and
-- 'daily'. queue_position now counts every model's waiting jobs in the order they will be sent.
DROP FUNCTION submit_job(uuid, text, text, text, text, text, jsonb, text, text, text, boolean, integer,
                         integer, jsonb, timestamptz, bigint, bigint, timestamptz);

CREATE FUNCTION submit_job(
    p_id uuid,
    p_owner_id text,
    p_owner_username text,
    p_kind text,
    p_model text,
    p_status text,
    p_params jsonb,
    p_request_hash text,
    p_idempotency_key text,
    p_cache_key text,
    p_cached boolean,
    p_steps integer,
    p_step integer,
    p_images jsonb,
    p_finished_at timestamptz,
    p_in_flight_limit bigint,
    p_daily_limit bigint,
    p_day_start timestamptz,
    p_cost bigint,
    p_cost_limit bigint,
    p_hold_s double precision,
    p_trace jsonb
) RETURNS TABLE (outcome text, amount bigint, queue_position bigint, job jobs)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    rec jobs;
    n bigint;
    in_flight_cost bigint;
    clock double precision;
    finish double precision;
    start double precision := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('easel-jobs:' || p_owner_id));
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO rec FROM jobs j
        WHERE j.owner_id = p_owner_id AND j.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN QUERY SELECT 'existing'::text, 0::bigint, 0::bigint, rec;
            RETURN;
        END IF;
    END IF;
    IF p_in_flight_limit IS NOT NULL THEN
        SELECT count(*), COALESCE(sum(j.cost), 0) INTO n, in_flight_cost FROM jobs j
        WHERE j.owner_id = p_owner_id AND j.status IN ('queued', 'running');
        IF n >= p_in_flight_limit THEN
            RETURN QUERY SELECT 'in_flight'::text, n, 0::bigint, NULL::jobs;
            RETURN;
        END IF;
        -- One job larger than the whole allowance may still run alone.
        IF p_cost_limit IS NOT NULL AND in_flight_cost > 0 AND in_flight_cost + p_cost > p_cost_limit THEN
            RETURN QUERY SELECT 'cost'::text, in_flight_cost, 0::bigint, NULL::jobs;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO n FROM jobs j WHERE j.owner_id = p_owner_id AND j.created_at >= p_day_start;
    IF n >= p_daily_limit THEN
        RETURN QUERY SELECT 'daily'::text, n, 0::bigint, NULL::jobs;
        RETURN;
    END IF;
    IF p_status = 'queued' THEN
        -- Start-time fair queueing: the owner's lock above serialises their tags.
        SELECT c.vtime INTO clock FROM dispatch_clock c;
        SELECT o.vfinish INTO finish FROM dispatch_owners o WHERE o.owner_id = p_owner_id;
        start := GREATEST(COALESCE(clock, 0), COALESCE(finish, 0));
        INSERT INTO dispatch_owners (owner_id, vfinish) VALUES (p_owner_id, start + p_cost)
        ON CONFLICT (owner_id) DO UPDATE SET vfinish = EXCLUDED.vfinish;
    END IF;
    INSERT INTO jobs (id, owner_id, owner_username, kind, model, status, params, request_hash,
                      idempotency_key, cache_key, cached, steps, step, images, started_at, finished_at,
                      cost, vstart, dispatch_after, trace)
    VALUES (p_id, p_owner_id, p_owner_username, p_kind, p_model, p_status, p_params, p_request_hash,
            p_idempotency_key, p_cache_key, p_cached, p_steps, p_step, p_images, p_finished_at,
            p_finished_at, p_cost, start, now() + make_interval(secs => p_hold_s), p_trace)
    RETURNING * INTO rec;
    n := 0;
    IF rec.status = 'queued' THEN
        n := job_position(rec);
    END IF;
    RETURN QUERY SELECT 'created'::text, 0::bigint, n, rec;
END
$$;

-- 1-based place of a queued job in the order the dispatcher sends jobs, across every model: the jobs
-- already sent come first (in the order sent), then the held ones by start tag. 0 when not queued.
CREATE FUNCTION job_position(rec jobs) RETURNS bigint
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT CASE WHEN rec.status <> 'queued' THEN 0::bigint ELSE (
        SELECT count(*) + 1 FROM jobs j
        WHERE j.status = 'queued' AND j.id <> rec.id AND (
            CASE WHEN rec.dispatched_at IS NOT NULL THEN
                j.dispatched_at IS NOT NULL
                AND (j.dispatched_at, j.created_at, j.id) < (rec.dispatched_at, rec.created_at, rec.id)
            ELSE
                j.dispatched_at IS NOT NULL
                OR (j.vstart, j.created_at, j.id) < (rec.vstart, rec.created_at, rec.id)
            END))
    END
$$;
