//! What every Tandem server shares.
//!
//! - [`problem`]: RFC 9457 problem+json errors (`Problem`), used for every rejection.
//! - [`http`]: extractors with problem+json rejections (`Json`, `Path`, `Query`), 404/405
//!   fallbacks, body limit, `serve`, shutdown signal, tracing setup.
//! - [`db`]: connect to Postgres, creating the service's own database if it is missing.
//! - [`barrier`]: the idempotency barrier (duplicate / null compensation / hanging), in the same
//!   local transaction as the business effect.
//! - [`faults`]: scoped fault injection for demos and tests.
//! - [`crash`]: named crash points (`TANDEM_CRASH`), off by default, for crash tests.
//! - [`service`]: one service process (config, database, router, `main`), parameterised by a
//!   [`service::Spec`].
//! - [`stats`]: per-database transaction counters and memory, served at `GET /stats`.
//! - [`testing`]: a fresh database per test.

pub mod barrier;
pub mod crash;
pub mod db;
pub mod faults;
pub mod http;
pub mod problem;
pub mod service;
pub mod stats;
pub mod testing;

pub use problem::Problem;
