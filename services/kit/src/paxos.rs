//! Paxos Commit over the services: the wire format that the leader (the orchestrator), the
//! participants (every service, here) and the acceptors (the `acceptor` binary) share — the
//! core's own `tandem_protocols::paxos_commit::Msg`, in a small envelope — and the
//! participant's endpoints, driven by the core's resource manager (`paxos_commit::Rm`):
//!
//! | core action | here |
//! |---|---|
//! | `ForceWrite(Prepared)` | the branch's local prepare, exactly as `POST /2pc/prepare` runs it: the effect, then `PREPARE TRANSACTION` ([`crate::participant`]) |
//! | `Send(Acceptor k, Phase2a)` | `POST {acceptors[k]}/paxos/phase2a` (one try each; a lost 2a is the leader's higher ballot's business) |
//! | `Decide(o)`, `Write(Outcome)` | `COMMIT PREPARED` / `ROLLBACK PREPARED` (the 2PC participant's commit / abort) |
//! | `SetTimer(InDoubt)` → `Send(Query)` | the kit's in-doubt loop asks `GET {leader_url}/transactions/{id}/decision` |
//!
//! Endpoints: `POST /paxos/prepare` ([`PaxosPrepare`]) → `{"vote", "acceptors_reached"}` (the
//! vote is for the view: the leader's core learns it from the acceptors), `POST /paxos/outcome`
//! ([`PaxosOutcome`]) → `{"state"}`; both under the service's faults ([`crate::faults`]: ops
//! `prepare`, and `commit` / `abort` by the outcome, scoped by `txn_id` or the body's
//! `order_id`, and the sender).

use std::time::Duration;

use axum::extract::State;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_protocols::paxos_commit::{Msg, Rm, RmState, Shape};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role, Vote};
use uuid::Uuid;

use crate::api::{self, Api};
use crate::faults::{FaultOp, Message, Sender};
use crate::http::Json;
use crate::participant::{self, BranchRequest, PrepareRequest};
use crate::problem::Problem;
use crate::service::App;

/// At most this many acceptors (2F+1 ≤ 7): a leader tallies them in a byte.
pub const MAX_ACCEPTORS: usize = 7;
/// How long one message to an acceptor or a leader may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A message to an acceptor: `POST /paxos/phase2a` or `POST /paxos/phase1a`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToAcceptor {
    pub txn_id: Uuid,
    /// Participants of the transaction (instances).
    pub n: u8,
    /// The receiving acceptor's index in the sender's list: a leader's quorum counts name it.
    pub acceptor: u8,
    pub from: NodeId,
    /// The leader that sent the Prepare: where a ballot-0 `Phase2b` bundle goes.
    pub leader_url: Option<String>,
    pub msg: Msg,
}

/// An acceptor's answer: what its core sends back to the sender, if anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptorReply {
    pub reply: Option<Msg>,
}

/// What an acceptor sends a leader: `POST {leader_url}/transactions/{txn_id}/paxos`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToLeader {
    pub acceptor: u8,
    pub msg: Msg,
}

/// The JSON Schema of [`ToLeader`] as serde reads it (`POST /transactions/{id}/paxos` on the
/// orchestrator): `acceptor` and `msg` required; `msg` one of the core's messages, externally
/// tagged (`"Query"`, `{"Phase2b": {"accepted": [[instance, ballot, value]]}}` …). Closed
/// objects throughout (serde would skip an unknown field of a ballot or a message: the
/// document does not offer them).
pub fn to_leader_schema() -> serde_json::Value {
    let byte = json!({"type": "integer", "minimum": 0, "maximum": 255});
    let ballot = json!({
        "type": "object",
        "required": ["epoch", "round"],
        "properties": {
            "epoch": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            "round": {"type": "integer", "minimum": 0, "maximum": u32::MAX}
        },
        "additionalProperties": false
    });
    let value = json!({"type": "string", "enum": ["Prepared", "Aborted"]});
    let tuple = |items: Vec<serde_json::Value>| {
        let n = items.len();
        json!({"type": "array", "prefixItems": items, "minItems": n, "maxItems": n})
    };
    let variant = |name: &str, fields: serde_json::Value| {
        let required: Vec<&String> = fields
            .as_object()
            .map(|f| f.keys().collect())
            .unwrap_or_default();
        json!({
            "type": "object",
            "required": [name],
            "properties": {name: {
                "type": "object",
                "required": required,
                "properties": fields,
                "additionalProperties": false
            }},
            "additionalProperties": false
        })
    };
    let msg = json!({"oneOf": [
        {"type": "string", "enum": ["BeginCommit", "Prepare", "Query"]},
        variant("Phase2a", json!({
            "ballot": ballot,
            "values": {"type": "array", "items": tuple(vec![byte.clone(), value.clone()])}
        })),
        variant("Phase2b", json!({
            "accepted": {"type": "array", "items": tuple(vec![byte.clone(), ballot.clone(), value.clone()])}
        })),
        variant("Phase1a", json!({
            "ballot": ballot,
            "instances": {"type": "array", "items": byte}
        })),
        variant("Phase1b", json!({
            "ballot": ballot,
            "reports": {"type": "array", "items": tuple(vec![
                byte.clone(),
                json!({"anyOf": [{"type": "null"}, tuple(vec![ballot.clone(), value.clone()])]}),
            ])}
        })),
        {
            "type": "object",
            "required": ["Outcome"],
            "properties": {"Outcome": {"type": "string", "enum": ["Commit", "Abort"]}},
            "additionalProperties": false
        }
    ]});
    json!({
        "type": "object",
        "required": ["acceptor", "msg"],
        "properties": {"acceptor": byte, "msg": msg},
        "additionalProperties": false
    })
}

/// `POST /paxos/prepare` body: a 2PC prepare's fields, the acceptors and the shape (its
/// document: [`prepare_schema`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaxosPrepare {
    pub txn_id: Uuid,
    pub step: u16,
    pub action: String,
    pub body: Value,
    pub leader_url: String,
    /// The 2F+1 acceptors' base URLs, in the leader's order.
    pub acceptors: Vec<String>,
    /// Participants of the transaction.
    pub n: u8,
}

/// `POST /paxos/outcome` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaxosOutcome {
    pub txn_id: Uuid,
    #[schema(maximum = 65535)]
    pub step: u16,
    #[schema(value_type = String, pattern = "^(Commit|Abort)$")]
    pub outcome: Outcome,
}

/// The core's shape for `n` participants and `acceptors` (2F+1) acceptors, the leader beginning.
pub fn shape(n: u8, acceptors: usize) -> Shape {
    Shape {
        n,
        f: u8::try_from(acceptors.saturating_sub(1) / 2).unwrap_or(u8::MAX),
        leaders: 1,
        max_rounds: u32::MAX,
        leader_begins: true,
    }
}

/// POST `body` as JSON and read a JSON answer (any 2xx); Err names the failure.
pub async fn call<B: Serialize, R: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    body: &B,
) -> Result<R, String> {
    call_within(http, url, body, CALL_TIMEOUT).await
}

/// [`call`] with its own timeout (3PC's messages use the transaction's).
pub async fn call_within<B: Serialize, R: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    body: &B,
    timeout: std::time::Duration,
) -> Result<R, String> {
    let r = crate::hop::send(
        crate::telemetry::traced(http.post(url))
            .json(body)
            .timeout(timeout),
    )
    .await
    .map_err(|e| format!("POST {url}: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(format!("POST {url}: {status} {text}"));
    }
    r.json().await.map_err(|e| format!("POST {url}: {e}"))
}

/// [`PaxosPrepare`] as [`check`] and the 2PC prepare take it: 1, 3, 5 or 7 acceptors, http(s)
/// URLs ([`participant::HTTP_URL_PATTERN`]), `n` at least 1. Also checked, beyond a schema:
/// `n` above `step`, `action` one of this service's and `body` valid for it (422).
fn prepare_schema() -> Value {
    let url = json!({
        "type": "string",
        "maxLength": participant::MAX_URL_LEN,
        "pattern": participant::HTTP_URL_PATTERN
    });
    let counts: Vec<Value> = (1..=MAX_ACCEPTORS)
        .step_by(2)
        .map(|k| json!({"minItems": k, "maxItems": k}))
        .collect();
    json!({
        "type": "object",
        "required": ["txn_id", "step", "action", "body", "leader_url", "acceptors", "n"],
        "properties": {
            "txn_id": {"type": "string", "format": "uuid"},
            "step": {"type": "integer", "minimum": 0, "maximum": 65535},
            "action": {"type": "string", "description": "the action's path (`/reservations`)"},
            "body": {"description": "the action's request body"},
            "leader_url": url,
            "acceptors": {
                "type": "array",
                "description": "the 2F+1 acceptors' base URLs, in the leader's order",
                "items": url,
                "anyOf": counts
            },
            "n": {"type": "integer", "minimum": 1, "maximum": 255, "description": "participants of the transaction"}
        },
        "additionalProperties": false
    })
}

/// The participant endpoints of Paxos Commit.
pub fn routes() -> Api<App> {
    Api::new()
        .route(
            "/paxos/prepare",
            api::post("Paxos Commit prepare: the 2PC prepare, then the vote to every acceptor")
                .body_json(prepare_schema())
                .answer_schema(200, "`{\"vote\", \"acceptors_reached\"}`", api::object())
                .error(409, "this branch was already decided"),
            |State(app): State<App>, from: Sender, Json(req): Json<PaxosPrepare>| async move {
                let mut m = Message::txn(FaultOp::Prepare, req.txn_id, &from);
                m.order_id = req.body.get("order_id").and_then(Value::as_str);
                app.faults.apply(m, prepare(&app, &req)).await
            },
        )
        .route(
            "/paxos/outcome",
            api::post("Paxos Commit outcome: commit or roll back the prepared branch")
                .body::<PaxosOutcome>()
                .answer_schema(200, "the branch's outcome", api::object())
                .error(409, "the other outcome was applied"),
            |State(app): State<App>, from: Sender, Json(req): Json<PaxosOutcome>| async move {
                let op = match req.outcome {
                    Outcome::Commit => FaultOp::Commit,
                    Outcome::Abort => FaultOp::Abort,
                };
                let m = Message::txn(op, req.txn_id, &from);
                app.faults.apply(m, outcome(&app, &req)).await
            },
        )
}

#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn check(req: &PaxosPrepare) -> Result<(), Problem> {
    let k = req.acceptors.len();
    if k.is_multiple_of(2) || k > MAX_ACCEPTORS {
        return Err(Problem::invalid(
            "/acceptors",
            format!("must list 2F+1 acceptors (1, 3, 5 or 7), not {k}"),
        ));
    }
    for (i, url) in req.acceptors.iter().enumerate() {
        if !participant::is_http_url(url) {
            return Err(Problem::invalid(
                format!("/acceptors/{i}"),
                "must be an http(s) URL",
            ));
        }
    }
    if req.n == 0 || u16::from(req.n) <= req.step {
        return Err(Problem::invalid("/n", "must be above the step's index"));
    }
    Ok(())
}

async fn prepare(app: &App, req: &PaxosPrepare) -> Result<Json<Value>, Problem> {
    check(req)?;
    // The core's `ForceWrite(Prepared)` (or, on a NO, its abort) is the 2PC participant's local
    // prepare: run it first, because the effect decides the vote the core is built with.
    let local = PrepareRequest {
        txn_id: req.txn_id,
        step: req.step,
        action: req.action.clone(),
        body: req.body.clone(),
        coordinator_url: req.leader_url.clone(),
    };
    let answer = participant::prepare_branch(app, &local)
        .await
        .map_err(|mut p| {
            for issue in &mut p.errors {
                if issue.pointer == "/coordinator_url" {
                    issue.pointer = "/leader_url".into();
                }
            }
            p
        })?;
    let vote = if answer["vote"] == "yes" {
        Vote::Yes
    } else {
        Vote::No
    };
    let mut rm = Rm {
        shape: shape(req.n, req.acceptors.len()),
        id: req.step as u8,
        vote,
        state: RmState::Working,
    };
    let actions = rm.handle(Input::Receive {
        from: NodeId::Coordinator(0),
        msg: Msg::Prepare,
    });
    let http = reqwest::Client::builder()
        .default_headers(app.client_headers())
        .build()
        .unwrap_or_default();
    let mut sends = Vec::new();
    for a in actions {
        if let Action::Send {
            to: NodeId::Acceptor(k),
            msg,
        } = a
        {
            let url = format!("{}/paxos/phase2a", req.acceptors[k as usize]);
            let body = ToAcceptor {
                txn_id: req.txn_id,
                n: req.n,
                acceptor: k,
                from: NodeId::Participant(rm.id),
                leader_url: Some(req.leader_url.clone()),
                msg,
            };
            let http = http.clone();
            sends.push(async move { call::<_, AcceptorReply>(&http, &url, &body).await });
        }
        // ForceWrite / Decide: done by the local prepare above; the InDoubt timer is the kit's
        // in-doubt loop (it asks `leader_url`).
    }
    let results = futures::future::join_all(sends).await;
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        tracing::warn!(txn = %req.txn_id, step = req.step, error = %e, "paxos: a 2a was not delivered");
    }
    let reached = results.iter().filter(|r| r.is_ok()).count();
    let mut answer = answer;
    answer["acceptors_reached"] = json!(reached);
    Ok(Json(answer))
}

async fn outcome(app: &App, req: &PaxosOutcome) -> Result<Json<Value>, Problem> {
    // A branch that receives an outcome is prepared or already finished; the core writes the
    // outcome and decides, which is the local commit or abort.
    let mut rm = Rm {
        // step 65535 overflowed `step + 1` (a panic, the connection dropped; found by
        // schemathesis, .ci/steps/45-schemathesis.sh)
        shape: shape(
            u8::try_from(req.step.saturating_add(1)).unwrap_or(u8::MAX),
            1,
        ),
        id: 0,
        vote: Vote::Yes,
        state: RmState::Prepared,
    };
    let actions = rm.handle(Input::Receive {
        from: NodeId::Coordinator(0),
        msg: Msg::Outcome(req.outcome),
    });
    let branch = BranchRequest {
        txn_id: req.txn_id,
        step: req.step,
    };
    for a in actions {
        match a {
            Action::Decide(Outcome::Commit) => {
                return participant::commit(app, &branch).await;
            }
            Action::Decide(Outcome::Abort) => {
                return participant::abort(app, &branch).await;
            }
            _ => {}
        }
    }
    Err(Problem::internal("the participant core decided nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_protocols::paxos_commit::{Ballot, Value as V};

    /// The document of `POST /transactions/{id}/paxos` admits every message the acceptors send
    /// (each variant, as serde writes it) and what it admits, serde reads.
    #[test]
    fn to_leader_schema_is_what_serde_reads() {
        let schema = jsonschema::validator_for(&to_leader_schema()).unwrap();
        let b = Ballot {
            epoch: u64::MAX,
            round: 7,
        };
        for msg in [
            Msg::BeginCommit,
            Msg::Prepare,
            Msg::Query,
            Msg::Phase2a {
                ballot: b,
                values: vec![(0, V::Prepared)],
            },
            Msg::Phase2b {
                accepted: vec![(255, b, V::Aborted)],
            },
            Msg::Phase1a {
                ballot: b,
                instances: vec![0, 1],
            },
            Msg::Phase1b {
                ballot: b,
                reports: vec![(0, None), (1, Some((b, V::Prepared)))],
            },
            Msg::Outcome(Outcome::Abort),
        ] {
            let v = serde_json::to_value(ToLeader { acceptor: 2, msg }).unwrap();
            assert!(schema.is_valid(&v), "{v}");
            serde_json::from_value::<ToLeader>(v).unwrap();
        }
        for bad in [
            json!({"acceptor": 256, "msg": "Query"}),
            json!({"acceptor": 0, "msg": "Nope"}),
            json!({"acceptor": 0}),
            json!({"acceptor": 0, "msg": {"Phase2b": {"accepted": [[0, {"epoch": 0, "round": 0}]]}}}),
            json!({"acceptor": 0, "msg": {"Outcome": "Commit", "Query": null}}),
        ] {
            assert!(!schema.is_valid(&bad), "{bad}");
            assert!(serde_json::from_value::<ToLeader>(bad).is_err());
        }
    }

    /// Acceptor counts: 1, 3, 5 or 7, as `check` takes them.
    #[test]
    fn prepare_schema_admits_what_check_takes() {
        let schema = jsonschema::validator_for(&prepare_schema()).unwrap();
        for k in 0..=8 {
            let body = json!({
                "txn_id": Uuid::nil(), "step": 0, "action": "/reservations", "body": {},
                "leader_url": "http://127.0.0.1:8080",
                "acceptors": vec!["https://acceptor-1.example:9000/"; k], "n": 1
            });
            let req: PaxosPrepare = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(schema.is_valid(&body), check(&req).is_ok(), "{k} acceptors");
        }
    }
}
