//! The transactional outbox: an event row written in the **same transaction** as the effect it
//! reports ([`emit`]), and the relay ([`Relay`]) that publishes unpublished rows to JetStream
//! with the row id as `Nats-Msg-Id` and marks a row published only after JetStream's
//! acknowledgement.
//!
//! No `NOTIFY` in the effect's transaction (effects are shared with 2PC, and a transaction that
//! ran `NOTIFY` cannot be prepared): whoever commits wakes the relay in-process afterwards
//! ([`Relay::wake`]), and the relay also polls, so a row committed by a process that died
//! before waking anyone is published by the next poll (of any relay on that database).
//!
//! Trace context: a row keeps the `traceparent` of the span that wrote it (the request or the
//! event handler that caused it), and the relay sends it as the message's `traceparent` header;
//! the consumer's span for the delivery is its child ([`super::consumer`]), so a choreographed
//! checkout is one trace across the services, as an orchestrated one is.
//!
//! A crash between JetStream's ack and the `UPDATE … published_at` republishes the row: within
//! the stream's duplicate window ([`super::DUPLICATE_WINDOW`]) JetStream drops it by its
//! message id; after it, consumers get it twice and the barrier absorbs it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use super::event::Event;

/// Version of the outbox migration in every database that has one (the kit adds it, as it adds
/// the barrier table; named by its UTC creation time as docs/architecture.md "Migrations" says).
pub const MIGRATION_VERSION: i64 = 20_261_130_190_500;

/// The outbox table.
pub const DDL: &str = r#"
CREATE TABLE outbox (
    -- the JetStream message id (Nats-Msg-Id)
    id           uuid        PRIMARY KEY,
    subject      text        NOT NULL,
    payload      jsonb       NOT NULL,
    -- one event of each kind per order from this database: an event written again (a refusal
    -- recorded again after a crash, a timer that fires twice) is not a second row
    order_id     text        NOT NULL,
    event        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz,
    UNIQUE (order_id, event)
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
"#;

/// Version of the migration that gives each outbox row the trace context it was written in.
pub const TRACE_MIGRATION_VERSION: i64 = 20_261_201_052_000;

/// The trace context column: the `traceparent` of the span that wrote the row (null when there
/// was none), sent as the NATS message's `traceparent` header.
pub const TRACE_DDL: &str = "ALTER TABLE outbox ADD COLUMN traceparent text;";

/// `migrator` plus the outbox table (and its trace context column).
pub fn migrator(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let m = crate::barrier::with_migration(migrator, MIGRATION_VERSION, "tandem kit outbox", DDL);
    crate::barrier::with_migration(
        m,
        TRACE_MIGRATION_VERSION,
        "tandem kit outbox trace context",
        TRACE_DDL,
    )
}

/// Write `event` into the outbox on `conn` (inside the caller's transaction), with the current
/// span's trace context. `false` when this database already holds that order's event of that
/// kind.
pub async fn emit(conn: &mut PgConnection, event: &Event) -> Result<bool, sqlx::Error> {
    let payload = serde_json::to_value(event).unwrap_or(Value::Null);
    let done = sqlx::query(
        "INSERT INTO outbox (id, subject, payload, order_id, event, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (order_id, event) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event.subject())
    .bind(payload)
    .bind(&event.order_id)
    .bind(event.event.as_str())
    .bind(crate::telemetry::current())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Rows the relay publishes per round.
const BATCH: i64 = 64;

/// Publishes a database's outbox to JetStream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    wake: Arc<Notify>,
    poll: Duration,
}

impl Relay {
    pub fn new(pool: PgPool, js: jetstream::Context, poll: Duration) -> Self {
        Relay {
            pool,
            js,
            wake: Arc::new(Notify::new()),
            poll,
        }
    }

    /// Wake the relay (call after committing a transaction that emitted).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publish until the task is dropped: a round on every wake-up and every poll interval.
    pub async fn run(self) {
        loop {
            match self.round().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox relay: round failed; retrying"),
            }
            let _ = tokio::time::timeout(self.poll, self.wake.notified()).await;
        }
    }

    /// One round: publish up to [`BATCH`] unpublished rows, oldest first, and mark those that
    /// JetStream acknowledged. Rows are locked (`SKIP LOCKED`) so two relays on one database
    /// do not publish the same row at the same time.
    pub async fn round(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, String, Value, Option<String>)> = sqlx::query_as(
            "SELECT id, subject, payload, traceparent FROM outbox WHERE published_at IS NULL
             ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut acks = Vec::with_capacity(rows.len());
        for (id, subject, payload, traceparent) in &rows {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
            if let Some(tp) = traceparent {
                headers.insert(super::TRACEPARENT, tp.as_str());
            }
            let body = serde_json::to_vec(payload).unwrap_or_default();
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, body.into())
                .await
                .map_err(|e| RelayError::Nats(e.to_string()))?;
            acks.push((*id, ack));
        }
        let mut published = Vec::with_capacity(acks.len());
        for (id, ack) in acks {
            ack.await.map_err(|e| RelayError::Nats(e.to_string()))?;
            published.push(id);
        }
        sqlx::query("UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(published.len())
    }
}

/// Why a relay round stopped (the next round tries again).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("JetStream: {0}")]
    Nats(String),
}
