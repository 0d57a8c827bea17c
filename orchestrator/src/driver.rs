//! The saga driver: the IO around the pure engine.
//!
//! For each saga it holds a lease on, the driver loops: ask the engine for the next transition,
//! **persist it (fenced by the lease epoch) before** performing the call it allows, perform the
//! call with the key `{saga_id}:{step}:{action|compensation}`, feed the outcome back. A write
//! rejected by the fence means another instance owns the saga now: the driver drops it at once.
//!
//! Work reaches the driver three ways: `POST /sagas` (the creating instance drives the new saga
//! directly, no claim needed), the claim loop (`FOR UPDATE SKIP LOCKED` over due sagas whose
//! lease is free or expired: retries whose time came, orphans of dead instances), and at
//! start-up the leases this instance identity held before a restart.
//!
//! An idle instance's claim loop runs a pass at once when another instance announces work it
//! gave up (LISTEN/NOTIFY, see [`crate::wake`]) or when a slot frees here after work was turned
//! away; otherwise it sleeps until the next saga becomes claimable (a retry's time, an orphan's
//! lease expiry, both learnt by the claim itself) or `POLL_INTERVAL_MS`, whichever is first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Semaphore, broadcast, watch};
use uuid::Uuid;

use crate::saga::{
    CallOutcome, Command, Definition, Input, Request, SagaState, Transition, engine,
};
use crate::store::{self, NextRun, SagaRow};

/// Loaded definitions: every version by (name, version), and the current version per name.
#[derive(Default)]
pub struct Definitions {
    by_version: HashMap<(String, String), Arc<Definition>>,
    current: HashMap<String, String>,
}

impl Definitions {
    pub fn current(&self, name: &str) -> Option<(String, Arc<Definition>)> {
        let v = self.current.get(name)?;
        let d = self.by_version.get(&(name.to_string(), v.clone()))?;
        Some((v.clone(), d.clone()))
    }
    pub fn get(&self, name: &str, version: &str) -> Option<Arc<Definition>> {
        self.by_version
            .get(&(name.to_string(), version.to_string()))
            .cloned()
    }
    pub fn insert(&mut self, version: String, def: Definition) {
        let name = def.name.clone();
        self.current.insert(name.clone(), version.clone());
        self.by_version.insert((name, version), Arc::new(def));
    }
    /// (name, current version) pairs, sorted.
    pub fn names(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .current
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }
}

/// A saga this instance holds a lease on.
struct Active {
    id: Uuid,
    id_str: String,
    def: Arc<Definition>,
    input: Value,
    state: SagaState,
    epoch: i64,
}

impl Active {
    /// The saga as leased in `row` (its epoch fences every write), running on `def`.
    fn new(row: SagaRow, def: Arc<Definition>) -> Self {
        Active {
            id: row.id,
            id_str: row.id.to_string(),
            def,
            input: row.input,
            state: row.state,
            epoch: row.lease_epoch,
        }
    }
}

pub struct Driver {
    pub pool: PgPool,
    pub instance_id: String,
    pub lease_ttl: Duration,
    pub services: BTreeMap<String, String>,
    pub definitions: RwLock<Definitions>,
    http: reqwest::Client,
    /// Sagas being driven here (never drive one twice in one process).
    active: Mutex<HashSet<Uuid>>,
    slots: Arc<Semaphore>,
    /// Ids of sagas that reached a terminal or parked state here (wakes long polls).
    finished: broadcast::Sender<Uuid>,
    /// Per-saga waiters (POST-and-wait, long polls), woken only by their own saga.
    watchers: Mutex<HashMap<Uuid, Vec<tokio::sync::oneshot::Sender<()>>>>,
    /// Run a claim pass now: another instance announced work (NOTIFY), the listener
    /// reconnected, or a slot freed while work was waiting for one.
    wake: tokio::sync::Notify,
    /// Work was turned away (or left unclaimed) for lack of a free slot: the next slot that
    /// frees wakes the claim loop.
    starved: AtomicBool,
    /// The earliest `next_run_at` of a saga handed back here to wait for a retry; the claim loop
    /// sleeps no later than that (`rearm` tells it to look).
    local_due: Mutex<Option<DateTime<Utc>>>,
    rearm: tokio::sync::Notify,
    /// Hands leases back in batches, one NOTIFY per batch.
    releaser: crate::wake::Releaser,
    /// Group commit of transitions (none: one statement per transition).
    writer: std::sync::OnceLock<crate::writer::TransitionWriter>,
    shutdown: watch::Receiver<bool>,
}

impl Driver {
    pub fn new(
        pool: PgPool,
        instance_id: String,
        lease_ttl: Duration,
        services: BTreeMap<String, String>,
        max_active: usize,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Driver {
            releaser: crate::wake::Releaser::start(pool.clone(), instance_id.clone()),
            pool,
            instance_id,
            lease_ttl,
            services,
            definitions: RwLock::new(Definitions::default()),
            http,
            active: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(max_active)),
            finished: broadcast::channel(4096).0,
            watchers: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            starved: AtomicBool::new(false),
            local_due: Mutex::new(None),
            rearm: tokio::sync::Notify::new(),
            writer: std::sync::OnceLock::new(),
            shutdown,
        })
    }

    /// Persist transitions through this group-commit writer from now on.
    pub fn set_writer(&self, w: crate::writer::TransitionWriter) {
        let _ = self.writer.set(w);
    }

    pub fn subscribe_finished(&self) -> broadcast::Receiver<Uuid> {
        self.finished.subscribe()
    }

    /// Resolves when saga `id` reaches a terminal or parked state on this instance. Call before
    /// the saga can get there; after a wait that gave up, call [`Driver::unwatch`].
    pub fn watch(&self, id: Uuid) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.watchers
            .lock()
            .expect("watchers lock")
            .entry(id)
            .or_default()
            .push(tx);
        rx
    }

    /// Forget the waiters of `id` that stopped waiting.
    pub fn unwatch(&self, id: Uuid) {
        let mut w = self.watchers.lock().expect("watchers lock");
        if let Some(list) = w.get_mut(&id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                w.remove(&id);
            }
        }
    }

    fn notify_finished(&self, id: Uuid) {
        let _ = self.finished.send(id);
        let waiters = self.watchers.lock().expect("watchers lock").remove(&id);
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// The definition a stored saga runs on (loaded from the database on a cache miss).
    pub async fn definition(&self, name: &str, version: &str) -> anyhow::Result<Arc<Definition>> {
        if let Some(d) = self
            .definitions
            .read()
            .expect("definitions lock")
            .get(name, version)
        {
            return Ok(d);
        }
        let body = store::definition(&self.pool, name, version)
            .await?
            .ok_or_else(|| anyhow::anyhow!("definition {name} version {version} is not stored"))?;
        let def = Definition::parse(&body)
            .map_err(|e| anyhow::anyhow!("stored definition {name}@{version}: {e}"))?;
        let def = Arc::new(def);
        self.definitions
            .write()
            .expect("definitions lock")
            .by_version
            .insert((name.to_string(), version.to_string()), def.clone());
        Ok(def)
    }

    /// Start driving a saga this instance has just created and persisted (with the first
    /// transition's call decided).
    pub fn spawn_created(self: &Arc<Self>, row: SagaRow, def: Arc<Definition>, command: Command) {
        let Some(permit) = self.try_activate(row.id) else {
            // Every slot is busy (MAX_ACTIVE_SAGAS): hand the lease back at once so the saga is
            // claimed as soon as an instance has room (the release NOTIFYs idle instances; a slot
            // freeing here wakes this one), instead of waiting for the lease to expire.
            self.hand_back_later(row.id, row.lease_epoch);
            return;
        };
        let id = row.id;
        let active = Active::new(row, def);
        let me = self.clone();
        tokio::spawn(async move {
            me.run(active, command).await;
            me.finish(id, permit);
        });
    }

    /// Drive a saga obtained by a claim, a reclaim or a manual retry, starting with `input`.
    pub fn spawn_leased(self: &Arc<Self>, row: SagaRow, input: Input) {
        let Some(permit) = self.try_activate(row.id) else {
            // Already driven here (its lease lapsed, e.g. this process was paused) or no free
            // slot: hand the new lease back so the saga is due again at once; the old task here
            // is fenced by the new epoch and drops it.
            self.hand_back_later(row.id, row.lease_epoch);
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let id = row.id;
            match me.definition(&row.definition, &row.version).await {
                Ok(def) => {
                    let active = Active::new(row, def);
                    me.step_and_run(active, input).await;
                }
                Err(e) => {
                    tracing::error!(saga = %id, error = %e, "cannot load the saga's definition")
                }
            }
            me.finish(id, permit);
        });
    }

    /// `POST /sagas/{id}/retry`: apply the manual retry now (so the answer shows its effect),
    /// then drive the saga in the background.
    pub async fn retry_now(self: &Arc<Self>, row: SagaRow) -> anyhow::Result<()> {
        let def = self.definition(&row.definition, &row.version).await?;
        let permit = self
            .try_activate(row.id)
            .ok_or_else(|| anyhow::anyhow!("saga {} is busy on this instance", row.id))?;
        let mut a = Active::new(row, def);
        let t = self.transition(&a, Input::ManualRetry);
        match self.apply(&mut a, t).await {
            Some(command) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let id = a.id;
                    me.run(a, command).await;
                    me.finish(id, permit);
                });
            }
            None => self.finish(a.id, permit),
        }
        Ok(())
    }

    fn try_activate(&self, id: Uuid) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        if self.active.lock().expect("active lock").insert(id) {
            Some(permit)
        } else {
            None
        }
    }

    /// A saga stopped being driven here: free its slot, and if work was turned away for lack
    /// of one, run a claim pass now (after the permit is back, so the pass sees the free slot).
    fn finish(&self, id: Uuid, permit: tokio::sync::OwnedSemaphorePermit) {
        self.active.lock().expect("active lock").remove(&id);
        drop(permit);
        if self.starved.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Hand a lease back in the background (no free slot, or already driven here).
    fn hand_back_later(self: &Arc<Self>, id: Uuid, epoch: i64) {
        self.starved.store(true, Ordering::Release);
        let me = self.clone();
        tokio::spawn(async move { me.releaser.release(id, epoch).await });
    }

    /// A saga handed back here waits for a retry at `at`: make sure the claim loop looks then.
    fn note_due(&self, at: DateTime<Utc>) {
        let mut due = self.local_due.lock().expect("local_due lock");
        if due.is_none_or(|d| at < d) {
            *due = Some(at);
            self.rearm.notify_one();
        }
    }

    /// Free capacity for claims.
    fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    fn transition(&self, a: &Active, input: Input) -> Transition {
        engine::transition(
            &a.def,
            &a.id_str,
            &a.input,
            &a.state,
            input,
            Utc::now(),
            rand::random(),
        )
    }

    async fn step_and_run(&self, mut a: Active, input: Input) {
        let t = self.transition(&a, input);
        let Some(command) = self.apply(&mut a, t).await else {
            return;
        };
        self.run(a, command).await;
    }

    /// The loop: perform the (already persisted) command, feed back, persist, repeat.
    async fn run(&self, mut a: Active, mut command: Command) {
        loop {
            let next = match command {
                Command::Call {
                    step,
                    phase,
                    attempt,
                    request,
                } => {
                    if *self.shutdown.borrow() {
                        // Graceful shutdown: hand the lease back; whoever claims it re-sends
                        // this call with the same idempotency key.
                        self.releaser.release(a.id, a.epoch).await;
                        return;
                    }
                    tandem_kit::crash::point(match phase {
                        crate::saga::Phase::Action => "orchestrator.before_call",
                        crate::saga::Phase::Compensation => "orchestrator.before_compensation_call",
                    });
                    let outcome = self.call(&request).await;
                    tandem_kit::crash::point("orchestrator.after_call_before_persist");
                    tracing::debug!(saga = %a.id, step, ?phase, attempt, ?outcome, "call finished");
                    self.transition(
                        &a,
                        Input::Result {
                            step,
                            phase,
                            attempt,
                            outcome,
                        },
                    )
                }
                Command::WaitUntil(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = until_shutdown(&mut shutdown) => {
                            self.releaser.release(a.id, a.epoch).await;
                            return;
                        }
                    }
                    self.transition(&a, Input::Wake)
                }
                Command::Stop => {
                    self.notify_finished(a.id);
                    return;
                }
            };
            match self.apply(&mut a, next).await {
                Some(c) => command = c,
                None => return,
            }
        }
    }

    /// Persist a transition (write-ahead) and return the command to perform, or None if the
    /// saga must be dropped (fenced, or handed back to be claimed later).
    async fn apply(&self, a: &mut Active, t: Transition) -> Option<Command> {
        let short_wait = self.lease_ttl / 2;
        let (next, keep) = match &t.command {
            Command::Call { .. } => (NextRun::Now, true),
            Command::WaitUntil(at) => {
                let wait = (*at - Utc::now()).to_std().unwrap_or_default();
                (NextRun::At(*at), wait < short_wait)
            }
            Command::Stop => (NextRun::Never, false),
        };
        let unchanged = t.events.is_empty() && t.state == a.state;
        if !(unchanged && keep) {
            let mut delay = Duration::from_millis(50);
            loop {
                let w = store::TransitionWrite {
                    state: &t.state,
                    events: &t.events,
                    next,
                    keep_lease: keep,
                };
                let written = match self.writer.get() {
                    Some(writer) => writer.persist(a.id, a.epoch, w).await,
                    None => store::persist_transition(&self.pool, a.id, a.epoch, w, self.lease_ttl)
                        .await
                        .map_err(|e| e.to_string()),
                };
                match written {
                    Ok(true) => {
                        tandem_kit::crash::point("orchestrator.after_persist");
                        break;
                    }
                    Ok(false) => {
                        tracing::warn!(saga = %a.id, epoch = a.epoch, "lease lost (fenced): dropping the saga");
                        return None;
                    }
                    Err(e) => {
                        // Never act before the write: retry until it lands or we are fenced.
                        tracing::warn!(saga = %a.id, error = %e, retry_in = ?delay, "persisting a transition failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        a.state = t.state;
        match t.command {
            Command::WaitUntil(at) if !keep => {
                self.note_due(at);
                None
            }
            Command::Stop => {
                self.notify_finished(a.id);
                None
            }
            c => Some(c),
        }
    }

    /// Perform one call and classify the answer per the step result protocol.
    async fn call(&self, r: &Request) -> CallOutcome {
        let Some(base) = self.services.get(&r.service) else {
            return CallOutcome::Transport {
                message: format!("service {:?} is not configured", r.service),
            };
        };
        let url = format!("{base}{}", r.path);
        let method = match reqwest::Method::from_bytes(r.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return CallOutcome::Transport {
                    message: format!("bad method {:?}", r.method),
                };
            }
        };
        let mut req = self
            .http
            .request(method, &url)
            .header("Idempotency-Key", &r.idempotency_key)
            .timeout(r.timeout);
        if !r.body.is_null() {
            req = req.json(&r.body);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_timeout() => return CallOutcome::Timeout,
            Err(e) => {
                return CallOutcome::Transport {
                    message: error_chain(&e),
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = match resp.bytes().await {
            Ok(b) if b.is_empty() => Value::Null,
            Ok(b) => serde_json::from_slice(&b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.is_timeout() => return CallOutcome::Timeout,
            Err(e) => {
                return CallOutcome::Transport {
                    message: error_chain(&e),
                };
            }
        };
        classify(status, retry_after, body)
    }

    /// The claim loop: take due work until shutdown. Also purges old idempotency keys.
    ///
    /// After a pass it sleeps until the first of: `poll`, the moment the next saga becomes
    /// claimable (answered by the claim itself), a retry time of a saga handed back here, a
    /// wake-up (NOTIFY from another instance, listener reconnect, a slot freed while work waited).
    pub async fn claim_loop(self: Arc<Self>, poll: Duration, batch: i64, retention: Duration) {
        let mut shutdown = self.shutdown.clone();
        let mut last_purge = std::time::Instant::now() - Duration::from_secs(3600);
        let mut woken = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut sleep_for = poll;
            let limit = batch.min(self.free_slots() as i64);
            if limit > 0 {
                match store::claim_due(&self.pool, &self.instance_id, self.lease_ttl, limit).await {
                    Ok(claimed) => {
                        if !claimed.rows.is_empty() {
                            tandem_kit::crash::point("orchestrator.after_claim");
                        }
                        let full = claimed.rows.len() as i64 == limit;
                        for row in claimed.rows {
                            tracing::info!(saga = %row.id, epoch = row.lease_epoch, "claimed");
                            self.spawn_leased(row, Input::Wake);
                        }
                        if full {
                            if limit < batch {
                                // More may be due than there are free slots: claim again as
                                // soon as one frees.
                                self.starved.store(true, Ordering::Release);
                            }
                            continue; // more may be due
                        }
                        if let Some(next) = claimed.next_due_in {
                            sleep_for = sleep_for.min(next + DUE_MARGIN);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming due sagas failed"),
                }
            } else if woken {
                // Work was announced while every slot is busy: claim when one frees.
                self.starved.store(true, Ordering::Release);
            }
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = std::time::Instant::now();
                if let Err(e) = store::purge_idempotency_keys(&self.pool, retention).await {
                    tracing::warn!(error = %e, "purging idempotency keys failed");
                }
            }
            let mut deadline = tokio::time::Instant::now() + sleep_for;
            woken = loop {
                if let Some(at) = self.local_due.lock().expect("local_due lock").take() {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    deadline = deadline.min(tokio::time::Instant::now() + wait + DUE_MARGIN);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break false,
                    _ = self.wake.notified() => break true,
                    _ = self.rearm.notified() => {}
                    _ = until_shutdown(&mut shutdown) => return,
                }
            };
        }
    }

    /// LISTEN for work other instances hand back (see [`crate::wake`]) and wake the claim loop
    /// for each announcement (a burst coalesces into one pass: `Notify` keeps one permit). After
    /// a lost connection it reconnects with backoff and runs a pass, since notifications sent
    /// meanwhile are lost. Polling goes on regardless, so a dead listener only costs latency.
    pub async fn listen_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let mut listener = tokio::select! {
                r = crate::wake::connect_listener(&self.pool) => match r {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot LISTEN for work");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = until_shutdown(&mut shutdown) => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
                _ = until_shutdown(&mut shutdown) => return,
            };
            backoff = Duration::from_millis(100);
            // Work announced before this connection existed was not heard (after a reconnect,
            // or a first connection that had to wait for the database): claim it now.
            if connected_before {
                tracing::info!(
                    "listening for work again: claiming what may have been announced meanwhile"
                );
            }
            connected_before = true;
            self.wake.notify_one();
            loop {
                tokio::select! {
                    r = listener.try_recv() => match r {
                        Ok(Some(n)) => {
                            // Our own announcements too: a saga handed back here for lack of a
                            // slot is claimable only once its release has committed, which may
                            // be after the slot freed. With no free slot the pass costs nothing
                            // and leaves a note to claim when one frees.
                            tracing::debug!(from = n.payload(), "work announced");
                            self.wake.notify_one();
                        }
                        Ok(None) => {
                            tracing::warn!("the LISTEN connection was lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                            break;
                        }
                    },
                    _ = until_shutdown(&mut shutdown) => return,
                }
            }
        }
    }

    /// Renew, in one statement every `lease_ttl / 3`, the leases of the sagas driven here, so a
    /// call slower than the TTL does not lose its lease (transitions renew it too). Only
    /// unexpired leases this instance still owns are extended: a lapsed one stays claimable.
    pub async fn renew_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.lease_ttl / 3) => {}
                _ = until_shutdown(&mut shutdown) => return,
            }
            let ids: Vec<Uuid> = self
                .active
                .lock()
                .expect("active lock")
                .iter()
                .copied()
                .collect();
            if ids.is_empty() {
                continue;
            }
            if let Err(e) =
                store::renew_leases(&self.pool, &self.instance_id, &ids, self.lease_ttl).await
            {
                tracing::warn!(error = %e, "renewing leases failed");
            }
        }
    }

    /// Wait until every saga driven here has stopped (after shutdown was signalled).
    pub async fn drain(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while !self.active.lock().expect("active lock").is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Slack added to a due time learnt from the database, so the pass runs just after it.
const DUE_MARGIN: Duration = Duration::from_millis(5);

/// Resolves once shutdown is signalled (the guard `wait_for` returns is not `Send`).
async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `Retry-After` as seconds (HTTP-date form is rare between services; treated as absent).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The step result protocol (as DTM's): 2xx success, 409 business failure, 425 in progress,
/// 429/503 throttled (honour `Retry-After`), anything else an error to retry.
pub fn classify(status: u16, retry_after: Option<Duration>, body: Value) -> CallOutcome {
    match status {
        200..=299 => CallOutcome::Success { status, body },
        409 => CallOutcome::BusinessFailure { status, body },
        425 => CallOutcome::InProgress,
        429 | 503 => CallOutcome::Throttled {
            status,
            retry_after,
        },
        _ => CallOutcome::Error { status, body },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        assert!(matches!(
            classify(201, None, Value::Null),
            CallOutcome::Success { .. }
        ));
        assert!(matches!(
            classify(409, None, Value::Null),
            CallOutcome::BusinessFailure { .. }
        ));
        assert!(matches!(
            classify(425, None, Value::Null),
            CallOutcome::InProgress
        ));
        assert!(matches!(
            classify(503, Some(Duration::from_secs(2)), Value::Null),
            CallOutcome::Throttled {
                status: 503,
                retry_after: Some(_)
            }
        ));
        assert!(matches!(
            classify(500, None, Value::Null),
            CallOutcome::Error { status: 500, .. }
        ));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
