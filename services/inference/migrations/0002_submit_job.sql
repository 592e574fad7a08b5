-- SubmitJob's database work in one round trip (was seven: BEGIN, lock, key lookup, two counts,
-- INSERT, COMMIT, then a separate queue-position count): the per-user lock, the idempotency key,
-- the limits, the insert and the new job's place in the queue.
--
-- Same semantics as the statements it replaces: the advisory lock serialises one user's submits
-- until the calling transaction commits, and a VOLATILE function takes a fresh snapshot for each
-- statement, so the counts after the lock see every job committed before it.
--
-- outcome: 'created' (job = the new row, queue_position = its 1-based place among the model's
-- queued jobs, 0 unless queued), 'existing' (job = the row that holds this idempotency key),
-- 'in_flight' or 'daily' (a limit is reached; amount = the count that reached it; job is NULL).
-- p_in_flight_limit NULL skips the in-flight check (jobs the result cache answered).
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
    p_day_start timestamptz
) RETURNS TABLE (outcome text, amount bigint, queue_position bigint, job jobs)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    rec jobs;
    n bigint;
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
        SELECT count(*) INTO n FROM jobs j
        WHERE j.owner_id = p_owner_id AND j.status IN ('queued', 'running');
        IF n >= p_in_flight_limit THEN
            RETURN QUERY SELECT 'in_flight'::text, n, 0::bigint, NULL::jobs;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO n FROM jobs j WHERE j.owner_id = p_owner_id AND j.created_at >= p_day_start;
    IF n >= p_daily_limit THEN
        RETURN QUERY SELECT 'daily'::text, n, 0::bigint, NULL::jobs;
        RETURN;
    END IF;
    INSERT INTO jobs (id, owner_id, owner_username, kind, model, status, params, request_hash,
                      idempotency_key, cache_key, cached, steps, step, images, started_at, finished_at)
    VALUES (p_id, p_owner_id, p_owner_username, p_kind, p_model, p_status, p_params, p_request_hash,
            p_idempotency_key, p_cache_key, p_cached, p_steps, p_step, p_images, p_finished_at,
            p_finished_at)
    RETURNING * INTO rec;
    n := 0;
    IF rec.status = 'queued' THEN
        SELECT count(*) + 1 INTO n FROM jobs j
        WHERE j.status = 'queued' AND j.model = rec.model AND (j.created_at, j.id) < (rec.created_at, rec.id);
    END IF;
    RETURN QUERY SELECT 'created'::text, 0::bigint, n, rec;
END
$$;
