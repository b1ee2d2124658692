//! What `ingest` and `worker` share: settings, the job message, storage keys and storage,
//! RabbitMQ (topology and publishing), backoff, metrics, signals and log setup. Free of
//! actix-web, so the worker does not compile it.

pub mod amqp;
pub mod backoff;
#[cfg(feature = "postgres")]
pub mod db;
pub mod job;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod settings;
pub mod signals;
pub mod store;

pub use job::{PathFacts, UploadMode, VoicemailJob};
pub use key::{KeyError, StorageKey};
pub use settings::Settings;
pub use store::{
    Committed, FsStore, Listed, LocalFile, ObjectInfo, ObjectWriter, Removed, Revoked, Storage,
    StorageError, StoredObject,
};
