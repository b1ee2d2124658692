-- Full-text search newest first, whatever a word's frequency: each transcription carries its
-- voicemail's time and account (written by the worker with the row), so that a search reads
-- the matches of one window of time at a time (the GIN index of text_search and the btree of
-- listed_at together), never every match of a common word nor every voicemail for a rare one.

ALTER TABLE transcriptions
    ADD COLUMN listed_at  timestamptz, -- the voicemail's coalesce(recorded_at, received_at): what lists are ordered by
    ADD COLUMN account_id text;        -- the voicemail's account_id

UPDATE transcriptions t
SET listed_at = coalesce(v.recorded_at, v.received_at), account_id = v.account_id
FROM voicemails v
WHERE v.id = t.voicemail_id;

ALTER TABLE transcriptions ALTER COLUMN listed_at SET NOT NULL;

CREATE INDEX transcriptions_listed ON transcriptions (listed_at);
CREATE INDEX transcriptions_account_listed ON transcriptions (account_id, listed_at);

COMMENT ON COLUMN transcriptions.listed_at IS 'The voicemail''s time, coalesce(recorded_at, received_at), kept with it: full-text searches read one window of time at a time.';
COMMENT ON COLUMN transcriptions.account_id IS 'The voicemail''s account_id, kept with it (searches scoped to accounts).';
