mod faults;
mod hostile;
mod ingest;
mod worker;
