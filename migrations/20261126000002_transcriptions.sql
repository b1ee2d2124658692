-- Transcriptions: one row per voicemail and hook (the built-in PocketSphinx transcriber, a
-- command, a webhook, a compiled-in hook), written by the worker's hook runner.
--
-- The row is also the hook's work queue: the worker inserts it as 'pending' in the same
-- transaction that indexes the voicemail, so a voicemail indexed is a voicemail that will be
-- transcribed, whatever crashes in between.

CREATE TABLE transcriptions (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    voicemail_id       uuid        NOT NULL REFERENCES voicemails (id) ON DELETE CASCADE,
    hook               text        NOT NULL,         -- the hook's name, e.g. pocketsphinx
    status             text        NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'running', 'done', 'failed')),

    -- The result (of the last successful run)
    text               text,                         -- the transcript
    language           text,                         -- as the hook reported it, e.g. en-us
    confidence         double precision,             -- 0 to 1, when the hook reports one
    error              text,                         -- why the last attempt failed; NULL after a success

    -- Attempts and timings
    attempts           integer     NOT NULL DEFAULT 0,  -- attempts made for the current audio
    queued_at          timestamptz NOT NULL DEFAULT now(), -- when the voicemail was indexed (or re-queued)
    started_at         timestamptz,                  -- start of the last attempt
    finished_at        timestamptz,                  -- end of the last attempt
    run_ms             integer,                      -- how long the last attempt ran
    next_attempt_at    timestamptz NOT NULL DEFAULT now(), -- pending: runs from then; running: taken over from then (its worker died)

    -- Bookkeeping for the runner
    audio_received_at  timestamptz NOT NULL,         -- voicemails.received_at of the audio transcribed
    attempt_id         uuid,                         -- the attempt in progress (guards late writes)

    -- Full-text search over the transcript (English stemming: 'invoices' matches 'invoice')
    text_search        tsvector    GENERATED ALWAYS AS (to_tsvector('english', coalesce(text, ''))) STORED,

    UNIQUE (voicemail_id, hook)
);

COMMENT ON TABLE transcriptions IS 'One row per voicemail and hook: the transcript, or why there is none yet; see README.';
COMMENT ON COLUMN transcriptions.status IS 'pending (waiting, maybe to retry), running, done, or failed (gave up after max_attempts).';
COMMENT ON COLUMN transcriptions.text_search IS 'to_tsvector(''english'', text): query with websearch_to_tsquery(''english'', ...).';
COMMENT ON COLUMN transcriptions.queued_at IS 'When the voicemail was indexed (or re-queued by worker transcribe); finished_at - queued_at is the hook latency.';

CREATE INDEX transcriptions_text_search ON transcriptions USING gin (text_search);
-- The runner's claim: the first due row among the unfinished ones.
CREATE INDEX transcriptions_due ON transcriptions (next_attempt_at) WHERE status IN ('pending', 'running');
