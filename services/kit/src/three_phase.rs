//! 3PC over the services: the participant of every service, driven by a pure core — plain 3PC's
//! `tandem_protocols::three_phase::Participant` (its states, timeouts and termination protocol,
//! Skeen's rule) or quorum-based 3PC's `tandem_protocols::quorum_three_phase::Participant`
//! (PreAbort, commit and abort quorums, termination attempts) — and the wire format the
//! coordinator (the orchestrator) and the participants share. The IO below is written once, for
//! any [`Core`]; a branch's row says which core it runs (`protocol`, and the quorums).
//!
//! Quorum 3PC's messages go to `POST /3pc-quorum/msg` (the same [`Envelope`], the quorum core's
//! `Msg`); its setup carries `quorums` (`{"commit", "abort"}`, both 1..=n with
//! `commit + abort > n`, else 422; default [`Quorums::majority`]). Outside the quorum core's
//! model, the driver gives every participant `max_attempts` = 255 termination attempts: an
//! attempt that finds no quorum gives up and re-arms the participant's timer, so a blocked
//! minority retries every timeout or two — and finishes once a partition heals and it reaches a
//! decided participant or a quorum (about 255 × 2 timeouts of retrying before it stays blocked
//! for good, answering whoever asks).
//!
//! Every 3PC message is one `POST /3pc/msg` ([`Envelope`]: the transaction, the receiving
//! participant's index, the sender as a core `NodeId`, and the core's own `Msg`). The answer
//! carries what the receiver's core sent back to the sender while handling it ([`Replies`]);
//! whatever it sends to anyone else goes out as a `POST /3pc/msg` of its own, whose replies are
//! fed back to the core. So participants reach one another directly: the first message of a
//! transaction (the coordinator's `Begin` to participant 0, or its `CanCommit`) carries a
//! [`Setup`] with every participant's base URL (`peers`, in the leader order), the action and its
//! body, and the timeout.
//!
//! One task per branch (`(txn_id, step)`) owns its core, its timers and its inbox while the
//! branch is undecided; it executes the core's actions in order and nothing else:
//!
//! | core action | here |
//! |---|---|
//! | `ForceWrite(Prepared)` | the branch's local prepare, exactly as `POST /2pc/prepare` runs it (the effect, then `PREPARE TRANSACTION`: [`crate::participant`]); it runs first, because the effect decides the vote the core is built with (a business refusal, or work that cannot run now — a lock wait past `lock_timeout` — is a NO vote) |
//! | `Write(PreCommitted)`, `Write(PreAborted)` (quorum) | `tpc3_branch.state = 'precommitted'` / `'preaborted'` |
//! | `ForceWrite(Committed)` | `COMMIT PREPARED` (the 2PC participant's commit) |
//! | `Write(Aborted)`, `Decide(Abort)` | `ROLLBACK PREPARED` / the unprepared work dropped (the 2PC participant's abort) |
//! | `Send(m)` to the sender | the HTTP answer's `replies` |
//! | `Send(m)` to participant `q` | `POST {peers[q]}/3pc/msg`, its replies fed back |
//! | `SetTimer(Peer(x))` | fires after the transaction's `timeout_ms` unless cancelled |
//!
//! `tpc3_branch` (the kit's migration) keeps the branch's setup and its core's last state; the
//! records themselves are Postgres's (`pg_prepared_xacts`, `tpc_committed`). A participant
//! that restarts is outside the core's crash-stop model: it is rebuilt with the core's
//! `recover` from those records — uncertain or pre-committed, but **passive** (no timer: it
//! answers state requests and decisions, it never starts a termination itself).
//!
//! Faults ([`crate::faults`]) apply to every 3PC message, scoped by `txn_id` and the sender
//! (`Tandem-Sender`): `op` `prepare` (Begin / CanCommit), `precommit` (PreCommit), `commit`
//! (DoCommit), `abort`, and `termination` (Suspect, StateReq, StateRep, Ack of a later term).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use axum::extract::State;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::migrate::Migrator;
use tandem_protocols::quorum_three_phase::{self as quorum, QState, QuorumThreePc};
use tandem_protocols::three_phase::{self as plain, PState, Record, Timer};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role, Start, Vote};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::api::{self, Api};
use crate::faults::{FaultOp, Message, Sender};
use crate::http::{Json, Path};
use crate::participant::branch::{self, BranchId, Seen};
use crate::participant::{self, BranchRequest, MAX_URL_LEN, PrepareRequest};
use crate::problem::Problem;
use crate::service::App;

/// Migration version of the 3PC branch table in every service.
pub const MIGRATION_VERSION: i64 = 20_261_201_021_721;
/// Migration version of the branch table's protocol and quorum columns (quorum 3PC).
pub const QUORUM_MIGRATION_VERSION: i64 = 20_261_201_131_500;

pub const DDL: &str = r#"
CREATE TABLE tpc3_branch (
    txn_id          uuid        NOT NULL,
    step            integer     NOT NULL CHECK (step BETWEEN 0 AND 63),
    n               integer     NOT NULL CHECK (n BETWEEN 1 AND 64),
    -- every participant's base URL, in the leader order (index = step)
    peers           jsonb       NOT NULL,
    coordinator_url text        NOT NULL,
    timeout_ms      bigint      NOT NULL,
    -- the core's state after its last write: working, uncertain, precommitted, committed, aborted
    state           text        NOT NULL,
    -- the core's term (0: the coordinator leads; k: participant k-1 leads)
    term            integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txn_id, step)
);
"#;

/// Which core a branch runs, and its quorums (quorum 3PC; `state` may then also be
/// `preaborted`, and `term` counts the branch's termination attempts).
pub const QUORUM_DDL: &str = r#"
ALTER TABLE tpc3_branch
    ADD COLUMN protocol      text    NOT NULL DEFAULT '3pc' CHECK (protocol IN ('3pc', '3pc-quorum')),
    ADD COLUMN commit_quorum integer CHECK (commit_quorum BETWEEN 1 AND 64),
    ADD COLUMN abort_quorum  integer CHECK (abort_quorum BETWEEN 1 AND 64);
"#;

/// `migrator` plus the 3PC branch table as version [`MIGRATION_VERSION`] and its quorum
/// columns as [`QUORUM_MIGRATION_VERSION`].
pub fn with_table(migrator: Migrator) -> Migrator {
    let m =
        crate::barrier::with_migration(migrator, MIGRATION_VERSION, "tandem kit 3pc branches", DDL);
    crate::barrier::with_migration(
        m,
        QUORUM_MIGRATION_VERSION,
        "tandem kit 3pc branch protocol and quorums",
        QUORUM_DDL,
    )
}

/// Longest accepted participant timeout.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most participants in a 3PC transaction.
pub const MAX_PARTICIPANTS: u8 = 64;

/// The protocol name of plain 3PC (`POST /transactions`, the branch row).
pub const PLAIN: &str = "3pc";
/// The protocol name of quorum-based 3PC.
pub const QUORUM: &str = "3pc-quorum";

/// Quorum 3PC's quorum sizes (every participant has one vote): `commit + abort > n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quorums {
    pub commit: u8,
    pub abort: u8,
}

impl Quorums {
    /// The default for `n` participants: a majority commits, and the smallest abort quorum
    /// that intersects it (n = 3: 2 and 2).
    pub fn majority(n: u8) -> Self {
        let commit = n / 2 + 1;
        Quorums {
            commit,
            abort: n + 1 - commit,
        }
    }

    /// 422 unless both are 1..=n and they intersect.
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    pub fn check(self, n: u8, pointer: &str) -> Result<(), Problem> {
        for (field, v) in [("commit", self.commit), ("abort", self.abort)] {
            if v == 0 || v > n {
                return Err(Problem::invalid(
                    format!("{pointer}/{field}"),
                    format!("must be 1 to n ({n})"),
                ));
            }
        }
        if u16::from(self.commit) + u16::from(self.abort) <= u16::from(n) {
            return Err(Problem::invalid(
                pointer,
                format!("commit + abort must exceed n ({n}): two quorums must intersect"),
            ));
        }
        Ok(())
    }
}

/// What the first message of a branch carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// The action's path (`/reservations`): the same effect as that saga action.
    pub action: String,
    pub body: Value,
    /// The coordinator (the orchestrator's base URL).
    pub coordinator_url: String,
    /// Every participant's base URL, index = step (the leader order after the coordinator).
    pub peers: Vec<String>,
    /// How long a participant waits for its leader (and a recovery leader for a reply).
    pub timeout_ms: u64,
    /// Quorum 3PC only (default: [`Quorums::majority`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorums: Option<Quorums>,
}

/// `POST /3pc/msg` (or `/3pc-quorum/msg`) body; `M` is the core's message type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<M = plain::Msg> {
    pub txn_id: Uuid,
    /// The receiving participant (its step index).
    pub to: u8,
    /// Participants of the transaction.
    pub n: u8,
    pub from: NodeId,
    /// The core's message; `null` is the initiator's `Begin` (to participant 0, with `setup`).
    pub msg: Option<M>,
    #[serde(default)]
    pub setup: Option<Setup>,
}

/// `POST /3pc/msg` answer; `M` and `S` are the core's message and state types.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replies<M = plain::Msg, S = PState> {
    /// What the receiver's core sent back to the sender.
    pub replies: Vec<M>,
    /// The receiver's state afterwards.
    pub state: S,
    /// A NO vote's problem.
    #[serde(default)]
    pub reason: Option<Value>,
}

/// The actions of a core.
pub type Acts<C> = Vec<Action<<C as Core>::Msg, Record, Timer>>;
/// A `POST` answer of core `C`'s route.
pub type RepliesOf<C> = Replies<<C as Core>::Msg, <C as Core>::State>;

/// A 3PC participant core as the driver runs it: plain 3PC ([`plain::Participant`]) or quorum
/// 3PC ([`quorum::Participant`]). Both log the same [`Record`]s and arm the same [`Timer`]s;
/// everything else — HTTP, timers, the prepared transaction, the branch row — is the driver's,
/// written once for both.
pub trait Core: Sized + Send + Sync + 'static {
    type Msg: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;
    type State: Copy + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The protocol's name in `POST /transactions` and the branch row.
    const PROTOCOL: &'static str;
    /// Where its messages go (`POST {service}{PATH}`).
    const PATH: &'static str;

    /// A fresh branch that voted `vote`.
    fn start(p: u8, n: u8, q: Quorums, vote: Vote) -> (Self, Acts<Self>);
    /// A branch rebuilt from its records (passive: outside the crash-stop model).
    fn recover(p: u8, n: u8, q: Quorums, log: &[Record]) -> (Self, Acts<Self>);
    fn handle(&mut self, input: Input<Self::Msg, Timer>) -> Acts<Self>;
    fn state(&self) -> Self::State;
    fn decided(&self) -> bool;
    /// The state's name in `tpc3_branch` and the view.
    fn state_name(&self) -> &'static str;
    /// The term (plain) or the termination attempts (quorum): the row's `term`.
    fn round(&self) -> u8;
    fn n(&self) -> u8;
    /// The fault `op` of a message (`None`: the initiator's Begin).
    fn fault_op(msg: Option<&Self::Msg>) -> FaultOp;
    /// The message kind counted in `/stats` and logged on the transaction.
    fn kind(msg: Option<&Self::Msg>) -> &'static str;
    /// The running branch tasks of this process that run this core.
    fn branches() -> &'static Branches<Self>;
}

/// Running branch tasks: one inbox per `(service, txn, step)`.
pub type Branches<C> = Mutex<HashMap<Key, mpsc::UnboundedSender<Job<C>>>>;

static PLAIN_BRANCHES: LazyLock<Branches<plain::Participant>> = LazyLock::new(Default::default);
static QUORUM_BRANCHES: LazyLock<Branches<quorum::Participant>> = LazyLock::new(Default::default);

impl Core for plain::Participant {
    type Msg = plain::Msg;
    type State = PState;
    const PROTOCOL: &'static str = PLAIN;
    const PATH: &'static str = "/3pc/msg";

    fn start(p: u8, n: u8, _: Quorums, vote: Vote) -> (Self, Acts<Self>) {
        plain::Participant::new(p, n, vote)
    }
    fn recover(p: u8, n: u8, _: Quorums, log: &[Record]) -> (Self, Acts<Self>) {
        plain::Participant::recover(p, n, log)
    }
    fn handle(&mut self, input: Input<Self::Msg, Timer>) -> Acts<Self> {
        Role::handle(self, input)
    }
    fn state(&self) -> PState {
        self.state
    }
    fn decided(&self) -> bool {
        matches!(self.state, PState::Committed | PState::Aborted)
    }
    fn state_name(&self) -> &'static str {
        state_name(self.state)
    }
    fn round(&self) -> u8 {
        self.term
    }
    fn n(&self) -> u8 {
        self.n
    }
    fn fault_op(msg: Option<&plain::Msg>) -> FaultOp {
        fault_op(msg)
    }
    fn kind(msg: Option<&plain::Msg>) -> &'static str {
        kind(msg)
    }
    fn branches() -> &'static Branches<Self> {
        &PLAIN_BRANCHES
    }
}

impl Core for quorum::Participant {
    type Msg = quorum::Msg;
    type State = QState;
    const PROTOCOL: &'static str = QUORUM;
    const PATH: &'static str = "/3pc-quorum/msg";

    fn start(p: u8, n: u8, q: Quorums, vote: Vote) -> (Self, Acts<Self>) {
        let sys = QuorumThreePc::new(n, q.commit, q.abort);
        <Self as Start<QuorumThreePc>>::start(&sys, NodeId::Participant(p), vote)
    }
    fn recover(p: u8, n: u8, q: Quorums, log: &[Record]) -> (Self, Acts<Self>) {
        let sys = QuorumThreePc::new(n, q.commit, q.abort);
        <Self as Start<QuorumThreePc>>::restart(&sys, NodeId::Participant(p), log)
    }
    fn handle(&mut self, input: Input<Self::Msg, Timer>) -> Acts<Self> {
        Role::handle(self, input)
    }
    fn state(&self) -> QState {
        self.state
    }
    fn decided(&self) -> bool {
        matches!(self.state, QState::Committed | QState::Aborted)
    }
    fn state_name(&self) -> &'static str {
        quorum_state_name(self.state)
    }
    fn round(&self) -> u8 {
        self.attempts
    }
    fn n(&self) -> u8 {
        self.q.n
    }
    fn fault_op(msg: Option<&quorum::Msg>) -> FaultOp {
        use quorum::Msg as Q;
        match msg {
            None | Some(Q::BeginCommit | Q::CanCommit | Q::Vote(_)) => FaultOp::Prepare,
            Some(Q::PreCommit((0, 0)) | Q::Ack((0, 0))) => FaultOp::Precommit,
            Some(Q::DoCommit) => FaultOp::Commit,
            Some(Q::Abort) => FaultOp::Abort,
            Some(_) => FaultOp::Termination,
        }
    }
    fn kind(msg: Option<&quorum::Msg>) -> &'static str {
        quorum_kind(msg)
    }
    fn branches() -> &'static Branches<Self> {
        &QUORUM_BRANCHES
    }
}

/// The message kind of quorum 3PC counted in `/stats`.
pub fn quorum_kind(msg: Option<&quorum::Msg>) -> &'static str {
    use quorum::Msg as Q;
    match msg {
        None => "3pcq_begin",
        Some(Q::BeginCommit) => "3pcq_begin_commit",
        Some(Q::CanCommit) => "3pcq_can_commit",
        Some(Q::Vote(_)) => "3pcq_vote",
        Some(Q::PreCommit(_)) => "3pcq_pre_commit",
        Some(Q::PreAbort(_)) => "3pcq_pre_abort",
        Some(Q::Ack(_)) => "3pcq_ack",
        Some(Q::DoCommit) => "3pcq_do_commit",
        Some(Q::Abort) => "3pcq_abort",
        Some(Q::StateReq(_)) => "3pcq_state_req",
        Some(Q::StateRep(..)) => "3pcq_state_rep",
    }
}

/// The fault `op` of a 3PC message.
pub fn fault_op(msg: Option<&plain::Msg>) -> FaultOp {
    use plain::Msg;
    match msg {
        None | Some(Msg::BeginCommit | Msg::CanCommit | Msg::Vote(_)) => FaultOp::Prepare,
        Some(Msg::PreCommit { term: 0 } | Msg::Ack { term: 0 }) => FaultOp::Precommit,
        Some(Msg::DoCommit) => FaultOp::Commit,
        Some(Msg::Abort) => FaultOp::Abort,
        Some(_) => FaultOp::Termination,
    }
}

/// The message kind counted in `/stats`.
pub fn kind(msg: Option<&plain::Msg>) -> &'static str {
    use plain::Msg;
    match msg {
        None => "3pc_begin",
        Some(Msg::BeginCommit) => "3pc_begin_commit",
        Some(Msg::CanCommit) => "3pc_can_commit",
        Some(Msg::Vote(_)) => "3pc_vote",
        Some(Msg::PreCommit { .. }) => "3pc_pre_commit",
        Some(Msg::Ack { .. }) => "3pc_ack",
        Some(Msg::DoCommit) => "3pc_do_commit",
        Some(Msg::Abort) => "3pc_abort",
        Some(Msg::StateReq { .. }) => "3pc_state_req",
        Some(Msg::StateRep { .. }) => "3pc_state_rep",
        Some(Msg::Suspect { .. }) => "3pc_suspect",
    }
}

/// POST an envelope to `{base}{C::PATH}`: the receiver's replies, or what went wrong.
pub async fn send<C: Core>(
    http: &reqwest::Client,
    base: &str,
    env: &Envelope<C::Msg>,
    timeout: Duration,
) -> Result<Replies<C::Msg, C::State>, String> {
    let url = format!("{}{}", base.trim_end_matches('/'), C::PATH);
    crate::paxos::call_within(http, &url, env, timeout).await
}

/// The body schema of a message route.
fn envelope_schema() -> Value {
    json!({
        "type": "object",
        "required": ["txn_id", "to", "n", "from"],
        "properties": {
            "txn_id": {"type": "string", "format": "uuid"},
            "to": {"type": "integer", "minimum": 0, "maximum": 255},
            "n": {"type": "integer", "minimum": 1, "maximum": 255},
            "from": {
                "description": "the sender's node id",
                "oneOf": (["Coordinator", "Participant", "Acceptor"].map(|k| json!({
                    "type": "object",
                    "required": [k],
                    "properties": {k: {"type": "integer", "minimum": 0, "maximum": 255}},
                    "additionalProperties": false
                })))
            },
            "msg": {"type": ["object", "string", "null"], "description": "the core's message; null: participant 0's Begin"},
            "setup": {"type": "object", "description": "peers, action, body, timeout (and quorums: `{\"commit\", \"abort\"}`, quorum 3PC only)"}
        },
        "additionalProperties": false
    })
}

/// The 3PC participant endpoints (plain and quorum).
pub fn routes() -> Api<App> {
    Api::new()
        .route(
            plain::Participant::PATH,
            api::post("A 3PC message (the core's, between coordinator and participants)")
                .body_json(envelope_schema())
                .answer_schema(
                    200,
                    "`{\"replies\", \"state\"}`: what the receiver's core sent back",
                    api::object(),
                ),
            receive::<plain::Participant>,
        )
        .route(
            quorum::Participant::PATH,
            api::post("A quorum-based 3PC message (Skeen's quorum protocol's core)")
                .body_json(envelope_schema())
                .answer_schema(
                    200,
                    "`{\"replies\", \"state\"}`: what the receiver's core sent back",
                    api::object(),
                ),
            receive::<quorum::Participant>,
        )
        .route(
            "/3pc/{txn_id}",
            api::get("This service's 3PC branches of a transaction (plain and quorum)")
                .path_uuid()
                .answer_schema(200, "the branches' states", api::object()),
            view,
        )
}

#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn check<C: Core>(env: &Envelope<C::Msg>) -> Result<(), Problem> {
    if env.n == 0 || env.n > MAX_PARTICIPANTS {
        return Err(Problem::invalid(
            "/n",
            format!("must be 1 to {MAX_PARTICIPANTS}"),
        ));
    }
    if env.to >= env.n {
        return Err(Problem::invalid("/to", "must be below n"));
    }
    if env.msg.is_none() && (env.to != 0 || env.setup.is_none()) {
        return Err(Problem::invalid(
            "/msg",
            "null (Begin) goes to participant 0 with a setup",
        ));
    }
    if let Some(s) = &env.setup {
        if s.peers.len() != usize::from(env.n) {
            return Err(Problem::invalid("/setup/peers", "must list n base URLs"));
        }
        let urls = s
            .peers
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("/setup/peers/{i}"), u))
            .chain(std::iter::once((
                "/setup/coordinator_url".to_string(),
                &s.coordinator_url,
            )));
        for (pointer, url) in urls {
            let ok = url.len() <= MAX_URL_LEN
                && reqwest::Url::parse(url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return Err(Problem::invalid(pointer, "must be an http(s) URL"));
            }
        }
        if s.timeout_ms == 0 || s.timeout_ms > MAX_TIMEOUT_MS {
            return Err(Problem::invalid(
                "/setup/timeout_ms",
                format!("must be 1 to {MAX_TIMEOUT_MS}"),
            ));
        }
        match (C::PROTOCOL == QUORUM, s.quorums) {
            (true, Some(q)) => q.check(env.n, "/setup/quorums")?,
            (false, Some(_)) => {
                return Err(Problem::invalid(
                    "/setup/quorums",
                    format!("only quorum 3PC ({QUORUM}) has quorums"),
                ));
            }
            (_, None) => {}
        }
    }
    Ok(())
}

async fn receive<C: Core>(
    State(app): State<App>,
    from: Sender,
    Json(env): Json<Envelope<C::Msg>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let m = Message {
        op: C::fault_op(env.msg.as_ref()),
        key: None,
        order_id: env
            .setup
            .as_ref()
            .and_then(|s| s.body.get("order_id"))
            .and_then(Value::as_str),
        txn_id: Some(env.txn_id),
        from: from.0.as_deref(),
    };
    let injection = match app.faults.intercept(m).await {
        Err(refused) => return refused,
        Ok(injection) => injection,
    };
    crate::stats::message_received(&app.db, C::kind(env.msg.as_ref()));
    let answer = match check::<C>(&env) {
        Err(p) => p.into_response(),
        Ok(()) => match deliver::<C>(&app, env).await {
            Ok(r) => Json(r).into_response(),
            Err(p) => p.into_response(),
        },
    };
    injection.finish(answer)
}

/// What reaches a branch's task.
pub struct Job<C: Core> {
    from: NodeId,
    msg: Option<C::Msg>,
    setup: Option<Setup>,
    n: u8,
    /// The HTTP request waiting for the replies (none for a reply fed back).
    answer: Option<oneshot::Sender<Result<RepliesOf<C>, Problem>>>,
}

/// A branch task's key: (service, transaction, step).
pub type Key = (&'static str, Uuid, u8);

/// Hand the message to its branch's task (starting one if none runs) and wait for the replies.
async fn deliver<C: Core>(app: &App, env: Envelope<C::Msg>) -> Result<RepliesOf<C>, Problem> {
    let (tx, rx) = oneshot::channel();
    let job = Job {
        from: env.from,
        msg: env.msg,
        setup: env.setup,
        n: env.n,
        answer: Some(tx),
    };
    submit::<C>(app, env.txn_id, env.to, job);
    rx.await
        .unwrap_or_else(|_| Err(Problem::unavailable("the branch's task ended; resend")))
}

/// Queue `job` for branch `(txn, p)`, starting its task if none runs.
fn submit<C: Core>(app: &App, txn: Uuid, p: u8, job: Job<C>) {
    let key = (app.spec.name, txn, p);
    let mut map = C::branches().lock().expect("3pc branches lock");
    let job = match map.get(&key) {
        Some(tx) => match tx.send(job) {
            Ok(()) => return,
            Err(mpsc::error::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(job);
    map.insert(key, tx);
    let app = app.clone();
    tokio::spawn(async move {
        run::<C>(&app, txn, p, rx).await;
        let mut map = C::branches().lock().expect("3pc branches lock");
        if map.get(&key).is_some_and(|tx| tx.is_closed()) {
            map.remove(&key);
        }
    });
}

/// The branch's setup as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    n: i32,
    peers: sqlx::types::Json<Vec<String>>,
    timeout_ms: i64,
    state: String,
    protocol: String,
    commit_quorum: Option<i32>,
    abort_quorum: Option<i32>,
}

/// One branch: its core, timers and where its messages go.
struct Branch<'a, C: Core> {
    app: &'a App,
    id: BranchId,
    p: u8,
    core: C,
    peers: Vec<String>,
    timeout: Duration,
    timers: HashMap<Timer, Instant>,
    reason: Option<Value>,
    http: reqwest::Client,
    tx: mpsc::UnboundedSender<Job<C>>,
}

/// A branch's task: open it with its first job, then handle jobs and timers until it decided.
async fn run<C: Core>(app: &App, txn: Uuid, p: u8, mut rx: mpsc::UnboundedReceiver<Job<C>>) {
    let Some(first) = rx.recv().await else { return };
    let id = BranchId {
        txn_id: txn,
        step: u16::from(p),
    };
    let key = (app.spec.name, txn, p);
    let tx = match C::branches().lock().expect("3pc branches lock").get(&key) {
        Some(tx) => tx.clone(),
        None => return,
    };
    let mut b = match Branch::open(app, id, p, &first, tx).await {
        Ok(b) => b,
        Err(problem) => {
            if let Some(answer) = first.answer {
                let _ = answer.send(Err(problem));
            }
            return;
        }
    };
    b.handle(first).await;
    while !b.core.decided() {
        let next = b.timers.iter().min_by_key(|(_, at)| **at);
        let next = next.map(|(t, at)| (t.clone(), *at));
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => b.handle(job).await,
                None => return,
            },
            _ = tokio::time::sleep_until(next.as_ref().map_or(far, |n| n.1)), if next.is_some() => {
                let timer = next.expect("armed").0;
                b.timers.remove(&timer);
                tracing::info!(branch = %b.id, ?timer, protocol = C::PROTOCOL, "3pc: timeout");
                let actions = b.core.handle(Input::Timeout(timer));
                let mut replies = vec![];
                if let Err(p) = b.execute(actions, None, &mut replies).await {
                    tracing::warn!(branch = %b.id, problem = %p, "3pc: executing a timeout failed");
                }
            }
        }
    }
    // Decided: later messages (a state request, a duplicate decision) rebuild the branch from
    // the database. Jobs already queued are answered first.
    rx.close();
    while let Some(job) = rx.recv().await {
        b.handle(job).await;
    }
}

impl<'a, C: Core> Branch<'a, C> {
    async fn open(
        app: &'a App,
        id: BranchId,
        p: u8,
        first: &Job<C>,
        tx: mpsc::UnboundedSender<Job<C>>,
    ) -> Result<Branch<'a, C>, Problem> {
        let http = reqwest::Client::builder()
            .default_headers(app.client_headers())
            .build()
            .map_err(Problem::internal)?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT n, peers, timeout_ms, state, protocol, commit_quorum, abort_quorum
             FROM tpc3_branch WHERE txn_id = $1 AND step = $2",
        )
        .bind(id.txn_id)
        .bind(i32::from(id.step))
        .fetch_optional(&app.postgres()?.control)
        .await?;
        crate::stats::read_committed(&app.db);
        let default_q = Quorums::majority(first.n);
        let mut b = Branch {
            app,
            id,
            p,
            core: C::recover(p, first.n, default_q, &[]).0,
            peers: vec![],
            timeout: Duration::from_secs(1),
            timers: HashMap::new(),
            reason: None,
            http,
            tx,
        };
        match (row, &first.setup) {
            (Some(row), _) => b.reopen(row, first.n).await?,
            (None, Some(setup)) => {
                b.peers.clone_from(&setup.peers);
                b.timeout = Duration::from_millis(setup.timeout_ms);
                let q = setup.quorums.unwrap_or(default_q);
                b.log_setup(first.n, setup, q).await?;
                let vote = match b.prepare_locally(setup).await {
                    Ok(vote) => vote,
                    // The local work could not run now (a lock wait past `lock_timeout`,
                    // prepared transactions unavailable): vote NO at once. Waiting for a resend
                    // would leave the branch `working` for good when the coordinator is gone,
                    // and a resend would find no prepared work and abort anyway.
                    Err(p) if p.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                        b.reason =
                            Some(json!({ "type": p.slug, "title": p.title, "detail": p.detail }));
                        Vote::No
                    }
                    Err(p) => return Err(p),
                };
                let (core, actions) = C::start(p, first.n, q, vote);
                b.core = core;
                b.execute(actions, None, &mut vec![]).await?;
            }
            (None, None) => {
                // Never asked to vote (its CanCommit lost or not yet arrived): a core that has
                // not voted; it aborts when asked for its state or told to abort.
                let (core, actions) = C::start(p, first.n, default_q, Vote::No);
                b.core = core;
                b.execute(actions, None, &mut vec![]).await?;
            }
        }
        Ok(b)
    }

    /// A branch seen before (by a task of this process that ended, or before a restart):
    /// rebuilt from its row and Postgres's records, passive.
    async fn reopen(&mut self, row: Row, first_n: u8) -> Result<(), Problem> {
        if row.protocol != C::PROTOCOL {
            return Err(Problem::conflict(
                "protocol-mismatch",
                format!(
                    "branch {} runs {}, not {}: send its messages to its own route",
                    self.id,
                    row.protocol,
                    C::PROTOCOL
                ),
            ));
        }
        // Seen before by a task of this process that ended, or before a restart.
        self.peers = row.peers.0;
        self.timeout = Duration::from_millis(u64::try_from(row.timeout_ms).unwrap_or(1000));
        let n = u8::try_from(row.n).unwrap_or(first_n);
        let q = match (row.commit_quorum, row.abort_quorum) {
            (Some(c), Some(a)) => Quorums {
                commit: u8::try_from(c).unwrap_or(n),
                abort: u8::try_from(a).unwrap_or(n),
            },
            _ => Quorums::majority(n),
        };
        let seen =
            branch::seen(&mut *self.app.postgres()?.control.acquire().await?, self.id).await?;
        crate::stats::read_committed(&self.app.db);
        let log: &[Record] = match (&seen, row.state.as_str()) {
            (Seen::Committed, _) => &[Record::Prepared, Record::Committed],
            (Seen::Aborted { .. }, _) => &[Record::Aborted],
            (Seen::Prepared, "precommitted") => &[Record::Prepared, Record::PreCommitted],
            (Seen::Prepared, "preaborted") => &[Record::Prepared, Record::PreAborted],
            (Seen::Prepared, _) => &[Record::Prepared],
            (Seen::Unknown | Seen::Preparing, _) => &[],
        };
        if let Seen::Aborted { reason } = &seen {
            self.reason.clone_from(reason);
        }
        let (core, actions) = C::recover(self.p, n, q, log);
        self.core = core;
        self.execute(actions, None, &mut vec![]).await?;
        Ok(())
    }

    /// The branch row (its setup, protocol and quorums), committed before the effect runs.
    async fn log_setup(&self, n: u8, s: &Setup, q: Quorums) -> Result<(), Problem> {
        let quorum = C::PROTOCOL == QUORUM;
        sqlx::query(
            "INSERT INTO tpc3_branch (txn_id, step, n, peers, coordinator_url, timeout_ms, state,
                                      protocol, commit_quorum, abort_quorum)
             VALUES ($1, $2, $3, $4, $5, $6, 'working', $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(self.id.txn_id)
        .bind(i32::from(self.id.step))
        .bind(i32::from(n))
        .bind(sqlx::types::Json(&s.peers))
        .bind(&s.coordinator_url)
        .bind(i64::try_from(s.timeout_ms).unwrap_or(i64::MAX))
        .bind(C::PROTOCOL)
        .bind(quorum.then_some(i32::from(q.commit)))
        .bind(quorum.then_some(i32::from(q.abort)))
        .execute(&self.app.postgres()?.control)
        .await?;
        crate::stats::write_committed(&self.app.db);
        Ok(())
    }

    /// The core's `ForceWrite(Prepared)` is the 2PC participant's local prepare; it runs before
    /// the core is built, because the effect decides the vote.
    async fn prepare_locally(&mut self, s: &Setup) -> Result<Vote, Problem> {
        let req = PrepareRequest {
            txn_id: self.id.txn_id,
            step: self.id.step,
            action: s.action.clone(),
            body: s.body.clone(),
            coordinator_url: s.coordinator_url.clone(),
        };
        let answer = participant::prepare_branch(self.app, &req)
            .await
            .map_err(|mut p| {
                for issue in &mut p.errors {
                    issue.pointer = format!("/setup{}", issue.pointer);
                }
                p
            })?;
        if answer["vote"] == "yes" {
            Ok(Vote::Yes)
        } else {
            self.reason = answer.get("reason").cloned();
            Ok(Vote::No)
        }
    }

    /// Feed one message to the core and answer its sender.
    async fn handle(&mut self, job: Job<C>) {
        let input = match job.msg {
            None => Input::Begin,
            Some(msg) => Input::Receive {
                from: job.from,
                msg,
            },
        };
        let actions = self.core.handle(input);
        let mut replies = vec![];
        // Only a request waiting for its answer takes replies: to the sender of a reply fed
        // back (a StateRep, an Ack) the core's messages go out as messages of their own.
        let sender = job.answer.is_some().then_some(job.from);
        let done = self.execute(actions, sender, &mut replies).await;
        if let Some(answer) = job.answer {
            let _ = answer.send(done.map(|()| Replies {
                replies,
                state: self.core.state(),
                reason: self.reason.clone(),
            }));
        } else if let Err(p) = done {
            tracing::warn!(branch = %self.id, problem = %p, "3pc: executing a reply failed");
        }
    }

    /// Execute the core's actions in order; sends to `sender` become `replies`.
    async fn execute(
        &mut self,
        actions: Acts<C>,
        sender: Option<NodeId>,
        replies: &mut Vec<C::Msg>,
    ) -> Result<(), Problem> {
        let branch = BranchRequest {
            txn_id: self.id.txn_id,
            step: self.id.step,
        };
        for action in actions {
            match action {
                // Done by the local prepare, before the core was built.
                Action::ForceWrite(Record::Prepared) => self.write_state().await?,
                Action::Write(Record::PreCommitted | Record::PreAborted) => {
                    self.write_state().await?;
                }
                Action::ForceWrite(Record::Committed) => {
                    participant::commit(self.app, &branch).await?;
                    tracing::info!(branch = %self.id, round = self.core.round(), protocol = C::PROTOCOL, "3pc: committed");
                    self.write_state().await?;
                }
                Action::Write(Record::Aborted) => {
                    participant::abort(self.app, &branch).await?;
                    tracing::info!(branch = %self.id, round = self.core.round(), protocol = C::PROTOCOL, "3pc: aborted");
                    self.write_state().await?;
                }
                Action::Decide(Outcome::Abort) => {
                    // After a NO vote or a recovery that finds no prepared work, the abort is
                    // the decision itself (idempotent after `Write(Aborted)`).
                    participant::abort(self.app, &branch).await?;
                    self.write_state().await?;
                }
                Action::Decide(Outcome::Commit) | Action::Forget => {}
                Action::Send { to, msg } if Some(to) == sender => replies.push(msg),
                Action::Send {
                    to: NodeId::Participant(q),
                    msg,
                } => self.send(q, msg),
                Action::Send { to, msg } => {
                    tracing::warn!(branch = %self.id, ?to, ?msg, "3pc: no route to this node outside a reply");
                }
                Action::SetTimer(t) => {
                    self.timers.insert(t, Instant::now() + self.timeout);
                }
                Action::CancelTimer(t) => {
                    self.timers.remove(&t);
                }
                Action::ForceWrite(r) | Action::Write(r) => {
                    return Err(Problem::internal(format!(
                        "branch {}: the {} participant core asked to write {r:?}",
                        self.id,
                        C::PROTOCOL
                    )));
                }
            }
        }
        Ok(())
    }

    /// `tpc3_branch.state` and `term` from the core (no-op for a branch without a row).
    async fn write_state(&self) -> Result<(), Problem> {
        sqlx::query(
            "UPDATE tpc3_branch SET state = $3, term = $4, updated_at = now()
             WHERE txn_id = $1 AND step = $2",
        )
        .bind(self.id.txn_id)
        .bind(i32::from(self.id.step))
        .bind(self.core.state_name())
        .bind(i32::from(self.core.round()))
        .execute(&self.app.postgres()?.control)
        .await?;
        crate::stats::write_committed(&self.app.db);
        Ok(())
    }

    /// `POST {peers[q]}{C::PATH}` in the background; its replies come back as messages from
    /// `q`.
    fn send(&self, q: u8, msg: C::Msg) {
        let Some(base) = self.peers.get(usize::from(q)).cloned() else {
            tracing::warn!(branch = %self.id, q, "3pc: no address for participant");
            return;
        };
        let env = Envelope {
            txn_id: self.id.txn_id,
            to: q,
            n: self.core.n(),
            from: NodeId::Participant(self.p),
            msg: Some(msg),
            setup: None,
        };
        let (http, timeout, tx, app) = (
            self.http.clone(),
            self.timeout,
            self.tx.clone(),
            self.app.db.clone(),
        );
        let id = self.id;
        tokio::spawn(async move {
            crate::stats::message_sent(&app, C::kind(env.msg.as_ref()));
            match send::<C>(&http, &base, &env, timeout).await {
                Ok(r) => {
                    for msg in r.replies {
                        let _ = tx.send(Job {
                            from: NodeId::Participant(q),
                            msg: Some(msg),
                            setup: None,
                            n: env.n,
                            answer: None,
                        });
                    }
                }
                Err(e) => {
                    tracing::info!(branch = %id, error = %e, "3pc: a message was not delivered")
                }
            }
        });
    }
}

/// The state's name in `tpc3_branch` and the view.
pub fn state_name(s: PState) -> &'static str {
    match s {
        PState::Working => "working",
        PState::Uncertain => "uncertain",
        PState::PreCommitted => "precommitted",
        PState::Committed => "committed",
        PState::Aborted => "aborted",
    }
}

/// A quorum 3PC state's name in `tpc3_branch` and the view.
pub fn quorum_state_name(s: QState) -> &'static str {
    match s {
        QState::Working => "working",
        QState::Uncertain => "uncertain",
        QState::PreCommitted => "precommitted",
        QState::PreAborted => "preaborted",
        QState::Committed => "committed",
        QState::Aborted => "aborted",
    }
}

/// `GET /3pc/{txn_id}`: this service's branches of a transaction (protocol, state, term — for
/// quorum 3PC the termination attempts as of the last state write —, when the branch began and
/// last changed, and whether Postgres still holds a prepared transaction for it).
async fn view(State(app): State<App>, Path(txn_id): Path<Uuid>) -> Result<Json<Value>, Problem> {
    type At = chrono::DateTime<chrono::Utc>;
    type ViewRow = (i32, String, i32, At, String, At);
    let rows: Vec<ViewRow> = sqlx::query_as(
        "SELECT step, state, term, updated_at, protocol, created_at FROM tpc3_branch
         WHERE txn_id = $1 ORDER BY step",
    )
    .bind(txn_id)
    .fetch_all(&app.postgres()?.control)
    .await?;
    crate::stats::read_committed(&app.db);
    let mut branches = vec![];
    for (step, state, term, updated_at, protocol, created_at) in rows {
        let id = BranchId {
            txn_id,
            step: u16::try_from(step).unwrap_or(0),
        };
        let seen = branch::seen(&mut *app.postgres()?.control.acquire().await?, id).await?;
        branches.push(json!({
            "step": step, "state": state, "term": term, "updated_at": updated_at,
            "prepared": seen == Seen::Prepared, "protocol": protocol, "created_at": created_at,
        }));
    }
    Ok(Json(
        json!({ "txn_id": txn_id, "service": app.spec.name, "branches": branches }),
    ))
}
