//! The payment service: charges and refunds, one row each in `payments` (the audit trail).
//! The checkout saga's second step charges; its compensation refunds the charge made under the
//! same saga step, at most once. Card token `tok_decline` is declined (409 `card-declined`).
//!
//! - this file: the [`SPEC`] that `tandem_kit::service` runs (config from env, database +
//!   migrations, the saga action and compensation as data, routes, `main`);
//! - [`choreo`]: its step of the choreographed checkout (events in and out, as data), run by
//!   `tandem_kit::choreo` when `NATS_URL` is set;
//! - [`api`]: the effects (charge, refund), validation, the audit list and SQL;
//! - `migrations/payment/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `POST /charges` (saga action), `POST /refunds` (its compensation),
//! `GET /payments?order_id=`, `GET /healthz`, and `/faults` when fault injection is on.

pub mod api;
pub mod choreo;

pub use tandem_kit::Error;
pub use tandem_kit::service::{App, Config};

/// This service, for `tandem_kit::service`.
pub static SPEC: tandem_kit::service::Spec = tandem_kit::service::Spec {
    name: "payment",
    about: "Tandem payment service: charges and refunds",
    port: 8082,
    migrations: &sqlx::migrate!("../../migrations/payment"),
    sqlite_migrations: &sqlx::migrate!("../../migrations/sqlite/payment"),
    actions: &[&api::CHARGE],
    compensations: &[&api::REFUND],
    routes: api::routes,
    access: api::ACCESS,
};

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> Result<App, Error> {
    SPEC.build(config).await
}
