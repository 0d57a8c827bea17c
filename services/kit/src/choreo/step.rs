//! A service's step of the choreographed checkout, declared as data ([`Step`]), and the worker
//! that runs it ([`Worker`]): the service's outbox relay plus its durable consumer.
//!
//! Every event goes through **the same barrier as saga calls** (`crate::barrier`), keyed
//! `(order, step, action|compensation)`: a redelivered event gets the stored outcome and no
//! second effect, a compensation that arrives before its action is recorded and refuses the
//! late action (hanging), and the event the effect causes is written to the outbox **inside the
//! barrier's transaction**, so effect, barrier row and event commit together or not at all.
//!
//! A refusal (409) is recorded by the barrier in a transaction of its own (the effect's was
//! rolled back); the `failed` event is then written, once per order (`outbox` is unique on
//! (order, event)), before the delivery is acknowledged, so a crash in between only means a
//! redelivery that finds the stored refusal and writes the event then.
//!
//! Fault injection (`crate::faults`, scoped by order) applies here as on HTTP calls: "fail N
//! times" naks the event N times (redelivered with backoff), and "apply the effect, then 503"
//! commits the effect but does not acknowledge it — the lost ack — so the redelivery finds the
//! barrier's stored outcome.

use std::time::Duration;

use async_nats::jetstream;
use axum::response::IntoResponse;
use serde_json::Value;

use super::consumer::{self, Disposition};
use super::event::{Event, Kind};
use super::outbox::{self, Relay};
use crate::barrier::{self, IdempotencyKey, Op, Outcome, Prior};
use crate::effect::{ActionEndpoint, Compensation};
use crate::faults::{Message, Sender};
use crate::problem::Problem;
use crate::service::App;
use crate::store::Conn;

/// Deliveries of an action's event before it counts as an exhausted retry (→ `failed`).
/// Compensations are retried without limit (they never fail for business reasons).
pub const ACTION_ATTEMPTS: i64 = 5;

/// One service's part of the checkout.
pub struct Step {
    /// The barrier's step name (the orchestrated checkout's, so both share a vocabulary).
    pub name: &'static str,
    /// The event that triggers the action, and the one its success emits.
    pub on: Kind,
    pub emits: Kind,
    pub action: &'static dyn ActionEndpoint,
    /// The action's request body, built from the triggering event's order.
    pub request: fn(&Event) -> Value,
    /// The event that triggers the compensation, and the one it emits.
    pub undo_on: Kind,
    pub undone: Kind,
    pub compensation: &'static Compensation,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A service's relay and consumer, running until dropped.
#[derive(Debug)]
pub struct Worker {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How often a relay polls its outbox when nobody wakes it.
pub const RELAY_POLL: Duration = Duration::from_millis(200);

impl Worker {
    /// Start `step` for `app`: its outbox relay, and its durable consumer (named after the
    /// service).
    ///
    /// The outbox relay needs Postgres: on SQLite this logs why and starts nothing (a service
    /// binary refuses `NATS_URL` on SQLite at start-up instead, see [`crate::service`]).
    pub fn start(app: App, step: &'static Step, js: jetstream::Context) -> Worker {
        let pool = match app.postgres_for("the choreographed checkout (its outbox relay)") {
            Ok(pg) => pg.pool.clone(),
            Err(why) => {
                tracing::error!(step = step.name, "{why}: not started");
                return Worker { tasks: Vec::new() };
            }
        };
        let relay = Relay::new(pool.clone(), js.clone(), RELAY_POLL);
        let durable = app.spec.name.to_string();
        let handler = Handler {
            app,
            pool,
            step,
            relay: relay.clone(),
        };
        let consume = consumer::run(js, durable, move |event, delivered| {
            let handler = handler.clone();
            async move { handler.handle(event, delivered).await }
        });
        Worker {
            tasks: vec![tokio::spawn(relay.run()), tokio::spawn(consume)],
        }
    }

    /// Started from tasks that run elsewhere (the entry point's own worker).
    pub fn from_tasks(tasks: Vec<tokio::task::JoinHandle<()>>) -> Worker {
        Worker { tasks }
    }
}

#[derive(Clone)]
struct Handler {
    app: App,
    /// The service's Postgres pool (the outbox is Postgres only).
    pool: sqlx::PgPool,
    step: &'static Step,
    relay: Relay,
}

/// Why an event was not handled this time.
enum Transient {
    /// Not handled (a fault, a database error): redeliver.
    NotDone(String),
    /// Handled and committed, but the ack is lost (an injected `effect_then_503`).
    AckLost,
}

impl Handler {
    async fn handle(&self, event: Event, delivered: i64) -> Disposition {
        if event.event == Kind::Forgotten {
            return match super::forget_order(&self.pool, &event.order_id, true).await {
                Ok(_) => Disposition::Ack,
                Err(e) => {
                    tracing::warn!(order = %event.order_id, error = %e, "forget not done; redelivery");
                    Disposition::Retry(consumer::backoff(delivered))
                }
            };
        }
        let result = if event.event == self.step.on {
            self.act(&event).await
        } else if event.event == self.step.undo_on {
            self.undo(&event).await
        } else {
            return Disposition::Ack;
        };
        match result {
            Ok(()) => {
                self.relay.wake();
                Disposition::Ack
            }
            Err(Transient::AckLost) => Disposition::Retry(consumer::backoff(1)),
            Err(Transient::NotDone(why))
                if event.event == self.step.on && delivered >= ACTION_ATTEMPTS =>
            {
                self.fail(&event, &format!("exhausted: {why}")).await
            }
            Err(Transient::NotDone(why)) => {
                tracing::info!(order = %event.order_id, step = self.step.name, %why, delivered, "event not handled; redelivery");
                Disposition::Retry(consumer::backoff(delivered))
            }
        }
    }

    /// Emit `failed` for this step (once per order) and acknowledge; retry if it cannot be
    /// written.
    async fn fail(&self, event: &Event, reason: &str) -> Disposition {
        let mut failed = event.next(Kind::Failed);
        failed.step = Some(self.step.name.to_string());
        failed.reason = Some(reason.to_string());
        match emit_alone(&self.pool, &failed).await {
            Ok(()) => {
                self.relay.wake();
                Disposition::Ack
            }
            Err(e) => Disposition::Retry({
                tracing::warn!(order = %event.order_id, error = %e, "failed event not written; redelivery");
                consumer::backoff(ACTION_ATTEMPTS)
            }),
        }
    }

    fn key(&self, event: &Event, op: Op) -> IdempotencyKey {
        IdempotencyKey {
            saga_id: event.order_id.clone(),
            step: self.step.name.to_string(),
            op,
        }
    }

    /// The action through the barrier, its `emits` event written in the same transaction.
    async fn act(&self, event: &Event) -> Result<(), Transient> {
        let key = self.key(event, Op::Action);
        let accepted = match self.step.action.accept((self.step.request)(event)) {
            Ok(accepted) => accepted,
            Err(problem) => return self.refused(event, &problem.to_json()).await,
        };
        let mut done = event.next(self.step.emits);
        done.step = Some(self.step.name.to_string());
        let barrier = self.app.barrier();
        let outcome = faulted(&self.app, &key, &event.order_id, async {
            barrier
                .action(&key, move |mut conn, origin| {
                    Box::pin(async move {
                        let output = accepted.run(conn.reborrow(), origin).await?;
                        done.output = Some(output.clone());
                        outbox::emit(outbox_conn(&mut conn)?, &done).await?;
                        Ok(output)
                    })
                })
                .await
        })
        .await?;
        if outcome.is_success() {
            Ok(())
        } else {
            self.refused(event, &outcome.body).await
        }
    }

    /// A refused action: `failed` (unless it is a hanging action, whose compensation already
    /// ran: then there is nothing more to say).
    async fn refused(&self, event: &Event, problem: &Value) -> Result<(), Transient> {
        let kind = problem
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        if kind.ends_with(":hanging") {
            tracing::info!(order = %event.order_id, step = self.step.name, "late action refused (hanging): no effect");
            return Ok(());
        }
        let mut failed = event.next(Kind::Failed);
        failed.step = Some(self.step.name.to_string());
        failed.reason = Some(kind.to_string());
        failed.output = Some(problem.clone());
        emit_alone(&self.pool, &failed)
            .await
            .map_err(Transient::NotDone)
    }

    /// The compensation through the barrier, its `undone` event written in the same transaction
    /// (whether or not there was anything to undo).
    async fn undo(&self, event: &Event) -> Result<(), Transient> {
        let key = self.key(event, Op::Compensation);
        let compensation = self.step.compensation;
        let mut undone = event.next(self.step.undone);
        undone.step = Some(self.step.name.to_string());
        let barrier = self.app.barrier();
        faulted(&self.app, &key, &event.order_id, async {
            barrier
                .compensation(&key, move |mut conn, origin, prior| {
                    Box::pin(async move {
                        let did = match &prior {
                            Prior::Applied(_) => {
                                (compensation.effect)(conn.reborrow(), origin).await?
                            }
                            _ => None,
                        };
                        let mut body = did
                            .clone()
                            .unwrap_or_else(|| barrier::nothing_to_undo(&prior));
                        body[compensation.undone] = Value::Bool(did.is_some());
                        undone.output = Some(body.clone());
                        outbox::emit(outbox_conn(&mut conn)?, &undone).await?;
                        Ok(body)
                    })
                })
                .await
        })
        .await
        .map(drop)
    }
}

/// `run` (a barrier call) under the service's injected faults for `key`: a fault that answers
/// instead of the effect is a [`Transient::NotDone`]; a lost response after the committed
/// effect is [`Transient::AckLost`].
async fn faulted(
    app: &App,
    key: &IdempotencyKey,
    order_id: &str,
    run: impl Future<Output = Result<Outcome, Problem>>,
) -> Result<Outcome, Transient> {
    // An event has no HTTP sender: only faults without a `from` apply to it.
    let nobody = Sender(None);
    let injection = app
        .faults
        .intercept(Message::saga(key, Some(order_id), &nobody))
        .await
        .map_err(|r| Transient::NotDone(format!("injected fault ({})", r.status())))?;
    let outcome = run
        .await
        .map_err(|p| Transient::NotDone(format!("{}: {}", p.slug, p.title)))?;
    let answered = injection.finish(outcome.clone().into_response());
    if answered.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        return Err(Transient::AckLost);
    }
    Ok(outcome)
}

/// Write `event` to the outbox in a transaction of its own (a no-op if it is there already).
async fn emit_alone(pool: &sqlx::PgPool, event: &Event) -> Result<(), String> {
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    outbox::emit(&mut conn, event)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The Postgres connection under an effect's, for the outbox (a worker starts only on Postgres).
#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn outbox_conn<'a>(conn: &'a mut Conn<'_>) -> Result<&'a mut sqlx::PgConnection, Problem> {
    conn.postgres()
        .ok_or_else(|| Problem::internal("the outbox needs Postgres"))
}
