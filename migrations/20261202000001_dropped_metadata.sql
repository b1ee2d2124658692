-- What of KAZOO's document the worker could not index as sent. Every field of the document is
-- the uploader's choice; a voicemail that was stored always gets its row, with the fields
-- PostgreSQL cannot hold or index cut or dropped, and each such change recorded here.
--
--   SELECT storage_key, dropped_metadata FROM voicemails WHERE dropped_metadata <> '{}';

ALTER TABLE voicemails ADD COLUMN dropped_metadata text[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN voicemails.dropped_metadata IS
    'What of KAZOO''s document was cut or dropped to index the voicemail, one entry per field: "caller_id_number: 3000 bytes, cut to 256", "metadata: the document is nested deeper than 32 levels: not kept". Empty for a document indexed as sent.';
COMMENT ON COLUMN voicemails.metadata IS 'The KAZOO document sent with a multipart upload, unchanged (NULL when it could not be kept: see dropped_metadata).';
