mod ingest;
mod worker;
