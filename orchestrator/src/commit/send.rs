//! Messages to participants over HTTP (the contract in docs/commit-protocols.md): a request and
//! its response are two messages. Each send reports back to its transaction's loop as an event.
//!
//! - Prepare → `POST /2pc/prepare`; its answer is the vote. No answer (503 with `Retry-After`,
//!   a transport error) → sent again, until the vote timer of the core gives up; any other
//!   refusal is a NO.
//! - COMMIT → `POST /2pc/commit`, once per send; the core's resend timer sends it again.
//! - ABORT → `POST /2pc/abort`, a few tries; a participant that never hears it asks
//!   `GET /transactions/{id}/decision` and hears abort.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_protocols::two_phase::Msg;
use tandem_protocols::{Outcome, Vote};
use tokio::sync::mpsc;

use super::coordinator::Coordinator;
use super::drive::{Event, Txn};

/// Tries of one ABORT before leaving it to the participant's query.
const ABORT_TRIES: u32 = 5;

struct Call {
    http: reqwest::Client,
    /// Where the messages are counted ([`tandem_kit::stats`]): the coordinator's database.
    pool: sqlx::PgPool,
    /// The kinds of the request and of its response.
    kinds: (&'static str, &'static str),
    url: String,
    body: Value,
    timeout: Duration,
    p: u8,
    tx: mpsc::UnboundedSender<Event>,
}

/// One answer: status, `Retry-After` (s), JSON body; Err: transport error or timeout. The
/// request, and the response if one came, are counted as a message each.
async fn post(c: &Call) -> Result<(u16, Option<u64>, Value), String> {
    tandem_kit::stats::message_sent(&c.pool, c.kinds.0);
    let req = tandem_kit::telemetry::traced(c.http.post(&c.url))
        .json(&c.body)
        .timeout(c.timeout);
    let r = tandem_kit::hop::send(req)
        .await
        .map_err(|e| e.to_string())?;
    tandem_kit::stats::message_received(&c.pool, c.kinds.1);
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = r.json().await.unwrap_or(Value::Null);
    // An answer Postgres cannot store is not logged as it is (the message log is jsonb).
    let body = match crate::text::find_nul(&body, "") {
        Some(at) => json!({
            "detail": format!("the answer contains U+0000 at \"{}\"", at.replace('\0', "\\u0000"))
        }),
        None => body,
    };
    Ok((status, retry, body))
}

fn describe(r: &Result<(u16, Option<u64>, Value), String>) -> String {
    match r {
        Ok((s, _, b)) => format!(
            "HTTP {s}: {}",
            b.get("detail").and_then(Value::as_str).unwrap_or("")
        ),
        Err(e) => e.clone(),
    }
    .replace('\0', "\\u0000")
}

impl Call {
    async fn prepare(self) {
        let mut delay = Duration::from_millis(100);
        loop {
            let r = post(&self).await;
            let vote = match &r {
                Ok((200, _, b)) => match b.get("vote").and_then(Value::as_str) {
                    Some("yes") => Some(Vote::Yes),
                    Some(_) => Some(Vote::No),
                    None => None,
                },
                Ok((429 | 503, _, _)) | Err(_) => None,
                Ok((s, _, _)) if *s >= 500 => None,
                Ok(_) => Some(Vote::No), // refused (4xx): it cannot prepare
            };
            if let Some(vote) = vote {
                let detail = r.map(|x| x.2).unwrap_or(Value::Null);
                let _ = self.tx.send(Event::Vote {
                    p: self.p,
                    vote,
                    detail,
                });
                return;
            }
            let wait = match &r {
                Ok((_, Some(s), _)) => Duration::from_secs(*s).min(Duration::from_secs(2)),
                _ => delay,
            };
            // Sent again after this answer: not the failure-free path.
            tandem_kit::hop::disturbed();
            let _ = self.tx.send(Event::Failed {
                p: self.p,
                error: describe(&r),
                given_up: false,
            });
            if self.tx.is_closed() {
                return;
            }
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn commit(self) {
        let r = post(&self).await;
        let ev = match &r {
            Ok((200, _, _)) => Event::Acked {
                p: self.p,
                outcome: Outcome::Commit,
            },
            _ => Event::Failed {
                p: self.p,
                error: describe(&r),
                given_up: false,
            },
        };
        let _ = self.tx.send(ev);
    }

    async fn abort(self) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ABORT_TRIES {
            let r = post(&self).await;
            if let Ok((200, _, _)) = r {
                let _ = self.tx.send(Event::Acked {
                    p: self.p,
                    outcome: Outcome::Abort,
                });
                return;
            }
            let given_up = attempt == ABORT_TRIES || matches!(r, Ok((409, _, _)));
            let _ = self.tx.send(Event::Failed {
                p: self.p,
                error: describe(&r),
                given_up,
            });
            if given_up {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

impl Coordinator {
    /// Send `msg` to participant `p` (awaited if `inline`, else in the background).
    pub(super) async fn send(self: &Arc<Self>, t: &mut Txn, p: u8, msg: Msg, inline: bool) {
        let part = &t.parts[p as usize];
        let (path, kind) = match msg {
            Msg::Prepare => ("/2pc/prepare", "prepare"),
            Msg::Outcome(Outcome::Commit) => ("/2pc/commit", "commit"),
            Msg::Outcome(Outcome::Abort) => ("/2pc/abort", "abort"),
            _ => return,
        };
        let body = match msg {
            Msg::Prepare => json!({
                "txn_id": t.id, "step": p, "action": part.action,
                "body": t.bodies[p as usize], "coordinator_url": self.public_url(),
            }),
            _ => json!({ "txn_id": t.id, "step": p }),
        };
        let Some(base) = self.registry.services().get(&part.service) else {
            let error = format!("service {:?} is not configured", part.service);
            let given_up = kind == "abort";
            let _ = t.tx.send(Event::Failed { p, error, given_up });
            if kind == "prepare" {
                let _ = t.tx.send(Event::Vote {
                    p,
                    vote: Vote::No,
                    detail: Value::Null,
                });
            }
            return;
        };
        t.log(p, "out", kind, Value::Null);
        let kinds = match kind {
            "prepare" => ("prepare", "vote"),
            "commit" => ("commit", "ack"),
            _ => ("abort", "abort_ack"),
        };
        let call = Call {
            http: self.http.clone(),
            pool: self.pool().clone(),
            kinds,
            url: format!("{base}{path}"),
            body,
            timeout: t.call_timeout,
            p,
            tx: t.tx.clone(),
        };
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match kind {
            "prepare" => Box::pin(call.prepare()),
            "commit" => Box::pin(call.commit()),
            _ => Box::pin(call.abort()),
        };
        if inline {
            fut.await;
        } else {
            // The transaction's clock: the answers advance it for its next sends.
            tandem_kit::hop::spawn_send(tracing::Instrument::in_current_span(fut));
        }
    }
}
