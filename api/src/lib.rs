//! vmpipe api: reads the index (PostgreSQL) and the stored files, for people (the inbox page
//! at `/`) and programs (`/api/v1/...`), each caller seeing only the KAZOO accounts its token
//! may read. It never writes voicemails.
//!
//! Along a request: `server` (the HTTP service, its middleware: access log, security
//! headers) → `auth` (the Bearer token and its accounts) → `routes` (one file per
//! endpoint) → `db` (the queries). [`tokens`] holds the `api token` commands, `openapi` the
//! OpenAPI document generated from the handlers.

mod auth;
mod db;
mod error;
mod openapi;
mod range;
mod routes;
mod server;
pub mod tokens;

pub use db::{DbError, connect, migrate};
pub use routes::list::explain;
pub use server::Application;
