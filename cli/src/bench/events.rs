//! The choreographed checkout's messages, counted at NATS: events stored in the stream
//! (published by the relays, each one row of an outbox) and deliveries to the durable consumers
//! (each consumer gets every event; redeliveries count again). Read before and after a run;
//! the difference per checkout is what [`EventCosts`] reports.

use futures::TryStreamExt;
use serde::Serialize;

/// Counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventCounts {
    /// Messages stored in the checkout stream.
    pub published: u64,
    /// Deliveries to the durable consumers, all together.
    pub delivered: u64,
    pub consumers: usize,
}

/// Messages per checkout.
#[derive(Debug, Clone, Serialize)]
pub struct EventCosts {
    /// Events published to JetStream (one outbox row and one relay publish each).
    pub published_per_saga: f64,
    /// Deliveries to the durable consumers (every consumer receives every event).
    pub deliveries_per_saga: f64,
    pub consumers: usize,
}

pub async fn read(js: &async_nats::jetstream::Context) -> anyhow::Result<EventCounts> {
    use async_nats::jetstream::consumer::pull;
    let mut stream = js
        .get_stream(tandem_kit::choreo::STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let published = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .messages;
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut counts = EventCounts {
        published,
        ..EventCounts::default()
    };
    for name in names {
        let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&name).await else {
            continue; // an ordered consumer (a timeline being read) that went away
        };
        let Ok(info) = consumer.info().await else {
            continue;
        };
        if info.config.durable_name.is_some() {
            counts.delivered += info.delivered.consumer_sequence;
            counts.consumers += 1;
        }
    }
    Ok(counts)
}

/// What `n` checkouts cost between two readings.
pub fn costs(a: EventCounts, b: EventCounts, n: f64) -> EventCosts {
    EventCosts {
        published_per_saga: b.published.saturating_sub(a.published) as f64 / n,
        deliveries_per_saga: b.delivered.saturating_sub(a.delivered) as f64 / n,
        consumers: b.consumers,
    }
}

/// The counters once every durable consumer has nothing pending and nothing unacknowledged
/// (at most 30 s).
pub async fn settled(js: &async_nats::jetstream::Context) -> anyhow::Result<EventCounts> {
    use async_nats::jetstream::consumer::pull;
    let stream = js
        .get_stream(tandem_kit::choreo::STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let names: Vec<String> = stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut idle = true;
        for name in names {
            if let Ok(mut c) = stream.get_consumer::<pull::Config>(&name).await
                && let Ok(info) = c.info().await
                && info.config.durable_name.is_some()
            {
                idle &= info.num_pending == 0 && info.num_ack_pending == 0;
            }
        }
        if idle || std::time::Instant::now() > deadline {
            return read(js).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
