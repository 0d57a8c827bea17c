//! Retention: finished sagas, their events and client idempotency keys are deleted after
//! configurable periods, in small batches, by one instance at a time — and a saga's barrier rows
//! in the services are forgotten **before** the saga is deleted (docs/security.md, "Retention").
//!
//! On Postgres, a batch of sagas is one transaction (the SQL is [`crate::store::Store`]'s):
//!
//! 1. `pg_try_advisory_xact_lock` ([`LOCK_KEY`]): if another instance is purging, skip (one
//!    purger at a time, whatever the number of instances; the lock ends with the transaction,
//!    so a crashed purger holds nothing);
//! 2. pick at most `batch` sagas that are `completed` or `compensated`, unchanged for the
//!    retention, with no live lease (`FOR UPDATE SKIP LOCKED`);
//! 3. `POST /barrier/forget` with their ids to **every** configured service (idempotent; a
//!    service that does not answer 2xx aborts the batch, which the next pass repeats);
//! 4. delete their idempotency keys, business keys, events and rows; commit.
//!
//! A crash after 3 only repeats 3 on the next pass (services answer a forgotten saga with
//! `"forgotten": 0`). Sagas that are running, compensating or `failed` (parked for an operator,
//! resumable) are never picked; 2PC / Paxos Commit transactions (`transactions`,
//! `transaction_messages`) are never deleted by Tandem, so no undecided or unacknowledged commit
//! record can go. Client idempotency keys of sagas and of transactions are deleted after their
//! own retention, also in batches.
//!
//! On SQLite (one instance: no lock needed), no transaction is held across the forget calls
//! (it would stop every write meanwhile): the ids are picked, forgotten, then deleted in one
//! transaction that checks again that each is still finished.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::saga::SagaStatus;
use crate::store::Store;

/// The advisory lock the purger holds for one batch (an arbitrary constant: "tandem retention").
pub const LOCK_KEY: i64 = 0x7461_6e64_656d_7274;

/// Statuses that are final: nothing will ever happen to such a saga again.
pub const FINAL: [SagaStatus; 2] = [SagaStatus::Completed, SagaStatus::Compensated];

/// [`FINAL`] as stored (the `status` column).
fn final_names() -> Vec<&'static str> {
    FINAL.iter().map(|s| s.as_str()).collect()
}

/// What to keep how long.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Finished sagas (and their events) older than this (since their last change) are
    /// deleted; `None`: never.
    pub sagas: Option<Duration>,
    /// Client idempotency keys older than this are deleted.
    pub keys: Duration,
    /// Rows per statement (sagas per forget call and per delete).
    pub batch: i64,
    /// Time between passes.
    pub every: Duration,
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub sagas: u64,
    pub keys: u64,
}

/// The purger of one instance.
pub struct Retention {
    store: Store,
    services: BTreeMap<String, String>,
    http: reqwest::Client,
    pub settings: Settings,
}

/// Why a batch of sagas was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("forget call to {service} failed: {reason}")]
    Forget { service: String, reason: String },
}

impl Retention {
    /// `services`: name → base URL of every service that may hold barrier rows of a saga.
    pub fn new(
        store: impl Into<Store>,
        services: BTreeMap<String, String>,
        headers: reqwest::header::HeaderMap,
        settings: Settings,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Retention {
            store: store.into(),
            services,
            http,
            settings,
        })
    }

    /// Batches of keys, then of sagas, each until one comes back short.
    pub async fn pass(&self) -> Result<Purged, PurgeError> {
        let mut purged = Purged::default();
        loop {
            let (n, m) = self
                .store
                .purge_keys(self.settings.keys, self.settings.batch)
                .await?;
            purged.keys += n + m;
            if n < self.batch() && m < self.batch() {
                break;
            }
        }
        if self.settings.sagas.is_some() {
            // `None`: another instance is purging.
            while let Some(n) = self.purge_sagas_batch().await? {
                purged.sagas += n;
                if n < self.batch() {
                    break;
                }
            }
        }
        Ok(purged)
    }

    fn batch(&self) -> u64 {
        self.settings.batch.max(1) as u64
    }

    /// One batch of finished sagas: forget them in every service, then delete them. `None`
    /// when another instance holds the purger's lock; `Some(0)` when nothing is due.
    pub async fn purge_sagas_batch(&self) -> Result<Option<u64>, PurgeError> {
        let Some(retention) = self.settings.sagas else {
            return Ok(Some(0));
        };
        self.store
            .purge_finished_sagas(
                &final_names(),
                retention,
                self.settings.batch,
                LOCK_KEY,
                async |ids: &[Uuid]| self.forget(ids).await,
            )
            .await
    }

    /// `POST /barrier/forget` with `ids` to every service; an error names the first service
    /// that did not answer 2xx.
    pub async fn forget(&self, ids: &[Uuid]) -> Result<(), PurgeError> {
        let body = json!({ "saga_ids": ids.iter().map(Uuid::to_string).collect::<Vec<_>>() });
        let calls = self.services.iter().map(|(name, url)| {
            let req = self
                .http
                .post(format!("{url}{}", tandem_kit::retention::FORGET_PATH))
                .json(&body);
            async move {
                let failed = |reason: String| PurgeError::Forget {
                    service: name.clone(),
                    reason,
                };
                let resp = req.send().await.map_err(|e| failed(e.to_string()))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    Err(failed(format!("{status}: {text}")))
                }
            }
        });
        futures::future::try_join_all(calls).await.map(|_| ())
    }
}

/// `retention`'s passes every [`Settings::every`] until shutdown.
pub async fn run(retention: Arc<Retention>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match retention.pass().await {
            Ok(p) if p != Purged::default() => {
                tracing::debug!(sagas = p.sagas, keys = p.keys, "retention pass")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one retries"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.settings.every) => {}
            _ = crate::until_shutdown(&mut shutdown) => return,
        }
    }
}
