//! One service process: configuration (env or flags), database + migrations, router, serving.
//! Inventory, payment and shipping differ only in their [`Spec`] (name, defaults, migrations,
//! routes); everything else about running them is here, once.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use clap::{Args, FromArgMatches};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::faults::{Faults, Switch};

/// What makes a service this service.
#[derive(Debug)]
pub struct Spec {
    /// Binary name, also used in logs (`inventory`).
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    pub default_database_url: &'static str,
    pub default_listen_addr: &'static str,
    /// The service's migrations, with the barrier table (see [`crate::barrier::migrator`]).
    pub migrator: fn() -> Migrator,
    /// The service's own routes (the fault endpoints and the shared ones are added by
    /// [`App::router`]).
    pub routes: fn(App) -> Router,
}

/// Configuration, from the environment (or flags); defaults come from the [`Spec`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// This service's own database (created if missing; migrations applied at start).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen_addr: SocketAddr,
    /// Connections in the pool (the shared development server allows 100 in all).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 5)]
    pub db_pool_size: u32,
    /// `on` mounts the `/faults` endpoints (scoped fault injection); `off` removes them.
    #[arg(long, env = "FAULT_INJECTION", value_enum, default_value = "on")]
    pub fault_injection: Switch,
}

impl Config {
    /// From the process's flags and environment, with `spec`'s defaults; exits with clap's
    /// message on bad input.
    pub fn parse(spec: &Spec) -> Self {
        let command = Config::augment_args(clap::Command::new(spec.name))
            .about(spec.about)
            .long_about(None)
            .mut_arg("database_url", |a| {
                a.default_value(spec.default_database_url).required(false)
            })
            .mut_arg("listen_addr", |a| {
                a.default_value(spec.default_listen_addr).required(false)
            });
        let matches = command.get_matches();
        Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Defaults with another database and an ephemeral port (tests, the in-process stack).
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_pool_size: 5,
            fault_injection: Switch::On,
        }
    }
}

/// A ready service: connected, migrated.
#[derive(Debug, Clone)]
pub struct App {
    pub pool: PgPool,
    pub faults: Faults,
    pub spec: &'static Spec,
}

/// Connect (creating the database if missing) and apply the service's migrations.
pub async fn build(spec: &'static Spec, config: Config) -> anyhow::Result<App> {
    let pool = crate::db::connect(&config.database_url, config.db_pool_size).await?;
    (spec.migrator)()
        .run(&pool)
        .await
        .with_context(|| format!("applying {} migrations", spec.name))?;
    Ok(App {
        pool,
        faults: Faults::new(config.fault_injection),
        spec,
    })
}

impl App {
    /// The service's routes, the fault endpoints and the shared ones (`/noop`, `/stats`, 404).
    pub fn router(&self) -> Router {
        crate::http::finish((self.spec.routes)(self.clone()).merge(self.faults.router()))
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, faults = self.faults.enabled(), "{} listening", self.spec.name);
        crate::http::serve(listener, self.router(), shutdown).await?;
        Ok(())
    }
}

/// The whole `main` of a service binary: tracing, crash points, configuration, serve until
/// SIGINT/SIGTERM.
pub async fn main(spec: &'static Spec) -> anyhow::Result<()> {
    crate::http::init_tracing();
    crate::crash::init().map_err(anyhow::Error::msg)?;
    let config = Config::parse(spec);
    let listener = crate::http::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    build(spec, config)
        .await?
        .run(listener, crate::http::shutdown_signal())
        .await
}
