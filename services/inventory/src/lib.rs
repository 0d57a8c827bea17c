//! The inventory service: stock per SKU, reserved by the checkout saga's first step and released
//! by its compensation. It never oversells: a reservation decrements each SKU with a conditional
//! `UPDATE … WHERE available >= quantity`, taking the rows in SKU order (no deadlocks), inside
//! the barrier's transaction (a shortage rolls the whole reservation back).
//!
//! - this file: the [`SPEC`] that `tandem_kit::service` runs (config from env, database +
//!   migrations, the saga action and compensation as data, routes, `main`);
//! - [`choreo`]: its step of the choreographed checkout (events in and out, as data), run by
//!   `tandem_kit::choreo` when `NATS_URL` is set;
//! - [`api`]: the effects (reserve, release), validation, the read / setup handlers and SQL;
//! - `migrations/inventory/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `PUT /stock/{sku}`, `GET /stock/{sku}`, `POST /reservations` (saga action),
//! `POST /reservations/release` (its compensation), `GET /reservations?order_id=`, `GET
//! /healthz`, and `/faults` when fault injection is on.

pub mod api;
pub mod choreo;

pub use tandem_kit::Error;
pub use tandem_kit::service::{App, Config};

/// This service, for `tandem_kit::service`.
pub static SPEC: tandem_kit::service::Spec = tandem_kit::service::Spec {
    name: "inventory",
    about: "Tandem inventory service: stock per SKU, reservations",
    port: 8081,
    migrations: &sqlx::migrate!("../../migrations/inventory"),
    sqlite_migrations: &sqlx::migrate!("../../migrations/sqlite/inventory"),
    actions: &[&api::RESERVE],
    compensations: &[&api::RELEASE],
    routes: api::routes,
    access: api::ACCESS,
};

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> Result<App, Error> {
    SPEC.build(config).await
}
