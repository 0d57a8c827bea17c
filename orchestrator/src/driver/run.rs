//! The per-saga execution loop: perform the (already persisted) command, feed the outcome back
//! to the engine, persist the next transition (write-ahead, fenced), repeat.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use super::Driver;
use crate::saga::{Command, Definition, Input, Phase, SagaState, Transition, engine};
use crate::store::{NextRun, SagaRow};
use crate::writer::TransitionWrite;

/// A saga this instance holds a lease on.
pub(super) struct Active {
    pub id: Uuid,
    id_str: String,
    def: Arc<Definition>,
    input: Value,
    state: SagaState,
    pub epoch: i64,
    /// The trace of the request that started (or retried) the saga here, continued by every
    /// step call; None for a saga claimed from the database (its steps start a new trace).
    pub traceparent: Option<String>,
}

impl Active {
    /// The saga as leased in `row` (its epoch fences every write), running on `def`.
    pub fn new(row: SagaRow, def: Arc<Definition>) -> Self {
        Active {
            id: row.id,
            id_str: row.id.to_string(),
            def,
            input: row.run.input,
            state: row.state,
            epoch: row.lease.epoch,
            traceparent: None,
        }
    }

    fn transition(&self, input: Input) -> Transition {
        engine::transition(
            &self.def,
            &self.id_str,
            &self.input,
            &self.state,
            input,
            Utc::now(),
            rand::random(),
        )
    }
}

impl Driver {
    /// Drive a saga in the background from `command` (already persisted), holding `permit`.
    pub(super) fn spawn_run(
        self: &Arc<Self>,
        a: Active,
        command: Command,
        permit: OwnedSemaphorePermit,
    ) {
        let me = self.clone();
        // The saga's run shares the clock of whoever started it (its `POST /sagas`).
        tandem_kit::hop::spawn(async move {
            let id = a.id;
            me.run(a, command).await;
            me.work.finish(id, permit);
        });
    }

    /// Drive a saga obtained by a claim or a reclaim, starting with `input`.
    pub(super) fn spawn_leased(self: &Arc<Self>, row: SagaRow, input: Input) {
        let Some(permit) = self.work.activate(row.id, row.lease.epoch) else {
            return;
        };
        let me = self.clone();
        tandem_kit::hop::spawn(async move {
            let id = row.id;
            match me.registry.get(&row.run.definition, &row.run.version).await {
                Ok(Some(def)) => {
                    let mut a = Active::new(row, def);
                    let t = a.transition(input);
                    if let Some(command) = me.apply(&mut a, t).await {
                        me.run(a, command).await;
                    }
                }
                Ok(None) => tracing::error!(saga = %id, "the saga's definition is not stored"),
                Err(e) => {
                    tracing::error!(saga = %id, error = %e, "cannot load the saga's definition")
                }
            }
            me.work.finish(id, permit);
        });
    }

    /// Apply `input` to a saga leased here and persist the transition; the command to perform
    /// next, if any.
    pub(super) async fn step(&self, a: &mut Active, input: Input) -> Option<Command> {
        let t = a.transition(input);
        self.apply(a, t).await
    }

    /// The loop: perform the (already persisted) command, feed back, persist, repeat.
    async fn run(&self, mut a: Active, mut command: Command) {
        loop {
            let input = match command {
                Command::WaitUntil(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::until_shutdown(&mut shutdown) => {
                            self.work.releaser.release(a.id, a.epoch).await;
                            return;
                        }
                    }
                    Input::Wake
                }
                Command::Stop => {
                    self.notify_finished(a.id);
                    return;
                }
                call => match self.perform(&a, call).await {
                    Some(input) => input,
                    None => return,
                },
            };
            match self.step(&mut a, input).await {
                Some(c) => command = c,
                None => return,
            }
        }
    }

    /// Perform a call (already persisted): its outcome is the engine's next input. None at a
    /// graceful shutdown: the lease is handed back, and whoever claims the saga re-sends this
    /// call with the same idempotency key.
    async fn perform(&self, a: &Active, call: Command) -> Option<Input> {
        let Command::Call {
            step,
            phase,
            attempt,
            request,
        } = call
        else {
            return None;
        };
        if *self.shutdown.borrow() {
            self.work.releaser.release(a.id, a.epoch).await;
            return None;
        }
        tandem_kit::crash::point(match phase {
            Phase::Action => "orchestrator.before_call",
            Phase::Compensation => "orchestrator.before_compensation_call",
        });
        let outcome = self.traced_call(a, step, phase, attempt, &request).await;
        tandem_kit::crash::point("orchestrator.after_call_before_persist");
        Some(Input::Result {
            step,
            phase,
            attempt,
            outcome,
        })
    }

    /// [`Driver::call`] in a span of its own (saga id, step, phase, attempt, outcome; a child of
    /// the saga's trace), timed into the step metrics.
    async fn traced_call(
        &self,
        a: &Active,
        step: usize,
        phase: Phase,
        attempt: u32,
        request: &crate::saga::Request,
    ) -> crate::saga::CallOutcome {
        use tracing::Instrument;
        let name = a.def.steps.get(step).map_or("?", |s| s.name.as_str());
        let span = tracing::info_span!(
            "saga step",
            saga_id = %a.id,
            definition = %a.def.name,
            step = name,
            phase = phase.as_str(),
            attempt,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        tandem_kit::telemetry::with_parent(&span, a.traceparent.as_deref());
        let started = std::time::Instant::now();
        let outcome = self.call(request).instrument(span.clone()).await;
        let label = crate::metrics::outcome_label(&outcome);
        span.record("outcome", label);
        span.in_scope(|| tracing::debug!(?outcome, "call finished"));
        crate::metrics::step_called(&a.def.name, name, phase, attempt, label, started.elapsed());
        outcome
    }

    /// Persist a transition (write-ahead) and return the command to perform, or None if the
    /// saga must be dropped (fenced, or handed back to be claimed later).
    async fn apply(&self, a: &mut Active, t: Transition) -> Option<Command> {
        let (next, keep) = match &t.command {
            Command::Call { .. } => (NextRun::Now, true),
            Command::WaitUntil(at) => {
                let wait = (*at - Utc::now()).to_std().unwrap_or_default();
                (NextRun::At(*at), wait < self.work.leases.ttl() / 2)
            }
            Command::Stop => (NextRun::Never, false),
        };
        let unchanged = t.events.is_empty() && t.state == a.state;
        if !(unchanged && keep) {
            let w = TransitionWrite {
                state: &t.state,
                events: &t.events,
                next,
                keep_lease: keep,
            };
            if !self.persist(a, w).await {
                tracing::warn!(saga = %a.id, epoch = a.epoch, "lease lost (fenced): dropping the saga");
                return None;
            }
        }
        crate::metrics::saga_moved(&a.def.name, a.state.status, t.state.status);
        a.state = t.state;
        match t.command {
            Command::WaitUntil(at) if !keep => {
                self.work.signals.note_due(at);
                None
            }
            Command::Stop => {
                self.notify_finished(a.id);
                None
            }
            c => Some(c),
        }
    }

    /// Write until it lands (true) or is fenced (false): never act before the write.
    async fn persist(&self, a: &Active, w: TransitionWrite<'_>) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.writer.persist(a.id, a.epoch, w).await {
                Ok(applied) => {
                    if applied {
                        tandem_kit::crash::point("orchestrator.after_persist");
                    }
                    return applied;
                }
                Err(e) => {
                    tracing::warn!(saga = %a.id, error = %e, retry_in = ?delay, "persisting a transition failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
