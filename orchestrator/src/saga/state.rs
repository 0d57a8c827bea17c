//! Persisted state of one saga. The whole struct is stored as JSON; the store also copies
//! `status` and `next_attempt_at` into indexed columns.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    Running,
    Compensating,
    Completed,
    Compensated,
    /// A compensation exhausted its budget; parked until `POST /sagas/{id}/retry`.
    Failed,
}

impl SagaStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated)
    }
    /// Completed, compensated or failed: nothing happens until a manual retry.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == SagaStatus::Failed
    }
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Failed,
    ];
    /// The status named `s` (as stored), if any.
    pub fn parse(s: &str) -> Option<SagaStatus> {
        SagaStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
        }
    }
}

/// The status as stored (the `status` column).
impl TryFrom<String> for SagaStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SagaStatus::parse(&s).ok_or_else(|| format!("unknown saga status {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Action,
    Compensation,
}

impl Phase {
    /// `action` in the action phase, `compensation` in the compensation phase.
    pub fn pick<T>(self, action: T, compensation: T) -> T {
        match self {
            Phase::Action => action,
            Phase::Compensation => compensation,
        }
    }

    /// The word used in idempotency keys: `{saga_id}:{step}:{action|compensation}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Action not sent yet.
    Pending,
    /// Action sent (at least once), outcome not final yet.
    Running,
    Succeeded,
    /// Action failed for good (409, budget exhausted, deadline passed). It was sent, so it is
    /// compensated too.
    Failed,
    Compensating,
    Compensated,
    /// Never sent, so never compensated (later steps of a saga that failed earlier).
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    /// Sends of the action so far (resends after 425 included).
    pub attempts: u32,
    pub compensation_attempts: u32,
    /// JSON body of the action's 2xx answer.
    pub output: Option<Value>,
    pub last_error: Option<String>,
    /// First send of the current phase (for the 425 deadline).
    pub first_sent_at: Option<DateTime<Utc>>,
    /// Failed attempts of the action so far (errors, timeouts, throttling, an unrecorded outcome
    /// after a crash, the 425 deadline). 425 answers are not failures: `attempts - failures` sends
    /// were polls or the final one. Compared against `max_attempts`.
    #[serde(default)]
    pub failures: u32,
    /// Failed attempts of the compensation since it started (or since the last manual retry);
    /// compared against `compensation_max_attempts`.
    #[serde(default)]
    pub compensation_failures: u32,
    /// The current phase answered 425 and is being polled (its resends log no `*_started` event).
    #[serde(default)]
    pub polling: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub status: SagaStatus,
    pub steps: Vec<StepState>,
    /// The call decided and persisted but whose outcome is not recorded yet:
    /// `(step index, phase, attempt number)`. On recovery the driver re-sends it.
    pub in_flight: Option<(usize, Phase, u32)>,
    /// When the next call is due (`None`: now, or terminal).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the saga is compensating / failed.
    pub reason: Option<String>,
}
