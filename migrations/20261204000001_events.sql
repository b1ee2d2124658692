-- Events: what happened to voicemails, told to the sinks of the settings file's [[notify]]
-- tables (RabbitMQ, webhooks, e-mail).
--
-- `events` is a transactional outbox: each row is written by the same statement as the change
-- it describes (the voicemail's row, a transcription's result, a prune's delete), so an indexed
-- voicemail always has its event and a rolled-back change never has one. The workers deliver
-- from it; `event_deliveries` records each sink's delivery of each event.

CREATE TABLE events (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- order of writing
    event_id       uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(), -- for de-duplication
    type           text        NOT NULL CHECK (type IN ('voicemail.indexed', 'voicemail.updated',
                                   'voicemail.transcribed', 'voicemail.transcription_failed',
                                   'voicemail.deleted')),
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    voicemail_id   uuid        NOT NULL,            -- no foreign key: a deleted voicemail's events stay
    account_id     text,
    voicemail      jsonb       NOT NULL,            -- the voicemails row as it was, without metadata
    transcript     jsonb,                           -- transcription events: hook, text, language, ...
    dispatched_at  timestamptz                      -- when its deliveries were made (NULL: not yet)
);

COMMENT ON TABLE events IS 'The outbox: one row per event, written with the change it describes; pruned once every sink settled it and it is older than VMPIPE_EVENT_RETENTION_HOURS.';
COMMENT ON COLUMN events.voicemail IS 'The voicemails row (without metadata) when the event happened, as sinks receive it.';

CREATE INDEX events_undispatched ON events (seq) WHERE dispatched_at IS NULL;
CREATE INDEX events_voicemail ON events (voicemail_id, seq);
CREATE INDEX events_occurred ON events (occurred_at);

CREATE TABLE event_deliveries (
    seq               bigint      NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    sink              text        NOT NULL,         -- the [[notify]] table's name
    event_id          uuid        NOT NULL,
    voicemail_id      uuid        NOT NULL,         -- events of one voicemail go out in order
    status            text        NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text,                         -- why the last attempt failed
    created_at        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),  -- the lease while `sending`
    first_attempt_at  timestamptz,
    last_attempt_at   timestamptz,
    delivered_at      timestamptz,
    last_duration_ms  integer,                      -- how long the last attempt took
    attempt_id        uuid,                         -- the attempt holding it while `sending`
    leased_by         text,                         -- the worker holding it (VMPIPE_WORKER_ID)
    leased_pid        integer,
    leased_instance   uuid,
    PRIMARY KEY (seq, sink)
);

COMMENT ON TABLE event_deliveries IS 'One row per event and sink: pending, sending, delivered or failed (gave up), with its attempts and last error.';

-- What a sink's dispatcher claims, and the earlier events of a voicemail it waits for.
CREATE INDEX event_deliveries_due ON event_deliveries (sink, next_attempt_at)
    WHERE status IN ('pending', 'sending');
-- (voicemail_id first: with stale statistics the planner still takes this one for the
-- per-voicemail check, rather than scanning the sink's whole part of the other.)
CREATE INDEX event_deliveries_open ON event_deliveries (voicemail_id, sink, seq)
    WHERE status IN ('pending', 'sending');
CREATE INDEX event_deliveries_event ON event_deliveries (event_id);

-- The sinks the workers run, as they last told: every event gets a delivery for each sink a
-- worker ran in the last day whose filters take it, whichever worker hands it out.
CREATE TABLE event_sinks (
    name      text        PRIMARY KEY,          -- the [[notify]] table's name
    kind      text        NOT NULL,             -- amqp, webhook, email
    events    text[]      NOT NULL DEFAULT '{}', -- the types it takes; empty: all
    accounts  text[]      NOT NULL DEFAULT '{}', -- the accounts it takes; empty: all
    seen_at   timestamptz NOT NULL DEFAULT now(), -- when a worker running it last said so
    seen_by   text                               -- that worker (VMPIPE_WORKER_ID)
);

COMMENT ON TABLE event_sinks IS 'The [[notify]] sinks the workers run; a sink no worker has run for a day gets no new deliveries.';

-- Both tables are queues that churn: fresh statistics keep the claim's plans good.
ALTER TABLE events SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE event_deliveries SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
