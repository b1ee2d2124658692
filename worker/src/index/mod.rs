//! The voicemail index in PostgreSQL: what a row holds ([`row`]), the batched writer that jobs
//! hand their rows to ([`writer`]), the SQL that connects, migrates and upserts ([`db`]), and
//! whether the database answers, which jobs wait on together ([`watch`]).

pub(crate) mod clamp;
pub(crate) mod db;
mod document;
pub(crate) mod row;
pub(crate) mod watch;
pub(crate) mod writer;

pub(crate) use row::{ProbeColumns, VoicemailRow};
pub(crate) use writer::IndexWriter;
