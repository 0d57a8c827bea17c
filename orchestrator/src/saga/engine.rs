//! The transition function. Pure: the same (definition, state, input, now, rand) always yields
//! the same [`Transition`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use serde_json::json;

use super::definition::{Backoff, Definition, render};
use super::state::{Phase, SagaState, SagaStatus, StepState, StepStatus};

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
    /// An operator's action (API, CLI, dashboard), applied by whoever holds the lease — the
    /// instance that received it takes the lease first. `by` names who asked; it goes into the
    /// event the action logs. An action [`admit`] does not answer [`Admission::Apply`] for is a
    /// no-op transition.
    Operator { action: Action, by: String },
}

/// What an operator can do to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A `running` saga: stop going forward and compensate every step whose action was sent —
    /// the call in flight included (it may have happened) — in reverse order. Its outcome, if it
    /// ever arrives, is stale and ignored.
    Cancel,
    /// A step (action or compensation) waiting for its backoff or its next poll: send it now.
    /// The wait is cut short; the failure budget is unchanged.
    RetryNow,
    /// A `failed` saga: reset the failed compensation's budget and resume compensating.
    Resume,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Cancel, Action::RetryNow, Action::Resume];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::RetryNow => "retry_now",
            Action::Resume => "resume",
        }
    }
}

/// Whether an operator's action applies to a saga in `state` at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The action changes the saga (and logs an event).
    Apply,
    /// Already done: a cancel of a saga that is compensating (idempotent; no event).
    AlreadyDone,
    /// Not possible in this state (the API answers 409).
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Completed or compensated (or, for cancel and retry-now, failed: parked).
    Settled(SagaStatus),
    /// Resume of a saga that is not failed.
    NotFailed(SagaStatus),
    /// Retry-now while nothing waits: a call is in flight or due now.
    NotWaiting,
}

/// Whether `action` applies to `state` at `now` (pure; [`transition`] applies exactly the
/// actions admitted here).
pub fn admit(state: &SagaState, action: Action, now: DateTime<Utc>) -> Admission {
    let status = state.status;
    match action {
        Action::Resume if status == SagaStatus::Failed => Admission::Apply,
        Action::Resume => Admission::Refused(Refusal::NotFailed(status)),
        _ if status.is_settled() => Admission::Refused(Refusal::Settled(status)),
        Action::Cancel if status == SagaStatus::Running => Admission::Apply,
        Action::Cancel => Admission::AlreadyDone,
        Action::RetryNow => match (state.in_flight, state.next_attempt_at) {
            (None, Some(at)) if now < at => Admission::Apply,
            _ => Admission::Refused(Refusal::NotWaiting),
        },
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    CompensationInProgress,
    CompensationRetryScheduled,
    CompensationFailed,
    SagaCompensating,
    SagaCompleted,
    SagaCompensated,
    SagaFailed,
    /// A `failed` saga resumed by an operator (`by`).
    SagaRetried,
    /// A running saga cancelled by an operator (`by`): compensating from now on.
    SagaCancelled,
    /// A waiting step sent now at an operator's request (`by`), before its retry time.
    StepRetriedNow,
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
pub fn initial_state(def: &Definition) -> SagaState {
    SagaState {
        status: SagaStatus::Running,
        steps: def
            .steps
            .iter()
            .map(|s| StepState {
                name: s.name.clone(),
                status: StepStatus::Pending,
                attempts: 0,
                compensation_attempts: 0,
                output: None,
                last_error: None,
                first_sent_at: None,
                failures: 0,
                compensation_failures: 0,
                polling: false,
            })
            .collect(),
        in_flight: None,
        next_attempt_at: None,
        reason: None,
    }
}

/// Template context for rendering bodies: `{"saga": {"id"}, "input": input, "steps": {name: output}}`.
pub fn context(saga_id: &str, input: &Value, state: &SagaState) -> Value {
    let steps: serde_json::Map<String, Value> = state
        .steps
        .iter()
        .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
        .collect();
    json!({ "saga": { "id": saga_id }, "input": input, "steps": steps })
}

/// The delay before the retry that follows the `failures`-th failed attempt (`failures` ≥ 1):
/// `min(initial * multiplier^(failures-1), max)` scaled by a jitter factor in
/// `[1 - jitter, 1 + jitter]` drawn from `rand`.
pub fn backoff_delay(backoff: &Backoff, failures: u32, rand: u64) -> Duration {
    let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
    let base =
        (backoff.initial_ms as f64 * backoff.multiplier.powi(exponent)).min(backoff.max_ms as f64);
    // 53 random bits → uniform in [0, 1).
    let unit = (rand >> 11) as f64 / (1u64 << 53) as f64;
    let jitter = backoff.jitter.clamp(0.0, 1.0);
    let factor = 1.0 - jitter + 2.0 * jitter * unit;
    Duration::from_millis((base * factor).round().max(0.0) as u64)
}

/// The index of the next step to compensate: the last step (in definition order) whose action
/// was sent, that has a compensation, and is not compensated yet.
pub fn next_compensation(def: &Definition, state: &SagaState) -> Option<usize> {
    (0..state.steps.len()).rev().find(|&i| {
        let s = &state.steps[i];
        s.attempts > 0 && def.steps[i].compensation.is_some() && s.status != StepStatus::Compensated
    })
}

/// The command the state implies by itself (used for no-op transitions).
pub fn implied_command(
    def: &Definition,
    saga_id: &str,
    input: &Value,
    state: &SagaState,
    now: DateTime<Utc>,
) -> Command {
    if state.status.is_terminal() || state.status == SagaStatus::Failed {
        return Command::Stop;
    }
    if let Some((step, phase, attempt)) = state.in_flight
        && let Ok(request) = build_request(def, saga_id, input, state, step, phase)
    {
        return Command::Call {
            step,
            phase,
            attempt,
            request,
        };
    }
    Command::WaitUntil(state.next_attempt_at.unwrap_or(now))
}

fn build_request(
    def: &Definition,
    saga_id: &str,
    input: &Value,
    state: &SagaState,
    step: usize,
    phase: Phase,
) -> Result<Request, String> {
    let sd = &def.steps[step];
    let spec = match phase {
        Phase::Action => &sd.action,
        Phase::Compensation => sd
            .compensation
            .as_ref()
            .ok_or_else(|| format!("step `{}` has no compensation", sd.name))?,
    };
    let body = render(&spec.body, &context(saga_id, input, state))?;
    Ok(Request {
        service: spec.service.clone(),
        method: spec.method.clone(),
        path: spec.path.clone(),
        body,
        idempotency_key: format!("{saga_id}:{}:{}", sd.name, phase.as_str()),
        timeout: Duration::from_millis(def.policy(step).timeout_ms),
    })
}

fn add_ms(now: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    let delta = chrono::TimeDelta::try_milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(chrono::TimeDelta::MAX);
    now.checked_add_signed(delta)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A short human-readable description of a failed outcome.
fn describe(outcome: &CallOutcome) -> String {
    fn body_text(body: &Value) -> String {
        // problem+json: prefer `detail`, then `title`.
        match body {
            Value::Null => String::new(),
            Value::Object(m) => m
                .get("detail")
                .or_else(|| m.get("title"))
                .and_then(Value::as_str)
                .map_or_else(|| body.to_string(), str::to_string),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let with_body = |status: u16, body: &Value| {
        let text = body_text(body);
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        }
    };
    match outcome {
        CallOutcome::Success { status, .. } => format!("HTTP {status}"),
        CallOutcome::BusinessFailure { status, body } | CallOutcome::Error { status, body } => {
            with_body(*status, body)
        }
        CallOutcome::InProgress => "HTTP 425: in progress".to_string(),
        CallOutcome::Throttled {
            status,
            retry_after: Some(d),
        } => {
            format!(
                "HTTP {status}: throttled, Retry-After {} ms",
                duration_ms(*d)
            )
        }
        CallOutcome::Throttled {
            status,
            retry_after: None,
        } => format!("HTTP {status}: throttled"),
        CallOutcome::Transport { message } => format!("transport error: {message}"),
        CallOutcome::Timeout => "timed out".to_string(),
    }
}

fn status_of(outcome: &CallOutcome) -> Option<u16> {
    match outcome {
        CallOutcome::Success { status, .. }
        | CallOutcome::BusinessFailure { status, .. }
        | CallOutcome::Throttled { status, .. }
        | CallOutcome::Error { status, .. } => Some(*status),
        CallOutcome::InProgress => Some(425),
        CallOutcome::Transport { .. } | CallOutcome::Timeout => None,
    }
}

/// One transition being computed.
struct Run<'a> {
    def: &'a Definition,
    saga_id: &'a str,
    input: &'a Value,
    now: DateTime<Utc>,
    rand: u64,
    state: SagaState,
    events: Vec<EventRecord>,
}

impl Run<'_> {
    fn event(&mut self, kind: EventKind, step: Option<usize>, detail: Value) {
        let step = step.map(|i| self.state.steps[i].name.clone());
        self.events.push(EventRecord { kind, step, detail });
    }

    fn name(&self, step: usize) -> &str {
        &self.state.steps[step].name
    }

    fn finish(self, command: Command) -> Transition {
        Transition {
            state: self.state,
            events: self.events,
            command,
        }
    }

    /// Whatever is due now: the next action while running, the next compensation while
    /// compensating.
    fn advance(&mut self) -> Command {
        self.state.in_flight = None;
        self.state.next_attempt_at = None;
        match self.state.status {
            SagaStatus::Running => match self
                .state
                .steps
                .iter()
                .position(|s| s.status != StepStatus::Succeeded)
            {
                None => {
                    self.state.status = SagaStatus::Completed;
                    self.event(EventKind::SagaCompleted, None, json!({}));
                    Command::Stop
                }
                Some(i) => self.send(i, Phase::Action, None),
            },
            SagaStatus::Compensating => match next_compensation(self.def, &self.state) {
                None => {
                    self.state.status = SagaStatus::Compensated;
                    self.event(
                        EventKind::SagaCompensated,
                        None,
                        json!({ "reason": self.state.reason }),
                    );
                    Command::Stop
                }
                Some(i) => self.send(i, Phase::Compensation, None),
            },
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => Command::Stop,
        }
    }

    /// Decide the next send of `(step, phase)`: record it as in flight (write-ahead) and return
    /// the call. `resent`: why an in-flight call is sent again (crash recovery).
    fn send(&mut self, step: usize, phase: Phase, resent: Option<String>) -> Command {
        let request =
            match build_request(self.def, self.saga_id, self.input, &self.state, step, phase) {
                Ok(r) => r,
                Err(msg) => {
                    let msg = format!("cannot render the request body: {msg}");
                    return match phase {
                        Phase::Action => {
                            let sent = self.state.steps[step].attempts > 0;
                            self.fail_action(step, msg, json!({ "sent": sent }))
                        }
                        Phase::Compensation => self.failed_attempt(step, phase, msg, None, None),
                    };
                }
            };
        let now = self.now;
        let s = &mut self.state.steps[step];
        let attempt = match phase {
            Phase::Action => {
                s.attempts += 1;
                s.status = StepStatus::Running;
                s.attempts
            }
            Phase::Compensation => {
                if s.status != StepStatus::Compensating {
                    // Entering the compensation phase: its own 425 deadline.
                    s.first_sent_at = None;
                    s.status = StepStatus::Compensating;
                }
                s.compensation_attempts += 1;
                s.compensation_attempts
            }
        };
        s.first_sent_at.get_or_insert(now);
        let polled = std::mem::take(&mut s.polling);
        self.state.in_flight = Some((step, phase, attempt));
        self.state.next_attempt_at = None;
        let kind = phase.pick(EventKind::StepStarted, EventKind::CompensationStarted);
        if let Some(why) = resent {
            self.event(
                kind,
                Some(step),
                json!({ "attempt": attempt, "resent": true, "reason": why }),
            );
        } else if !polled {
            self.event(kind, Some(step), json!({ "attempt": attempt }));
        }
        Command::Call {
            step,
            phase,
            attempt,
            request,
        }
    }

    /// The action of `step` failed for good: mark it, then compensate.
    fn fail_action(&mut self, step: usize, error: String, extra: Value) -> Command {
        let s = &mut self.state.steps[step];
        s.status = StepStatus::Failed;
        s.polling = false;
        s.last_error = Some(error.clone());
        let mut detail = json!({ "attempt": s.attempts, "failures": s.failures, "error": error });
        if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), extra) {
            d.extend(extra);
        }
        self.event(EventKind::StepFailed, Some(step), detail);
        let reason = format!("step `{}` failed: {error}", self.name(step));
        self.begin_compensation(Some(step), reason)
    }

    fn begin_compensation(&mut self, step: Option<usize>, reason: String) -> Command {
        self.state.status = SagaStatus::Compensating;
        self.state.reason = Some(reason.clone());
        self.event(
            EventKind::SagaCompensating,
            step,
            json!({ "reason": reason }),
        );
        for s in &mut self.state.steps {
            if s.status == StepStatus::Pending && s.attempts == 0 {
                s.status = StepStatus::Skipped;
            }
        }
        self.advance()
    }

    /// One failed attempt of `(step, phase)`: retry after a delay, or give up when the budget
    /// is spent (action: compensate; compensation: park the saga as failed).
    fn failed_attempt(
        &mut self,
        step: usize,
        phase: Phase,
        error: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> Command {
        let policy = self.def.policy(step);
        let s = &mut self.state.steps[step];
        s.polling = false;
        s.last_error = Some(error.clone());
        let (failures, max, attempt) = match phase {
            Phase::Action => {
                s.failures += 1;
                (s.failures, policy.max_attempts, s.attempts)
            }
            Phase::Compensation => {
                s.compensation_failures += 1;
                (
                    s.compensation_failures,
                    policy.compensation_max_attempts,
                    s.compensation_attempts,
                )
            }
        };
        if failures >= max {
            let error = format!("{error} (gave up after {failures} failed attempts)");
            return match phase {
                Phase::Action => self.fail_action(step, error, json!({ "status": status })),
                Phase::Compensation => self.park(step, error, status),
            };
        }
        let delay_ms = match retry_after {
            Some(d) => duration_ms(d).min(policy.max_retry_after_ms),
            None => duration_ms(backoff_delay(&policy.backoff, failures, self.rand)),
        };
        let at = add_ms(self.now, delay_ms);
        let kind = phase.pick(
            EventKind::StepRetryScheduled,
            EventKind::CompensationRetryScheduled,
        );
        let detail = json!({
            "attempt": attempt, "failures": failures, "max_attempts": max, "status": status,
            "error": error, "delay_ms": delay_ms, "retry_at": at,
        });
        self.send_again_at(step, at, kind, detail)
    }

    /// Nothing in flight; send the step's call again at `at` (a retry, a poll), recording
    /// `kind` with `detail`.
    fn send_again_at(
        &mut self,
        step: usize,
        at: DateTime<Utc>,
        kind: EventKind,
        detail: Value,
    ) -> Command {
        self.state.in_flight = None;
        self.state.next_attempt_at = Some(at);
        self.event(kind, Some(step), detail);
        Command::WaitUntil(at)
    }

    /// A compensation exhausted its budget: park the saga (`failed`) until a manual retry. The
    /// earlier steps' compensations stay pending: they never run out of order.
    fn park(&mut self, step: usize, error: String, status: Option<u16>) -> Command {
        let s = &self.state.steps[step];
        let detail = json!({
            "attempt": s.compensation_attempts, "failures": s.compensation_failures,
            "status": status, "error": error,
        });
        self.event(EventKind::CompensationFailed, Some(step), detail);
        let reason = format!(
            "compensation of step `{}` failed: {error}; {}",
            self.name(step),
            self.state
                .reason
                .as_deref()
                .map_or_else(String::new, |r| format!("compensating because {r}"))
        );
        self.state.status = SagaStatus::Failed;
        self.state.reason = Some(reason.clone());
        self.state.in_flight = None;
        self.state.next_attempt_at = None;
        self.event(
            EventKind::SagaFailed,
            Some(step),
            json!({ "reason": reason }),
        );
        Command::Stop
    }

    /// A 425: poll again after the poll interval, unless the deadline has passed.
    fn in_progress(&mut self, step: usize, phase: Phase) -> Command {
        let policy = self.def.policy(step);
        let s = &self.state.steps[step];
        let first = s.first_sent_at.unwrap_or(self.now);
        let deadline = add_ms(first, policy.deadline_ms);
        let attempt = phase.pick(s.attempts, s.compensation_attempts);
        if self.now >= deadline {
            let error = format!(
                "still in progress (425) {} ms after the first send, past the {} ms deadline",
                (self.now - first).num_milliseconds(),
                policy.deadline_ms
            );
            return match phase {
                Phase::Action => {
                    self.state.steps[step].failures += 1;
                    self.fail_action(step, error, json!({ "status": 425 }))
                }
                Phase::Compensation => self.failed_attempt(step, phase, error, Some(425), None),
            };
        }
        let at = add_ms(self.now, policy.poll_interval_ms);
        let s = &mut self.state.steps[step];
        s.polling = true;
        s.last_error = Some("in progress (425)".to_string());
        let kind = phase.pick(EventKind::StepInProgress, EventKind::CompensationInProgress);
        let detail = json!({ "attempt": attempt, "next_poll_at": at, "deadline": deadline });
        self.send_again_at(step, at, kind, detail)
    }

    /// A 2xx: the action's output is kept; the step is succeeded (or compensated).
    fn succeeded(&mut self, step: usize, phase: Phase, status: u16, body: Value) -> Command {
        let s = &mut self.state.steps[step];
        s.last_error = None;
        s.polling = false;
        let (kind, attempt) = match phase {
            Phase::Action => {
                s.status = StepStatus::Succeeded;
                s.output = Some(body);
                (EventKind::StepSucceeded, s.attempts)
            }
            Phase::Compensation => {
                s.status = StepStatus::Compensated;
                (EventKind::CompensationSucceeded, s.compensation_attempts)
            }
        };
        self.event(
            kind,
            Some(step),
            json!({ "attempt": attempt, "status": status }),
        );
        self.advance()
    }

    fn on_result(&mut self, step: usize, phase: Phase, outcome: CallOutcome) -> Command {
        self.state.in_flight = None;
        let status = status_of(&outcome);
        let error = describe(&outcome);
        match (phase, outcome) {
            (phase, CallOutcome::Success { status, body }) => {
                self.succeeded(step, phase, status, body)
            }
            (Phase::Action, CallOutcome::BusinessFailure { status, body }) => {
                self.fail_action(step, error, json!({ "status": status, "body": body }))
            }
            (Phase::Compensation, CallOutcome::BusinessFailure { .. }) => {
                let error = format!(
                    "{error} (a compensation must not fail for business reasons; retrying)"
                );
                self.failed_attempt(step, phase, error, status, None)
            }
            (_, CallOutcome::InProgress) => self.in_progress(step, phase),
            (
                _,
                CallOutcome::Throttled {
                    retry_after: Some(d),
                    ..
                },
            ) => self.failed_attempt(step, phase, error, status, Some(d)),
            (
                _,
                CallOutcome::Throttled {
                    retry_after: None, ..
                }
                | CallOutcome::Error { .. },
            )
            | (_, CallOutcome::Transport { .. } | CallOutcome::Timeout) => {
                self.failed_attempt(step, phase, error, status, None)
            }
        }
    }

    /// Crash recovery: the call in flight was decided and persisted, its outcome never recorded.
    /// Count it as a failed attempt and send it again (same key), or give up if the budget is
    /// spent.
    fn resend_in_flight(&mut self, step: usize, phase: Phase, attempt: u32) -> Command {
        let policy = self.def.policy(step);
        let s = &mut self.state.steps[step];
        let (failures, max) = match phase {
            Phase::Action => {
                s.failures += 1;
                (s.failures, policy.max_attempts)
            }
            Phase::Compensation => {
                s.compensation_failures += 1;
                (s.compensation_failures, policy.compensation_max_attempts)
            }
        };
        self.state.in_flight = None;
        let why = format!(
            "the outcome of attempt {attempt} was not recorded (recovered after an interruption)"
        );
        if failures >= max {
            let error = format!("{why}; gave up after {failures} failed attempts");
            self.state.steps[step].last_error = Some(error.clone());
            return match phase {
                Phase::Action => self.fail_action(step, error, json!({})),
                Phase::Compensation => self.park(step, error, None),
            };
        }
        self.state.steps[step].last_error = Some(why.clone());
        self.send(step, phase, Some(why))
    }

    /// An admitted operator's action (see [`admit`]).
    fn operator(&mut self, action: Action, by: &str) -> Command {
        match action {
            Action::Cancel => {
                let at = self.state.in_flight.map(|(step, _, _)| step);
                let sent: Vec<&str> = self
                    .state
                    .steps
                    .iter()
                    .filter(|s| s.attempts > 0)
                    .map(|s| s.name.as_str())
                    .collect();
                let detail =
                    json!({ "by": by, "in_flight": at.map(|i| self.name(i)), "sent": sent });
                let step = at.or_else(|| self.waiting_step());
                self.event(EventKind::SagaCancelled, step, detail);
                // The call in flight may have happened: it counts as sent (attempts > 0) and is
                // compensated; its outcome, if it ever comes, is stale. A step sent but not
                // succeeded (in flight, waiting to retry, polled) ends failed, like a step
                // that gave up.
                self.state.in_flight = None;
                let reason = format!("cancelled by {by}");
                for s in &mut self.state.steps {
                    s.polling = false;
                    if s.status == StepStatus::Running {
                        s.status = StepStatus::Failed;
                        s.last_error = Some(reason.clone());
                    }
                }
                self.begin_compensation(step, reason)
            }
            Action::RetryNow => {
                let step = self.waiting_step();
                let detail = json!({ "by": by, "was_due_at": self.state.next_attempt_at });
                self.event(EventKind::StepRetriedNow, step, detail);
                self.advance()
            }
            Action::Resume => {
                let reason = self.state.reason.clone();
                self.state.status = SagaStatus::Compensating;
                let step = next_compensation(self.def, &self.state);
                if let Some(i) = step {
                    let s = &mut self.state.steps[i];
                    s.compensation_failures = 0;
                    s.first_sent_at = None;
                    s.polling = false;
                }
                self.event(
                    EventKind::SagaRetried,
                    step,
                    json!({ "by": by, "reason": reason }),
                );
                self.advance()
            }
        }
    }

    /// The step a waiting saga will send next.
    fn waiting_step(&self) -> Option<usize> {
        match self.state.status {
            SagaStatus::Compensating => next_compensation(self.def, &self.state),
            _ => self
                .state
                .steps
                .iter()
                .position(|s| s.status != StepStatus::Succeeded),
        }
    }

    fn is_fresh(&self) -> bool {
        self.state.status == SagaStatus::Running
            && self.state.in_flight.is_none()
            && self
                .state
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Pending && s.attempts == 0)
    }

    fn start(&mut self) -> Command {
        let names: Vec<&str> = self.def.steps.iter().map(|s| s.name.as_str()).collect();
        let detail = json!({ "definition": self.def.name, "steps": names });
        self.event(EventKind::SagaStarted, None, detail);
        self.advance()
    }
}

/// The transition function. `rand` is a uniformly random u64 supplied by the driver (tests pass
/// fixed values); jitter is derived from it. `saga_id` and `input` render the request bodies.
///
/// Rules (see the brief's saga contract): 2xx → next step; 409 → compensate; 425 → poll until
/// the deadline; 429/503 honour `Retry-After` (capped); anything else → exponential backoff with
/// jitter up to `max_attempts`, then compensate. Compensation runs in reverse order over exactly
/// the steps whose action was sent; a compensation that exhausts `compensation_max_attempts`
/// parks the saga as `failed` until an operator resumes it ([`Input::Operator`] with
/// [`Action::Resume`]). Operators' actions apply only where [`admit`] says so.
pub fn transition(
    def: &Definition,
    saga_id: &str,
    input: &Value,
    state: &SagaState,
    input_event: Input,
    now: DateTime<Utc>,
    rand: u64,
) -> Transition {
    let noop = || Transition {
        state: state.clone(),
        events: Vec::new(),
        command: implied_command(def, saga_id, input, state, now),
    };
    if state.status.is_terminal() {
        return noop();
    }
    let mut run = Run {
        def,
        saga_id,
        input,
        now,
        rand,
        state: state.clone(),
        events: Vec::new(),
    };
    if let Input::Operator { action, by } = input_event {
        if admit(state, action, now) != Admission::Apply {
            return noop();
        }
        let command = run.operator(action, &by);
        return run.finish(command);
    }
    if state.status == SagaStatus::Failed {
        return noop();
    }
    let command = match input_event {
        Input::Operator { .. } => return noop(),
        Input::Start if run.is_fresh() => run.start(),
        Input::Start => return noop(),
        Input::Wake => match (state.in_flight, state.next_attempt_at) {
            (Some((step, phase, attempt)), _) => run.resend_in_flight(step, phase, attempt),
            (None, Some(at)) if now < at => return noop(),
            (None, _) if run.is_fresh() => run.start(),
            (None, _) => run.advance(),
        },
        Input::Result {
            step,
            phase,
            attempt,
            outcome,
        } => {
            if state.in_flight != Some((step, phase, attempt)) {
                return noop();
            }
            run.on_result(step, phase, outcome)
        }
    };
    run.finish(command)
}
