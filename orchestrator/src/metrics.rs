//! The orchestrator's Prometheus metrics (served at `GET /metrics` by the kit; meanings in
//! docs/observability.md). Labels are bounded: definition and step names (data the operator
//! loads), phases, outcomes, lease kinds — never saga ids.

use std::time::Duration;

use crate::saga::{CallOutcome, Phase, SagaStatus};

/// Sagas created (a replayed request does not count), by `definition`.
pub const SAGAS_STARTED: &str = "tandem_sagas_started_total";
/// Sagas that reached `completed`, `compensated` or `failed` (`status`), by `definition`.
pub const SAGAS_ENDED: &str = "tandem_sagas_ended_total";
/// One saga step call (action or compensation attempt), by `definition`, `step`, `phase`,
/// `outcome`.
pub const STEP_DURATION: &str = "tandem_saga_step_duration_seconds";
/// Step calls that were a second or later attempt.
pub const STEP_RETRIES: &str = "tandem_saga_step_retries_total";
/// Rows (sagas, transactions) driven by this instance now, by `kind`.
pub const IN_FLIGHT: &str = "tandem_runs_in_flight";
/// Rows leased by the claim loop, by `kind`.
pub const LEASE_CLAIMS: &str = "tandem_lease_claims_total";
/// Of those, rows whose lease another instance held and let expire.
pub const LEASE_TAKEOVERS: &str = "tandem_lease_takeovers_total";
/// Sagas per group-commit statement.
pub const TRANSITION_BATCH: &str = "tandem_transition_batch_sagas";

pub fn saga_started(definition: &str) {
    metrics::counter!(SAGAS_STARTED, "definition" => definition.to_string()).increment(1);
}

/// The saga moved from `before` to `after`: counted if it just settled.
pub fn saga_moved(definition: &str, before: SagaStatus, after: SagaStatus) {
    if before != after && after.is_settled() {
        metrics::counter!(SAGAS_ENDED, "definition" => definition.to_string(), "status" => after.as_str())
            .increment(1);
    }
}

/// The outcome label of a call (the step result protocol's classes).
pub fn outcome_label(o: &CallOutcome) -> &'static str {
    match o {
        CallOutcome::Success { .. } => "success",
        CallOutcome::BusinessFailure { .. } => "business_failure",
        CallOutcome::InProgress => "in_progress",
        CallOutcome::Throttled { .. } => "throttled",
        CallOutcome::Error { .. } => "error",
        CallOutcome::Transport { .. } => "transport",
        CallOutcome::Timeout => "timeout",
    }
}

/// One step call finished after `elapsed`, its `attempt` (1 = first) and `outcome`.
pub fn step_called(
    definition: &str,
    step: &str,
    phase: Phase,
    attempt: u32,
    outcome: &'static str,
    elapsed: Duration,
) {
    let (d, s, p) = (definition.to_string(), step.to_string(), phase.as_str());
    if attempt > 1 {
        metrics::counter!(STEP_RETRIES, "definition" => d.clone(), "step" => s.clone(), "phase" => p)
            .increment(1);
    }
    metrics::histogram!(STEP_DURATION, "definition" => d, "step" => s, "phase" => p, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// The in-flight gauge of `kind`.
pub fn in_flight(kind: &'static str) -> metrics::Gauge {
    metrics::gauge!(IN_FLIGHT, "kind" => kind)
}

/// A claim pass of `kind` leased `claimed` rows, `taken_over` of them from another instance.
pub fn claimed(kind: &'static str, claimed: usize, taken_over: u64) {
    metrics::counter!(LEASE_CLAIMS, "kind" => kind).increment(claimed as u64);
    metrics::counter!(LEASE_TAKEOVERS, "kind" => kind).increment(taken_over);
}

pub fn transition_batch(sagas: usize) {
    metrics::histogram!(TRANSITION_BATCH).record(sagas as f64);
}
