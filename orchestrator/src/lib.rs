//! Tandem's saga orchestrator.
//!
//! - [`saga`]: the pure engine — definitions as data, saga state, the transition function.
//! - [`driver`]: leases, the write-ahead call loop, the claim loop (`FOR UPDATE SKIP LOCKED`).
//! - [`store`]: Postgres access (migrations in `migrations/orchestrator/`).
//! - [`writer`]: group commit of saga transitions (many sagas' writes in one statement).
//! - [`wake`]: waking idle instances (leases handed back in batches with one NOTIFY; LISTEN).
//! - [`api`]: the REST API.
//! - [`config`]: environment / flags.
//!
//! Binaries and tests use [`build`] then [`App::run`] with their own listener (tests bind port 0).

pub mod api;
pub mod config;
pub mod driver;
pub mod saga;
pub mod store;
pub mod wake;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

pub use config::Config;
use driver::Driver;
use saga::{Definition, Input};

/// The checkout definition shipped with Tandem (`definitions/checkout.json`).
pub const CHECKOUT_DEFINITION: &str = include_str!("../../definitions/checkout.json");

pub struct App {
    config: Config,
    driver: Arc<Driver>,
    shutdown_tx: watch::Sender<bool>,
}

/// Connect (creating the database if missing), migrate, load definitions.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let pool = tandem_kit::db::connect(&config.database_url, config.db_pool_size).await?;
    store::MIGRATOR
        .run(&pool)
        .await
        .context("running orchestrator migrations")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let driver = Arc::new(Driver::new(
        pool,
        config.instance_id(),
        config.lease_ttl(),
        config.services()?,
        config.max_active_sagas,
        shutdown_rx,
    )?);
    if config.transition_writers > 0 {
        driver.set_writer(writer::TransitionWriter::start(
            driver.pool.clone(),
            driver.lease_ttl,
            config.transition_writers,
            config.transition_batch,
        ));
    }
    load_definitions(&driver, &config).await?;
    Ok(App {
        config,
        driver,
        shutdown_tx,
    })
}

/// Store the built-in and `DEFINITIONS_DIR` definitions, then load every stored version; the
/// most recently stored version of each name is current.
async fn load_definitions(driver: &Driver, config: &Config) -> anyhow::Result<()> {
    let mut docs = vec![(
        "built-in checkout".to_string(),
        CHECKOUT_DEFINITION.to_string(),
    )];
    if let Some(dir) = &config.definitions_dir {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading DEFINITIONS_DIR {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for p in paths {
            docs.push((p.display().to_string(), std::fs::read_to_string(&p)?));
        }
    }
    for (origin, text) in docs {
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{origin} is not JSON"))?;
        let def = Definition::parse(&doc).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        store::insert_definition(&driver.pool, &def.name, &Definition::version_of(&doc), &doc)
            .await?;
    }
    let stored = store::all_definitions(&driver.pool).await?;
    let mut defs = driver.definitions.write().expect("definitions lock");
    for (name, version, body) in stored {
        match Definition::parse(&body) {
            Ok(def) => defs.insert(version, def),
            Err(e) => {
                tracing::error!(%name, %version, error = %e, "a stored definition no longer parses")
            }
        }
    }
    Ok(())
}

impl App {
    pub fn router(&self) -> axum::Router {
        api::router(self.driver.clone())
    }

    pub fn driver(&self) -> Arc<Driver> {
        self.driver.clone()
    }

    /// Serve the API, resume this instance's sagas, claim due work; on `shutdown`, stop taking
    /// work, let in-flight calls finish and hand the leases back.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let d = self.driver.clone();
        tracing::info!(instance = %d.instance_id, addr = ?listener.local_addr().ok(), "orchestrator starting");
        for row in store::reclaim_own(&d.pool, &d.instance_id, d.lease_ttl).await? {
            tracing::info!(saga = %row.id, "resuming a saga this instance held before restarting");
            d.spawn_leased(row, Input::Wake);
        }
        let claim = tokio::spawn(d.clone().claim_loop(
            self.config.poll_interval(),
            self.config.claim_batch,
            Duration::from_secs(self.config.idempotency_retention_hours * 3600),
        ));
        let renew = tokio::spawn(d.clone().renew_loop());
        let listen = tokio::spawn(d.clone().listen_loop());
        let tx = self.shutdown_tx.clone();
        let router = self.router();
        tandem_kit::http::serve(listener, router, async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await?;
        let _ = self.shutdown_tx.send(true);
        let _ = claim.await;
        let _ = renew.await;
        let _ = listen.await;
        d.drain(Duration::from_secs(10)).await;
        tracing::info!("orchestrator stopped");
        Ok(())
    }
}
