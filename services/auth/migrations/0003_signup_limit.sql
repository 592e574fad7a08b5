-- Sign-ups per client address in a fixed window that opens with the first (issue 18): one address
-- cannot make accounts by the hundred to multiply the per-user quotas.
CREATE TABLE signup_throttle (
    address text PRIMARY KEY,
    signups integer NOT NULL,
    window_start timestamptz NOT NULL
);
