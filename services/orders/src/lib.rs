//! The orders service: the entry point of the **choreographed** checkout (no orchestrator on
//! the path). `POST /orders` writes the order and its `placed` event in one transaction (the
//! transactional outbox) and answers with the order id; inventory, payment and shipping react
//! to the events (`tandem_kit::choreo`); this service follows them to keep each order's status,
//! owns the **step timer** (a step that never hears back is failed here, which starts the
//! compensations), and rebuilds an order's timeline from the stream (`GET /orders/{id}`).
//!
//! - this file: configuration, start-up, serving, `main`;
//! - [`api`]: the HTTP handlers and the order's validation;
//! - [`flow`]: the consumer that follows the events, the step timer and retention;
//! - `migrations/orders/`: the schema (the outbox table comes from the kit).
//!
//! Default port 8087, database `tandem_orders`, pool `DB_POOL_SIZE` (5), NATS at `NATS_URL`.

pub mod api;
pub mod flow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use sqlx::PgPool;
use tandem_kit::choreo::outbox::Relay;
use tandem_kit::choreo::step::{RELAY_POLL, Worker};
use tokio::sync::Notify;

/// Why the service could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kit(#[from] tandem_kit::Error),
    #[error("{0}")]
    Nats(String),
}

/// Default port of the orders service.
pub const PORT: u16 = 8087;

/// Configuration from the environment (or flags).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "orders",
    about = "Tandem orders service: the choreographed checkout's entry point"
)]
pub struct Config {
    /// This service's own database, as its runtime role (without DATABASE_OWNER_URL also
    /// created if missing and migrated at start with this role: the privileged zero-setup path).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tandem_orders"
    )]
    pub database_url: String,
    /// The same database as its owner role: migrations run with it, nothing is created
    /// (`tandem db provision`, docs/security.md).
    #[arg(long, env = "DATABASE_OWNER_URL")]
    pub database_owner_url: Option<String>,
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8087")]
    pub listen_addr: SocketAddr,
    /// Connections in the pool (the shared development server allows 100 in all).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 5)]
    pub db_pool_size: u32,
    /// NATS with JetStream (the checkout's events).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A step that has not reported within this long after the previous event is failed by
    /// this service's timer, which starts the compensations.
    #[arg(long, env = "STEP_TIMEOUT_MS", default_value_t = 10_000)]
    pub step_timeout_ms: u64,
    /// `off`: finished orders are kept forever. `on` (default): completed and compensated
    /// orders unchanged for ORDER_RETENTION_SECS are deleted, and a `forgotten` event tells
    /// every service to delete the order's barrier and outbox rows (docs/security.md,
    /// "Retention"). Running and compensating orders are never deleted.
    #[arg(long, env = "ORDER_PURGE", value_enum, default_value = "on")]
    pub order_purge: tandem_kit::faults::Switch,
    /// How long a finished order is kept after its last change (seconds; default 30 days).
    #[arg(long, env = "ORDER_RETENTION_SECS", default_value_t = 30 * 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub order_retention_secs: u64,
    #[command(flatten)]
    pub purge: tandem_kit::retention::PurgePace,
    #[command(flatten)]
    pub auth: tandem_kit::auth::AuthConfig,
}

impl Config {
    /// Defaults with another database, NATS server and an ephemeral port (tests).
    pub fn with(database_url: impl Into<String>, nats_url: impl Into<String>) -> Self {
        let mut c = Config::parse_from(["orders"]);
        c.database_url = database_url.into();
        c.database_owner_url = None;
        c.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.nats_url = nats_url.into();
        c.auth = tandem_kit::auth::AuthConfig::default();
        c
    }

    /// What retention keeps how long ([`flow::purge`]).
    pub fn retention(&self) -> Retention {
        Retention {
            orders: (self.order_purge == tandem_kit::faults::Switch::On)
                .then(|| Duration::from_secs(self.order_retention_secs)),
            batch: self.purge.purge_batch,
            every: self.purge.every(),
        }
    }
}

/// The entry point's retention of finished orders.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Completed and compensated orders unchanged for this long are deleted; `None`: never.
    pub orders: Option<Duration>,
    /// Orders per transaction.
    pub batch: i64,
    /// Time between passes.
    pub every: Duration,
}

/// A ready orders service.
#[derive(Debug, Clone)]
pub struct App {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub relay: Relay,
    pub step_timeout: Duration,
    /// Woken whenever an order reaches a terminal status (long polls wait on it).
    pub settled: Arc<Notify>,
    /// Accepted tokens (see `tandem_kit::auth`).
    pub auth: tandem_kit::auth::Auth,
    pub retention: Retention,
}

/// The migrations of the orders database: its own plus the kit's outbox.
pub fn migrator() -> sqlx::migrate::Migrator {
    static OWN: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/orders");
    tandem_kit::choreo::outbox::migrator(sqlx::migrate::Migrator::with_migrations(
        OWN.migrations.to_vec(),
    ))
}

/// Connect to Postgres (creating the database if missing, applying migrations) and to NATS.
pub async fn build(config: Config) -> Result<App, Error> {
    let auth = tandem_kit::auth::Auth::load(&config.auth).map_err(tandem_kit::Error::from)?;
    let pool = tandem_kit::db::migrate_and_open(
        "orders",
        &config.database_url,
        config.database_owner_url.as_deref(),
        &migrator(),
        config.db_pool_size,
    )
    .await?;
    let js = tandem_kit::choreo::connect(&config.nats_url)
        .await
        .map_err(Error::Nats)?;
    Ok(App {
        relay: Relay::new(pool.clone(), js.clone(), RELAY_POLL),
        pool,
        js,
        step_timeout: Duration::from_millis(config.step_timeout_ms),
        settled: Arc::new(Notify::new()),
        auth,
        retention: config.retention(),
    })
}

impl App {
    /// The relay, the event follower and the step timer, running until the returned worker is
    /// dropped.
    pub fn start_worker(&self) -> Worker {
        Worker::from_tasks(vec![
            tokio::spawn(self.relay.clone().run()),
            tokio::spawn(flow::follow(self.clone())),
            tokio::spawn(flow::timer(self.clone())),
            tokio::spawn(flow::retention(self.clone())),
        ])
    }

    /// Serve on `listener` (with the worker) until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let _worker = self.start_worker();
        let addr = listener.local_addr().map_err(tandem_kit::Error::Serve)?;
        self.auth.check_exposure(addr, "orders")?;
        tracing::info!(%addr, "orders listening");
        tandem_kit::http::serve(listener, api::router(self), shutdown)
            .await
            .map_err(|e| tandem_kit::Error::Serve(e).into())
    }
}

/// The whole `main`: tracing, configuration, serve until SIGINT/SIGTERM.
pub async fn main() -> Result<(), Error> {
    tandem_kit::http::init_tracing();
    let config = Config::parse();
    let listener = tandem_kit::http::bind(config.listen_addr)
        .await
        .map_err(|source| tandem_kit::Error::Bind {
            addr: config.listen_addr,
            source,
        })?;
    build(config)
        .await?
        .run(listener, tandem_kit::http::shutdown_signal())
        .await
}
