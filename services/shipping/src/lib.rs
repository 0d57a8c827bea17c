//! The shipping service: shipments created by the checkout saga's last step and cancelled by
//! its compensation. Destination country `ZZ` is undeliverable (409 `undeliverable`).
//!
//! - this file: the [`SPEC`] that `tandem_kit::service` runs (config from env, database +
//!   migrations, router, `main`);
//! - [`api`]: the HTTP handlers, request validation and SQL;
//! - `migrations/shipping/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `POST /shipments` (saga action), `POST /shipments/cancel` (its compensation),
//! `GET /shipments?order_id=`, `/faults`, `GET /healthz`.

pub mod api;

pub use tandem_kit::service::{App, Config};

/// This service, for `tandem_kit::service`.
pub static SPEC: tandem_kit::service::Spec = tandem_kit::service::Spec {
    name: "shipping",
    about: "Tandem shipping service: shipments",
    default_database_url: "postgres://postgres@127.0.0.1:5432/tandem_shipping",
    default_listen_addr: "127.0.0.1:8083",
    migrator,
    routes: api::routes,
};

/// The migrations of this database: the kit's barrier table plus `migrations/shipping/`.
pub fn migrator() -> sqlx::migrate::Migrator {
    tandem_kit::barrier::migrator(sqlx::migrate!("../../migrations/shipping"))
}

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> anyhow::Result<App> {
    tandem_kit::service::build(&SPEC, config).await
}
