//! Group commit of saga transitions.
//!
//! Every driven saga persists each transition before the call it allows, and waits for that
//! write. Instead of one statement (and one commit) per transition, the driver hands its write
//! to a [`TransitionWriter`]: a few writer tasks each take every write that is waiting (up to
//! `max_batch`), persist them in **one statement** — one transaction, one WAL flush — with the
//! lease-epoch fence checked **per row**, and only then answer each waiting saga (applied, or
//! fenced). Nothing is acted on before its write has committed, exactly as with single writes;
//! under load, k sagas share one commit.
//!
//! With one saga in flight a batch is one write, so latency at low load is unchanged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::store::{self, NextRun, TransitionWrite};

/// One transition waiting for its batch.
struct Pending {
    id: Uuid,
    epoch: i64,
    status: &'static str,
    state: Value,
    next_kind: &'static str,
    next_at: Option<chrono::DateTime<chrono::Utc>>,
    keep_lease: bool,
    kinds: Vec<String>,
    steps: Vec<Option<String>>,
    details: Vec<Value>,
    done: oneshot::Sender<Result<bool, String>>,
}

/// Batches transition writes of many sagas into single statements (see the module docs).
pub struct TransitionWriter {
    tx: mpsc::UnboundedSender<Pending>,
}

impl TransitionWriter {
    /// Start `writers` writer tasks (each holds at most one pool connection at a time), each
    /// persisting up to `max_batch` transitions per statement.
    pub fn start(pool: PgPool, lease_ttl: Duration, writers: usize, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (rx, pool) = (rx.clone(), pool.clone());
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(p) => batch.push(p),
                            None => return, // the driver is gone
                        }
                        while batch.len() < max_batch.max(1) {
                            match rx.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
                    }
                    write_batch(&pool, lease_ttl, batch).await;
                }
            });
        }
        TransitionWriter { tx }
    }

    /// Persist one transition of saga `id`, fenced by `epoch`: `Ok(true)` once committed,
    /// `Ok(false)` if the epoch no longer matches (the caller must drop the saga), `Err` if the
    /// batch failed (nothing of it was committed, or the outcome is unknown: retry).
    pub async fn persist(
        &self,
        id: Uuid,
        epoch: i64,
        w: TransitionWrite<'_>,
    ) -> Result<bool, String> {
        let state = serde_json::to_value(w.state).map_err(|e| e.to_string())?;
        let (next_kind, next_at) = match w.next {
            NextRun::Now => ("now", None),
            NextRun::At(t) => ("at", Some(t)),
            NextRun::Never => ("never", None),
        };
        let (kinds, steps, details) = store::event_columns(w.events);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                id,
                epoch,
                status: w.state.status.as_str(),
                state,
                next_kind,
                next_at,
                keep_lease: w.keep_lease,
                kinds,
                steps,
                details,
                done,
            })
            .map_err(|_| "the transition writer has stopped".to_string())?;
        wait.await
            .map_err(|_| "the transition writer has stopped".to_string())?
    }
}

async fn write_batch(pool: &PgPool, lease_ttl: Duration, batch: Vec<Pending>) {
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut next_kinds = Vec::with_capacity(n);
    let mut next_ats = Vec::with_capacity(n);
    let mut keeps = Vec::with_capacity(n);
    let (mut ev_saga, mut ev_kind, mut ev_step, mut ev_detail) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut waiters = Vec::with_capacity(n);
    for p in batch {
        ids.push(p.id);
        epochs.push(p.epoch);
        statuses.push(p.status);
        states.push(p.state);
        next_kinds.push(p.next_kind);
        next_ats.push(p.next_at);
        keeps.push(p.keep_lease);
        for ((k, s), d) in p.kinds.into_iter().zip(p.steps).zip(p.details) {
            ev_saga.push(p.id);
            ev_kind.push(k);
            ev_step.push(s);
            ev_detail.push(d);
        }
        waiters.push((p.id, p.done));
    }
    let r = store::persist_transitions(
        pool,
        store::TransitionBatch {
            ids: &ids,
            epochs: &epochs,
            statuses: &statuses,
            states: &states,
            next_kinds: &next_kinds,
            next_ats: &next_ats,
            keep_leases: &keeps,
            event_sagas: &ev_saga,
            event_kinds: &ev_kind,
            event_steps: &ev_step,
            event_details: &ev_detail,
        },
        lease_ttl,
    )
    .await;
    match r {
        Ok(applied) => {
            for (id, done) in waiters {
                let _ = done.send(Ok(applied.contains(&id)));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, done) in waiters {
                let _ = done.send(Err(msg.clone()));
            }
        }
    }
}
