//! The inventory service: stock per SKU, reserved by the checkout saga's first step and released
//! by its compensation. It never oversells: a reservation decrements each SKU with a conditional
//! `UPDATE … WHERE available >= quantity`, taking the rows in SKU order (no deadlocks), inside
//! the barrier's transaction (a shortage rolls the whole reservation back).
//!
//! - this file: the [`SPEC`] that `tandem_kit::service` runs (config from env, database +
//!   migrations, router, `main`);
//! - [`api`]: the HTTP handlers, request validation and SQL;
//! - `migrations/inventory/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `PUT /stock/{sku}`, `GET /stock/{sku}`, `POST /reservations` (saga action),
//! `POST /reservations/release` (its compensation), `GET /reservations?order_id=`, `/faults`,
//! `GET /healthz`.

pub mod api;

pub use tandem_kit::service::{App, Config};

/// This service, for `tandem_kit::service`.
pub static SPEC: tandem_kit::service::Spec = tandem_kit::service::Spec {
    name: "inventory",
    about: "Tandem inventory service: stock per SKU, reservations",
    default_database_url: "postgres://postgres@127.0.0.1:5432/tandem_inventory",
    default_listen_addr: "127.0.0.1:8081",
    migrator,
    routes: api::routes,
};

/// The migrations of this database: the kit's barrier table plus `migrations/inventory/`.
pub fn migrator() -> sqlx::migrate::Migrator {
    tandem_kit::barrier::migrator(sqlx::migrate!("../../migrations/inventory"))
}

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> anyhow::Result<App> {
    tandem_kit::service::build(&SPEC, config).await
}
