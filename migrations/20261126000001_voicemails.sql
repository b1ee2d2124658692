-- The voicemail index: one row per voicemail file stored by vmpipe ingest.
--
-- Written by the worker, read by people (psql, Grafana, Metabase). Columns that KAZOO did not
-- tell us are NULL: a plain (non-multipart) upload carries only its URL, so only what the
-- path gives (account, document, attachment name) is known.

CREATE TABLE voicemails (
    id                uuid        PRIMARY KEY,      -- vmpipe's id for the voicemail (UUIDv7)
    storage_key       text        NOT NULL UNIQUE,  -- file path below the storage directory's voicemails/

    -- Who and what, from KAZOO
    account_id        text,                         -- KAZOO account id (32 hex)
    document_id       text,                         -- KAZOO document (media) id, e.g. 202611-5d6a...
    attachment_name   text        NOT NULL,         -- KAZOO attachment name, e.g. b766....mp3
    mailbox_id        text,                         -- KAZOO voicemail box id (the document's source_id)
    caller_id_number  text,
    caller_id_name    text,
    call_id           text,
    from_user         text,                         -- caller's SIP user (from = from_user@from_realm)
    from_realm        text,
    to_user           text,                         -- called SIP user, usually the mailbox number
    to_realm          text,
    folder            text,                         -- KAZOO folder when stored: new, saved, deleted
    kazoo_length_ms   integer,                      -- the length KAZOO claimed (not measured)
    recorded_at       timestamptz,                  -- when the message was left (KAZOO's timestamp)

    -- The audio, as measured by vmpipe
    duration_ms       integer,                      -- NULL when the audio could not be probed
    codec             text,                         -- mp3, pcm_s16le, pcm_mulaw, ...
    sample_rate       integer,                      -- Hz
    channels          smallint,
    bitrate_bps       integer,                      -- average bits per second of the file
    probe_error       text,                         -- why duration is unknown; NULL when probed

    -- The file
    content_type      text,                         -- as declared by KAZOO (may be wrong)
    size_bytes        bigint      NOT NULL,
    sha256            text        NOT NULL,         -- lower-case hex
    upload_mode       text        NOT NULL,         -- raw, multipart or multipart_base64

    -- Bookkeeping
    received_at       timestamptz NOT NULL,         -- when ingest stored the file
    indexed_at        timestamptz NOT NULL DEFAULT now(),  -- when this row was last written
    request_id        text,                         -- ingest's request id (follows the upload in logs)
    job_id            uuid        NOT NULL,         -- the job that last wrote this row
    metadata          jsonb                         -- KAZOO's whole document as uploaded
);

COMMENT ON TABLE voicemails IS 'One row per voicemail stored by vmpipe; see README for example queries.';
COMMENT ON COLUMN voicemails.storage_key IS 'Path of the file below the storage directory''s voicemails/ folder.';
COMMENT ON COLUMN voicemails.duration_ms IS 'Duration measured by vmpipe from the audio itself.';
COMMENT ON COLUMN voicemails.kazoo_length_ms IS 'Length KAZOO reported in its metadata; can differ from duration_ms.';
COMMENT ON COLUMN voicemails.recorded_at IS 'KAZOO timestamp (Gregorian seconds in KAZOO) converted to timestamptz.';
COMMENT ON COLUMN voicemails.metadata IS 'The KAZOO document sent with a multipart upload, unchanged.';

-- The README's queries: an account's recent voicemails, a mailbox's messages, by caller,
-- longest messages, size per account per month.
CREATE INDEX voicemails_account_recorded ON voicemails (account_id, recorded_at DESC);
CREATE INDEX voicemails_mailbox_recorded ON voicemails (mailbox_id, recorded_at DESC);
CREATE INDEX voicemails_caller ON voicemails (caller_id_number);
CREATE INDEX voicemails_received ON voicemails (received_at DESC);
CREATE INDEX voicemails_duration ON voicemails (duration_ms DESC NULLS LAST);

-- KAZOO's credentials probe files ({32 hex}_test_credentials_file.txt): stored, and recorded
-- here rather than in voicemails so that voicemail counts stay right.
CREATE TABLE credential_probes (
    storage_key  text        PRIMARY KEY,
    account_id   text,
    received_at  timestamptz NOT NULL,
    indexed_at   timestamptz NOT NULL DEFAULT now()
);
