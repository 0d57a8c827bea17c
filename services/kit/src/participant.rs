//! The 2PC participant of every service: the service's saga actions ([`crate::effect`]) run as
//! prepared Postgres transactions. The behaviour is `tandem_protocols::two_phase::Participant`;
//! this module is its driver — it rebuilds the core for a branch from what the database says
//! ([`branch::seen`]), feeds it the request as a message, and executes the actions it returns,
//! in order, and nothing else:
//!
//! | core action | here |
//! |---|---|
//! | `ForceWrite(Prepared)` | `PREPARE TRANSACTION '<gid>'` on the transaction holding the effect |
//! | `ForceWrite(Committed)` | `COMMIT PREPARED '<gid>'` |
//! | `Write(Aborted)` | `ROLLBACK PREPARED '<gid>'`, branch row `aborted` |
//! | `Decide(Abort)` | drop the unprepared work (`ROLLBACK`), branch row `aborted` |
//! | `Send(Vote)`, `Send(Ack)` | the HTTP answer |
//! | `Send(Query)` | `GET {coordinator}/transactions/{txn}/decision` ([`recovery`]) |
//! | `SetTimer(InDoubt)` | the resolver loop asks again for branches prepared longer than `TPC_IN_DOUBT_AFTER_MS` |
//!
//! Endpoints (every answer to a bad request is a problem, never a 500 for a protocol case):
//!
//! - `POST /2pc/prepare` `{"txn_id", "step", "action": "<action path>", "body", "coordinator_url"}`:
//!   the branch row is committed first, then the action's effect runs in a transaction (with
//!   the business pool's `lock_timeout`) that is prepared → `{"vote": "yes"}`; a 409 business
//!   refusal or a full prepared-transaction table → `{"vote": "no", "reason": problem}`; prepare
//!   after abort → `no`; a duplicate → the same vote; a lock wait past `lock_timeout`, or the
//!   same branch's prepare still in flight → 503 + `Retry-After`; prepared transactions
//!   disabled → 503 `prepared-transactions-disabled`.
//! - `POST /2pc/commit` `{"txn_id", "step"}` → `{"state": "committed"}` (again for a duplicate);
//!   unknown branch → 404 `unknown-transaction`; aborted → 409 `already-aborted`; prepare not
//!   completed → 409 `not-prepared`.
//! - `POST /2pc/abort` → `{"state": "aborted"}` (an unknown branch gets a tombstone so that a
//!   late prepare votes NO); committed → 409 `already-committed`; its prepare in flight → 503.
//! - `GET /2pc/status`: capability, prepared branches and their age, lock waits.
//!
//! Commit, abort, status and recovery use the service's small control pool, never the business
//! pool, so they never wait behind business traffic for a connection.

pub mod branch;
mod recovery;
mod work;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_protocols::two_phase::{Msg, PartState, Participant, Record};
use tandem_protocols::{Action, Actions, Input, NodeId, Outcome, Role, Vote};
use uuid::Uuid;

use crate::api::{self, Api};
use crate::effect::{Accepted, Origin};
use crate::faults::{FaultOp, Message, Sender};
use crate::http::Json;
use crate::problem::Problem;
use crate::service::App;
use branch::{BranchId, Seen};
use work::Work;

pub use recovery::{recover_at_start, resolve_in_doubt};

const COORDINATOR: NodeId = NodeId::Coordinator(0);
/// Longest accepted coordinator URL.
pub const MAX_URL_LEN: usize = 2048;

/// What the documents say of a URL field ([`is_http_url`]): a subset of what is taken —
/// `http` or `https` (any case), a host name whose last label begins with a letter or a dotted
/// IPv4 address, an optional port, an optional path of visible ASCII.
pub const HTTP_URL_PATTERN: &str = r"^[Hh][Tt][Tt][Pp][Ss]?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9]))(:[0-9]{1,4})?(/[!-~]*)?$";

/// An http(s) URL with a host, of at most [`MAX_URL_LEN`] bytes: what a participant calls back.
pub fn is_http_url(url: &str) -> bool {
    url.len() <= MAX_URL_LEN
        && reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// `POST /2pc/prepare` body (its document: [`prepare_schema`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    pub txn_id: Uuid,
    pub step: u16,
    /// The action's path (`/reservations`): the same effect as that saga action.
    pub action: String,
    /// The action's request body.
    pub body: Value,
    /// Where the participant asks for the decision: an http(s) URL.
    pub coordinator_url: String,
}

/// `POST /2pc/commit` and `POST /2pc/abort` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    pub txn_id: Uuid,
    #[schema(maximum = 65535)]
    pub step: u16,
}

impl BranchRequest {
    fn id(&self) -> BranchId {
        BranchId {
            txn_id: self.txn_id,
            step: self.step,
        }
    }
}

/// [`PrepareRequest`] as [`accept`] takes it: `action` one of `actions` (this service's action
/// paths), `coordinator_url` an http(s) URL ([`HTTP_URL_PATTERN`]). `body` is checked as that
/// action's request (422 naming `/body/…`), which this schema leaves to the action's own.
fn prepare_schema(actions: Vec<&'static str>) -> Value {
    json!({
        "type": "object",
        "required": ["txn_id", "step", "action", "body", "coordinator_url"],
        "properties": {
            "txn_id": {"type": "string", "format": "uuid"},
            "step": {"type": "integer", "minimum": 0, "maximum": 65535},
            "action": {"type": "string", "enum": actions, "description": "the action's path: the same effect as that saga action"},
            "body": {"description": "the action's request body"},
            "coordinator_url": {"type": "string", "maxLength": MAX_URL_LEN, "pattern": HTTP_URL_PATTERN}
        },
        "additionalProperties": false
    })
}

/// The participant endpoints. Prepare, commit and abort go through the receiver's faults
/// ([`crate::faults`], scoped by `txn_id`, the prepare body's `order_id`, and the sender); each
/// request and response is counted as a message ([`crate::stats`]).
pub fn routes(app: &App) -> Api<App> {
    Api::new()
        .route(
            "/2pc/prepare",
            api::post("2PC prepare: run the action's effect and PREPARE TRANSACTION")
                .body_json(prepare_schema(app.spec.actions.iter().map(|a| a.path()).collect()))
                .answer_schema(200, "`{\"vote\": \"yes\"}` or `{\"vote\": \"no\", \"reason\"}`", api::object())
                .error(409, "this branch was already decided"),
            |State(app): State<App>, from: Sender, Json(req): Json<PrepareRequest>| async move {
                let order = req.body.get("order_id").and_then(Value::as_str);
                let m = message(FaultOp::Prepare, req.txn_id, order, &from);
                with_faults(&app, m, prepare(&app, &req)).await
            },
        )
        .route(
            "/2pc/commit",
            branch_op("2PC commit: COMMIT PREPARED (idempotent)"),
            |State(app): State<App>, from: Sender, Json(req): Json<BranchRequest>| {
                branch(FaultOp::Commit, app, from, req)
            },
        )
        .route(
            "/2pc/abort",
            branch_op("2PC abort: ROLLBACK PREPARED (idempotent; before its prepare: the late prepare votes no)"),
            |State(app): State<App>, from: Sender, Json(req): Json<BranchRequest>| {
                branch(FaultOp::Abort, app, from, req)
            },
        )
        .route(
            "/2pc/status",
            api::get("2PC capability, prepared transactions and their age, lock waits")
                .answer_schema(200, "the status", api::object()),
            status,
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_messages,
        ))
}

/// A request to a participant endpoint and its response are two messages (docs/
/// commit-protocols.md), counted under this service's database.
async fn count_messages(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (request, response) = message_kinds(req.uri().path());
    crate::stats::message_received(&app.db, request);
    let answer = next.run(req).await;
    crate::stats::message_sent(&app.db, response);
    answer
}

/// The message kinds of a participant endpoint's request and its response.
fn message_kinds(path: &str) -> (&'static str, &'static str) {
    match path {
        "/2pc/prepare" => ("prepare", "vote"),
        "/2pc/commit" => ("commit", "ack"),
        "/2pc/abort" => ("abort", "abort_ack"),
        _ => ("status", "status_reply"),
    }
}

/// How `POST /2pc/commit` and `POST /2pc/abort` are documented.
fn branch_op(summary: &str) -> api::Op {
    api::post(summary)
        .body::<BranchRequest>()
        .answer_schema(200, "the branch's outcome", api::object())
        .error(
            409,
            "the other outcome was applied (abort after commit, commit after abort)",
        )
}

/// `POST /2pc/commit` (`op` commit) or `POST /2pc/abort`, under this node's faults.
async fn branch(op: FaultOp, app: App, from: Sender, req: BranchRequest) -> Response {
    let m = message(op, req.txn_id, None, &from);
    if op == FaultOp::Commit {
        with_faults(&app, m, commit(&app, &req)).await
    } else {
        with_faults(&app, m, abort(&app, &req)).await
    }
}

/// A 2PC message as faults see it.
fn message<'a>(
    op: FaultOp,
    txn_id: Uuid,
    order_id: Option<&'a str>,
    from: &'a Sender,
) -> Message<'a> {
    Message {
        op,
        key: None,
        order_id,
        txn_id: Some(txn_id),
        from: from.0.as_deref(),
    }
}

/// Run `handler` under this node's faults for the message `m`.
async fn with_faults<T: IntoResponse>(
    app: &App,
    m: Message<'_>,
    handler: impl Future<Output = T>,
) -> Response {
    app.faults.apply(m, handler).await
}

async fn prepare(app: &App, req: &PrepareRequest) -> Result<Json<Value>, Problem> {
    prepare_branch(app, req).await.map(Json)
}

/// The branch's local prepare (the effect in a prepared transaction), as `POST /2pc/prepare`
/// runs it: the answer with its `vote`. Paxos Commit's participant ([`crate::paxos`]) prepares
/// its branch the same way.
pub(crate) async fn prepare_branch(app: &App, req: &PrepareRequest) -> Result<Value, Problem> {
    let accepted = accept(app, req)?;
    require_capability(app).await?;
    let id = BranchId {
        txn_id: req.txn_id,
        step: req.step,
    };
    branch::log_preparing(
        &app.postgres()?.control,
        id,
        &req.action,
        &req.coordinator_url,
    )
    .await?;
    let mut driver = Driver::new(app, id);
    driver.prepare(accepted).await?;
    let vote = driver.sent.iter().find_map(|m| match m {
        Msg::Vote(v) => Some(*v),
        _ => None,
    });
    let mut answer = json!({ "txn_id": id.txn_id, "step": id.step });
    match (vote, driver.core.state) {
        (Some(Vote::Yes), _) | (None, PartState::Committed) => answer["vote"] = json!("yes"),
        (Some(Vote::No), _) | (None, PartState::Aborted) => {
            answer["vote"] = json!("no");
            answer["reason"] = driver.reason.clone().unwrap_or(Value::Null);
        }
        (None, state) => {
            return Err(Problem::internal(format!(
                "branch {id}: the participant core answered nothing to a prepare in {state:?}"
            )));
        }
    }
    Ok(answer)
}

/// The request's action and body, parsed and validated like the saga action's (pointers under
/// `/body`).
#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn accept(app: &App, req: &PrepareRequest) -> Result<Accepted, Problem> {
    if !is_http_url(&req.coordinator_url) {
        return Err(Problem::invalid(
            "/coordinator_url",
            format!("must be an http(s) URL of at most {MAX_URL_LEN} bytes"),
        ));
    }
    let Some(endpoint) = app.spec.actions.iter().find(|a| a.path() == req.action) else {
        let known: Vec<&str> = app.spec.actions.iter().map(|a| a.path()).collect();
        return Err(Problem::invalid(
            "/action",
            format!(
                "is not an action of this service (known: {})",
                known.join(", ")
            ),
        ));
    };
    endpoint
        .accept(req.body.clone())
        .map_err(|p| p.nested_under("/body"))
}

/// 503 naming the setting when this server cannot prepare transactions.
async fn require_capability(app: &App) -> Result<(), Problem> {
    // On SQLite: the same answer, naming the SQLite file.
    app.postgres()?;
    if max_prepared_transactions(app).await? > 0 {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "prepared-transactions-disabled",
        "Prepared transactions are disabled",
    )
    .detail("this service's Postgres has max_prepared_transactions = 0; set it above 0 (e.g. 256) and restart Postgres")
    .with("setting", "max_prepared_transactions"))
}

async fn max_prepared_transactions(app: &App) -> Result<i64, Problem> {
    let v: String = sqlx::query_scalar("SELECT current_setting('max_prepared_transactions')")
        .fetch_one(&app.postgres()?.control)
        .await?;
    crate::stats::read_committed(&app.db);
    Ok(v.parse().unwrap_or(0))
}

pub(crate) async fn commit(app: &App, req: &BranchRequest) -> Result<Json<Value>, Problem> {
    let id = req.id();
    // Looked at before the core is rebuilt, and the core is rebuilt from this one reading:
    // rebuilding an unknown or unprepared branch decides abort, which a commit must never
    // write. (A second reading could differ from the first; a stale `Prepared` is harmless:
    // `finish_prepared` finds the branch committed by a concurrent duplicate.)
    let seen = seen_now(app, id).await?;
    match seen {
        Seen::Unknown => return Err(unknown(id)),
        Seen::Preparing => {
            return Err(
                Problem::conflict("not-prepared", "Not prepared").detail(format!(
                    "branch {id} has no prepared transaction: its prepare did not complete"
                )),
            );
        }
        _ => {}
    }
    let mut driver = Driver::new(app, id);
    driver.rebuild(&seen).await?;
    driver.receive(Msg::Outcome(Outcome::Commit)).await?;
    match driver.core.state {
        PartState::Committed => Ok(Json(
            json!({ "txn_id": id.txn_id, "step": id.step, "state": "committed" }),
        )),
        _ => Err(
            Problem::conflict("already-aborted", "Already aborted").detail(format!(
                "branch {id} was aborted; it cannot commit (a coordinator bug)"
            )),
        ),
    }
}

pub(crate) async fn abort(app: &App, req: &BranchRequest) -> Result<Json<Value>, Problem> {
    let id = req.id();
    let mut driver = Driver::new(app, id);
    driver.restart().await?;
    driver.receive(Msg::Outcome(Outcome::Abort)).await?;
    match driver.core.state {
        PartState::Committed => Err(Problem::conflict("already-committed", "Already committed")
            .detail(format!(
                "branch {id} was committed; it cannot abort (a coordinator bug)"
            ))),
        _ => Ok(Json(
            json!({ "txn_id": id.txn_id, "step": id.step, "state": "aborted" }),
        )),
    }
}

/// What the database says about branch `id` now (a read on the control pool).
async fn seen_now(app: &App, id: BranchId) -> Result<Seen, Problem> {
    let seen = branch::seen(&mut *app.postgres()?.control.acquire().await?, id).await?;
    crate::stats::read_committed(&app.db);
    Ok(seen)
}

fn unknown(id: BranchId) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-transaction",
        "Unknown transaction",
    )
    .detail(format!("this service has no branch {id}"))
}

/// `GET /2pc/status`.
async fn status(State(app): State<App>) -> Result<Json<Value>, Problem> {
    let max = max_prepared_transactions(&app).await?;
    let prepared = branch::prepared(&app.postgres()?.control, 0).await?;
    let waits: Vec<(i32, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT a.pid, (extract(epoch FROM now() - a.query_start) * 1000)::bigint,
                left(a.query, 200),
                (SELECT p.gid FROM pg_locks l
                 JOIN pg_prepared_xacts p ON p.transaction = l.transactionid
                 WHERE l.pid = a.pid AND NOT l.granted AND l.locktype = 'transactionid' LIMIT 1)
         FROM pg_stat_activity a
         WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
         ORDER BY a.query_start",
    )
    .fetch_all(&app.postgres()?.control)
    .await?;
    crate::stats::read_committed(&app.db);
    let lock_waits: Vec<Value> = waits
        .into_iter()
        .map(|(pid, waiting_ms, query, gid)| {
            json!({ "pid": pid, "waiting_ms": waiting_ms, "query": query, "blocked_by_gid": gid })
        })
        .collect();
    Ok(Json(json!({
        "service": app.spec.name,
        "max_prepared_transactions": max,
        "can_prepare": max > 0,
        // `prepared` is oldest first: an operator's first look when a coordinator is gone.
        "oldest_prepared_age_ms": prepared.first().map(|b| b.age_ms),
        "prepared": prepared,
        "lock_waits": lock_waits,
    })))
}

/// Executes the participant core's actions for one branch.
struct Driver<'a> {
    app: &'a App,
    id: BranchId,
    core: Participant,
    /// The transaction holding the effect, until it is prepared or dropped.
    work: Option<Work>,
    /// What the core sent the coordinator (the HTTP answer, or a query).
    sent: Vec<Msg>,
    /// The NO vote's problem body.
    reason: Option<Value>,
}

impl<'a> Driver<'a> {
    fn new(app: &'a App, id: BranchId) -> Self {
        Driver {
            app,
            id,
            // Replaced by `restart` or `prepare` before any input.
            core: Participant::recover(core_id(id), &[]).0,
            work: None,
            sent: Vec::new(),
            reason: None,
        }
    }

    /// Rebuild the core from the branch's durable state and execute its recovery actions.
    /// A `Query` it sends is answered by the request at hand (it carries the outcome).
    async fn restart(&mut self) -> Result<Seen, Problem> {
        let seen = seen_now(self.app, self.id).await?;
        self.rebuild(&seen).await?;
        Ok(seen)
    }

    /// Rebuild the core from `seen` (a reading the caller has already judged) and execute its
    /// recovery actions: from `Unknown` or `Preparing` that is a unilateral abort.
    async fn rebuild(&mut self, seen: &Seen) -> Result<(), Problem> {
        let log: &[Record] = match seen {
            Seen::Unknown | Seen::Preparing => &[],
            Seen::Prepared => &[Record::Prepared],
            Seen::Committed => &[Record::Prepared, Record::Committed],
            Seen::Aborted { .. } => &[Record::Aborted],
        };
        if let Seen::Aborted { reason } = seen {
            self.reason.clone_from(reason);
        }
        let (core, actions) = Participant::recover(core_id(self.id), log);
        self.core = core;
        self.execute(actions).await
    }

    async fn receive(&mut self, msg: Msg) -> Result<(), Problem> {
        let actions = self.core.handle(Input::Receive {
            from: COORDINATOR,
            msg,
        });
        self.execute(actions).await
    }

    /// Run the effect and feed the core the Prepare with the vote it gives.
    async fn prepare(&mut self, accepted: Accepted) -> Result<(), Problem> {
        let vote = match self.run_effect(accepted).await? {
            Some(vote) => vote,
            // Not this request's to prepare: answer from the branch's state. A duplicate never
            // decides for a branch still `preparing`: that is the request running its effect
            // (or, after a crash, start-up recovery's), so it is told to resend.
            None => {
                let seen = seen_now(self.app, self.id).await?;
                if seen == Seen::Preparing {
                    return Err(still_running(self.id));
                }
                self.rebuild(&seen).await?;
                return self.receive(Msg::Prepare).await;
            }
        };
        let (core, actions) = Participant::new(core_id(self.id), vote);
        self.core = core;
        self.execute(actions).await?;
        match self.receive(Msg::Prepare).await {
            Err(p) if p.slug == TABLE_FULL => {
                // The forced write failed: as if this participant had stopped before it.
                self.reason = Some(p.to_json());
                self.sent.clear();
                let (core, actions) = Participant::recover(core_id(self.id), &[]);
                self.core = core;
                self.execute(actions).await?;
                self.receive(Msg::Prepare).await
            }
            other => other,
        }
    }

    /// Claim the branch and run the effect in a fresh transaction: the vote, or `None` when
    /// the branch is not `preparing` (a duplicate, or aborted meanwhile).
    async fn run_effect(&mut self, accepted: Accepted) -> Result<Option<Vote>, Problem> {
        let mut work = Work::begin(&self.app.postgres()?.pool).await?;
        match branch::claim_for_prepare(work.conn(), self.id).await {
            Ok(true) => {}
            Ok(false) => {
                work.rollback().await?;
                return Ok(None);
            }
            Err(e) => {
                work.rollback().await?;
                let busy = Problem::from(e);
                // Another request holds the row: it is preparing the branch, or finished it.
                return match seen_now(self.app, self.id).await? {
                    Seen::Prepared | Seen::Committed | Seen::Aborted { .. } => Ok(None),
                    _ if busy.status == StatusCode::SERVICE_UNAVAILABLE => {
                        Err(busy.detail(format!(
                            "the prepare of branch {} is still running; resend it",
                            self.id
                        )))
                    }
                    _ => Err(busy),
                };
            }
        }
        let origin = Origin::transaction(self.id.txn_id, self.id.step);
        let outcome = accepted
            .run(crate::store::Conn::Postgres(work.conn()), &origin)
            .await;
        match outcome {
            Ok(_) => {
                self.work = Some(work);
                Ok(Some(Vote::Yes))
            }
            Err(problem) if problem.status == StatusCode::CONFLICT => {
                self.reason = Some(problem.to_json());
                self.work = Some(work);
                Ok(Some(Vote::No))
            }
            Err(problem) => {
                // Nothing happened: the branch stays `preparing` and a resend runs it again.
                work.rollback().await?;
                Err(problem)
            }
        }
    }

    async fn execute(&mut self, actions: Actions<Participant>) -> Result<(), Problem> {
        for action in actions {
            match action {
                Action::ForceWrite(Record::Prepared) => self.prepare_transaction().await?,
                Action::ForceWrite(Record::Committed) => self.commit_prepared().await?,
                Action::Write(Record::Aborted) => self.rollback_prepared().await?,
                Action::Decide(Outcome::Abort) => self.drop_work().await?,
                // COMMIT PREPARED (forced just before) made the effect visible.
                Action::Decide(Outcome::Commit) | Action::Forget => {}
                Action::Send { msg, .. } => self.sent.push(msg),
                // The vote deadline is the prepare request itself; the in-doubt timer is the
                // resolver loop (see the module docs).
                Action::SetTimer(_) | Action::CancelTimer(_) => {}
                Action::ForceWrite(r) | Action::Write(r) => {
                    return Err(Problem::internal(format!(
                        "branch {}: the participant core asked to write {r:?}",
                        self.id
                    )));
                }
            }
        }
        Ok(())
    }

    async fn prepare_transaction(&mut self) -> Result<(), Problem> {
        let Some(work) = self.work.take() else {
            return Err(Problem::internal(format!(
                "branch {}: nothing to prepare",
                self.id
            )));
        };
        work.prepare(self.id).await.map_err(|e| {
            // 53200: the table of prepared transactions is full; 55000: prepared transactions
            // are disabled; 42710: the gid is in use (on another database of the server: a
            // coordinator that gave two branches one step index). This branch cannot prepare.
            let code = e.as_database_error().and_then(|d| d.code());
            if code.is_some_and(|c| matches!(c.as_ref(), "53200" | "55000" | "42710")) {
                Problem::new(StatusCode::CONFLICT, TABLE_FULL, "Cannot prepare").detail(format!(
                    "PREPARE TRANSACTION failed: {e} (see max_prepared_transactions)"
                ))
            } else {
                Problem::from(e)
            }
        })?;
        crate::stats::prepared(&self.app.db);
        tracing::info!(branch = %self.id, "2pc: prepared");
        crate::crash::point("service.2pc.after_prepare");
        Ok(())
    }

    async fn commit_prepared(&mut self) -> Result<(), Problem> {
        self.finish_prepared("COMMIT PREPARED", true).await?;
        tracing::info!(branch = %self.id, "2pc: committed");
        crate::crash::point("service.2pc.after_commit_prepared");
        Ok(())
    }

    async fn rollback_prepared(&mut self) -> Result<(), Problem> {
        self.finish_prepared("ROLLBACK PREPARED", false).await?;
        branch::mark_aborted(&self.app.postgres()?.control, self.id, self.reason.as_ref()).await?;
        tracing::info!(branch = %self.id, "2pc: rolled back");
        Ok(())
    }

    /// `COMMIT PREPARED` or `ROLLBACK PREPARED` (on the control pool). When it fails, a
    /// concurrent duplicate may have finished the branch first (done), or be finishing it now
    /// (503 busy: resend).
    async fn finish_prepared(&self, verb: &str, commit: bool) -> Result<(), Problem> {
        let mut conn = self.app.postgres()?.control.acquire().await?;
        let Err(e) = self.id.run(&mut conn, verb).await else {
            if commit {
                crate::stats::commit_prepared(&self.app.db);
            } else {
                crate::stats::rollback_prepared(&self.app.db);
            }
            return Ok(());
        };
        let (id, seen) = (self.id, branch::seen(&mut conn, self.id).await?);
        crate::stats::read_committed(&self.app.db);
        match (seen, commit) {
            (Seen::Prepared, _) => Err(busy(id, &e)),
            (Seen::Committed, true) => Ok(()),
            // A commit and an abort of one branch raced (a coordinator bug): loud, not a 500.
            (Seen::Committed, false) => {
                Err(
                    Problem::conflict("already-committed", "Already committed").detail(format!(
                        "branch {id} was committed meanwhile; it cannot abort"
                    )),
                )
            }
            (_, true) => Err(
                Problem::conflict("already-aborted", "Already aborted").detail(format!(
                    "branch {id} was rolled back meanwhile; it cannot commit"
                )),
            ),
            (_, false) => Ok(()),
        }
    }

    async fn drop_work(&mut self) -> Result<(), Problem> {
        if let Some(work) = self.work.take() {
            work.rollback().await?;
        }
        branch::mark_aborted(&self.app.postgres()?.control, self.id, self.reason.as_ref()).await
    }
}

/// 503: another session is finishing this prepared transaction right now (Postgres: "is
/// busy"); the resend finds it done.
fn busy(id: BranchId, e: &sqlx::Error) -> Problem {
    let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Busy: retry")
        .detail(format!(
            "branch {id} is being finished by another request; resend"
        ))
        .retry_after(1);
    p.cause = Some(e.to_string());
    p
}

/// 503: another request is running this branch's prepare; the resend gets its vote.
fn still_running(id: BranchId) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Busy: retry")
        .detail(format!(
            "the prepare of branch {id} is still running; resend it"
        ))
        .retry_after(1)
}

/// The problem slug of a NO vote for a full (or disabled) prepared-transaction table.
const TABLE_FULL: &str = "cannot-prepare";

/// The core's participant id: informational only (the driver runs one branch at a time).
fn core_id(id: BranchId) -> u8 {
    u8::try_from(id.step).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod url_tests {
    use super::*;

    /// What [`HTTP_URL_PATTERN`] admits, [`is_http_url`] takes (the pattern is a subset); the
    /// refusals it cannot state are outside it too.
    #[test]
    fn the_url_pattern_admits_only_what_is_taken() {
        let schema =
            jsonschema::validator_for(&json!({"type": "string", "pattern": HTTP_URL_PATTERN}))
                .unwrap();
        for url in [
            "http://127.0.0.1:8080",
            "HTTPS://Inventory.internal/",
            "http://a-b.c9/x?y=1#z",
            "http://255.255.255.255:9999/",
            "http://x1.y2:0",
        ] {
            assert!(schema.is_valid(&json!(url)), "{url}");
            assert!(is_http_url(url), "{url}");
        }
        for url in [
            "ftp://host/",
            "http://",
            "http://1.2.3.999/",
            "http://host:99999/",
            "http://a b/",
            "http://host/\u{0}",
            "mailto:x@y",
        ] {
            assert!(!schema.is_valid(&json!(url)), "{url}");
        }
        assert!(!is_http_url("ftp://host/") && !is_http_url("http://1.2.3.999/"));
    }
}
