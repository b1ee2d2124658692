mod faults;
mod hostile;
mod ingest;
mod tls;
mod worker;
