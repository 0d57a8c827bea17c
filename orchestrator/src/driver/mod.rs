//! The saga driver: the IO around the pure engine ([`crate::saga`]).
//!
//! - here: [`Driver`] — the sagas driven by this instance (slots, the active set), waiters
//!   (POST-and-wait, long polls), and its part in the background loops ([`Worker`]: claims,
//!   renewals and wake-ups are [`crate::worker`]'s, on [`crate::lease`]);
//! - [`start`]: the one entry point that creates a saga (`POST /sagas`) and the manual retry;
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

mod call;
mod run;
pub mod start;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use uuid::Uuid;

use crate::error::Result;
use crate::lease::Leases;
use crate::registry::Registry;
use crate::saga::Input;
use crate::store::SagaRow;
use crate::wake::Releaser;
use crate::worker::{Signals, Slots, Watchers, Worker};
use crate::writer::TransitionWriter;

pub use start::{StartSaga, Started};

pub struct Driver {
    leases: Leases,
    registry: Arc<Registry>,
    http: reqwest::Client,
    /// Sagas being driven here (never one twice in one process; at most MAX_ACTIVE_SAGAS).
    slots: Slots,
    /// Per-saga waiters (POST-and-wait, long polls), woken only by their own saga.
    watchers: Watchers,
    signals: Signals,
    /// Hands leases back in batches, one NOTIFY per batch.
    releaser: Releaser,
    writer: TransitionWriter,
    shutdown: watch::Receiver<bool>,
}

/// How a driver is set up.
pub struct DriverConfig {
    pub max_active: usize,
    pub transition_writers: usize,
    pub transition_batch: usize,
}

impl Driver {
    pub fn new(
        leases: Leases,
        registry: Arc<Registry>,
        config: DriverConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let writer = TransitionWriter::start(
            leases.pool().clone(),
            leases.ttl(),
            config.transition_writers,
            config.transition_batch,
        );
        Ok(Driver {
            releaser: Releaser::start(leases.clone()),
            leases,
            registry,
            http,
            slots: Slots::new(config.max_active),
            watchers: Watchers::default(),
            signals: Signals::default(),
            writer,
            shutdown,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// This instance's identity in leases.
    pub fn instance_id(&self) -> &str {
        self.leases.owner()
    }

    /// Resolves when saga `id` reaches a terminal or parked state on this instance. Call before
    /// the saga can get there; after a wait that gave up, call [`Driver::unwatch`].
    pub fn watch(&self, id: Uuid) -> oneshot::Receiver<()> {
        self.watchers.watch(id)
    }

    /// Forget the waiters of `id` that stopped waiting.
    pub fn unwatch(&self, id: Uuid) {
        self.watchers.unwatch(id)
    }

    fn notify_finished(&self, id: Uuid) {
        self.watchers.settled(id)
    }

    /// At start-up: resume the sagas this instance identity held before a restart.
    pub async fn resume_own(self: &Arc<Self>) -> Result<()> {
        for row in self.leases.reclaim_own::<SagaRow>().await? {
            tracing::info!(saga = %row.id, "resuming a saga this instance held before restarting");
            self.spawn_leased(row, Input::Wake);
        }
        Ok(())
    }

    /// A slot for saga `id`, unless every slot is busy or it is already driven here.
    fn try_activate(&self, id: Uuid) -> Option<OwnedSemaphorePermit> {
        self.slots.take(id)
    }

    /// A saga stopped being driven here: free its slot, and if work was turned away for lack
    /// of one, run a claim pass now (after the permit is back, so the pass sees the free slot).
    fn finish(&self, id: Uuid, permit: OwnedSemaphorePermit) {
        self.slots.give_back(id, permit);
        self.signals.slot_freed();
    }

    /// Hand a lease back in the background (no free slot, or already driven here).
    fn hand_back_later(self: &Arc<Self>, id: Uuid, epoch: i64) {
        self.signals.starve();
        let me = self.clone();
        tokio::spawn(async move { me.releaser.release(id, epoch).await });
    }

    /// Wait until every saga driven here has stopped (after shutdown was signalled).
    pub async fn drain(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while !self.slots.held().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Worker for Driver {
    type Row = SagaRow;
    fn leases(&self) -> &Leases {
        &self.leases
    }
    fn signals(&self) -> &Signals {
        &self.signals
    }
    fn slots(&self) -> &Slots {
        &self.slots
    }
    fn start(self: &Arc<Self>, row: SagaRow) {
        self.spawn_leased(row, Input::Wake);
    }
}
