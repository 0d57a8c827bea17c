//! Following the events, and the step timer.
//!
//! **Who owns the step timeout when there is no orchestrator: this service.** Every event it
//! sees moves the order forward (its `rank` only grows) and, while the order runs, sets the
//! deadline of the next step to now + `STEP_TIMEOUT_MS`. [`timer`] fails an overdue order:
//! in one transaction it writes the `failed` event (step: the one that did not report, reason
//! `timeout`) and marks the order compensating. The compensations then run in reverse order
//! from shipping back to inventory, each through its service's barrier: a step whose action
//! never ran gets a null compensation, so its late action is refused as hanging — no effect.

use std::time::Duration;

use serde_json::Value;
use tandem_kit::choreo::consumer::{self, Disposition};
use tandem_kit::choreo::event::{Event, Kind};
use tandem_kit::choreo::outbox;

use crate::App;

/// The durable consumer name of this service.
pub const DURABLE: &str = "orders";

/// Follow every checkout event until the task is dropped.
pub async fn follow(app: App) {
    let js = app.js.clone();
    consumer::run(js, DURABLE.to_string(), move |event, delivered| {
        let app = app.clone();
        async move {
            let done = if event.event == Kind::Forgotten {
                // This service's own published events of the order (it has no barrier).
                tandem_kit::choreo::forget_order(&app.pool, &event.order_id, false)
                    .await
                    .map(drop)
            } else {
                seen(&app, &event).await
            };
            match done {
                Ok(()) => Disposition::Ack,
                Err(e) => {
                    tracing::warn!(order = %event.order_id, error = %e, "orders: event not recorded; redelivery");
                    Disposition::Retry(consumer::backoff(delivered))
                }
            }
        }
    })
    .await;
}

/// Move the order forward to `event` (nothing if it is already further).
async fn seen(app: &App, event: &Event) -> Result<(), sqlx::Error> {
    let kind = event.event;
    let status = kind.status();
    let moved = sqlx::query(
        "UPDATE orders SET rank = $2, last_event = $3, status = $4, updated_at = now(),
                deadline = CASE WHEN $4 = 'running' THEN now() + make_interval(secs => $5) END
         WHERE id = $1 AND rank < $2",
    )
    .bind(&event.order_id)
    .bind(kind.rank())
    .bind(kind.as_str())
    .bind(status)
    .bind(app.step_timeout.as_secs_f64())
    .execute(&app.pool)
    .await?
    .rows_affected();
    if moved == 1 && matches!(status, "completed" | "compensated") {
        // The terminal event's hops: the choreography's critical path (`GET /stats`).
        tandem_kit::stats::critical_path(event.hop, false);
        app.settled.notify_waiters();
    }
    Ok(())
}

/// The step whose report is awaited after `last` (the one a timeout fails).
fn awaited_step(last: &str) -> &'static str {
    match Kind::parse(last) {
        Some(Kind::Placed) => "reserve_inventory",
        Some(Kind::Reserved) => "charge_payment",
        _ => "create_shipment",
    }
}

/// Fail overdue orders until the task is dropped (polls at a quarter of the step timeout,
/// between 20 ms and 250 ms).
pub async fn timer(app: App) {
    let every = (app.step_timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    loop {
        match expire(&app).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(orders = n, "step timeout: failed overdue orders");
                app.relay.wake();
            }
            Err(e) => tracing::warn!(error = %e, "step timer: round failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// One round of the timer: each overdue running order gets its `failed` event and becomes
/// compensating, in one transaction (rows locked with `SKIP LOCKED`, so two instances do not
/// fail the same order twice — and if they did, the outbox keeps one `failed` per order).
pub async fn expire(app: &App) -> Result<usize, sqlx::Error> {
    let mut tx = app.pool.begin().await?;
    let overdue: Vec<(String, Value, String, String)> = sqlx::query_as(
        "SELECT id, body, trace_id, last_event FROM orders
         WHERE status = 'running' AND deadline < now()
         ORDER BY deadline LIMIT 64 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, order, trace_id, last) in &overdue {
        let failed = Event {
            order_id: id.clone(),
            event: Kind::Failed,
            trace_id: trace_id.clone(),
            order: order.clone(),
            step: Some(awaited_step(last).to_string()),
            reason: Some("timeout".to_string()),
            output: None,
            // A timer, not a message, starts it: counted from the timeout on.
            hop: tandem_kit::choreo::event::FIRST_HOP,
        };
        outbox::emit(&mut tx, &failed).await?;
        sqlx::query(
            "UPDATE orders SET status = 'compensating', last_event = 'failed', rank = $2,
                    deadline = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(Kind::Failed.rank())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(overdue.len())
}

/// Retention passes every [`crate::Retention::every`] until the task is dropped (nothing when
/// retention is off).
pub async fn retention(app: App) {
    let Some(age) = app.retention.orders else {
        return;
    };
    loop {
        loop {
            match purge(&app, age, app.retention.batch).await {
                Ok(n) if n as i64 == app.retention.batch => continue,
                Ok(0) => {}
                Ok(n) => tracing::debug!(orders = n, "retention: orders forgotten"),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one retries"),
            }
            break;
        }
        tokio::time::sleep(app.retention.every).await;
    }
}

/// One batch of retention: at most `batch` completed or compensated orders unchanged for `age`
/// are deleted and, in the same transaction, each gets its `forgotten` event (the outbox keeps
/// one per order), which tells every service to delete the order's barrier and outbox rows
/// (`tandem_kit::choreo::forget_order`). A crash before the commit deletes nothing; after it,
/// the relay publishes the events. Orders deleted.
pub async fn purge(app: &App, age: Duration, batch: i64) -> Result<usize, sqlx::Error> {
    let mut tx = app.pool.begin().await?;
    let due: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM orders WHERE id = ANY(ARRAY(
             SELECT id FROM orders
             WHERE status IN ('completed', 'compensated')
               AND updated_at < now() - make_interval(secs => $1)
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED))
         RETURNING id, trace_id",
    )
    .bind(age.as_secs_f64())
    .bind(batch.max(1))
    .fetch_all(&mut *tx)
    .await?;
    for (id, trace_id) in &due {
        let forgotten = Event {
            order_id: id.clone(),
            event: Kind::Forgotten,
            trace_id: trace_id.clone(),
            order: Value::Null,
            step: None,
            reason: None,
            output: None,
            hop: tandem_kit::choreo::event::FIRST_HOP,
        };
        outbox::emit(&mut tx, &forgotten).await?;
    }
    tx.commit().await?;
    if !due.is_empty() {
        tandem_kit::stats::write_committed(&app.pool);
        app.relay.wake();
    }
    Ok(due.len())
}
