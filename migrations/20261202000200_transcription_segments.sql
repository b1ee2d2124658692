-- Transcripts with timestamps: the segments a transcriber found, in order.
--
-- Each element is {"start_ms": 1200, "end_ms": 4800, "text": "Hello, this is Robert."}, in
-- milliseconds from the start of the voicemail. NULL when the hook reports no segments (a
-- plain-text command hook); [] when it found no speech (silence, hold music).
--
-- Where in the voicemail a word was said:
--   SELECT v.storage_key, s.start_ms, s.text
--   FROM transcriptions t JOIN voicemails v ON v.id = t.voicemail_id,
--        jsonb_to_recordset(t.segments) AS s(start_ms int, end_ms int, text text)
--   WHERE t.status = 'done' AND s.text ILIKE '%invoice%';

ALTER TABLE transcriptions
    ADD COLUMN segments jsonb
        CHECK (segments IS NULL OR jsonb_typeof(segments) = 'array');

COMMENT ON COLUMN transcriptions.segments IS 'The transcript by segment, in order: [{"start_ms", "end_ms", "text"}] (milliseconds from the start of the voicemail); NULL when the hook reports none, [] when it found no speech.';
