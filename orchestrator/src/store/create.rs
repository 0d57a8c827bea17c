//! Creating a run. What sagas and transactions share ([`Created`], [`RunKind`]): the client's
//! `Idempotency-Key` ([`client_key`]) and the business key held by a run of the same kind
//! ([`same_business_key`]).
//!
//! Creating a saga: the row (leased to its creator, epoch 1, with the first transition's state)
//! and its first events in **one statement**; with a client `Idempotency-Key`, the key too, in
//! the same transaction. Concurrent requests with the same key or business key wait for the
//! first one's commit and then see its saga.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::transition::event_columns;
use super::{EventRow, SagaRow, events_json, inserted, saga_and_events, saga_columns, secs};
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

/// What creating a run (a saga, a transaction: `R` is its row) found.
#[derive(Debug)]
pub enum Created<R> {
    /// A new run, leased to the creator (epoch in the row).
    New(Box<R>),
    /// The Idempotency-Key was seen with the same request: that run.
    Replay(Uuid),
    /// The Idempotency-Key was seen with a different request: the run it named.
    KeyReused(Uuid),
    /// A run of the same kind has this business key with the same input: that run.
    SameBusinessKey(Uuid),
    /// A run of the same kind has this business key with a different input.
    BusinessKeyConflict(Uuid),
    /// A run of the other kind holds this business key (sagas and transactions share one
    /// namespace).
    TakenByOther(Uuid),
}

/// A saga as [`create_saga`] creates it: the row and its first events.
pub type CreatedSaga = Created<(SagaRow, Vec<EventRow>)>;

/// The kind of run being created: where its rows and its client keys are.
#[derive(Debug, Clone, Copy)]
pub enum RunKind {
    Saga,
    Transaction,
}

impl RunKind {
    /// Record a client key (`$1` key, `$2` request hash, `$3` run id) unless it is known.
    fn insert_key(self) -> &'static str {
        match self {
            RunKind::Saga => {
                "INSERT INTO idempotency_keys (key, request_hash, saga_id) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING"
            }
            RunKind::Transaction => {
                "INSERT INTO transaction_keys (key, request_hash, transaction_id) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            }
        }
    }

    /// The request hash and the run a client key (`$1`) names.
    fn select_key(self) -> &'static str {
        match self {
            RunKind::Saga => "SELECT request_hash, saga_id FROM idempotency_keys WHERE key = $1",
            RunKind::Transaction => {
                "SELECT request_hash, transaction_id FROM transaction_keys WHERE key = $1"
            }
        }
    }

    /// Point a client key (`$1`) at another run (`$2`).
    fn rename_key(self) -> &'static str {
        match self {
            RunKind::Saga => "UPDATE idempotency_keys SET saga_id = $2 WHERE key = $1",
            RunKind::Transaction => {
                "UPDATE transaction_keys SET transaction_id = $2 WHERE key = $1"
            }
        }
    }

    /// The id and input hash of the run of this kind with a definition (`$1`) and business
    /// key (`$2`).
    fn select_by_business_key(self) -> &'static str {
        match self {
            RunKind::Saga => {
                "SELECT id, input_hash FROM sagas WHERE definition = $1 AND business_key = $2"
            }
            RunKind::Transaction => {
                "SELECT id, input_hash FROM transactions WHERE definition = $1 AND business_key = $2"
            }
        }
    }
}

/// The client's key, if any, in the creating transaction `tx`: None if it is new (now
/// recorded for `run`), else what it named before: the same request ([`Created::Replay`]) or
/// another ([`Created::KeyReused`]).
pub async fn client_key<R>(
    tx: &mut PgConnection,
    kind: RunKind,
    run: &NewRun<'_>,
) -> Result<Option<Created<R>>, sqlx::Error> {
    let Some(key) = run.idempotency_key else {
        return Ok(None);
    };
    let insert = sqlx::query(kind.insert_key());
    if inserted(
        &mut *tx,
        insert.bind(key).bind(run.request_hash).bind(run.id),
    )
    .await?
    {
        return Ok(None);
    }
    let (hash, id): (String, Uuid) = sqlx::query_as(kind.select_key())
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
    Ok(Some(if hash == run.request_hash {
        Created::Replay(id)
    } else {
        Created::KeyReused(id)
    }))
}

/// The run of `kind` that holds `run`'s business key, in the creating transaction `tx`: the
/// same input is that run (and the client key, if any, now names it); another input is a
/// conflict. None: no run of this kind holds it.
pub async fn same_business_key<R>(
    tx: &mut PgConnection,
    kind: RunKind,
    run: &NewRun<'_>,
) -> Result<Option<Created<R>>, sqlx::Error> {
    let existing: Option<(Uuid, String)> = sqlx::query_as(kind.select_by_business_key())
        .bind(run.definition)
        .bind(run.business_key.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
    let Some((id, hash)) = existing else {
        return Ok(None);
    };
    if hash != run.input_hash {
        return Ok(Some(Created::BusinessKeyConflict(id)));
    }
    if let Some(key) = run.idempotency_key {
        sqlx::query(kind.rename_key())
            .bind(key)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(Some(Created::SameBusinessKey(id)))
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
pub async fn create_saga(pool: &PgPool, new: &NewSaga<'_>) -> Result<CreatedSaga, sqlx::Error> {
    if new.run.idempotency_key.is_none() {
        let created = insert_saga(pool, new).await?;
        tandem_kit::stats::write_committed(pool);
        if let Some(saga) = created {
            return Ok(Created::New(Box::new(saga)));
        }
        // The business key is taken: sort it out below.
    }
    let mut tx = tandem_kit::metrics::begin(pool).await?;
    if let Some(seen) = client_key(&mut tx, RunKind::Saga, &new.run).await? {
        tx.rollback().await?;
        return Ok(seen);
    }
    if let Some(saga) = insert_saga(&mut *tx, new).await? {
        tx.commit().await?;
        tandem_kit::stats::write_committed(pool);
        return Ok(Created::New(Box::new(saga)));
    }
    // The business key is taken: by a saga, or by a transaction.
    let taken = match same_business_key(&mut tx, RunKind::Saga, &new.run).await? {
        Some(taken) => taken,
        None => Created::TakenByOther(
            sqlx::query_scalar(
                "SELECT id FROM transactions WHERE definition = $1 AND business_key = $2",
            )
            .bind(new.run.definition)
            .bind(new.run.business_key.as_deref())
            .fetch_one(&mut *tx)
            .await?,
        ),
    };
    // The same saga again keeps the client key (now naming it); a conflict stores nothing.
    if let Created::SameBusinessKey(_) = taken {
        tx.commit().await?;
        tandem_kit::stats::write_committed(pool);
    } else {
        tx.rollback().await?;
    }
    Ok(taken)
}
