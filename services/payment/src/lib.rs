//! The payment service: charges and refunds, one row each in `payments` (the audit trail).
//! The checkout saga's second step charges; its compensation refunds the charge made under the
//! same saga step, at most once. Card token `tok_decline` is declined (409 `card-declined`).
//!
//! - this file: [`Config`] (env), [`build`] (database + migrations), [`App`] (router, `run`);
//! - [`api`]: the HTTP handlers, request validation and SQL;
//! - `migrations/payment/`: the schema (the barrier table comes from `tandem_kit::barrier`).
//!
//! Endpoints: `POST /charges` (saga action), `POST /refunds` (its compensation),
//! `GET /payments?order_id=`, `/faults`, `GET /healthz`.

pub mod api;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use sqlx::PgPool;
use tandem_kit::faults::{Faults, Switch};

/// Configuration, from the environment (or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "payment",
    about = "Tandem payment service: charges and refunds"
)]
pub struct Config {
    /// This service's own database (created if missing; migrations applied at start).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tandem_payment"
    )]
    pub database_url: String,
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8082")]
    pub listen_addr: SocketAddr,
    /// Connections in the pool (the shared development server allows 100 in all).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 5)]
    pub db_pool_size: u32,
    /// `on` mounts the `/faults` endpoints (scoped fault injection); `off` removes them.
    #[arg(long, env = "FAULT_INJECTION", value_enum, default_value = "on")]
    pub fault_injection: Switch,
}

impl Config {
    /// Defaults with another database (tests).
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_pool_size: 5,
            fault_injection: Switch::On,
        }
    }
}

/// The migrations of this database: the kit's barrier table plus `migrations/payment/`.
pub fn migrator() -> sqlx::migrate::Migrator {
    tandem_kit::barrier::migrator(sqlx::migrate!("../../migrations/payment"))
}

/// A ready service: connected, migrated.
#[derive(Debug, Clone)]
pub struct App {
    pub pool: PgPool,
    pub faults: Faults,
}

/// Connect (creating the database if missing) and apply the migrations.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let pool = tandem_kit::db::connect(&config.database_url, config.db_pool_size).await?;
    migrator()
        .run(&pool)
        .await
        .context("applying payment migrations")?;
    Ok(App {
        pool,
        faults: Faults::new(config.fault_injection),
    })
}

impl App {
    pub fn router(&self) -> Router {
        tandem_kit::http::finish(api::routes(self.clone()).merge(self.faults.router()))
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, faults = self.faults.enabled(), "payment listening");
        tandem_kit::http::serve(listener, self.router(), shutdown).await?;
        Ok(())
    }
}
