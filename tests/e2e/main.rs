mod faults;
mod ingest;
mod worker;
