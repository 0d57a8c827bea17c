//! Waking idle instances: how work an instance gives up reaches the others promptly.
//!
//! - [`Releaser`]: every lease of one kind handed back (graceful shutdown, no free slot) goes
//!   through one task that releases everything waiting in **one statement** with **one**
//!   `NOTIFY` on the kind's channel (sent by Postgres at commit). A NOTIFY takes a cluster-wide
//!   lock at commit, so one per row or per transition would serialise commits; one per batch
//!   does not (a shutdown releasing a thousand leases sends a handful).
//! - [`listen`]: a `LISTEN` on its own connection (outside the pool, so it never takes a slot
//!   from the workers) that calls back for each notification (bursts coalesce in the caller's
//!   `Notify`), and once after every (re)connect because notifications sent while it was away
//!   are lost. A **heartbeat** (`SELECT 1` with a timeout, every few seconds) notices a silent
//!   network break — sqlx has no client-side TCP keepalive, so without it a connection whose
//!   peer vanished would wait forever — and treats it as a lost connection: reconnect, call
//!   back. Polling (`POLL_INTERVAL_MS`) stays as the fallback: the listener is an accelerator,
//!   never a single point of failure.
//!
//! Transitions themselves never NOTIFY: a row that waits for a retry is due at a time every
//! claim pass learns ([`crate::lease::Leases::claim`] answers when the next becomes claimable).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::lease::Leases;

/// Most leases released (and announced by one NOTIFY) in one statement.
const MAX_RELEASE_BATCH: usize = 1024;

struct Release {
    id: Uuid,
    epoch: i64,
    done: oneshot::Sender<()>,
}

/// Hands leases of one kind back in batches, one NOTIFY per batch (see the module docs).
pub struct Releaser {
    tx: mpsc::UnboundedSender<Release>,
}

impl Releaser {
    /// Start the releasing task; the NOTIFY payload is the leases' owner (this instance).
    pub fn start(leases: Leases) -> Self {
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
                match leases.release(&ids, &epochs, leases.owner()).await {
                    Ok(n) => tracing::debug!(
                        kind = leases.kind.name,
                        handed_back = n,
                        of = ids.len(),
                        "leases released"
                    ),
                    // The leases then expire on their own (LEASE_TTL_MS): slower, still safe.
                    Err(e) => {
                        tracing::warn!(kind = leases.kind.name, error = %e, rows = ids.len(), "handing leases back failed")
                    }
                }
                for r in batch {
                    let _ = r.done.send(());
                }
            }
        });
        Releaser { tx }
    }

    /// Hand the lease of row `id` back (fenced by `epoch`); resolves once the batch holding it
    /// has committed (or failed: the lease then expires on its own).
    pub async fn release(&self, id: Uuid, epoch: i64) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Release { id, epoch, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Hand the lease of row `id` back (fenced by `epoch`) without waiting for the batch.
    pub fn release_later(&self, id: Uuid, epoch: i64) {
        let (done, _) = oneshot::channel();
        let _ = self.tx.send(Release { id, epoch, done });
    }
}

/// How the listener checks that its connection is alive.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// A `SELECT 1` this often (None: never — only for the test that shows why it exists).
    pub every: Option<Duration>,
    /// No answer within this: the connection is lost.
    pub timeout: Duration,
}

/// A listener on `channels` over a connection of its own (options `opts`), which reports a lost
/// connection (`Ok(None)` from `try_recv`) instead of reconnecting silently, so the caller
/// knows notifications may have been missed.
pub async fn connect(
    opts: &PgConnectOptions,
    channels: &[&str],
) -> Result<PgListener, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(opts.clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.eager_reconnect(false);
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

/// [`connect`] on the saga work channel with the pool's own options (kept for callers that
/// knew it by this name).
pub async fn connect_listener(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    connect(
        pool.connect_options().as_ref(),
        &[crate::store::WORK_CHANNEL],
    )
    .await
}

/// LISTEN on `channels` until shutdown, calling `wake` for each notification and after every
/// (re)connect. A lost connection — reported by the server, or a heartbeat without an answer —
/// is rebuilt with backoff.
pub async fn listen(
    opts: PgConnectOptions,
    channels: Vec<&'static str>,
    heartbeat: Heartbeat,
    wake: impl Fn(),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let listener = tokio::select! {
            r = connect(&opts, &channels) => r,
            _ = crate::until_shutdown(&mut shutdown) => return,
        };
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot LISTEN for work");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::until_shutdown(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Work announced before this connection existed was not heard (after a reconnect, or a
        // first connection that had to wait for the database): claim it now.
        if connected_before {
            tracing::info!(
                "listening for work again: claiming what may have been announced meanwhile"
            );
        }
        connected_before = true;
        wake();
        if !serve(&mut listener, heartbeat, &wake, &mut shutdown).await {
            return;
        }
    }
}

/// Deliver notifications until the connection is lost (false: shutdown).
async fn serve(
    listener: &mut PgListener,
    heartbeat: Heartbeat,
    wake: &impl Fn(),
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let every = heartbeat.every.unwrap_or(Duration::from_secs(3600));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = listener.try_recv() => match r {
                Ok(Some(n)) => {
                    tracing::debug!(channel = n.channel(), from = n.payload(), "work announced");
                    wake();
                }
                Ok(None) => {
                    tracing::warn!("the LISTEN connection was lost; reconnecting");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                    return true;
                }
            },
            _ = beat.tick(), if heartbeat.every.is_some() => {
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                match tokio::time::timeout(heartbeat.timeout, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the LISTEN connection failed its heartbeat; reconnecting");
                        return true;
                    }
                    Err(_) => {
                        tracing::warn!(timeout = ?heartbeat.timeout, "the LISTEN connection did not answer its heartbeat (a silent network break?); reconnecting");
                        return true;
                    }
                }
            }
            _ = crate::until_shutdown(shutdown) => return false,
        }
    }
}
