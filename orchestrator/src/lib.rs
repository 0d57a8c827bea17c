//! Tandem's saga orchestrator. From `POST /sagas` to the service call and back (see
//! docs/architecture.md for the picture):
//!
//! - [`api`]: the REST API (problem+json); handlers parse and answer, nothing more.
//! - [`driver`]: sagas driven by this instance — [`driver::start`] (the one way a saga is
//!   created), `driver::run` (the per-saga loop: transition, persist, call, feed back),
//!   `driver::call` (one HTTP call).
//! - [`saga`]: the pure engine — definitions as data, saga state, the transition function, and
//!   the step result protocol ([`saga::classify`]). No IO.
//! - [`registry`]: the definition registry (loaded versions, the current one, adding one).
//! - [`lease`]: leases for any kind of leased row (claim with `FOR UPDATE SKIP LOCKED`, renew,
//!   hand-back with NOTIFY, take, fencing epoch); [`worker`]: the claim and renew loops and
//!   wake-up signals for any kind; [`wake`]: batched hand-backs and the LISTEN connection with
//!   its heartbeat.
//! - [`store`]: Postgres access for sagas and definitions (migrations in
//!   `migrations/orchestrator/`); [`writer`]: group commit, the one way a transition is
//!   persisted.
//! - [`metrics`]: the orchestrator's Prometheus metrics (sagas, steps, leases, batches); the
//!   HTTP, pool and trace plumbing is the kit's (`tandem_kit::metrics`, `tandem_kit::telemetry`).
//! - [`retention`]: deleting finished sagas (after telling every service to forget their
//!   barrier rows) and old client idempotency keys, in batches, one instance at a time.
//! - [`text`]: refusing U+0000, which Postgres cannot store; [`error`]: the crate's error type;
//!   [`config`]: environment / flags.
//!
//! Binaries and tests use [`build`] then [`App::run`] with their own listener (tests bind port 0).

pub mod api;
pub mod commit;
pub mod config;
pub mod driver;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod registry;
pub mod retention;
pub mod saga;
pub mod store;
pub mod text;
pub mod wake;
pub mod worker;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use config::Config;
use driver::{Driver, DriverConfig};
pub use error::{Error, Result};
use lease::Leases;
use registry::Registry;
use worker::{Plumbing, Worker};

/// The checkout definition shipped with Tandem (`definitions/checkout.json`).
pub const CHECKOUT_DEFINITION: &str = include_str!("../../definitions/checkout.json");

pub struct App {
    config: Config,
    driver: Arc<Driver>,
    coordinator: Arc<commit::Coordinator>,
    pool: sqlx::PgPool,
    retention: Arc<retention::Retention>,
    auth: tandem_kit::auth::Auth,
    /// What participants and acceptors send here goes through these (`FAULT_INJECTION`).
    faults: tandem_kit::faults::Faults,
    shutdown_tx: watch::Sender<bool>,
}

/// Migrate (as the owner role when configured, see `tandem_kit::db::migrate`), connect as the
/// runtime role, load definitions.
pub async fn build(config: Config) -> Result<App> {
    // Before anything records (the in-flight gauges are taken while building).
    tandem_kit::metrics::install();
    let auth =
        tandem_kit::auth::Auth::load(&config.auth).map_err(|e| Error::Config(e.to_string()))?;
    tandem_kit::db::migrate(
        &config.database_url,
        config.database_owner_url.as_deref(),
        &store::MIGRATOR,
    )
    .await
    .map_err(|e| match e {
        tandem_kit::db::MigrateFailed::Migrate(e) => Error::Migrate(e),
        other => Error::Connect(other.into()),
    })?;
    let pool = tandem_kit::db::open(&config.database_url, config.db_pool_size)
        .await
        .map_err(|e| Error::Connect(e.into()))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let registry = Arc::new(
        Registry::new(pool.clone(), config.services()?)
            .with_node(&config.node_name)
            .with_auth(auth.clone()),
    );
    registry
        .load(
            &[("built-in checkout", CHECKOUT_DEFINITION)],
            config.definitions_dir.as_deref(),
        )
        .await?;
    // Sagas and transactions: each kind its own leases, at most MAX_ACTIVE_SAGAS driven here.
    let work = |kind| {
        let leases = Leases::new(
            kind,
            pool.clone(),
            &config.instance_id(),
            config.lease_ttl(),
        );
        Plumbing::new(leases, config.max_active_sagas)
    };
    let coordinator = Arc::new(commit::Coordinator::new(
        work(commit::TRANSACTIONS),
        registry.clone(),
        shutdown_rx.clone(),
    )?);
    coordinator.paxos.configure(
        config.acceptors()?,
        Duration::from_millis(config.paxos_progress_ms),
    );
    let retention = Arc::new(retention::Retention::new(
        pool.clone(),
        registry.services().clone(),
        registry.sender_headers(),
        config.retention(),
    )?);
    coordinator
        .three_pc
        .configure(Duration::from_millis(config.three_pc_timeout_ms));
    let driver = Arc::new(Driver::new(
        work(store::SAGAS),
        registry,
        DriverConfig {
            transition_writers: config.transition_writers.into(),
            transition_batch: config.transition_batch.into(),
        },
        shutdown_rx,
    )?);
    let faults = tandem_kit::faults::Faults::for_node(config.fault_injection, &config.node_name);
    Ok(App {
        config,
        driver,
        coordinator,
        pool,
        retention,
        auth,
        faults,
        shutdown_tx,
    })
}

impl App {
    pub fn router(&self) -> axum::Router {
        api::router(
            api::Ctx {
                driver: self.driver.clone(),
                coordinator: self.coordinator.clone(),
                pool: self.pool.clone(),
                faults: self.faults.clone(),
            },
            &self.auth,
        )
    }

    pub fn driver(&self) -> Arc<Driver> {
        self.driver.clone()
    }

    pub fn coordinator(&self) -> Arc<commit::Coordinator> {
        self.coordinator.clone()
    }

    /// This instance's purger (its loop runs in [`App::run`]; tests call its passes).
    pub fn retention(&self) -> Arc<retention::Retention> {
        self.retention.clone()
    }

    /// The background loops: claims and renewals of sagas and transactions, retention, and
    /// the LISTEN connection that wakes both claim loops.
    fn spawn_loops(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let (d, c) = (self.driver.clone(), self.coordinator.clone());
        let rx = self.shutdown_tx.subscribe();
        let poll = self.config.poll_interval();
        let batch = self.config.claim_batch;
        vec![
            tokio::spawn(worker::claim_loop(d.clone(), poll, batch, rx.clone())),
            tokio::spawn(worker::renew_loop(d.clone(), rx.clone())),
            tokio::spawn(retention::run(self.retention.clone(), rx.clone())),
            tokio::spawn(worker::claim_loop(c.clone(), poll, batch, rx.clone())),
            tokio::spawn(worker::renew_loop(c.clone(), rx.clone())),
            tokio::spawn(wake::listen(
                (*self.pool.connect_options()).clone(),
                vec![store::WORK_CHANNEL, commit::TXN_CHANNEL],
                self.config.heartbeat(),
                move || {
                    d.signals().wake();
                    c.signals().wake();
                },
                rx,
            )),
        ]
    }

    /// Serve the API, resume this instance's sagas, claim due work; on `shutdown`, stop taking
    /// work, let in-flight calls finish and hand the leases back.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let d = self.driver.clone();
        let c = self.coordinator.clone();
        let addr = listener.local_addr()?;
        self.auth
            .check_exposure(addr, "orchestrator")
            .map_err(|e| Error::Config(e.to_string()))?;
        tracing::info!(instance = %d.instance_id(), addr = ?listener.local_addr().ok(), faults = self.faults.enabled(), "orchestrator starting");
        c.set_public_url(match &self.config.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", listener.local_addr()?),
        });
        d.resume_own().await?;
        for row in c.leases().reclaim_own::<commit::TxnRow>().await? {
            c.start(row);
        }
        let loops = self.spawn_loops();
        let tx = self.shutdown_tx.clone();
        let router = self.router();
        tandem_kit::http::serve(listener, router, async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await?;
        let _ = self.shutdown_tx.send(true);
        for l in loops {
            let _ = l.await;
        }
        d.drain(Duration::from_secs(10)).await;
        tracing::info!("orchestrator stopped");
        Ok(())
    }
}

/// Resolves once shutdown is signalled (the guard `wait_for` returns is not `Send`).
pub(crate) async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
