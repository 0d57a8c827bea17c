//! The shipping service: shipments created by the checkout saga's last step and cancelled by
//! its compensation. Destination country `ZZ` is undeliverable (409 `undeliverable`).
//!
//! - this file: the [`SPEC`] that `tandem_kit::service` runs (config from env, database +
//!   migrations, the saga action and compensation as data, routes, `main`);
//! - [`choreo`]: its step of the choreographed checkout (events in and out, as data), run by
//!   `tandem_kit::choreo` when `NATS_URL` is set;
//! - [`api`]: the effects (create, cancel), validation, the audit list and SQL;
//! - `migrations/shipping/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `POST /shipments` (saga action), `POST /shipments/cancel` (its compensation),
//! `GET /shipments?order_id=`, `GET /healthz`, and `/faults` when fault injection is on.

pub mod api;
pub mod choreo;

pub use tandem_kit::Error;
pub use tandem_kit::service::{App, Config};

/// This service, for `tandem_kit::service`.
pub static SPEC: tandem_kit::service::Spec = tandem_kit::service::Spec {
    name: "shipping",
    about: "Tandem shipping service: shipments",
    port: 8083,
    migrations: &sqlx::migrate!("../../migrations/shipping"),
    sqlite_migrations: &sqlx::migrate!("../../migrations/sqlite/shipping"),
    actions: &[&api::CREATE],
    compensations: &[&api::CANCEL],
    routes: api::routes,
    access: api::ACCESS,
};

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> Result<App, Error> {
    SPEC.build(config).await
}
