//! Transactions on one shard.
//!
//! Concurrency control is **strict two-phase locking** with wait-die ([`crate::locks`]): a read
//! takes a shared lock, a write or delete an exclusive one, and writes are buffered in the
//! transaction (deferred update) until commit, so a read only ever sees committed data (or the
//! transaction's own writes). Locks are held until the outcome is applied; the one exception is
//! 2PC's prepare, after which no lock is ever acquired again: shared locks are released there
//! (the transaction has passed its lock point) and exclusive ones are kept — in memory and, as
//! the write set, in the forced `Prepared` record — until the outcome.
//!
//! A transaction idle for `--txn-timeout-ms` while still active is aborted (locks released);
//! prepared transactions never time out. A restarted shard rebuilds the exclusive locks of every
//! prepared transaction from its records in [`Shard::recover`], before serving.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use kv_client::wire::{
    BeginRequest, BeginResponse, MAX_KEY_BYTES, MAX_VALUE_BYTES, MAX_WRITES_PER_TXN, TxnOutcome,
    shard_for,
};
use tandem_kit::Problem;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::driver::lock;
use crate::locks::{Acquire, LockTable, Mode, TxKey};
use crate::net::Net;
use crate::participant::Parts;
use crate::store::{Store, Writes};
use crate::{Config, Error, Timing};

/// Outcomes remembered in memory for late or repeated requests.
const FINISHED_MEMORY: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Active,
    /// One-phase commit in progress.
    Committing,
    /// 2PC started, `Prepared` not yet durable.
    Preparing,
    Prepared,
}

#[derive(Debug)]
pub(crate) struct Txn {
    pub key: TxKey,
    pub status: Status,
    pub writes: Writes,
    pub locked: HashMap<String, Mode>,
    pub last_active: Instant,
    pub outcome: watch::Sender<Option<TxnOutcome>>,
}

impl Txn {
    fn new(key: TxKey, status: Status) -> Self {
        Txn {
            key,
            status,
            writes: BTreeMap::new(),
            locked: HashMap::new(),
            last_active: Instant::now(),
            outcome: watch::channel(None).0,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub txns: HashMap<Uuid, Txn>,
    pub locks: LockTable,
    finished: HashMap<Uuid, TxnOutcome>,
    finished_order: VecDeque<Uuid>,
}

/// Counters for `GET /status` and the benchmark.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub one_phase: u64,
    pub two_phase: u64,
    pub aborts: u64,
    pub conflicts: u64,
    /// Requests waiting for a lock right now.
    pub waiting: u64,
}

pub(crate) struct Inner {
    pub index: u16,
    pub shard_count: u16,
    pub store: Store,
    pub timing: Timing,
    pub max_open: usize,
    pub lock_reads: bool,
    pub state: Mutex<State>,
    pub released: Notify,
    pub net: Net,
    pub coordinator_url: String,
    pub parts: Parts,
    pub counters: Mutex<Counters>,
}

/// Counts a request as waiting for a lock while alive (also when the request is dropped
/// mid-wait because its client went away).
struct Waiting<'a>(&'a Shard);

impl<'a> Waiting<'a> {
    fn new(shard: &'a Shard) -> Self {
        shard.count(|c| c.waiting += 1);
        Waiting(shard)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.count(|c| c.waiting = c.waiting.saturating_sub(1));
    }
}

/// One shard. Cheap to clone.
#[derive(Clone)]
pub struct Shard {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn unknown(id: Uuid) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "unknown-transaction", "Unknown transaction").detail(
        format!("transaction {id} is not open on this shard (never begun here, timed out, or lost in a restart before it prepared)"),
    )
}

fn finished_problem(id: Uuid, outcome: TxnOutcome) -> Problem {
    match outcome {
        TxnOutcome::Aborted => Problem::conflict("transaction-aborted", "Transaction aborted")
            .detail(format!("transaction {id} was aborted")),
        TxnOutcome::Committed => {
            Problem::conflict("transaction-committed", "Transaction already committed")
                .detail(format!("transaction {id} is committed; start a new one"))
        }
    }
}

fn conflict(detail: String) -> Problem {
    Problem::conflict("conflict", "Conflict").detail(detail)
}

impl State {
    fn remember(&mut self, id: Uuid, outcome: TxnOutcome) {
        if self.finished.insert(id, outcome).is_none() {
            self.finished_order.push_back(id);
        }
        while self.finished_order.len() > FINISHED_MEMORY {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    fn active(&mut self, id: Uuid) -> Result<&mut Txn, Problem> {
        if let Some(&o) = self.finished.get(&id) {
            return Err(finished_problem(id, o));
        }
        let t = self.txns.get_mut(&id).ok_or_else(|| unknown(id))?;
        if t.status != Status::Active {
            return Err(
                Problem::conflict("transaction-not-active", "Transaction is committing").detail(
                    format!("transaction {id} is committing; no more reads or writes"),
                ),
            );
        }
        t.last_active = Instant::now();
        Ok(t)
    }

    /// End `id` with `outcome`: release every lock, wake waiters (by the caller), remember it.
    pub(crate) fn finish(&mut self, id: Uuid, outcome: TxnOutcome) -> bool {
        let Some(t) = self.txns.remove(&id) else {
            return false;
        };
        for key in t.locked.keys() {
            self.locks.release(key, t.key);
        }
        t.outcome.send_replace(Some(outcome));
        self.remember(id, outcome);
        true
    }
}

impl Shard {
    /// Open a shard on `store`: rebuild every prepared transaction — its exclusive locks and
    /// its 2PC participant — before anything is served.
    pub(crate) fn recover(config: &Config, store: Store) -> Result<Self, Error> {
        let inner = Inner {
            index: config.shard_index,
            shard_count: u16::try_from(config.shards.len()).unwrap_or(u16::MAX),
            store,
            timing: config.timing(),
            max_open: config.max_open_txns,
            lock_reads: config.lock_reads,
            state: Mutex::new(State::default()),
            released: Notify::new(),
            net: Net::new(config.auth()?),
            coordinator_url: config.coordinator_url.clone(),
            parts: Parts::default(),
            counters: Mutex::new(Counters::default()),
        };
        let shard = Shard {
            inner: Arc::new(inner),
        };
        let prepared = shard.inner.store.prepared()?;
        {
            let mut st = shard.state();
            for record in &prepared {
                let mut t = Txn::new((record.priority, record.id), Status::Prepared);
                for key in record.writes.keys() {
                    if st.locks.acquire(key, t.key, Mode::Exclusive) != Acquire::Granted {
                        tracing::error!(txn = %record.id, %key, "two prepared transactions hold one key");
                    }
                    t.locked.insert(key.clone(), Mode::Exclusive);
                }
                t.writes = record.writes.clone();
                st.txns.insert(record.id, t);
            }
        }
        for record in prepared {
            shard.recover_participant(&record);
        }
        Ok(shard)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut lock(&self.inner.counters));
    }

    /// End a transaction and wake lock waiters.
    pub(crate) fn finish(&self, id: Uuid, outcome: TxnOutcome) {
        let done = self.state().finish(id, outcome);
        if done {
            if outcome == TxnOutcome::Aborted {
                self.count(|c| c.aborts += 1);
            }
            self.inner.released.notify_waiters();
        }
    }

    /// Background work: abort idle transactions; resolve recovered ones.
    pub(crate) fn start(&self) -> tokio::task::JoinHandle<()> {
        let shard = self.clone();
        shard.resume_recovered();
        tokio::spawn(async move {
            let every =
                (shard.inner.timing.txn_timeout / 4).max(std::time::Duration::from_millis(10));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                shard.reap_idle();
            }
        })
    }

    fn reap_idle(&self) {
        let limit = self.inner.timing.txn_timeout;
        let idle: Vec<Uuid> = self
            .state()
            .txns
            .iter()
            .filter(|(_, t)| t.status == Status::Active && t.last_active.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            tracing::debug!(txn = %id, "idle transaction aborted");
            self.finish(id, TxnOutcome::Aborted);
        }
    }

    /// `POST /txns`.
    pub fn begin(&self, req: &BeginRequest) -> Result<(StatusCode, BeginResponse), Problem> {
        let id = req.id.unwrap_or_else(Uuid::now_v7);
        let priority = req.priority.unwrap_or_else(now_micros);
        if let Some(d) = self.inner.store.decided(id)?
            && d.committed
        {
            return Err(finished_problem(id, TxnOutcome::Committed));
        }
        let mut st = self.state();
        if let Some(t) = st.txns.get(&id) {
            return Ok((
                StatusCode::OK,
                BeginResponse {
                    id,
                    priority: t.key.0,
                },
            ));
        }
        if let Some(&o) = st.finished.get(&id) {
            return Err(finished_problem(id, o));
        }
        if st.txns.len() >= self.inner.max_open {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-transactions",
                "Too many open transactions",
            )
            .detail(format!(
                "this shard allows {} open transactions; retry later",
                self.inner.max_open
            ))
            .retry_after(1));
        }
        st.txns.insert(id, Txn::new((priority, id), Status::Active));
        Ok((StatusCode::CREATED, BeginResponse { id, priority }))
    }

    fn check_key(&self, key: &str) -> Result<(), Problem> {
        if key.is_empty() {
            return Err(Problem::invalid("/key", "must not be empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(Problem::invalid(
                "/key",
                format!("must be at most {MAX_KEY_BYTES} bytes"),
            ));
        }
        let owner = shard_for(key, self.inner.shard_count);
        if owner != self.inner.index {
            return Err(Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong-shard",
                "Key belongs to another shard",
            )
            .detail(format!(
                "key {key:?} belongs to shard {owner}, this is shard {}",
                self.inner.index
            ))
            .with("shard", owner));
        }
        Ok(())
    }

    /// Take `key` in `mode` for `id`, waiting (wait-die) up to the lock-wait limit.
    async fn lock(&self, id: Uuid, key: &str, mode: Mode) -> Result<(), Problem> {
        let deadline = Instant::now() + self.inner.timing.lock_wait;
        loop {
            let notified = self.inner.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state();
                let t = st.active(id)?;
                if t.locked.get(key).is_some_and(|m| *m >= mode) {
                    return Ok(());
                }
                let tx = t.key;
                let verdict = st.locks.acquire(key, tx, mode);
                let reason = match verdict {
                    Acquire::Granted => {
                        if let Some(t) = st.txns.get_mut(&id) {
                            t.locked.insert(key.to_string(), mode);
                        }
                        return Ok(());
                    }
                    Acquire::Die => "an older transaction holds it (wait-die: the younger dies)",
                    Acquire::Wait if Instant::now() >= deadline => "the lock wait timed out",
                    Acquire::Wait => "",
                };
                if !reason.is_empty() {
                    drop(st);
                    self.count(|c| c.conflicts += 1);
                    self.finish(id, TxnOutcome::Aborted);
                    return Err(conflict(format!(
                        "transaction {id} aborted: {key:?} is locked and {reason}; retry"
                    )));
                }
            }
            let _waiting = Waiting::new(self);
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// `POST /txns/{id}/read`: a shared lock, or an exclusive one `for_update`.
    pub async fn read(
        &self,
        id: Uuid,
        key: &str,
        for_update: bool,
    ) -> Result<Option<String>, Problem> {
        self.check_key(key)?;
        if for_update {
            self.lock(id, key, Mode::Exclusive).await?;
        } else if self.inner.lock_reads {
            self.lock(id, key, Mode::Shared).await?;
        }
        {
            let mut st = self.state();
            let t = st.active(id)?;
            if let Some(v) = t.writes.get(key) {
                return Ok(v.clone());
            }
        }
        Ok(self.inner.store.get(key)?)
    }

    /// `POST /txns/{id}/write` (`Some`) and `/delete` (`None`).
    pub async fn write(&self, id: Uuid, key: &str, value: Option<String>) -> Result<(), Problem> {
        self.check_key(key)?;
        if let Some(v) = &value
            && v.len() > MAX_VALUE_BYTES
        {
            return Err(Problem::invalid(
                "/value",
                format!("must be at most {MAX_VALUE_BYTES} bytes"),
            ));
        }
        {
            let mut st = self.state();
            let t = st.active(id)?;
            if t.writes.len() >= MAX_WRITES_PER_TXN && !t.writes.contains_key(key) {
                return Err(Problem::invalid(
                    "/key",
                    format!("a transaction may write at most {MAX_WRITES_PER_TXN} keys per shard"),
                ));
            }
        }
        self.lock(id, key, Mode::Exclusive).await?;
        let mut st = self.state();
        let t = st.active(id)?;
        t.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// `POST /txns/{id}/abort`: an active transaction only (a prepared one belongs to 2PC).
    pub fn abort(&self, id: Uuid) -> Result<TxnOutcome, Problem> {
        {
            let mut st = self.state();
            match st.txns.get(&id).map(|t| t.status) {
                Some(Status::Active) => {}
                Some(_) => {
                    return Err(Problem::conflict("transaction-not-active", "Transaction is committing")
                        .detail(format!("transaction {id} is committing; its outcome is decided by the commit protocol")));
                }
                None => {
                    return match st.finished.get(&id) {
                        Some(&TxnOutcome::Committed) => {
                            Err(finished_problem(id, TxnOutcome::Committed))
                        }
                        _ => {
                            st.remember(id, TxnOutcome::Aborted);
                            Ok(TxnOutcome::Aborted)
                        }
                    };
                }
            }
        }
        self.finish(id, TxnOutcome::Aborted);
        Ok(TxnOutcome::Aborted)
    }

    /// The outcome of a transaction no longer open here, if known.
    fn known_outcome(&self, id: Uuid) -> Result<Option<TxnOutcome>, Problem> {
        if let Some(&o) = self.state().finished.get(&id) {
            return Ok(Some(o));
        }
        Ok(self
            .inner
            .store
            .decided(id)?
            .filter(|d| d.committed)
            .map(|_| TxnOutcome::Committed))
    }

    /// `POST /txns/{id}/commit`: one phase if this shard is the only participant, else 2PC
    /// initiated here. Repeating it is safe: it reports the same outcome.
    pub async fn commit(&self, id: Uuid, participants: &[u16]) -> Result<TxnOutcome, Problem> {
        let mut parts = participants.to_vec();
        parts.sort_unstable();
        parts.dedup();
        if parts.iter().any(|&p| p >= self.inner.shard_count) {
            return Err(Problem::invalid(
                "/participants",
                "names a shard that does not exist",
            ));
        }
        if parts.first() != Some(&self.inner.index) {
            return Err(Problem::invalid(
                "/participants",
                format!(
                    "the commit goes to the lowest participant; this is shard {}",
                    self.inner.index
                ),
            ));
        }
        let (writes, rx, start) = {
            let mut st = self.state();
            match st.txns.get_mut(&id) {
                Some(t) if t.status == Status::Active => {
                    t.status = if parts.len() == 1 {
                        Status::Committing
                    } else {
                        Status::Preparing
                    };
                    (t.writes.clone(), t.outcome.subscribe(), true)
                }
                Some(t) => (Writes::new(), t.outcome.subscribe(), false),
                None => {
                    drop(st);
                    return self.known_outcome(id)?.ok_or_else(|| unknown(id));
                }
            }
        };
        if !start {
            return self.await_outcome(id, rx).await;
        }
        if parts.len() == 1 {
            return self.commit_one_phase(id, writes).await;
        }
        self.initiate(id, parts).await;
        self.await_outcome(id, rx).await
    }

    async fn commit_one_phase(&self, id: Uuid, writes: Writes) -> Result<TxnOutcome, Problem> {
        if !writes.is_empty() {
            let store = self.inner.store.clone();
            let done = tokio::task::spawn_blocking(move || store.commit_one_phase(id, &writes))
                .await
                .map_err(Problem::internal)?;
            if let Err(e) = done {
                self.finish(id, TxnOutcome::Aborted);
                return Err(e.into());
            }
        }
        self.count(|c| c.one_phase += 1);
        self.finish(id, TxnOutcome::Committed);
        Ok(TxnOutcome::Committed)
    }

    async fn await_outcome(
        &self,
        id: Uuid,
        mut rx: watch::Receiver<Option<TxnOutcome>>,
    ) -> Result<TxnOutcome, Problem> {
        let waited =
            tokio::time::timeout(self.inner.timing.commit_wait, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(o)) => Ok(o.unwrap_or(TxnOutcome::Aborted)),
            // The sender is gone only after `finish`, which remembered the outcome.
            Ok(Err(_)) => self.known_outcome(id)?.ok_or_else(|| unknown(id)),
            Err(_) => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-pending",
                "Outcome pending",
            )
            .detail(format!(
                "transaction {id} is prepared and waits for the coordinator; ask again"
            ))
            .retry_after(1)),
        }
    }

    /// `GET /status`.
    pub fn status(&self) -> serde_json::Value {
        let (open, prepared, locked) = {
            let st = self.state();
            let prepared = st
                .txns
                .values()
                .filter(|t| t.status == Status::Prepared)
                .count();
            (st.txns.len(), prepared, st.locks.len())
        };
        let c = lock(&self.inner.counters);
        serde_json::json!({
            "role": "shard",
            "index": self.inner.index,
            "shards": self.inner.shard_count,
            "durability": crate::store::durability(),
            "reads_lock": self.inner.lock_reads,
            "open_transactions": open,
            "prepared": prepared,
            "locked_keys": locked,
            "durable_commits": self.inner.store.durable_commits(),
            "commits_one_phase": c.one_phase,
            "commits_two_phase": c.two_phase,
            "aborts": c.aborts,
            "conflicts": c.conflicts,
            "waiting": c.waiting,
        })
    }
}
