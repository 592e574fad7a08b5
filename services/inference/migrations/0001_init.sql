-- Jobs of the inference service. The api is the only writer; workers report through NATS events.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    owner_id        text NOT NULL,
    owner_username  text NOT NULL DEFAULT '',
    kind            text NOT NULL,
    model           text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    params          jsonb NOT NULL,
    -- Hash of the request as the client sent it: a reused idempotency key with other parameters
    -- is refused instead of silently returning an unrelated job.
    request_hash    text NOT NULL,
    idempotency_key text,
    -- Set for requests the result cache may answer (explicit seed, no init image).
    cache_key       text,
    cached          boolean NOT NULL DEFAULT false,
    step            integer NOT NULL DEFAULT 0,
    steps           integer NOT NULL DEFAULT 0,
    images          jsonb NOT NULL DEFAULT '[]'::jsonb,
    error_code      text,
    error_message   text,
    -- EASEL_EVENTS stream sequence of the last event applied; older events are ignored.
    event_seq       bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    UNIQUE (owner_id, idempotency_key)
);

CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC, id DESC);
CREATE INDEX jobs_queued ON jobs (model, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_in_flight ON jobs (owner_id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_cache ON jobs (cache_key, finished_at DESC) WHERE status = 'completed' AND cache_key IS NOT NULL;
