mod faults;
mod hostile;
mod ingest;
mod ops;
mod tls;
mod worker;
