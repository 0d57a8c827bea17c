//! Scoped fault injection for demos and tests, in memory (per process, lost on restart).
//!
//! A fault is scoped to one order (`order_id`, as in the request body) or one exact
//! `Idempotency-Key`, and to the action, the compensation, or both (`op`), so parallel tests do
//! not disturb each other:
//!
//! - `transient`: answer 500 (problem `injected-fault`) before anything happens: no effect, no
//!   barrier row;
//! - `in_progress`: answer 425 (problem `in-progress`), no effect;
//! - `latency`: sleep `latency_ms` before handling the request (which then proceeds);
//! - `effect_then_503`: apply the effect and commit it (barrier row included), then answer 503
//!   as if the response had been lost; the retry with the same key gets the stored outcome.
//!
//! Each firing decrements `times`; an exhausted fault stays listed (with `remaining: 0`) until
//! deleted. Endpoints: `POST /faults` → 201 with the fault, `GET /faults`, `DELETE /faults`
//! (all, or `?order_id=` / `?key=`).
//!
//! **Off by default**: unless `FAULT_INJECTION=on` (or [`crate::service::Config::with_fault_injection`])
//! the endpoints are not mounted (404) and nothing is ever injected — any client of a service
//! with faults on can make it fail or stall. The demo, the tests, the bench and `tandem up`
//! switch it on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::barrier::{IdempotencyKey, Op};
use crate::http::{Json, Query};
use crate::problem::Problem;

/// `FAULT_INJECTION`: whether the `/faults` endpoints exist (off unless asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Switch {
    On,
    #[default]
    Off,
}

/// Which calls a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultOp {
    #[default]
    Action,
    Compensation,
    Any,
}

impl FaultOp {
    fn matches(self, op: Op) -> bool {
        matches!(
            (self, op),
            (FaultOp::Any, _)
                | (FaultOp::Action, Op::Action)
                | (FaultOp::Compensation, Op::Compensation)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Transient,
    Latency,
    InProgress,
    #[serde(rename = "effect_then_503")]
    EffectThen503,
}

/// Longest accepted latency (one minute).
pub const MAX_LATENCY_MS: u64 = 60_000;
/// Most firings of one fault.
pub const MAX_TIMES: u32 = 1_000_000;

/// `POST /faults` body (a missing `Option` field is `None`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub order_id: Option<String>,
    pub key: Option<String>,
    #[serde(default)]
    pub op: FaultOp,
    pub kind: FaultKind,
    pub times: Option<u32>,
    pub latency_ms: Option<u64>,
}

/// An installed fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub op: FaultOp,
    pub kind: FaultKind,
    /// Firings asked for.
    pub times: u32,
    /// Firings left.
    pub remaining: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
}

impl Fault {
    fn applies(&self, key: &IdempotencyKey, key_text: &str, order_id: Option<&str>) -> bool {
        self.remaining > 0
            && self.op.matches(key.op)
            && match (&self.order_id, &self.key) {
                (Some(o), _) => order_id == Some(o.as_str()),
                (None, Some(k)) => k == key_text,
                (None, None) => false,
            }
    }
}

/// The fault table of one service process. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Faults {
    enabled: bool,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl Faults {
    pub fn new(switch: Switch) -> Self {
        Faults {
            enabled: switch == Switch::On,
            faults: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The `/faults` endpoints (an empty router when disabled).
    pub fn router(&self) -> Router {
        if !self.enabled {
            return Router::new();
        }
        Router::new()
            .route("/faults", get(list).post(create).delete(delete))
            .with_state(self.clone())
    }

    /// Install a fault (validated).
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    pub fn add(&self, spec: FaultSpec) -> Result<Fault, Problem> {
        match (&spec.order_id, &spec.key) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Problem::invalid(
                    "/order_id",
                    "give exactly one of order_id and key",
                ));
            }
            (Some(o), None) if o.is_empty() => {
                return Err(Problem::invalid("/order_id", "must not be empty"));
            }
            (None, Some(k)) => {
                IdempotencyKey::parse(k).map_err(|m| Problem::invalid("/key", m))?;
            }
            _ => {}
        }
        let times = spec.times.unwrap_or(1);
        if !(1..=MAX_TIMES).contains(&times) {
            return Err(Problem::invalid(
                "/times",
                format!("must be between 1 and {MAX_TIMES}"),
            ));
        }
        match (spec.kind, spec.latency_ms) {
            (FaultKind::Latency, None) => {
                return Err(Problem::invalid(
                    "/latency_ms",
                    "is required for a latency fault",
                ));
            }
            (FaultKind::Latency, Some(ms)) if ms > MAX_LATENCY_MS => {
                return Err(Problem::invalid(
                    "/latency_ms",
                    format!("must be at most {MAX_LATENCY_MS}"),
                ));
            }
            (FaultKind::Latency, _) => {}
            (_, Some(_)) => {
                return Err(Problem::invalid(
                    "/latency_ms",
                    "only applies to a latency fault",
                ));
            }
            (_, None) => {}
        }
        let fault = Fault {
            id: Uuid::now_v7(),
            order_id: spec.order_id,
            key: spec.key,
            op: spec.op,
            kind: spec.kind,
            times,
            remaining: times,
            latency_ms: spec.latency_ms,
            created_at: Utc::now(),
        };
        tracing::info!(id = %fault.id, kind = ?fault.kind, order_id = ?fault.order_id, key = ?fault.key, times, "fault installed");
        self.lock().push(fault.clone());
        Ok(fault)
    }

    pub fn list(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    /// Remove the faults matching the filter (all when both are `None`); returns how many.
    pub fn remove(&self, order_id: Option<&str>, key: Option<&str>) -> usize {
        let mut faults = self.lock();
        let before = faults.len();
        faults.retain(|f| {
            let hit_order = order_id.is_some_and(|o| f.order_id.as_deref() == Some(o));
            let hit_key = key.is_some_and(|k| f.key.as_deref() == Some(k));
            let all = order_id.is_none() && key.is_none();
            !(all || hit_order || hit_key)
        });
        before - faults.len()
    }

    /// Call at the start of a saga call, after validation and before the barrier. Sleeps for
    /// latency faults, answers (`Err`) for transient / in-progress ones, and returns the plan for
    /// after the effect (see [`Injection::finish`]). Several faults may fire on one request (e.g.
    /// a latency then a transient); each firing uses up one of its `times`.
    pub async fn intercept(
        &self,
        key: &IdempotencyKey,
        order_id: Option<&str>,
    ) -> Result<Injection, Response> {
        if !self.enabled {
            return Ok(Injection::default());
        }
        let key_text = key.to_string();
        let mut latency = Duration::ZERO;
        let mut answer: Option<Problem> = None;
        let mut then_503 = None;
        {
            let mut faults = self.lock();
            for fault in faults
                .iter_mut()
                .filter(|f| f.applies(key, &key_text, order_id))
            {
                let fires = match fault.kind {
                    FaultKind::Latency => {
                        latency += Duration::from_millis(fault.latency_ms.unwrap_or(0));
                        true
                    }
                    FaultKind::Transient if answer.is_none() => {
                        answer = Some(
                            Problem::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "injected-fault",
                                "Injected transient fault",
                            )
                            .detail(format!("fault {} (transient): nothing was done", fault.id))
                            .with("fault_id", fault.id.to_string()),
                        );
                        true
                    }
                    FaultKind::InProgress if answer.is_none() => {
                        answer = Some(
                            Problem::new(StatusCode::TOO_EARLY, "in-progress", "In progress")
                                .detail(format!(
                                    "fault {} (in_progress): not done yet, resend with the same Idempotency-Key",
                                    fault.id
                                ))
                                .with("fault_id", fault.id.to_string()),
                        );
                        true
                    }
                    FaultKind::EffectThen503 if then_503.is_none() => {
                        then_503 = Some(fault.id);
                        true
                    }
                    _ => false,
                };
                if fires {
                    fault.remaining -= 1;
                    tracing::info!(id = %fault.id, kind = ?fault.kind, key = %key_text, remaining = fault.remaining, "fault fired");
                }
            }
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(problem) = answer {
            // The request is refused before the effect: an effect_then_503 picked for it did not
            // get to fire, so give its firing back.
            if let Some(id) = then_503
                && let Some(f) = self.lock().iter_mut().find(|f| f.id == id)
            {
                f.remaining += 1;
            }
            return Err(problem.into_response());
        }
        Ok(Injection {
            effect_then_503: then_503,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // A panic while holding this lock cannot leave the list inconsistent: keep going.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What remains to inject after the effect.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    effect_then_503: Option<Uuid>,
}

impl Injection {
    /// The response to send: `response` itself, or a 503 in its place when an `effect_then_503`
    /// fault fired and the barrier committed an outcome (2xx or 409).
    pub fn finish(self, response: Response) -> Response {
        let committed = response.status().is_success() || response.status() == StatusCode::CONFLICT;
        match self.effect_then_503 {
            Some(id) if committed => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "injected-fault",
                "Injected fault: response lost",
            )
            .detail(format!(
                "fault {id} (effect_then_503): the effect was applied and committed; retry with the same Idempotency-Key to get its outcome"
            ))
            .with("fault_id", id.to_string())
            .into_response(),
            _ => response,
        }
    }
}

async fn create(State(faults): State<Faults>, Json(spec): Json<FaultSpec>) -> Response {
    match faults.add(spec) {
        Ok(fault) => (StatusCode::CREATED, Json(fault)).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn list(State(faults): State<Faults>) -> Json<Vec<Fault>> {
    Json(faults.list())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteFilter {
    order_id: Option<String>,
    key: Option<String>,
}

async fn delete(State(faults): State<Faults>, Query(filter): Query<DeleteFilter>) -> Response {
    let deleted = faults.remove(filter.order_id.as_deref(), filter.key.as_deref());
    (StatusCode::OK, Json(json!({ "deleted": deleted }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: FaultKind, order: &str, times: u32) -> FaultSpec {
        FaultSpec {
            order_id: Some(order.into()),
            key: None,
            op: FaultOp::Action,
            kind,
            times: Some(times),
            latency_ms: None,
        }
    }

    #[tokio::test]
    async fn fires_only_in_scope_and_counts_down() {
        let f = Faults::new(Switch::On);
        f.add(spec(FaultKind::Transient, "o-1", 2)).unwrap();
        let action = IdempotencyKey::parse("s:step:action").unwrap();
        let comp = IdempotencyKey::parse("s:step:compensation").unwrap();
        assert!(
            f.intercept(&action, Some("o-2")).await.is_ok(),
            "other order"
        );
        assert!(
            f.intercept(&comp, Some("o-1")).await.is_ok(),
            "compensation not in scope"
        );
        let r = f.intercept(&action, Some("o-1")).await.unwrap_err();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(f.intercept(&action, Some("o-1")).await.is_err());
        assert!(f.intercept(&action, Some("o-1")).await.is_ok(), "used up");
        assert_eq!(f.list()[0].remaining, 0);
        assert_eq!(f.remove(Some("o-1"), None), 1);
    }

    #[test]
    fn validates_specs() {
        let f = Faults::new(Switch::On);
        let mut s = spec(FaultKind::Latency, "o", 1);
        assert_eq!(
            f.add(s.clone()).unwrap_err().errors[0].pointer,
            "/latency_ms"
        );
        s.latency_ms = Some(10);
        assert!(f.add(s.clone()).is_ok());
        s.key = Some("a:b:action".into());
        assert!(f.add(s.clone()).is_err());
        s.order_id = None;
        s.key = Some("nope".into());
        assert_eq!(f.add(s).unwrap_err().errors[0].pointer, "/key");
    }
}
