mod audio;
mod failures;
mod hooks;
mod hostile;
mod ingest;
mod ops;
mod tls;
mod worker;
