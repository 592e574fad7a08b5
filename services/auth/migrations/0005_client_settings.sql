-- Per-user settings of the compatible client faces (the AUTOMATIC1111 options: A1111 keeps them for
-- its whole server, the studio per user). One JSON object per user and face.

CREATE TABLE client_settings (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    face text NOT NULL,
    settings jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, face)
);
