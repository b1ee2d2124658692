-- Hook runs are leased by the worker running them, and the lease is renewed while it runs.
--
-- A worker renews the lease (next_attempt_at) of each attempt it runs every few seconds. An
-- attempt whose lease is not renewed for 15 s (its worker died, or lost the database) is
-- taken over by another worker. A restarted worker hands back at once the attempts its
-- previous run had leased (the same leased_by, another leased_instance, whose process is gone).
-- A hook is therefore at-least-once: the attempt cut short may have done part of its work.

ALTER TABLE transcriptions
    ADD COLUMN leased_by       text,    -- running: the worker running the attempt (VMPIPE_WORKER_ID, else its host name)
    ADD COLUMN leased_pid      integer, -- running: that worker's process id, on its host
    ADD COLUMN leased_instance uuid;    -- running: that worker process's own id, new at each start

COMMENT ON COLUMN transcriptions.leased_by IS 'While running: the worker running the attempt (VMPIPE_WORKER_ID, else its host name); NULL otherwise.';
COMMENT ON COLUMN transcriptions.leased_pid IS 'While running: the process id of that worker, on its host.';
COMMENT ON COLUMN transcriptions.leased_instance IS 'While running: the id of that worker process, new at each start (a restart tells its old runs by it).';
COMMENT ON COLUMN transcriptions.next_attempt_at IS 'pending: runs from then; running: the lease, renewed every 3 s by the worker running it, taken over by another worker once past.';
