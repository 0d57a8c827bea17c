//! The choreographed checkout: no coordinator; each service reacts to events and emits events.
//!
//! - [`event`]: the events, their subjects (`checkout.<order>.<event>`) and their order;
//! - [`outbox`]: the transactional outbox (an event row in the effect's own transaction) and
//!   the relay that publishes it to JetStream;
//! - [`consumer`]: a durable JetStream consumer with explicit acks, poison events sent to the
//!   dead-letter subject with the reason;
//! - [`step`]: a service's step as data (which event triggers its action, which its
//!   compensation, what each emits), run through **the same barrier as saga calls**, keyed
//!   `(order, step, action|compensation)`;
//! - [`nats_testing`]: a private `nats-server -js` for tests.
//!
//! Retention ([`forget_order`]): the entry point deletes an order that is final and past its
//! retention and, in the same transaction, writes a `forgotten` event; every service's consumer
//! then deletes that order's barrier rows and its published outbox rows — the choreography's
//! "forget" call (docs/security.md, "Retention"), told by the only party that knows the order
//! is final, as the orchestrator tells the services for its sagas.
//!
//! The stream ([`STREAM`]) keeps every `checkout.>` event for [`MAX_AGE`], with a duplicate
//! window of [`DUPLICATE_WINDOW`]; dead letters go to [`DEAD_STREAM`]. Everything here uses
//! only what NATS 2.9 has (one filter subject per consumer, no 2.10 features).

pub mod consumer;
pub mod event;
pub mod nats_testing;
pub mod outbox;
pub mod step;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// The stream of checkout events.
pub const STREAM: &str = "CHECKOUT";
/// How long JetStream remembers a message id and drops a republish with the same id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the stream keeps events (the timeline is rebuilt from it).
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The dead-letter stream and its subjects (`checkout_dead.<consumer>`).
pub const DEAD_STREAM: &str = "CHECKOUT_DEAD";
pub const DEAD_SUBJECTS: &str = "checkout_dead.>";
/// Header naming why an event was dead-lettered, and the subject it came on.
pub const DEAD_REASON: &str = "Tandem-Dead-Reason";
pub const DEAD_SUBJECT: &str = "Tandem-Original-Subject";
/// Header carrying the W3C trace context of the span that wrote the event (the outbox row's).
pub const TRACEPARENT: &str = "traceparent";

/// Connect to NATS and make sure both streams exist.
pub async fn connect(url: &str) -> Result<jetstream::Context, String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| format!("NATS at {url} is unreachable: {e}"))?;
    let js = jetstream::new(client);
    ensure_streams(&js).await?;
    Ok(js)
}

/// Create the checkout and dead-letter streams if missing (file storage, so a restarted
/// server keeps them).
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), String> {
    for (name, subject) in [(STREAM, event::SUBJECTS), (DEAD_STREAM, DEAD_SUBJECTS)] {
        js.get_or_create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: MAX_AGE,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("JetStream stream {name}: {e}"))?;
    }
    Ok(())
}

/// Forget `order_id` in the database of `pool`: delete its barrier rows (if `barrier`: the
/// services have a barrier table, the entry point has none) and its outbox rows that were
/// published (an unpublished one stays until its relay publishes it: it cannot be the
/// `forgotten` event's own row, which was delivered, hence published). Rows deleted; 0 for an
/// order unknown here or forgotten already (a redelivery).
pub async fn forget_order(
    pool: &sqlx::PgPool,
    order_id: &str,
    barrier: bool,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut n = 0;
    if barrier {
        n += sqlx::query("DELETE FROM saga_barrier WHERE saga_id = $1")
            .bind(order_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    // The delivered `forgotten` event was published even if its relay has not marked it yet.
    n += sqlx::query(
        "DELETE FROM outbox WHERE order_id = $1 \
         AND (published_at IS NOT NULL OR event = 'forgotten')",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if n > 0 {
        crate::stats::write_committed(pool);
    }
    Ok(n)
}

/// One event of an order's timeline, as the stream holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The stream sequence (the timeline's order).
    pub seq: u64,
    /// When JetStream stored it.
    pub at: chrono::DateTime<chrono::Utc>,
    pub event: event::Event,
}

impl Entry {
    /// The entry as the entry point's `GET /orders/{id}` and `tandem choreo show --json` give
    /// it (one shape for both).
    pub fn to_json(&self) -> serde_json::Value {
        let e = &self.event;
        serde_json::json!({
            "seq": self.seq,
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "event": e.event,
            "step": e.step,
            "reason": e.reason,
            "output": e.output,
        })
    }
}

/// One order's events, in stream order, read back from the stream (an ordered consumer on
/// `checkout.<order>.>`): the timeline without a central state.
pub async fn timeline(js: &jetstream::Context, order_id: &str) -> Result<Vec<Entry>, String> {
    use futures::StreamExt;
    let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("checkout.{order_id}.>"),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut left = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    while left > 0 {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(Ok(msg))) = next else {
            return Err(format!(
                "the stream stopped with {left} events of {order_id} unread"
            ));
        };
        let info = msg.info().map_err(|e| e.to_string())?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let nanos = info.published.unix_timestamp_nanos();
        let at = i64::try_from(nanos)
            .map(chrono::DateTime::from_timestamp_nanos)
            .unwrap_or_default();
        if let Ok(event) = event::Event::from_message(&msg.subject, &msg.payload) {
            events.push(Entry { seq, at, event });
        }
        left = pending;
    }
    Ok(events)
}
