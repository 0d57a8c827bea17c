//! Group commit of saga transitions: the one way a transition is persisted.
//!
//! Every driven saga persists each transition before the call it allows, and waits for that
//! write. Instead of one statement (and one commit) per transition, the driver hands its write
//! to a [`TransitionWriter`]: `TRANSITION_WRITERS` (≥ 1) writer tasks each take every write that
//! is waiting (up to `TRANSITION_BATCH`), persist them in **one statement**
//! ([`Store::persist_transitions`]: on SQLite, one transaction) — one transaction, one WAL flush — with the lease-epoch
//! fence checked **per row**, and only then answer each waiting saga (applied, or fenced).
//! Nothing is acted on before its write has committed; under load, k sagas share one commit.
//!
//! With one saga in flight a batch is one write, so latency at low load is unchanged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::saga::{EventRecord, SagaState};
use crate::store::{self, NextRun, Store, TransitionBatch};

/// One transition to persist.
#[derive(Clone, Copy)]
pub struct TransitionWrite<'a> {
    pub state: &'a SagaState,
    pub events: &'a [EventRecord],
    pub next: NextRun,
    /// Renew the lease (the driver keeps working on the saga) or hand it back.
    pub keep_lease: bool,
}

/// Why a write did not land.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Nothing of the batch was committed, or the outcome is unknown: retry.
    #[error("persisting the batch failed: {0}")]
    Failed(String),
    #[error("the transition writer has stopped")]
    Stopped,
}

/// One transition waiting for its batch.
struct Pending {
    id: Uuid,
    batch: TransitionBatch,
    done: oneshot::Sender<Result<bool, WriteError>>,
}

/// Batches transition writes of many sagas into single statements (see the module docs).
pub struct TransitionWriter {
    tx: mpsc::UnboundedSender<Pending>,
}

impl TransitionWriter {
    /// Start `writers` writer tasks (each holds at most one pool connection at a time), each
    /// persisting up to `max_batch` transitions per statement.
    pub fn start(store: Store, lease_ttl: Duration, writers: usize, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (rx, store) = (rx.clone(), store.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&rx, max_batch.max(1)).await {
                    write_batch(&store, lease_ttl, batch).await;
                }
            });
        }
        TransitionWriter { tx }
    }

    /// Persist one transition of saga `id`, fenced by `epoch`: `Ok(true)` once committed,
    /// `Ok(false)` if the epoch no longer matches (the caller must drop the saga).
    pub async fn persist(
        &self,
        id: Uuid,
        epoch: i64,
        w: TransitionWrite<'_>,
    ) -> Result<bool, WriteError> {
        let state = serde_json::to_value(w.state).map_err(|e| WriteError::Failed(e.to_string()))?;
        let (next_kind, next_at) = w.next.columns();
        let (kinds, steps, details) = store::transition::event_columns(w.events);
        let batch = TransitionBatch {
            ids: vec![id],
            epochs: vec![epoch],
            statuses: vec![w.state.status.as_str()],
            states: vec![state],
            next_kinds: vec![next_kind],
            next_ats: vec![next_at],
            keep_leases: vec![w.keep_lease],
            event_sagas: vec![id; kinds.len()],
            event_kinds: kinds,
            event_steps: steps,
            event_details: details,
        };
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { id, batch, done })
            .map_err(|_| WriteError::Stopped)?;
        wait.await.map_err(|_| WriteError::Stopped)?
    }
}

/// Every write waiting (at least one, at most `max`); None once the driver is gone.
async fn next_batch(
    rx: &Mutex<mpsc::UnboundedReceiver<Pending>>,
    max: usize,
) -> Option<Vec<Pending>> {
    let mut rx = rx.lock().await;
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn write_batch(store: &Store, lease_ttl: Duration, pending: Vec<Pending>) {
    let mut all = TransitionBatch::default();
    let mut waiters = Vec::with_capacity(pending.len());
    crate::metrics::transition_batch(pending.len());
    for p in pending {
        let b = p.batch;
        all.ids.extend(b.ids);
        all.epochs.extend(b.epochs);
        all.statuses.extend(b.statuses);
        all.states.extend(b.states);
        all.next_kinds.extend(b.next_kinds);
        all.next_ats.extend(b.next_ats);
        all.keep_leases.extend(b.keep_leases);
        all.event_sagas.extend(b.event_sagas);
        all.event_kinds.extend(b.event_kinds);
        all.event_steps.extend(b.event_steps);
        all.event_details.extend(b.event_details);
        waiters.push((p.id, p.done));
    }
    match store.persist_transitions(&all, lease_ttl).await {
        Ok(applied) => {
            for (id, done) in waiters {
                let _ = done.send(Ok(applied.contains(&id)));
            }
        }
        Err(e) => {
            let e = WriteError::Failed(e.to_string());
            for (_, done) in waiters {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}
