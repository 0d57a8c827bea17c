//! Waking idle instances: how work an instance gives up reaches the others promptly.
//!
//! - [`Releaser`]: every lease handed back (graceful shutdown, no free slot) goes through one
//!   task that releases everything waiting in **one statement** with **one** `NOTIFY` on
//!   [`store::WORK_CHANNEL`] (sent by Postgres at commit). A NOTIFY takes a cluster-wide lock at
//!   commit, so one per saga or per transition would serialise commits; one per batch does not
//!   (a shutdown releasing a thousand leases sends a handful).
//! - [`connect_listener`]: a `LISTEN` on its own connection (outside the pool, so it never takes
//!   a slot from the driver). The driver's listen loop turns each notification into an immediate
//!   claim pass (bursts coalesce), and runs one after every reconnect because notifications sent
//!   while it was disconnected are lost. Polling (`POLL_INTERVAL_MS`) stays as the fallback: the
//!   listener is an accelerator, never a single point of failure.
//!
//! Transitions themselves never NOTIFY: a saga that waits for a retry is due at a time every
//! claim pass learns (`store::claim_due` answers when the next saga becomes claimable).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::store;

/// Most leases released (and announced by one NOTIFY) in one statement.
const MAX_RELEASE_BATCH: usize = 1024;

struct Release {
    id: Uuid,
    epoch: i64,
    done: oneshot::Sender<()>,
}

/// Hands leases back in batches, one NOTIFY per batch (see the module docs).
pub struct Releaser {
    tx: mpsc::UnboundedSender<Release>,
}

impl Releaser {
    /// Start the releasing task; `notifier` (this instance's id) is the NOTIFY payload.
    pub fn start(pool: PgPool, notifier: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Release>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_RELEASE_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
                let epochs: Vec<i64> = batch.iter().map(|r| r.epoch).collect();
                match store::release_leases(&pool, &ids, &epochs, &notifier).await {
                    Ok(n) => tracing::debug!(handed_back = n, of = ids.len(), "leases released"),
                    // The leases then expire on their own (LEASE_TTL_MS): slower, still safe.
                    Err(e) => {
                        tracing::warn!(error = %e, sagas = ids.len(), "handing leases back failed")
                    }
                }
                for r in batch {
                    let _ = r.done.send(());
                }
            }
        });
        Releaser { tx }
    }

    /// Hand the lease of saga `id` back (fenced by `epoch`); resolves once the batch holding it
    /// has committed (or failed: the lease then expires on its own).
    pub async fn release(&self, id: Uuid, epoch: i64) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Release { id, epoch, done }).is_ok() {
            let _ = wait.await;
        }
    }
}

/// A listener on [`store::WORK_CHANNEL`] over a connection of its own (same options as `pool`),
/// which reports a lost connection (`Ok(None)` from `try_recv`) instead of reconnecting silently,
/// so the caller knows notifications may have been missed.
pub async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.eager_reconnect(false);
    listener.listen(store::WORK_CHANNEL).await?;
    Ok(listener)
}
