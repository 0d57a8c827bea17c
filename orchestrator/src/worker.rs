//! The background loops of any kind of leased work: claim, renew — and the wake-up signals the
//! listener ([`crate::wake::listen`]) and the workers share.
//!
//! A kind of work holds a [`Plumbing`] (its [`Leases`], signals, slots, waiters and batched
//! hand-backs), implements [`Worker`] (that plumbing, how to start driving a claimed row) and
//! gets:
//!
//! - [`claim_loop`]: claim due rows until shutdown. After a pass it sleeps until the first of:
//!   the poll interval, the moment the next row becomes claimable (answered by the claim
//!   itself), a retry time of a row handed back here ([`Signals::note_due`]), a wake-up
//!   ([`Signals::wake`]: a NOTIFY, a listener reconnect, a slot freed while work waited).
//! - [`renew_loop`]: renew, in one statement every `ttl / 3`, the leases of the rows held here,
//!   so a call slower than the TTL does not lose its lease.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::lease::{Leased, Leases};
use crate::wake::Releaser;

/// Slack added to a due time learnt from the database, so the pass runs just after it.
const DUE_MARGIN: Duration = Duration::from_millis(5);

/// When a kind's claim loop should look again, besides its poll interval.
#[derive(Default)]
pub struct Signals {
    /// Run a claim pass now: another instance announced work (NOTIFY), the listener
    /// reconnected, or a slot freed while work was waiting for one.
    wake: Notify,
    /// Work was turned away (or left unclaimed) for lack of a free slot: the next slot that
    /// frees wakes the claim loop.
    starved: AtomicBool,
    /// The earliest due time of a row handed back here to wait; the claim loop sleeps no later
    /// than that (`rearm` tells it to look).
    local_due: Mutex<Option<DateTime<Utc>>>,
    rearm: Notify,
}

impl Signals {
    /// Run a claim pass now (bursts coalesce into one: `Notify` keeps one permit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Work could not be taken for lack of a slot: claim when one frees.
    pub fn starve(&self) {
        self.starved.store(true, Ordering::Release);
    }

    /// A slot freed: if work was turned away for lack of one, run a claim pass now.
    pub fn slot_freed(&self) {
        if self.starved.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// A row handed back here waits until `at`: make sure the claim loop looks then.
    pub fn note_due(&self, at: DateTime<Utc>) {
        let mut due = self.local_due.lock().expect("local_due lock");
        if due.is_none_or(|d| at < d) {
            *due = Some(at);
            self.rearm.notify_one();
        }
    }

    /// Sleep until `deadline`, a due time noted here, a wake-up (true) or shutdown (None).
    async fn sleep(
        &self,
        mut deadline: tokio::time::Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<bool> {
        loop {
            if let Some(at) = self.local_due.lock().expect("local_due lock").take() {
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                deadline = deadline.min(tokio::time::Instant::now() + wait + DUE_MARGIN);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Some(false),
                _ = self.wake.notified() => return Some(true),
                _ = self.rearm.notified() => {}
                _ = crate::until_shutdown(shutdown) => return None,
            }
        }
    }
}

/// The rows of one kind driven by this instance: at most `max` at once, never one twice.
pub struct Slots {
    active: Mutex<std::collections::HashSet<Uuid>>,
    /// Rows taken over here while an older task of the same row still runs here (fenced, it
    /// stops at its next write): how many such extra tasks each has. A row stays active until
    /// every task of it gave its slot back.
    extra: Mutex<std::collections::HashMap<Uuid, usize>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// How many are driven here ([`crate::metrics::IN_FLIGHT`]).
    gauge: metrics::Gauge,
}

impl Slots {
    /// At most `max` rows of `kind` (its table: `sagas`, `transactions`).
    pub fn new(max: usize, kind: &'static str) -> Self {
        Slots {
            active: Mutex::default(),
            extra: Mutex::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            gauge: crate::metrics::in_flight(kind),
        }
    }

    /// A slot for row `id`, unless every slot is busy or it is driven here already.
    pub fn take(&self, id: Uuid) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let taken = self.active.lock().expect("slots lock").insert(id);
        if taken {
            self.gauge.increment(1);
        }
        taken.then_some(permit)
    }

    /// A slot for row `id` whose lease was just taken (new epoch) by this instance, even if an
    /// older task drives it here: that task is fenced by the new epoch and drops the row at its
    /// next write. None: every slot is busy.
    pub fn take_over(&self, id: Uuid) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let mut active = self.active.lock().expect("slots lock");
        if active.insert(id) {
            self.gauge.increment(1);
        } else {
            *self
                .extra
                .lock()
                .expect("slots lock")
                .entry(id)
                .or_default() += 1;
        }
        Some(permit)
    }

    /// Row `id` stopped being driven here (by one of its tasks).
    pub fn give_back(&self, id: Uuid, permit: tokio::sync::OwnedSemaphorePermit) {
        let mut active = self.active.lock().expect("slots lock");
        let mut extra = self.extra.lock().expect("slots lock");
        match extra.get_mut(&id) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                extra.remove(&id);
            }
            None => {
                if active.remove(&id) {
                    self.gauge.decrement(1);
                }
            }
        }
        drop(permit);
    }

    pub fn free(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn held(&self) -> Vec<Uuid> {
        self.active
            .lock()
            .expect("slots lock")
            .iter()
            .copied()
            .collect()
    }

    pub fn contains(&self, id: Uuid) -> bool {
        self.active.lock().expect("slots lock").contains(&id)
    }
}

/// Waiters for rows of one kind to settle (POST-and-wait, long polls), each woken only by its
/// own row.
#[derive(Default)]
pub struct Watchers {
    waiting: Mutex<std::collections::HashMap<Uuid, Vec<tokio::sync::oneshot::Sender<()>>>>,
}

impl Watchers {
    /// Resolves when row `id` settles here. Call before it can settle; after a wait that gave
    /// up, call [`Watchers::unwatch`].
    pub fn watch(&self, id: Uuid) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .expect("watchers lock")
            .entry(id)
            .or_default()
            .push(tx);
        rx
    }

    /// Forget the waiters of `id` that stopped waiting.
    pub fn unwatch(&self, id: Uuid) {
        let mut w = self.waiting.lock().expect("watchers lock");
        if let Some(list) = w.get_mut(&id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                w.remove(&id);
            }
        }
    }

    /// Row `id` settled: wake its waiters.
    pub fn settled(&self, id: Uuid) {
        let waiters = self.waiting.lock().expect("watchers lock").remove(&id);
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(());
        }
    }
}

/// What every kind of leased work runs on: its leases, the claim loop's wake-up signals, the
/// rows driven here, their waiters, and the batched hand-backs.
pub struct Plumbing {
    pub leases: Leases,
    pub signals: Signals,
    /// The rows driven here (never one twice in one process; at most `max_active`).
    pub slots: Slots,
    /// Per-row waiters (POST-and-wait, long polls), woken only by their own row.
    pub watchers: Watchers,
    /// Hands leases back in batches, one NOTIFY per batch.
    pub releaser: Releaser,
}

impl Plumbing {
    /// Plumbing for `leases`, driving at most `max_active` rows at once (starts the releaser).
    pub fn new(leases: Leases, max_active: usize) -> Self {
        let kind = leases.kind.table;
        Plumbing {
            releaser: Releaser::start(leases.clone()),
            leases,
            signals: Signals::default(),
            slots: Slots::new(max_active, kind),
            watchers: Watchers::default(),
        }
    }

    /// A slot for a row leased here (`epoch`). None: already driven here (its lease lapsed,
    /// e.g. this process was paused) or no free slot — the new lease is handed back in the
    /// background so the row is due again at once (an old task here is fenced by the new
    /// epoch), and the claim loop looks again when a slot frees.
    pub fn activate(&self, id: Uuid, epoch: i64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.slots.take(id);
        if permit.is_none() {
            self.signals.starve();
            self.releaser.release_later(id, epoch);
        }
        permit
    }

    /// A row stopped being driven here: free its slot, and if work was turned away for lack
    /// of one, run a claim pass now (after the permit is back, so the pass sees the free slot).
    pub fn finish(&self, id: Uuid, permit: tokio::sync::OwnedSemaphorePermit) {
        self.slots.give_back(id, permit);
        self.signals.slot_freed();
    }

    /// Wait until every row driven here has stopped (after shutdown was signalled).
    pub async fn drain(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while !self.slots.held().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One kind of leased work, as the background loops see it.
pub trait Worker: Send + Sync + 'static {
    type Row: Leased;
    fn plumbing(&self) -> &Plumbing;
    fn leases(&self) -> &Leases {
        &self.plumbing().leases
    }
    fn signals(&self) -> &Signals {
        &self.plumbing().signals
    }
    /// How many more rows this instance can drive now.
    fn free_slots(&self) -> usize {
        self.plumbing().slots.free()
    }
    /// The rows driven here (their leases are renewed).
    fn held(&self) -> Vec<Uuid> {
        self.plumbing().slots.held()
    }
    /// Drive a row just claimed (or hand it back if it cannot be taken now).
    fn start(self: &Arc<Self>, row: Self::Row);
}

/// Claim due rows of `w`'s kind until shutdown (see the module docs).
pub async fn claim_loop<W: Worker>(
    w: Arc<W>,
    poll: Duration,
    batch: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut woken = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut sleep_for = poll;
        let limit = batch.min(w.free_slots() as i64);
        if limit > 0 {
            match w.leases().claim::<W::Row>(limit).await {
                Ok(claimed) => {
                    if !claimed.rows.is_empty() {
                        tandem_kit::crash::point("orchestrator.after_claim");
                    }
                    let full = claimed.rows.len() as i64 == limit;
                    for row in claimed.rows {
                        tracing::info!(kind = w.leases().kind.name, id = %row.id(), epoch = row.epoch(), "claimed");
                        w.start(row);
                    }
                    if full {
                        if limit < batch {
                            // More may be due than there are free slots: claim again as soon as
                            // one frees.
                            w.signals().starve();
                        }
                        continue; // more may be due
                    }
                    if let Some(next) = claimed.next_due_in {
                        sleep_for = sleep_for.min(next + DUE_MARGIN);
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = w.leases().kind.name, error = %e, "claiming due work failed")
                }
            }
        } else if woken {
            // Work was announced while every slot is busy: claim when one frees.
            w.signals().starve();
        }
        let deadline = tokio::time::Instant::now() + sleep_for;
        match w.signals().sleep(deadline, &mut shutdown).await {
            Some(wake) => woken = wake,
            None => return,
        }
    }
}

/// Renew the leases of the rows `w` drives, every `ttl / 3`, until shutdown. Only unexpired
/// leases this instance still owns are extended: a lapsed one stays claimable.
pub async fn renew_loop<W: Worker>(w: Arc<W>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(w.leases().ttl() / 3) => {}
            _ = crate::until_shutdown(&mut shutdown) => return,
        }
        let ids = w.held();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = w.leases().renew(&ids).await {
            tracing::warn!(kind = w.leases().kind.name, error = %e, "renewing leases failed");
        }
    }
}
