//! A durable JetStream consumer with explicit acks on every checkout event (`checkout.>`: one
//! filter subject, as NATS 2.9 allows), handled concurrently, each in an `event` span that
//! continues the message's `traceparent` header. Each handler answers a
//! [`Disposition`]; an event that does not parse (malformed, unknown type, subject and payload
//! disagreeing) is **poison**: published to `checkout_dead.<consumer>` with the reason in a
//! header, then terminated, so it never blocks the stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;

use super::event::{Event, SUBJECTS};

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (or not this consumer's business): acknowledge.
    Ack,
    /// Not handled now: negative-acknowledge, redelivered after this delay.
    Retry(Duration),
}

/// Deliveries handled at once per consumer.
pub const CONCURRENCY: usize = 32;
/// How long a delivery may stay unacknowledged before JetStream redelivers it (a consumer that
/// died mid-event is redelivered after this).
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Backoff before redelivery number `delivered + 1`: 50 ms doubling, capped at 2 s.
pub fn backoff(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.clamp(1, 6) - 1).unwrap_or(0);
    Duration::from_millis(50 * 2u64.pow(exp)).min(Duration::from_secs(2))
}

/// Consume every checkout event as durable consumer `durable` until the task is dropped;
/// `handle(event, delivered)` is called for each well-formed event (`delivered`: 1 on the first
/// delivery). Reconnects (after a server restart, say) with a pause.
pub async fn run<H, Fut>(js: jetstream::Context, durable: String, handle: H)
where
    H: Fn(Event, i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send,
{
    let handle = Arc::new(handle);
    loop {
        if let Err(e) = consume(&js, &durable, handle.clone()).await {
            tracing::warn!(consumer = %durable, error = %e, "JetStream consumer stopped; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn consume<H, Fut>(
    js: &jetstream::Context,
    durable: &str,
    handle: Arc<H>,
) -> Result<(), String>
where
    H: Fn(Event, i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send,
{
    let stream = js
        .get_stream(super::STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.to_string()),
                filter_subject: SUBJECTS.to_string(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 1024,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    messages
        .for_each_concurrent(CONCURRENCY, |msg| {
            let handle = handle.clone();
            async move {
                match msg {
                    Ok(msg) => deliver(js, durable, msg, &*handle).await,
                    Err(e) => {
                        tracing::warn!(consumer = %durable, error = %e, "JetStream delivery error")
                    }
                }
            }
        })
        .await;
    Err("the message stream ended".to_string())
}

async fn deliver<H, Fut>(
    js: &jetstream::Context,
    durable: &str,
    msg: jetstream::Message,
    handle: &H,
) where
    H: Fn(Event, i64) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    // The delivery's span: a child of the trace context the event was written in.
    let span = tracing::info_span!(
        "event",
        subject = %msg.subject,
        consumer = %durable,
        delivered,
        trace_id = tracing::field::Empty,
    );
    let parent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(super::TRACEPARENT))
        .map(|v| v.as_str().to_string());
    crate::telemetry::with_parent(&span, parent.as_deref());
    let ack = match Event::from_message(&msg.subject, &msg.payload) {
        Ok(event) => match tracing::Instrument::instrument(handle(event, delivered), span).await {
            Disposition::Ack => AckKind::Ack,
            Disposition::Retry(after) => AckKind::Nak(Some(after)),
        },
        Err(reason) => match dead_letter(js, durable, &msg, &reason).await {
            Ok(()) => AckKind::Term,
            Err(e) => {
                tracing::warn!(consumer = %durable, error = %e, "dead letter not published; retrying");
                AckKind::Nak(Some(backoff(delivered)))
            }
        },
    };
    if let Err(e) = msg.ack_with(ack).await {
        tracing::warn!(consumer = %durable, error = %e, "ack not sent; the event will be redelivered");
    }
}

/// Publish a poison event to `checkout_dead.<consumer>` (payload as it came, the reason and the
/// original subject in headers) and wait for JetStream's ack.
async fn dead_letter(
    js: &jetstream::Context,
    durable: &str,
    msg: &jetstream::Message,
    reason: &str,
) -> Result<(), String> {
    tracing::warn!(consumer = %durable, subject = %msg.subject, %reason, "poison event: dead-lettered");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(super::DEAD_REASON, reason);
    headers.insert(super::DEAD_SUBJECT, msg.subject.as_str());
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    headers.insert("Nats-Msg-Id", format!("{durable}:{seq}").as_str());
    js.publish_with_headers(
        format!("checkout_dead.{durable}"),
        headers,
        msg.payload.clone(),
    )
    .await
    .map_err(|e| e.to_string())?
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}
