-- Gallery schema: image records, the content-addressed blobs they point at, likes, share links
-- and reports. Applied by the gallery at start with search_path = gallery.

-- One row per distinct original (by SHA-256). A row exists only while its bytes are in the object
-- store (bytes are written before the row commits and deleted after the row is gone), so no
-- record ever points at missing bytes.
CREATE TABLE blobs (
    sha256       text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    object_key   text NOT NULL,
    thumb_key    text NOT NULL,
    content_type text NOT NULL,
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    thumb_bytes  bigint NOT NULL CHECK (thumb_bytes >= 0),
    width        integer NOT NULL CHECK (width > 0),
    height       integer NOT NULL CHECK (height > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Declared immutable so a stored generated column can use it; every function in it is immutable
-- for a fixed text search configuration.
CREATE FUNCTION image_document(params jsonb, title text, tags text[]) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A')
        || setweight(to_tsvector('english'::regconfig, coalesce(array_to_string(tags, ' '), '')), 'A')
        || setweight(to_tsvector('english'::regconfig, coalesce(params ->> 'prompt', '')), 'B')
$$;

CREATE TABLE images (
    id             uuid PRIMARY KEY,
    owner_id       text NOT NULL,
    owner_username text NOT NULL DEFAULT '',
    kind           text NOT NULL CHECK (kind IN ('generated', 'upload')),
    purpose        text NOT NULL DEFAULT '',
    job_id         text,
    idx            integer NOT NULL DEFAULT 0,
    blob_sha256    text NOT NULL REFERENCES blobs (sha256),
    visibility     text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'unlisted', 'public')),
    title          text NOT NULL DEFAULT '',
    tags           text[] NOT NULL DEFAULT '{}',
    params         jsonb NOT NULL DEFAULT '{}',
    hidden         boolean NOT NULL DEFAULT false,
    like_count     bigint NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    -- clock_timestamp: images added in one transaction still get distinct, ordered times.
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    document       tsvector GENERATED ALWAYS AS (image_document(params, title, tags)) STORED
);

-- Idempotent AddImages: a redelivered job finds its images by (job_id, index).
CREATE UNIQUE INDEX images_job_index ON images (job_id, idx) WHERE job_id IS NOT NULL;
CREATE INDEX images_owner_newest ON images (owner_id, created_at DESC, id DESC);
CREATE INDEX images_public_newest ON images (created_at DESC, id DESC)
    WHERE visibility = 'public' AND NOT hidden;
CREATE INDEX images_public_liked ON images (like_count DESC, created_at DESC, id DESC)
    WHERE visibility = 'public' AND NOT hidden;
CREATE INDEX images_blob ON images (blob_sha256);
CREATE INDEX images_document ON images USING gin (document);

CREATE TABLE likes (
    image_id   uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, user_id)
);

-- Only a hash of each token is kept: a database dump does not hand out access.
CREATE TABLE share_links (
    token_hash text PRIMARY KEY,
    image_id   uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX share_links_image ON share_links (image_id);

CREATE TABLE reports (
    id          bigserial PRIMARY KEY,
    image_id    uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    reporter_id text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    UNIQUE (image_id, reporter_id)
);
CREATE INDEX reports_open ON reports (created_at) WHERE resolved_at IS NULL;
