//! Persisting saga transitions: **one statement** writes one transition for each of any number
//! of sagas (one commit), each row fenced by its own lease epoch; a saga's events are inserted
//! only if its row was updated. This is the only way a transition reaches the database: the
//! group-commit writer ([`crate::writer`]) batches the waiting ones into it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::secs;
use crate::saga::EventRecord;

/// When the saga needs a driver next.
#[derive(Debug, Clone, Copy)]
pub enum NextRun {
    /// A call is in flight: due now (an orphan is resumed as soon as its lease expires). An
    /// already past `next_run_at` is kept, so the row's indexed columns do not change and the
    /// update can be HOT.
    Now,
    At(DateTime<Utc>),
    /// Terminal or parked.
    Never,
}

impl NextRun {
    /// The statement's encoding: a kind and a time.
    pub fn columns(self) -> (&'static str, Option<DateTime<Utc>>) {
        match self {
            NextRun::Now => ("now", None),
            NextRun::At(t) => ("at", Some(t)),
            NextRun::Never => ("never", None),
        }
    }
}

/// The event columns (kind, step, detail) of a transition's events.
pub(crate) fn event_columns(
    events: &[EventRecord],
) -> (Vec<String>, Vec<Option<String>>, Vec<Value>) {
    let kinds = events.iter().map(event_kind).collect();
    let steps = events.iter().map(|e| e.step.clone()).collect();
    let details = events.iter().map(|e| e.detail.clone()).collect();
    (kinds, steps, details)
}

fn event_kind(e: &EventRecord) -> String {
    match serde_json::to_value(e.kind) {
        Ok(Value::String(s)) => s,
        _ => format!("{:?}", e.kind),
    }
}

/// Transitions of several sagas (column arrays, one entry per saga; events flattened with the
/// saga each belongs to, in order), persisted by [`persist_transitions`].
#[derive(Default)]
pub struct TransitionBatch {
    pub ids: Vec<Uuid>,
    pub epochs: Vec<i64>,
    pub statuses: Vec<&'static str>,
    pub states: Vec<Value>,
    pub next_kinds: Vec<&'static str>,
    pub next_ats: Vec<Option<DateTime<Utc>>>,
    /// Renew the lease (the driver keeps working on the saga) or hand it back.
    pub keep_leases: Vec<bool>,
    pub event_sagas: Vec<Uuid>,
    pub event_kinds: Vec<String>,
    pub event_steps: Vec<Option<String>>,
    pub event_details: Vec<Value>,
}

/// Persist the batch in **one statement** (see the module docs). Returns the ids whose write
/// applied; the others were fenced (another instance owns them now: drop them without acting).
pub async fn persist_transitions(
    pool: &PgPool,
    b: &TransitionBatch,
    lease_ttl: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let applied: Vec<Uuid> = sqlx::query_scalar(
        "WITH i AS ( \
            SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[], \
                                 $6::timestamptz[], $7::bool[]) \
                AS i(id, epoch, status, state, next_kind, next_at, keep)), \
         upd AS ( \
            UPDATE sagas s SET status = i.status, state = i.state, updated_at = now(), \
                next_run_at = CASE i.next_kind WHEN 'now' THEN LEAST(s.next_run_at, now()) WHEN 'at' THEN i.next_at ELSE NULL END, \
                lease_owner = CASE WHEN i.keep THEN s.lease_owner ELSE NULL END, \
                lease_until = CASE WHEN i.keep THEN now() + make_interval(secs => $8) ELSE NULL END \
            FROM i WHERE s.id = i.id AND s.lease_epoch = i.epoch RETURNING s.id), \
         ins AS ( \
            INSERT INTO saga_events (saga_id, kind, step, detail) \
            SELECT e.saga_id, e.k, e.s, e.d \
            FROM unnest($9::uuid[], $10::text[], $11::text[], $12::jsonb[]) WITH ORDINALITY AS e(saga_id, k, s, d, n) \
            WHERE e.saga_id IN (SELECT id FROM upd) ORDER BY e.n) \
         SELECT id FROM upd",
    )
    .bind(&b.ids)
    .bind(&b.epochs)
    .bind(&b.statuses)
    .bind(&b.states)
    .bind(&b.next_kinds)
    .bind(&b.next_ats)
    .bind(&b.keep_leases)
    .bind(secs(lease_ttl))
    .bind(&b.event_sagas)
    .bind(&b.event_kinds)
    .bind(&b.event_steps)
    .bind(&b.event_details)
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    Ok(applied)
}
