//! Scoped fault injection for demos and tests, in memory (per process, lost on restart),
//! applied by the receiver of a message. One mechanism for every node: the services mount it
//! ([`crate::service`]), and so do the orchestrator (what participants and acceptors send it:
//! the in-doubt `GET /transactions/{id}/decision`, the acceptors' `POST
//! /transactions/{id}/paxos`) and the Paxos Commit acceptors (`POST /paxos/phase2a`,
//! `/paxos/phase1a`). Each node's handlers say what a message is ([`Message`]) and run under
//! [`Faults::apply`].
//!
//! A fault is scoped to one order (`order_id`, as in the request body), one exact
//! `Idempotency-Key` or one transaction (`txn_id`: 2PC, 3PC, Paxos Commit), and to one kind of
//! message (`op`: `action`, `compensation`, `any` saga call, the 2PC `prepare`, `commit`,
//! `abort`, 3PC's `precommit` and `termination`, a participant's decision `query`, Paxos
//! Commit's `phase1a`, `phase2a` (to an acceptor) and `phase2b` (an acceptor's bundle to the
//! leader), or `all`: every message), so parallel tests do not disturb each other. It may also
//! name a link: `from` (the sender's node name, which every Tandem client sends in the
//! [`SENDER_HEADER`] header) and `to` (this node's name, checked when the fault is installed).
//! A fault with `from` may leave the scope out: it then applies to every message of its `op` on
//! that link (with `op: all` and `drop_request`, the link is cut; `times` up to [`MAX_TIMES`]).
//! Cutting a link both ways is two faults, one at each end; deleting them heals it.
//!
//! - `transient`: answer 500 (problem `injected-fault`) before anything happens: no effect, no
//!   barrier row;
//! - `in_progress`: answer 425 (problem `in-progress`), no effect;
//! - `latency`: sleep `latency_ms` before handling the request (which then proceeds);
//! - `effect_then_503`: apply the effect and commit it (barrier row included), then answer 503
//!   as if the response had been lost; the retry with the same key gets the stored outcome;
//! - `drop_request`: the message is lost on the way: never handled (no effect, no record), and
//!   the connection is closed without an answer (the sender sees a transport error);
//! - `drop_reply`: the message is handled and its effect committed, then the answer is lost (the
//!   connection is closed without it);
//! - `delay` (`delay_ms`): the same as `latency` (`latency_ms`), the name for links.
//!
//! Each firing decrements `times`; an exhausted fault stays listed (with `remaining: 0`) until
//! deleted. Endpoints: `POST /faults` → 201 with the fault, `GET /faults`, `DELETE /faults`
//! (all, or those matching `?order_id=` / `?key=` / `?txn_id=` / `?from=` / `?id=`).
//!
//! **Off by default**: unless `FAULT_INJECTION=on` (or [`crate::service::Config::with_fault_injection`];
//! the orchestrator and the acceptor take the same variable) the endpoints are not mounted (404)
//! and nothing is ever injected — any client of a node with faults on can make it fail or stall. The demo, the tests, the bench and `tandem up`
//! switch it on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{self, Api};
use crate::auth::{Access, Rule, rule};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::barrier::{IdempotencyKey, Op};
use crate::http::{Json, Query};
use crate::problem::Problem;
use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;

/// `FAULT_INJECTION`: whether the `/faults` endpoints exist (off unless asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Switch {
    On,
    #[default]
    Off,
}

/// Who may call the `/faults` endpoints (operators), on every node that mounts them.
pub const ACCESS: &[Rule] = &[
    rule("GET", "/faults", Access::Operator),
    rule("POST", "/faults", Access::Operator),
    rule("DELETE", "/faults", Access::Operator),
];

/// The header naming the sender of a message: every Tandem client sets it to its node name
/// (`orchestrator`, `inventory`, … — `NODE_NAME` of each process).
pub const SENDER_HEADER: &str = "tandem-sender";
/// Longest accepted node name.
pub const MAX_NODE_NAME: usize = 64;

/// Default headers of a Tandem HTTP client: [`SENDER_HEADER`] with `node` (left out when `node`
/// is not a valid header value).
pub fn sender_headers(node: &str) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(node) {
        headers.insert(SENDER_HEADER, v);
    }
    headers
}

/// The sender named by a request's [`SENDER_HEADER`] (`None` when absent or not text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Sender {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Sender(
            parts
                .headers
                .get(SENDER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ))
    }
}

/// Which messages a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultOp {
    #[default]
    Action,
    Compensation,
    /// Any saga call (action or compensation).
    Any,
    /// `POST /2pc/prepare`.
    Prepare,
    /// `POST /2pc/commit`.
    Commit,
    /// `POST /2pc/abort` (and a 3PC Abort).
    Abort,
    /// A 3PC PreCommit from the coordinator (and its Ack).
    Precommit,
    /// 3PC's termination protocol between participants: Suspect, StateReq, StateRep, and a
    /// recovery leader's PreCommit / Ack.
    Termination,
    /// An in-doubt participant asking the coordinator or leader for the decision
    /// (`GET /transactions/{id}/decision`, at the orchestrator).
    Query,
    /// A Paxos Commit `Phase1a` (a leader's new ballot), at an acceptor.
    Phase1a,
    /// A Paxos Commit `Phase2a`, at an acceptor: a participant's ballot-0 vote or a leader's
    /// ballot.
    Phase2a,
    /// What an acceptor sends the leader (`POST /transactions/{id}/paxos`: its ballot-0
    /// `Phase2b` bundle), at the orchestrator.
    Phase2b,
    /// Every message (with `from`: the whole link).
    All,
}

impl FaultOp {
    fn matches(self, op: FaultOp) -> bool {
        self == op
            || self == FaultOp::All
            || (self == FaultOp::Any && matches!(op, FaultOp::Action | FaultOp::Compensation))
    }
}

impl From<Op> for FaultOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Action => FaultOp::Action,
            Op::Compensation => FaultOp::Compensation,
        }
    }
}

/// One received message, as faults see it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub op: FaultOp,
    /// The `Idempotency-Key` of a saga call.
    pub key: Option<&'a IdempotencyKey>,
    pub order_id: Option<&'a str>,
    /// The 2PC transaction of a `/2pc/*` message.
    pub txn_id: Option<Uuid>,
    /// The sender's node name ([`Sender`]).
    pub from: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A message of transaction `txn_id` (2PC, 3PC, Paxos Commit) from `from`.
    pub fn txn(op: FaultOp, txn_id: Uuid, from: &'a Sender) -> Self {
        Message {
            op,
            key: None,
            order_id: None,
            txn_id: Some(txn_id),
            from: from.0.as_deref(),
        }
    }

    /// A saga call (action or compensation, from its key).
    pub fn saga(key: &'a IdempotencyKey, order_id: Option<&'a str>, from: &'a Sender) -> Self {
        Message {
            op: key.op.into(),
            key: Some(key),
            order_id,
            txn_id: None,
            from: from.0.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Transient,
    /// Also accepted as `delay`.
    #[serde(alias = "delay")]
    Latency,
    InProgress,
    #[serde(rename = "effect_then_503")]
    EffectThen503,
    DropRequest,
    DropReply,
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
    pub txn_id: Option<Uuid>,
    /// The sender's node name: only messages from it.
    pub from: Option<String>,
    /// This node's name (optional; when given it must be this node's).
    pub to: Option<String>,
    #[serde(default)]
    pub op: FaultOp,
    pub kind: FaultKind,
    pub times: Option<u32>,
    #[serde(alias = "delay_ms")]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// This node (the receiver, where the fault applies).
    pub to: String,
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
    fn applies(&self, m: &Message<'_>, key_text: Option<&str>) -> bool {
        self.remaining > 0
            && self.op.matches(m.op)
            && (self.from.is_none() || self.from.as_deref() == m.from)
            && match (&self.order_id, &self.key, self.txn_id) {
                (Some(o), _, _) => m.order_id == Some(o.as_str()),
                (None, Some(k), _) => key_text == Some(k.as_str()),
                (None, None, Some(t)) => m.txn_id == Some(t),
                // No scope: a link fault (validated to have `from`).
                (None, None, None) => self.from.is_some(),
            }
    }
}

/// The fault table of one service process. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Faults {
    enabled: bool,
    /// This node's name (the `to` of every fault here).
    node: Arc<str>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl Faults {
    pub fn new(switch: Switch) -> Self {
        Self::for_node(switch, "")
    }

    /// The fault table of node `node` (its name as senders give it).
    pub fn for_node(switch: Switch, node: &str) -> Self {
        Faults {
            enabled: switch == Switch::On,
            node: node.into(),
            faults: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The `/faults` endpoints (none when disabled: then they are neither routed nor
    /// documented).
    pub fn routes(&self) -> Api {
        if !self.enabled {
            return Api::new();
        }
        Api::new()
            .route(
                "/faults",
                api::get("The faults installed here").answer_schema(
                    200,
                    "the faults",
                    api::schema(json!({"type": "array", "items": {"type": "object"}})),
                ),
                list,
            )
            .route(
                "/faults",
                api::post("Install a scoped fault (fault injection on only)")
                    .body_schema(api::object())
                    .answer_schema(201, "the fault", api::object()),
                create,
            )
            .route(
                "/faults",
                api::delete("Clear faults (all, or those matching any field given)")
                    .query::<DeleteFilter>()
                    .answer_schema(200, "`{\"deleted\"}`", api::object()),
                delete,
            )
            .with_state(self.clone())
    }

    /// Install a fault (validated).
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    pub fn add(&self, spec: FaultSpec) -> Result<Fault, Problem> {
        self.validate(&spec)?;
        let times = spec.times.unwrap_or(1);
        let fault = Fault {
            id: Uuid::now_v7(),
            order_id: spec.order_id,
            key: spec.key,
            txn_id: spec.txn_id,
            from: spec.from,
            to: self.node.to_string(),
            op: spec.op,
            kind: spec.kind,
            times,
            remaining: times,
            latency_ms: spec.latency_ms,
            created_at: Utc::now(),
        };
        tracing::info!(id = %fault.id, kind = ?fault.kind, order_id = ?fault.order_id, key = ?fault.key, txn_id = ?fault.txn_id, from = ?fault.from, times, "fault installed");
        self.lock().push(fault.clone());
        Ok(fault)
    }

    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    fn validate(&self, spec: &FaultSpec) -> Result<(), Problem> {
        let scopes = [
            spec.order_id.is_some(),
            spec.key.is_some(),
            spec.txn_id.is_some(),
        ];
        match scopes.iter().filter(|s| **s).count() {
            0 if spec.from.is_some() => {} // a link fault: every message on the link
            1 => {}
            _ => {
                return Err(Problem::invalid(
                    "/order_id",
                    "give exactly one of order_id, key and txn_id (or none with from: a link fault)",
                ));
            }
        }
        if spec.order_id.as_deref() == Some("") {
            return Err(Problem::invalid("/order_id", "must not be empty"));
        }
        if let Some(k) = &spec.key {
            IdempotencyKey::parse(k).map_err(|m| Problem::invalid("/key", m))?;
        }
        if let Some(from) = &spec.from
            && (from.is_empty()
                || from.len() > MAX_NODE_NAME
                || HeaderValue::from_str(from).is_err())
        {
            return Err(Problem::invalid(
                "/from",
                format!("must be a node name of 1 to {MAX_NODE_NAME} visible characters"),
            ));
        }
        if let Some(to) = &spec.to
            && **to != *self.node
        {
            return Err(Problem::invalid(
                "/to",
                format!(
                    "faults apply at the receiver: this node is {:?}",
                    &*self.node
                ),
            ));
        }
        let times = spec.times.unwrap_or(1);
        if !(1..=MAX_TIMES).contains(&times) {
            return Err(Problem::invalid(
                "/times",
                format!("must be between 1 and {MAX_TIMES}"),
            ));
        }
        match (spec.kind, spec.latency_ms) {
            (FaultKind::Latency, None) => Err(Problem::invalid(
                "/latency_ms",
                "is required for a latency (delay) fault",
            )),
            (FaultKind::Latency, Some(ms)) if ms > MAX_LATENCY_MS => Err(Problem::invalid(
                "/latency_ms",
                format!("must be at most {MAX_LATENCY_MS}"),
            )),
            (FaultKind::Latency, _) | (_, None) => Ok(()),
            (_, Some(_)) => Err(Problem::invalid(
                "/latency_ms",
                "only applies to a latency (delay) fault",
            )),
        }
    }

    pub fn list(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    /// Remove the faults matching the filter (all when it is empty); returns how many.
    pub fn remove(&self, filter: &DeleteFilter) -> usize {
        let mut faults = self.lock();
        let before = faults.len();
        let all = filter.order_id.is_none()
            && filter.key.is_none()
            && filter.txn_id.is_none()
            && filter.from.is_none()
            && filter.id.is_none();
        faults.retain(|f| {
            let hit = |want: Option<&str>, have: Option<&str>| want.is_some() && want == have;
            let hit_txn = filter.txn_id.is_some() && filter.txn_id == f.txn_id;
            let hit_id = filter.id == Some(f.id);
            !(all
                || hit(filter.order_id.as_deref(), f.order_id.as_deref())
                || hit(filter.key.as_deref(), f.key.as_deref())
                || hit(filter.from.as_deref(), f.from.as_deref())
                || hit_txn
                || hit_id)
        });
        before - faults.len()
    }

    /// Call at the start of handling a message, after parsing and before the barrier. Sleeps
    /// for latency faults, answers (`Err`) for transient / in-progress / drop-request ones, and
    /// returns the plan for after the effect (see [`Injection::finish`]). Several faults may fire
    /// on one message (e.g. a latency then a transient); each firing uses up one of its `times`.
    pub async fn intercept(&self, m: Message<'_>) -> Result<Injection, Response> {
        if !self.enabled {
            return Ok(Injection::default());
        }
        let key_text = m.key.map(ToString::to_string);
        let mut latency = Duration::ZERO;
        let mut answer: Option<Response> = None;
        let mut after = Injection::default();
        {
            let mut faults = self.lock();
            for fault in faults
                .iter_mut()
                .filter(|f| f.applies(&m, key_text.as_deref()))
            {
                let fires = match fault.kind {
                    FaultKind::Latency => {
                        latency += Duration::from_millis(fault.latency_ms.unwrap_or(0));
                        true
                    }
                    kind @ (FaultKind::Transient
                    | FaultKind::InProgress
                    | FaultKind::DropRequest)
                        if answer.is_none() =>
                    {
                        answer = Some(refusal(kind, fault.id));
                        true
                    }
                    FaultKind::EffectThen503 if after.fault.is_none() => {
                        after.fault = Some((fault.id, FaultKind::EffectThen503));
                        true
                    }
                    FaultKind::DropReply if after.fault.is_none() => {
                        after.fault = Some((fault.id, FaultKind::DropReply));
                        true
                    }
                    _ => false,
                };
                if fires {
                    fault.remaining -= 1;
                    tracing::info!(id = %fault.id, kind = ?fault.kind, op = ?m.op, key = ?key_text, txn_id = ?m.txn_id, from = ?m.from, remaining = fault.remaining, "fault fired");
                }
            }
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(response) = answer {
            // The message is refused before the effect: a fault picked for after the effect
            // did not get to fire, so give its firing back.
            if let Some((id, _)) = after.fault
                && let Some(f) = self.lock().iter_mut().find(|f| f.id == id)
            {
                f.remaining += 1;
            }
            return Err(response);
        }
        Ok(after)
    }

    /// Run `handler` under this node's faults for the message `m`: refused, delayed, or handled
    /// and then its answer replaced or lost ([`Faults::intercept`], [`Injection::finish`]).
    pub async fn apply<T: IntoResponse>(
        &self,
        m: Message<'_>,
        handler: impl Future<Output = T>,
    ) -> Response {
        match self.intercept(m).await {
            Err(refused) => refused,
            Ok(injection) => injection.finish(handler.await.into_response()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // A panic while holding this lock cannot leave the list inconsistent: keep going.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The answer of a fault that refuses a message before its effect.
fn refusal(kind: FaultKind, id: Uuid) -> Response {
    match kind {
        FaultKind::InProgress => Problem::new(StatusCode::TOO_EARLY, "in-progress", "In progress")
            .detail(format!(
                "fault {id} (in_progress): not done yet, resend with the same Idempotency-Key"
            ))
            .with("fault_id", id.to_string())
            .into_response(),
        FaultKind::DropRequest => lost(id),
        _ => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected-fault",
            "Injected transient fault",
        )
        .detail(format!("fault {id} (transient): nothing was done"))
        .with("fault_id", id.to_string())
        .into_response(),
    }
}

/// No answer: the connection is closed before a response is written (the body fails before
/// its first byte, so the server aborts the connection). The status is 503 should a client
/// still see the head: a lost message must never read as an answer.
fn lost(id: Uuid) -> Response {
    tracing::info!(fault = %id, "fault: message lost, closing the connection without an answer");
    let body = futures::stream::once(async move {
        Err::<axum::body::Bytes, _>(std::io::Error::other(format!("fault {id}: message lost")))
    });
    let mut response = Response::new(axum::body::Body::from_stream(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// What remains to inject after the effect.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// An `effect_then_503` or a `drop_reply` fault that fired.
    fault: Option<(Uuid, FaultKind)>,
}

impl Injection {
    /// The response to send: `response` itself; a 503 in its place when an `effect_then_503`
    /// fault fired and the barrier committed an outcome (2xx or 409); no answer at all when a
    /// `drop_reply` fault fired.
    pub fn finish(self, response: Response) -> Response {
        let committed = response.status().is_success() || response.status() == StatusCode::CONFLICT;
        match self.fault {
            Some((id, FaultKind::DropReply)) => lost(id),
            Some((id, _)) if committed => Problem::new(
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

/// `DELETE /faults` filter: the faults matching any of the given fields (all when none is
/// given); `from` removes a link's faults (heals a cut).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteFilter {
    pub order_id: Option<String>,
    pub key: Option<String>,
    pub txn_id: Option<Uuid>,
    pub from: Option<String>,
    /// One fault, by the id `POST /faults` answered.
    pub id: Option<Uuid>,
}

async fn delete(State(faults): State<Faults>, Query(filter): Query<DeleteFilter>) -> Response {
    let deleted = faults.remove(&filter);
    (StatusCode::OK, Json(json!({ "deleted": deleted }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: FaultKind, order: &str, times: u32) -> FaultSpec {
        FaultSpec {
            order_id: Some(order.into()),
            key: None,
            txn_id: None,
            from: None,
            to: None,
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
        let nobody = Sender::default();
        let call = |key, order| f.intercept(Message::saga(key, Some(order), &nobody));
        assert!(call(&action, "o-2").await.is_ok(), "other order");
        assert!(
            call(&comp, "o-1").await.is_ok(),
            "compensation not in scope"
        );
        let r = call(&action, "o-1").await.unwrap_err();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(call(&action, "o-1").await.is_err());
        assert!(call(&action, "o-1").await.is_ok(), "used up");
        assert_eq!(f.list()[0].remaining, 0);
        let filter = DeleteFilter {
            order_id: Some("o-1".into()),
            ..DeleteFilter::default()
        };
        assert_eq!(f.remove(&filter), 1);
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

    fn two_pc(op: FaultOp, txn_id: Uuid, from: Option<&str>) -> Message<'_> {
        Message {
            op,
            key: None,
            order_id: None,
            txn_id: Some(txn_id),
            from,
        }
    }

    #[tokio::test]
    async fn link_faults_match_the_sender_the_message_and_the_transaction() {
        let f = Faults::for_node(Switch::On, "payment");
        let (t1, t2) = (Uuid::now_v7(), Uuid::now_v7());
        let mut s = spec(FaultKind::DropRequest, "x", 1);
        (s.order_id, s.txn_id, s.op) = (None, Some(t1), FaultOp::Prepare);
        s.from = Some("orch-a".into());
        s.to = Some("payment".into());
        let fault = f.add(s).unwrap();
        assert_eq!(fault.to, "payment");
        let prepare = |t, from| f.intercept(two_pc(FaultOp::Prepare, t, from));
        assert!(prepare(t1, Some("orch-b")).await.is_ok(), "another sender");
        assert!(prepare(t1, None).await.is_ok(), "an unnamed sender");
        assert!(prepare(t2, Some("orch-a")).await.is_ok(), "another txn");
        let commit = f.intercept(two_pc(FaultOp::Commit, t1, Some("orch-a")));
        assert!(commit.await.is_ok(), "another message");
        let lost = prepare(t1, Some("orch-a")).await.unwrap_err();
        assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(prepare(t1, Some("orch-a")).await.is_ok(), "used up");

        // A cut: no scope, every commit from `orch-a`, until deleted.
        let mut cut = spec(FaultKind::DropReply, "x", MAX_TIMES);
        (cut.order_id, cut.op, cut.from) = (None, FaultOp::Commit, Some("orch-a".into()));
        f.add(cut).unwrap();
        for t in [t1, t2] {
            let after = f.intercept(two_pc(FaultOp::Commit, t, Some("orch-a")));
            let answer = after.await.unwrap().finish(StatusCode::OK.into_response());
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let healed = DeleteFilter {
            from: Some("orch-a".into()),
            ..DeleteFilter::default()
        };
        assert_eq!(f.remove(&healed), 2);
    }

    /// A cut (`op: all`) takes every message of the link — a decision query, an acceptor's
    /// messages — of its transaction only; one fault is healed by its id, leaving the others.
    #[tokio::test]
    async fn a_cut_takes_every_message_of_its_link_and_transaction_and_heals_by_id() {
        let f = Faults::for_node(Switch::On, "acceptor-1");
        let (t1, t2) = (Uuid::now_v7(), Uuid::now_v7());
        let cut: FaultSpec = serde_json::from_value(json!({
            "from": "orch-0", "to": "acceptor-1", "txn_id": t1, "op": "all",
            "kind": "drop_request", "times": MAX_TIMES
        }))
        .unwrap();
        let cut = f.add(cut).unwrap();
        let other: FaultSpec = serde_json::from_value(json!({
            "from": "payment", "op": "query", "kind": "drop_request"
        }))
        .unwrap();
        f.add(other).unwrap();
        let (leader, stranger) = (Sender(Some("orch-0".into())), Sender(Some("orch-1".into())));
        for op in [
            FaultOp::Phase1a,
            FaultOp::Phase2a,
            FaultOp::Query,
            FaultOp::Commit,
        ] {
            let lost = f
                .intercept(Message::txn(op, t1, &leader))
                .await
                .unwrap_err();
            assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE, "{op:?}");
            assert!(f.intercept(Message::txn(op, t2, &leader)).await.is_ok());
            assert!(f.intercept(Message::txn(op, t1, &stranger)).await.is_ok());
        }
        let served = f
            .apply(Message::txn(FaultOp::Phase2a, t1, &leader), async {
                StatusCode::OK
            })
            .await;
        assert_eq!(
            served.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "not handled"
        );
        let one = DeleteFilter {
            id: Some(cut.id),
            ..DeleteFilter::default()
        };
        assert_eq!(f.remove(&one), 1);
        assert_eq!(f.list().len(), 1, "the other fault stays");
        let healed = f.apply(Message::txn(FaultOp::Phase2a, t1, &leader), async {
            StatusCode::OK
        });
        assert_eq!(healed.await.status(), StatusCode::OK);
    }

    #[test]
    fn validates_link_specs() {
        let f = Faults::for_node(Switch::On, "inventory");
        let mut s = spec(FaultKind::DropReply, "o", 1);
        s.order_id = None;
        assert_eq!(f.add(s.clone()).unwrap_err().errors[0].pointer, "/order_id");
        s.from = Some(String::new());
        assert_eq!(f.add(s.clone()).unwrap_err().errors[0].pointer, "/from");
        s.from = Some("orchestrator".into());
        s.to = Some("payment".into());
        assert_eq!(f.add(s.clone()).unwrap_err().errors[0].pointer, "/to");
        s.to = None;
        s.latency_ms = Some(5);
        assert_eq!(
            f.add(s.clone()).unwrap_err().errors[0].pointer,
            "/latency_ms"
        );
        let delay: FaultSpec = serde_json::from_value(json!({
            "from": "orchestrator", "op": "prepare", "kind": "delay", "delay_ms": 5
        }))
        .unwrap();
        assert_eq!(f.add(delay).unwrap().kind, FaultKind::Latency);
    }
}
