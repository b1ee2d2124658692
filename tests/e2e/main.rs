/// Runs the test body `async fn name(backend: Backend)` on both storage backends, as the
/// tests `name::fs` and `name::s3` (a bucket of its own on the shared Garage).
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fs() {
                super::$name(vmpipe_tests::Backend::Fs).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$name(vmpipe_tests::Backend::S3).await
            }
        }
    };
}

mod access;
mod admin;
mod api;
mod api_search;
mod api_spec;
mod audio;
mod disk_full;
mod drain;
mod events;
mod failures;
mod hook_leases;
mod hook_queueing;
mod hooks;
mod hostile;
mod hostile_worker;
mod hung_broker;
mod inbox_page;
mod ingest;
mod object_store;
mod observability;
mod openai_hook;
mod ops;
mod past_one_machine;
mod prune;
mod recovery;
mod scripting;
mod tls;
mod whisper;
mod worker;
