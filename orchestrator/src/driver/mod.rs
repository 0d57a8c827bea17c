//! The saga driver: the IO around the pure engine ([`crate::saga`]).
//!
//! - here: [`Driver`] — the sagas driven by this instance (slots, the active set), waiters
//!   (POST-and-wait, long polls), and its part in the background loops ([`Worker`]: claims,
//!   renewals and wake-ups are [`crate::worker`]'s, on [`crate::lease`]);
//! - [`start`]: the one entry point that creates a saga (`POST /sagas`);
//! - [`actions`]: operators' actions (cancel, retry-now, resume) through one path: the receiving
//!   instance takes the lease and applies the action as an engine input;
//! - [`run`]: the per-saga execution loop — ask the engine for the next transition, **persist
//!   it (fenced by the lease epoch) before** performing the call it allows, perform it, feed
//!   the outcome back. A write rejected by the fence means another instance owns the saga now:
//!   the driver drops it at once;
//! - [`call`]: one HTTP call to a service, its answer classified by
//!   [`crate::saga::classify`].
//!
//! Work reaches the driver three ways: creation (the creating instance drives the new saga
//! directly, no claim needed), the claim loop (due sagas whose lease is free or expired:
//! retries whose time came, orphans of dead instances), and at start-up the leases this
//! instance identity held before a restart.

pub mod actions;
mod call;
mod run;
pub mod start;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::error::Result;
use crate::registry::Registry;
use crate::saga::Input;
use crate::store::SagaRow;
use crate::worker::{Plumbing, Worker};
use crate::writer::TransitionWriter;

pub use actions::Acted;
pub use start::{StartSaga, Started};

pub struct Driver {
    /// Leases, slots (at most MAX_ACTIVE_SAGAS), waiters and hand-backs of sagas.
    work: Plumbing,
    registry: Arc<Registry>,
    http: reqwest::Client,
    writer: TransitionWriter,
    shutdown: watch::Receiver<bool>,
}

/// How a driver writes transitions.
pub struct DriverConfig {
    pub transition_writers: usize,
    pub transition_batch: usize,
}

impl Driver {
    /// A driver of the sagas `work` leases (see [`crate::store::SAGAS`]).
    pub fn new(
        work: Plumbing,
        registry: Arc<Registry>,
        config: DriverConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .default_headers(registry.sender_headers())
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let writer = TransitionWriter::start(
            work.leases.store().clone(),
            work.leases.ttl(),
            config.transition_writers,
            config.transition_batch,
        );
        Ok(Driver {
            work,
            registry,
            http,
            writer,
            shutdown,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// This instance's identity in leases.
    pub fn instance_id(&self) -> &str {
        self.work.leases.owner()
    }

    /// Resolves when saga `id` reaches a terminal or parked state on this instance. Call before
    /// the saga can get there; after a wait that gave up, call [`Driver::unwatch`].
    pub fn watch(&self, id: Uuid) -> oneshot::Receiver<()> {
        self.work.watchers.watch(id)
    }

    /// Forget the waiters of `id` that stopped waiting.
    pub fn unwatch(&self, id: Uuid) {
        self.work.watchers.unwatch(id)
    }

    fn notify_finished(&self, id: Uuid) {
        self.work.watchers.settled(id)
    }

    /// At start-up: resume the sagas this instance identity held before a restart.
    pub async fn resume_own(self: &Arc<Self>) -> Result<()> {
        for row in self.work.leases.reclaim_own::<SagaRow>().await? {
            tracing::info!(saga = %row.id, "resuming a saga this instance held before restarting");
            self.spawn_leased(row, Input::Wake);
        }
        Ok(())
    }

    /// Wait until every saga driven here has stopped (after shutdown was signalled).
    pub async fn drain(&self, max: Duration) {
        self.work.drain(max).await
    }
}

impl Worker for Driver {
    type Row = SagaRow;
    fn plumbing(&self) -> &Plumbing {
        &self.work
    }
    fn start(self: &Arc<Self>, row: SagaRow) {
        self.spawn_leased(row, Input::Wake);
    }
}
