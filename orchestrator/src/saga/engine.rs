//! The transition function. Pure: the same (definition, state, input, now, rand) always yields
//! the same [`Transition`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::Definition;
use super::state::{Phase, SagaState};

/// What the driver observed of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// 2xx; `body` is the parsed JSON answer (`Value::Null` if empty / not JSON).
    Success { status: u16, body: Value },
    /// 409: business failure (for an action: no retry, compensate).
    BusinessFailure { status: u16, body: Value },
    /// 425: in progress; resend with the same key at the poll interval until the deadline.
    InProgress,
    /// 429 / 503, with the parsed `Retry-After` if any.
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other status.
    Error { status: u16, body: Value },
    /// Connection refused / reset, DNS, malformed response …
    Transport { message: String },
    /// No answer within the step's `timeout_ms`.
    Timeout,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A freshly created saga.
    Start,
    /// The driver (re)gained the saga: after a claim, a restart, or when `next_attempt_at` came.
    /// If a call is in flight it is re-sent (same key, attempt + 1); otherwise whatever is due.
    Wake,
    /// The outcome of the call identified by `(step, phase, attempt)`. An outcome that does not
    /// match `state.in_flight` is stale and ignored (no-op transition).
    Result {
        step: usize,
        phase: Phase,
        attempt: u32,
        outcome: CallOutcome,
    },
    /// `POST /sagas/{id}/retry` on a `failed` saga: reset the failed compensation's budget and
    /// resume compensating. Any other status: no-op.
    ManualRetry,
}

/// A rendered request the driver sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub service: String,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// `{saga_id}:{step_name}:{action|compensation}`
    pub idempotency_key: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Perform this call, then feed its outcome back as `Input::Result`.
    Call {
        step: usize,
        phase: Phase,
        attempt: u32,
        request: Request,
    },
    /// Nothing to do until `at` (then feed `Input::Wake`).
    WaitUntil(DateTime<Utc>),
    /// Terminal (`completed` / `compensated`) or parked (`failed`): nothing more to do.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SagaStarted,
    StepStarted,
    StepSucceeded,
    StepInProgress,
    StepRetryScheduled,
    StepFailed,
    CompensationStarted,
    CompensationSucceeded,
    CompensationRetryScheduled,
    CompensationFailed,
    SagaCompensating,
    SagaCompleted,
    SagaCompensated,
    SagaFailed,
    SagaRetried,
}

/// One entry of the saga's event log (the store adds sequence number and timestamp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub kind: EventKind,
    pub step: Option<String>,
    /// Attempt number, status code, error message, scheduled time … as fits the kind.
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: SagaState,
    pub events: Vec<EventRecord>,
    pub command: Command,
}

/// Initial state for a new saga of `def` (all steps pending, status running).
pub fn initial_state(_def: &Definition) -> SagaState {
    todo!()
}

/// Template context for rendering bodies: `{"saga": {"id"}, "input": input, "steps": {name: output}}`.
pub fn context(_saga_id: &str, _input: &Value, _state: &SagaState) -> Value {
    todo!()
}

/// The transition function. `rand` is a uniformly random u64 supplied by the driver (tests pass
/// fixed values); jitter is derived from it. `saga_id` and `input` render the request bodies.
pub fn transition(
    _def: &Definition,
    _saga_id: &str,
    _input: &Value,
    _state: &SagaState,
    _input_event: Input,
    _now: DateTime<Utc>,
    _rand: u64,
) -> Transition {
    todo!()
}
