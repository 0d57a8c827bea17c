//! What every Tandem server shares.
//!
//! - [`auth`]: bearer tokens and roles (`TANDEM_TOKENS`), each server's access table, the
//!   guard in front of every route, the service token on outgoing calls.
//! - [`problem`]: RFC 9457 problem+json errors (`Problem`), used for every rejection.
//! - [`http`]: extractors with problem+json rejections (`Json`, `Path`, `Query`; any string
//!   with a NUL — which Postgres cannot store — is a 422 naming it), 404/405 fallbacks, body
//!   limit, `serve`, shutdown signal, tracing setup.
//! - [`db`]: connect to Postgres, creating the service's own database if it is missing; `migrate`
//!   (as the owner role of `DATABASE_OWNER_URL`, or privileged on the zero-setup path); the
//!   URL of a database on a server (`database_url`); `drop_database` (prepared transactions
//!   rolled back first); [`provision`]: the least-privilege roles and databases (`tandem db
//!   provision`).
//! - [`sqlite`]: the embedded store (zero set-up): SQLite connections (WAL, `synchronous =
//!   FULL`, busy timeout), `BEGIN IMMEDIATE` write transactions, the data directory's lock file.
//! - [`store`]: the services' one storage interface on either backend — `Db` (Postgres or
//!   SQLite pool), `Tx`, the `Conn` effects run on, one portable query builder (`query`) and
//!   the few dialect translations (docs/storage.md, "Services"). The backend is chosen once,
//!   by the URL, in [`service::build`]; what needs Postgres asks `App::postgres`.
//! - [`effect`]: a service's business effects declared as data (`Action`, `Compensation`): path,
//!   request type, validation, one effect function on an open transaction's [`store::Conn`].
//! - [`saga`]: serves those declarations as saga endpoints (one handler skeleton: parse,
//!   validate, `Idempotency-Key`, faults, barrier, reply), `/healthz`, audit lists by order.
//! - [`choreo`]: the choreographed checkout: events, the transactional outbox and its JetStream
//!   relay, durable consumers through the barrier, a private nats-server for tests.
//! - [`checkout`]: request vocabulary several services share (line items and their bounds).
//! - [`participant`]: the 2PC participant (`/2pc/prepare|commit|abort|status`, recovery): the
//!   same effects in prepared transactions, driven by `tandem_protocols::two_phase` (Postgres
//!   only, as are [`paxos`] and [`three_phase`]: on SQLite they answer as a Postgres without
//!   `max_prepared_transactions` does).
//! - [`paxos`]: Paxos Commit's wire format (leader, participants, acceptors) and the
//!   participant's `/paxos/prepare|outcome`, driven by `tandem_protocols::paxos_commit::Rm`.
//! - [`three_phase`]: 3PC's wire format and the participant's `/3pc/msg` and
//!   `/3pc-quorum/msg` (`GET /3pc/{txn}`), one driver over two cores
//!   (`tandem_protocols::three_phase::Participant`, `quorum_three_phase::Participant`):
//!   timeouts and the termination protocol between the services themselves.
//! - [`barrier`]: the idempotency barrier (duplicate / null compensation / hanging), in the same
//!   local transaction as the business effect; its table's DDL for both stores.
//! - [`retention`]: forgetting barrier rows — `POST /barrier/forget` (the orchestrator names
//!   final sagas past its retention) and the age backstop (`BARRIER_BACKSTOP_DAYS`).
//! - [`faults`]: scoped fault injection for demos and tests (off unless switched on).
//! - [`crash`]: named crash points (`TANDEM_CRASH`), off by default, for crash tests.
//! - [`hooks`]: in-process test pauses (no env var, no endpoint).
//! - [`service`]: one service process (config, database — Postgres or SQLite by its URL —,
//!   router, `main`), parameterised by a [`service::Spec`].
//! - [`metrics`]: Prometheus metrics (`GET /metrics`), HTTP request metrics, pool and prepared
//!   transaction gauges, timed pool waits; [`telemetry`]: the tracing subscriber, W3C trace
//!   context in and out, OTLP export.
//! - [`hop`]: the `Tandem-Hop` count on every protocol message (set by the shared middleware
//!   and [`hop::send`]), measuring message delays on the critical path.
//! - [`stats`]: per-database transaction counters and memory, served at `GET /stats`.
//! - [`testing`]: test databases dropped when a test passes and kept when it fails
//!   (`TestDatabases`), `Served` (a service on an ephemeral port, on Postgres or a SQLite
//!   file: `Store`), `missing_prerequisite` (skip outside CI, fail in CI); [`service_tests`]:
//!   more of it for the services' own tests; [`on_both_stores!`]: one test body run on both
//!   stores (the services' conformance suites: `pg::…` and `sqlite::…` tests).
//! - [`error`]: the kit's error type ([`Error`]), for start-up and serving; `chain` (an error
//!   and its sources on one line).

pub mod api;
pub mod auth;
pub mod barrier;
pub mod checkout;
pub mod choreo;
pub mod crash;
pub mod db;
pub mod effect;
pub mod error;
pub mod faults;
pub mod hooks;
pub mod hop;
pub mod http;
pub mod metrics;
pub mod participant;
pub mod paxos;
pub mod problem;
pub mod provision;
pub mod retention;
pub mod saga;
pub mod service;
pub mod service_tests;
pub mod sqlite;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod three_phase;

pub use error::Error;
pub use problem::Problem;
