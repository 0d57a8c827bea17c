//! The 2PC wire: one [`Envelope`] per protocol message, `POST /2pc` to the recipient, no
//! answer awaited (the cores tolerate loss, duplication and reordering; their timers resend).
//! Also [`Timers`]: generation counters so a cancelled or re-armed timer's late firing is
//! ignored.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_protocols::NodeId;
use tandem_protocols::two_phase::{Msg, Timer};
use uuid::Uuid;

/// One protocol message about one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub txn: Uuid,
    pub from: NodeId,
    pub to: NodeId,
    pub msg: Msg,
    /// Shard indexes of the participants, sorted: core participant `i` is shard
    /// `participants[i]`.
    pub participants: Vec<u16>,
}

/// Sends envelopes.
#[derive(Clone, Debug)]
pub struct Net {
    http: reqwest::Client,
    /// Accepted tokens and this process's own (carried by every message it sends).
    auth: tandem_kit::auth::Auth,
}

impl Default for Net {
    fn default() -> Self {
        Net::new(tandem_kit::auth::Auth::open())
    }
}

impl Net {
    /// A sender whose messages carry `auth`'s service token.
    pub fn new(auth: tandem_kit::auth::Auth) -> Self {
        Net {
            http: reqwest::Client::builder()
                .default_headers(auth.client_headers("kv"))
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            auth,
        }
    }

    /// The token settings of this process.
    pub fn auth(&self) -> &tandem_kit::auth::Auth {
        &self.auth
    }

    /// Fire and forget `env` to the process at `base_url`.
    pub fn send(&self, base_url: &str, env: Envelope) {
        let http = self.http.clone();
        let url = format!("{}/2pc", base_url.trim_end_matches('/'));
        tokio::spawn(async move {
            if let Err(e) = http.post(&url).json(&env).send().await {
                tracing::debug!(%url, txn = %env.txn, error = %e, "2pc message lost");
            }
        });
    }
}

/// Armed timers of one role instance.
#[derive(Debug, Default)]
pub struct Timers {
    generation: HashMap<Timer, u64>,
    next: u64,
}

impl Timers {
    /// Arm (or re-arm) `t`; the returned generation identifies this arming.
    pub fn set(&mut self, t: Timer) -> u64 {
        self.next += 1;
        self.generation.insert(t, self.next);
        self.next
    }

    /// `SetTimer`: arm `t` and, after `delay`, run `fire(t, generation)` — which ignores the
    /// firing unless [`Timers::is_live`] still holds.
    pub fn arm<F>(&mut self, t: Timer, delay: Duration, fire: impl FnOnce(Timer, u64) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let generation = self.set(t.clone());
        let fired = fire(t, generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            fired.await;
        });
    }

    pub fn cancel(&mut self, t: &Timer) {
        self.generation.remove(t);
    }

    /// Whether the arming `generation` of `t` is still the live one.
    pub fn is_live(&self, t: &Timer, generation: u64) -> bool {
        self.generation.get(t) == Some(&generation)
    }
}
