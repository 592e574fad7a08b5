-- Client addresses that have signed in to an account (issue 18): strangers' failures neither lock
-- nor slow an account down at an address it is known from. The address is kept as SHA-256 of
-- "<user id>|<address>", enough to recognise it again without listing where a user signs in from.
CREATE TABLE known_addresses (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address_hash bytea NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, address_hash)
);
CREATE INDEX known_addresses_last_seen_idx ON known_addresses (last_seen);

-- Locks are now per (account, address) ("pair:<account>|<address>"); the account alone
-- ("account:<account>") only counts failures for the delay. Old account-wide locks are lifted.
UPDATE login_throttle SET locked_until = NULL WHERE key LIKE 'account:%';
