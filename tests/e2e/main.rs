mod failures;
mod hooks;
mod hostile;
mod hostile_worker;
mod ingest;
mod ops;
mod tls;
mod worker;
