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
//! - [`lease`]: leases for any kind of leased row (claim with `FOR UPDATE SKIP LOCKED` on
//!   Postgres, one `BEGIN IMMEDIATE` transaction on SQLite; renew, hand-back with NOTIFY on
//!   Postgres, take, fencing epoch); [`worker`]: the claim and renew loops and
//!   wake-up signals for any kind; [`wake`]: batched hand-backs and the LISTEN connection with
//!   its heartbeat (Postgres; on SQLite the claim loop is woken in-process or by its timer).
//! - [`store`]: the saga store — one interface ([`store::Store`]), two implementations chosen
//!   once in [`build`] by `DATABASE_URL`: Postgres (the default; migrations in
//!   `migrations/orchestrator/`) or the embedded SQLite file (`sqlite:///path/orchestrator.db`,
//!   [`store::sqlite`]; migrations in `migrations/sqlite/orchestrator/`; one instance per data
//!   directory, held by a lock file). [`writer`]: group commit, the one way a transition is
//!   persisted. See docs/storage.md ("Orchestrator").
//! - [`commit`]: 2PC / 3PC / Paxos Commit — Postgres only (the services' prepared
//!   transactions): on SQLite there is no coordinator and `/transactions` answers 501
//!   `needs-postgres`.
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
    /// 2PC / 3PC / Paxos Commit: Postgres only (None on SQLite).
    coordinator: Option<Arc<commit::Coordinator>>,
    store: store::Store,
    retention: Arc<retention::Retention>,
    auth: tandem_kit::auth::Auth,
    /// What participants and acceptors send here goes through these (`FAULT_INJECTION`).
    faults: tandem_kit::faults::Faults,
    /// SQLite: the lock file that refuses a second orchestrator on the same data directory,
    /// held for the App's lifetime.
    _exclusive: Option<tandem_kit::sqlite::Exclusive>,
    shutdown_tx: watch::Sender<bool>,
}

/// Choose the store by `DATABASE_URL` (Postgres, or SQLite for `sqlite://…`: then take the
/// lock file first), migrate (on Postgres as the owner role when configured, see
/// `tandem_kit::db::migrate`), connect, load definitions.
pub async fn build(config: Config) -> Result<App> {
    // Before anything records (the in-flight gauges are taken while building).
    tandem_kit::metrics::install();
    let auth =
        tandem_kit::auth::Auth::load(&config.auth).map_err(|e| Error::Config(e.to_string()))?;
    // The one place the backend is chosen. On SQLite, the lock file before the database is
    // touched: a second orchestrator on the same data directory stops here.
    let exclusive = if store::is_sqlite(&config.database_url) {
        store::check_sqlite_url(&config.database_url)?;
        tandem_kit::sqlite::Exclusive::take(&config.database_url, "orchestrator")
            .map_err(|e| Error::Config(e.to_string()))?
    } else {
        None
    };
    let store = store::Store::open(
        &config.database_url,
        config.database_owner_url.as_deref(),
        config.db_pool_size,
    )
    .await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let registry = Arc::new(
        Registry::new(store.clone(), config.services()?)
            .with_node(&config.node_name)
            .with_auth(auth.clone()),
    );
    registry
        .load(
            &[("built-in checkout", CHECKOUT_DEFINITION)],
            config.definitions_dir.as_deref(),
        )
        .await?;
    let coordinator = coordinator(&config, &store, &registry, shutdown_rx.clone())?;
    let retention = Arc::new(retention::Retention::new(
        store.clone(),
        registry.services().clone(),
        registry.sender_headers(),
        config.retention(),
    )?);
    let driver = Arc::new(Driver::new(
        work(&config, store::SAGAS, store.clone()),
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
        store,
        retention,
        auth,
        faults,
        _exclusive: exclusive,
        shutdown_tx,
    })
}

/// Leases, slots and hand-backs of one kind of work: at most MAX_ACTIVE_SAGAS driven here.
fn work(config: &Config, kind: lease::LeaseKind, store: store::Store) -> Plumbing {
    let leases = Leases::new(kind, store, &config.instance_id(), config.lease_ttl());
    Plumbing::new(leases, config.max_active_sagas)
}

/// The 2PC / 3PC / Paxos Commit coordinator: on Postgres only (the services' prepared
/// transactions); None on SQLite, where `/transactions` answers 501 `needs-postgres`.
fn coordinator(
    config: &Config,
    store: &store::Store,
    registry: &Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Arc<commit::Coordinator>>> {
    let Some(pool) = store.postgres() else {
        tracing::info!(
            "SQLite store: orchestrated sagas only; POST /transactions (2PC, 3PC, Paxos \
             Commit) answers 501 needs-postgres"
        );
        return Ok(None);
    };
    let coordinator = Arc::new(commit::Coordinator::new(
        pool.clone(),
        work(config, commit::TRANSACTIONS, store.clone()),
        registry.clone(),
        shutdown,
    )?);
    coordinator.paxos.configure(
        config.acceptors()?,
        Duration::from_millis(config.paxos_progress_ms),
    );
    coordinator
        .three_pc
        .configure(Duration::from_millis(config.three_pc_timeout_ms));
    Ok(Some(coordinator))
}

impl App {
    pub fn router(&self) -> axum::Router {
        api::router(
            api::Ctx {
                driver: self.driver.clone(),
                coordinator: self.coordinator.clone(),
                store: self.store.clone(),
                faults: self.faults.clone(),
            },
            &self.auth,
        )
    }

    pub fn driver(&self) -> Arc<Driver> {
        self.driver.clone()
    }

    /// The transactions' coordinator (None on SQLite: transactions need Postgres).
    pub fn coordinator(&self) -> Option<Arc<commit::Coordinator>> {
        self.coordinator.clone()
    }

    /// The saga store this instance runs on.
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// This instance's purger (its loop runs in [`App::run`]; tests call its passes).
    pub fn retention(&self) -> Arc<retention::Retention> {
        self.retention.clone()
    }

    /// The background loops: claims and renewals of sagas (and transactions on Postgres),
    /// retention, and on Postgres the LISTEN connection that wakes the claim loops.
    fn spawn_loops(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let d = self.driver.clone();
        let rx = self.shutdown_tx.subscribe();
        let poll = self.config.poll_interval();
        let batch = self.config.claim_batch;
        let mut loops = vec![
            tokio::spawn(worker::claim_loop(d.clone(), poll, batch, rx.clone())),
            tokio::spawn(worker::renew_loop(d.clone(), rx.clone())),
            tokio::spawn(retention::run(self.retention.clone(), rx.clone())),
        ];
        if let Some(c) = self.coordinator.clone() {
            loops.push(tokio::spawn(worker::claim_loop(
                c.clone(),
                poll,
                batch,
                rx.clone(),
            )));
            loops.push(tokio::spawn(worker::renew_loop(c.clone(), rx.clone())));
        }
        match self.store.postgres() {
            Some(pool) => {
                let c = self.coordinator.clone();
                loops.push(tokio::spawn(wake::listen(
                    (*pool.connect_options()).clone(),
                    vec![store::WORK_CHANNEL, commit::TXN_CHANNEL],
                    self.config.heartbeat(),
                    move || {
                        d.signals().wake();
                        if let Some(c) = &c {
                            c.signals().wake();
                        }
                    },
                    rx,
                )));
            }
            None => tracing::info!(
                poll = ?poll,
                "SQLite store: no LISTEN/NOTIFY (Postgres only) and one instance (the lock \
                 file): leases handed back are claimed again by this instance's claim loop, \
                 woken in-process when a slot frees, else every POLL_INTERVAL_MS"
            ),
        }
        loops
    }

    /// Serve the API, resume this instance's sagas, claim due work; on `shutdown`, stop taking
    /// work, let in-flight calls finish and hand the leases back.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let d = self.driver.clone();
        let addr = listener.local_addr()?;
        self.auth
            .check_exposure(addr, "orchestrator")
            .map_err(|e| Error::Config(e.to_string()))?;
        tracing::info!(instance = %d.instance_id(), addr = ?listener.local_addr().ok(), store = self.store.backend(), faults = self.faults.enabled(), "orchestrator starting");
        d.resume_own().await?;
        if let Some(c) = &self.coordinator {
            c.set_public_url(match &self.config.public_url {
                Some(u) => u.trim_end_matches('/').to_string(),
                None => format!("http://{}", listener.local_addr()?),
            });
            for row in c.leases().reclaim_own::<commit::TxnRow>().await? {
                c.start(row);
            }
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
