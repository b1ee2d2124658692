-- The HTTP API (the `api` service): its tokens, and the indexes its listing reads.

CREATE TABLE api_tokens (
    id            uuid        PRIMARY KEY,       -- shown by `api token list`, taken by `api token revoke`
    name          text        NOT NULL,          -- who or what the token is for (unique among tokens not revoked)
    token_sha256  text        NOT NULL UNIQUE,   -- lower-case hex SHA-256 of the token (the token itself is never stored)
    accounts      text[],                        -- the KAZOO accounts it may read; NULL: every account
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,                   -- updated at most once a minute
    revoked_at    timestamptz                    -- set by `api token revoke`; a revoked token is refused
);

CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

COMMENT ON TABLE api_tokens IS 'Bearer tokens of the HTTP API (api token create|list|revoke); each reads only its accounts.';
COMMENT ON COLUMN api_tokens.token_sha256 IS 'SHA-256 of the token: 256 random bits, so a fast hash is enough (nothing to brute-force).';
COMMENT ON COLUMN api_tokens.accounts IS 'KAZOO account ids the token may read; NULL for every account.';

-- The API lists voicemails newest first by the time the message was left (recorded_at, or
-- received_at when KAZOO gave none), id breaking ties: keyset pages over these indexes.
CREATE INDEX voicemails_listed ON voicemails ((coalesce(recorded_at, received_at)) DESC, id DESC);
CREATE INDEX voicemails_account_listed ON voicemails (account_id, (coalesce(recorded_at, received_at)) DESC, id DESC);
CREATE INDEX voicemails_mailbox_listed ON voicemails (mailbox_id, (coalesce(recorded_at, received_at)) DESC, id DESC);
CREATE INDEX voicemails_mailbox_number_listed ON voicemails (to_user, (coalesce(recorded_at, received_at)) DESC, id DESC);

-- The `caller` filter: a part of the caller's number or name, case-insensitive (trigrams).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX voicemails_caller_trgm ON voicemails
    USING gin ((coalesce(caller_id_number, '') || ' ' || coalesce(caller_id_name, '')) gin_trgm_ops);
