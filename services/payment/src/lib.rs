//! The payment service: charges and refunds, one row each in `payments` (the audit trail).
//! The checkout saga's second step charges; its compensation refunds the charge made under the
//! same saga step, at most once. Card token `tok_decline` is declined (409 `card-declined`).
//!
//! - this file: the [`SPEC`] that `tandem_kit::service` runs (config from env, database +
//!   migrations, router, `main`);
//! - [`api`]: the HTTP handlers, request validation and SQL;
//! - `migrations/payment/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `POST /charges` (saga action), `POST /refunds` (its compensation),
//! `GET /payments?order_id=`, `/faults`, `GET /healthz`.

pub mod api;

pub use tandem_kit::service::{App, Config};

/// This service, for `tandem_kit::service`.
pub static SPEC: tandem_kit::service::Spec = tandem_kit::service::Spec {
    name: "payment",
    about: "Tandem payment service: charges and refunds",
    default_database_url: "postgres://postgres@127.0.0.1:5432/tandem_payment",
    default_listen_addr: "127.0.0.1:8082",
    migrator,
    routes: api::routes,
};

/// The migrations of this database: the kit's barrier table plus `migrations/payment/`.
pub fn migrator() -> sqlx::migrate::Migrator {
    tandem_kit::barrier::migrator(sqlx::migrate!("../../migrations/payment"))
}

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> anyhow::Result<App> {
    tandem_kit::service::build(&SPEC, config).await
}
