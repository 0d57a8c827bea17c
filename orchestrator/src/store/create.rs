//! Creating a saga: the row (leased to its creator, epoch 1, with the first transition's state)
//! and its first events in **one statement**; with a client `Idempotency-Key`, the key too, in
//! the same transaction. Concurrent requests with the same key or business key wait for the
//! first one's commit and then see its saga.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use super::transition::event_columns;
use super::{EventRow, SagaRow, events_json, saga_and_events, saga_columns, secs};
use crate::saga::{EventRecord, SagaState};

/// What any run (a saga, a transaction) is created with: the request, the definition it runs,
/// and the lease its creator takes ([`crate::driver::StartSaga::new_run`]).
pub struct NewRun<'a> {
    pub id: Uuid,
    pub definition: &'a str,
    pub version: &'a str,
    pub business_key: Option<String>,
    pub input: &'a Value,
    pub input_hash: String,
    /// Hash of the whole request (for the client's Idempotency-Key).
    pub request_hash: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub owner: &'a str,
    pub lease_ttl: Duration,
}

pub struct NewSaga<'a> {
    pub run: NewRun<'a>,
    pub state: &'a SagaState,
    pub events: &'a [EventRecord],
}

#[derive(Debug)]
pub enum Created {
    /// A new saga, leased to the creator (epoch in the row), with its events.
    New(Box<(SagaRow, Vec<EventRow>)>),
    /// The Idempotency-Key was seen with the same request: that saga.
    Replay(Uuid),
    /// The Idempotency-Key was seen with a different request.
    KeyReused { saga_id: Uuid },
    /// A saga with this business key exists with the same input: that saga.
    SameBusinessKey(Uuid),
    /// A saga with this business key exists with a different input.
    BusinessKeyConflict { saga_id: Uuid },
    /// A 2PC transaction runs this business key (one namespace for both).
    TakenByTransaction { transaction_id: Uuid },
}

/// Insert the saga and its events unless its business key is taken (None) — by a saga or a
/// transaction: the key goes into `business_keys` in the same statement, so a concurrent
/// creation of the same key (of either kind) waits for this one and then finds it taken.
async fn insert_saga(
    db: impl PgExecutor<'_>,
    new: &NewSaga<'_>,
) -> Result<Option<(SagaRow, Vec<EventRow>)>, sqlx::Error> {
    let state_json =
        serde_json::to_value(new.state).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (kinds, steps, details) = event_columns(new.events);
    let row = sqlx::query(concat!(
        "WITH k AS (INSERT INTO business_keys (definition, business_key, kind, id) \
             SELECT $2, $4, 'saga', $1 WHERE $4::text IS NOT NULL \
             ON CONFLICT DO NOTHING RETURNING 1), \
         s AS (INSERT INTO sagas (id, definition, version, business_key, input, input_hash, \
                 status, state, next_run_at, lease_owner, lease_until, lease_epoch) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, now(), $9, now() + make_interval(secs => $10), 1 \
             WHERE $4::text IS NULL OR EXISTS (SELECT 1 FROM k) \
             ON CONFLICT (definition, business_key) WHERE business_key IS NOT NULL DO NOTHING \
             RETURNING ",
        saga_columns!(),
        "), \
         e AS (INSERT INTO saga_events (saga_id, kind, step, detail) \
             SELECT s.id, x.k, x.st, x.d FROM s, \
                 unnest($11::text[], $12::text[], $13::jsonb[]) WITH ORDINALITY AS x(k, st, d, n) \
             ORDER BY x.n \
             RETURNING seq, at, kind, step, detail) \
         SELECT s.*, (SELECT ",
        events_json!(),
        " FROM e) AS events FROM s"
    ))
    .bind(new.run.id)
    .bind(new.run.definition)
    .bind(new.run.version)
    .bind(new.run.business_key.as_deref())
    .bind(new.run.input)
    .bind(&new.run.input_hash)
    .bind(new.state.status.as_str())
    .bind(&state_json)
    .bind(new.run.owner)
    .bind(secs(new.run.lease_ttl))
    .bind(kinds)
    .bind(steps)
    .bind(details)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(saga_and_events).transpose()
}

/// Create a saga: one statement without a client key (the common case), else one transaction.
pub async fn create_saga(pool: &PgPool, new: &NewSaga<'_>) -> Result<Created, sqlx::Error> {
    if new.run.idempotency_key.is_none() {
        let created = insert_saga(pool, new).await?;
        tandem_kit::stats::write_committed(pool);
        if let Some(saga) = created {
            return Ok(Created::New(Box::new(saga)));
        }
        // The business key is taken: sort it out below.
    }
    let mut tx = tandem_kit::metrics::begin(pool).await?;
    if let Some(key) = new.run.idempotency_key {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, saga_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(new.run.request_hash)
        .bind(new.run.id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            let row =
                sqlx::query("SELECT request_hash, saga_id FROM idempotency_keys WHERE key = $1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            let hash: String = row.try_get("request_hash")?;
            let saga_id: Uuid = row.try_get("saga_id")?;
            tx.rollback().await?;
            return Ok(if hash == new.run.request_hash {
                Created::Replay(saga_id)
            } else {
                Created::KeyReused { saga_id }
            });
        }
    }
    if let Some(saga) = insert_saga(&mut *tx, new).await? {
        tx.commit().await?;
        tandem_kit::stats::write_committed(pool);
        return Ok(Created::New(Box::new(saga)));
    }
    // The business key is taken: by a saga, or by a transaction.
    let existing =
        sqlx::query("SELECT id, input_hash FROM sagas WHERE definition = $1 AND business_key = $2")
            .bind(new.run.definition)
            .bind(new.run.business_key.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(existing) = existing else {
        let transaction_id: Uuid = sqlx::query_scalar(
            "SELECT id FROM transactions WHERE definition = $1 AND business_key = $2",
        )
        .bind(new.run.definition)
        .bind(new.run.business_key.as_deref())
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        return Ok(Created::TakenByTransaction { transaction_id });
    };
    let saga_id: Uuid = existing.try_get("id")?;
    let hash: String = existing.try_get("input_hash")?;
    if hash != new.run.input_hash {
        tx.rollback().await?;
        return Ok(Created::BusinessKeyConflict { saga_id });
    }
    // Same order again under a new client key: remember the key for that saga.
    if let Some(key) = new.run.idempotency_key {
        sqlx::query("UPDATE idempotency_keys SET saga_id = $2 WHERE key = $1")
            .bind(key)
            .bind(saga_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tandem_kit::stats::write_committed(pool);
    Ok(Created::SameBusinessKey(saga_id))
}
