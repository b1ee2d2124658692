//! The voicemail index in PostgreSQL: what a row holds ([`row`]), the batched writer that jobs
//! hand their rows to ([`writer`]), and the SQL that connects, migrates and upserts ([`db`]).

pub mod db;
pub mod row;
pub mod writer;

pub use row::{ProbeColumns, VoicemailRow};
pub use writer::IndexWriter;
