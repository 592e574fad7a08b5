-- Administrators are designated explicitly (issue 18): an is_admin flag set by
-- `python -m services.auth admin grant <username>` (or EASEL_AUTH_ADMIN_IDS, by account id), no
-- longer by a list of usernames that whoever signed up first with a listed name would match.
-- Accounts stored as admins keep the right; the role column is no longer read or written.
ALTER TABLE users ADD COLUMN is_admin boolean NOT NULL DEFAULT false;
UPDATE users SET is_admin = true WHERE role = 'admin';
CREATE INDEX users_admins_idx ON users (id) WHERE is_admin;
