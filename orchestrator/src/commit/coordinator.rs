//! [`Coordinator`]: the transactions this instance coordinates — the one entry point that
//! begins one ([`Coordinator::begin`]), the decision participants ask for
//! ([`Coordinator::decision`]), and its part in the background loops ([`Worker`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_kit::problem::FieldIssue;
use tandem_protocols::two_phase::{self, Msg, Record};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role};
use tokio::sync::watch;
use uuid::Uuid;

use super::store::{self, Created, NewTxn};
use super::{Part, TxnRow};
use crate::error::{Error, Result};
use crate::lease::Take;
use crate::registry::Registry;
use crate::text::{check_json, check_str};
use crate::worker::{Plumbing, Worker};

/// A request to begin a transaction: a protocol, and what a saga would take.
pub struct Begin {
    pub protocol: String,
    pub run: crate::driver::StartSaga,
}

/// What beginning a transaction did.
pub enum Begun {
    New {
        row: Box<TxnRow>,
        finished: Option<tokio::sync::oneshot::Receiver<()>>,
    },
    Existing(Uuid),
    KeyReused(Uuid),
    BusinessKeyTaken {
        id: Uuid,
        kind: &'static str,
    },
}

/// A participant cannot prepare (its Postgres has `max_prepared_transactions = 0`).
#[derive(Debug)]
pub struct CannotPrepare {
    pub service: String,
    pub detail: String,
}

pub struct Coordinator {
    /// The store of transactions (Postgres only).
    pool: sqlx::PgPool,
    /// Leases, slots, waiters and hand-backs of transactions.
    pub(super) work: Plumbing,
    pub(super) registry: Arc<Registry>,
    pub(super) http: reqwest::Client,
    pub(super) shutdown: watch::Receiver<bool>,
    /// This instance's base URL, sent to participants so they can ask for the decision.
    public_url: OnceLock<String>,
    /// Services known able to prepare (checked at most every 10 s).
    capable: Mutex<HashMap<String, Instant>>,
    /// The Paxos Commit leaders of this instance ([`super::paxos`]).
    pub paxos: super::paxos::Leaders,
    /// The 3PC settings of this instance ([`super::three_phase`]).
    pub three_pc: super::three_phase::Settings,
}

impl Coordinator {
    /// A coordinator of the transactions `work` leases (see [`super::TRANSACTIONS`]).
    /// 2PC / 3PC / Paxos Commit need Postgres (the services' prepared transactions), so the
    /// coordinator runs on a Postgres `pool` only: on SQLite there is none (see
    /// `crate::api::Ctx::commit`).
    pub fn new(
        pool: sqlx::PgPool,
        work: Plumbing,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self> {
        Ok(Coordinator {
            pool,
            http: reqwest::Client::builder()
                .default_headers(registry.sender_headers())
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            work,
            registry,
            shutdown,
            public_url: OnceLock::new(),
            capable: Mutex::new(HashMap::new()),
            paxos: Default::default(),
            three_pc: Default::default(),
        })
    }

    /// The Postgres pool of the transactions' store.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Set once the API is bound: where participants ask for decisions.
    pub fn set_public_url(&self, url: String) {
        let _ = self.public_url.set(url);
    }

    pub(super) fn public_url(&self) -> &str {
        self.public_url.get().map_or("", String::as_str)
    }

    pub fn watch(&self, id: Uuid) -> tokio::sync::oneshot::Receiver<()> {
        self.work.watchers.watch(id)
    }

    pub fn unwatch(&self, id: Uuid) {
        self.work.watchers.unwatch(id)
    }

    /// Check a request to begin: protocol, storable text, known definition, valid input, and
    /// no body that reads another step's output (every Prepare goes out in one round).
    async fn check(&self, begin: &Begin) -> Result<(String, Arc<crate::saga::Definition>)> {
        let req = &begin.run;
        let mut issues: Vec<FieldIssue> = Vec::new();
        issues.extend(check_str(&begin.protocol, "/protocol").err());
        issues.extend(check_str(&req.definition, "/definition").err());
        issues.extend(
            req.version
                .as_deref()
                .and_then(|v| check_str(v, "/version").err()),
        );
        issues.extend(check_json(&req.input, "/input").err());
        if !issues.is_empty() {
            return Err(Error::Invalid(issues));
        }
        if ![
            "2pc",
            super::paxos::PAXOS_COMMIT,
            super::three_phase::THREE_PC,
            super::three_phase::THREE_PC_QUORUM,
        ]
        .contains(&begin.protocol.as_str())
        {
            return Err(Error::invalid(
                "/protocol",
                format!(
                    "unknown protocol {:?}; supported: \"2pc\", \"paxos-commit\", \"3pc\", \"3pc-quorum\"",
                    begin.protocol
                ),
            ));
        }
        let (version, def) = self
            .registry
            .resolve(&req.definition, req.version.as_deref())
            .await?;
        let reads = def.step_output_reads();
        if !reads.is_empty() {
            return Err(Error::Invalid(
                reads
                    .into_iter()
                    .map(|(pointer, from)| FieldIssue {
                        pointer,
                        message: format!(
                            "reads another step's output ({from}); a commit protocol sends every \
                             Prepare in one round, so bodies may use only the input and `$id`s"
                        ),
                    })
                    .collect(),
            ));
        }
        if def.steps.len() > 64 {
            return Err(Error::invalid(
                "/definition",
                "a transaction has at most 64 participants",
            ));
        }
        def.validate_input(&req.input)
            .map_err(|errors| Error::fields_at("/input", errors))?;
        Ok((version, def))
    }

    /// Every participant's service can prepare (its `GET /2pc/status`), checked at most every
    /// 10 s per service. An unreachable service is not refused here (it will not vote YES).
    pub async fn capability(&self, def: &crate::saga::Definition) -> Result<(), CannotPrepare> {
        for s in &def.steps {
            let svc = &s.action.service;
            let fresh = self
                .capable
                .lock()
                .expect("capable lock")
                .get(svc)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if fresh {
                continue;
            }
            let Some(base) = self.registry.services().get(svc) else {
                continue;
            };
            let pool = self.pool();
            tandem_kit::stats::message_sent(pool, "status");
            let status: Option<Value> = match self
                .http
                .get(format!("{base}/2pc/status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) => {
                    tandem_kit::stats::message_received(pool, "status_reply");
                    if r.status().is_success() {
                        r.json().await.ok()
                    } else {
                        None
                    }
                }
                Err(_) => None,
            };
            match status
                .as_ref()
                .and_then(|v| v.get("can_prepare"))
                .and_then(Value::as_bool)
            {
                Some(false) => {
                    return Err(CannotPrepare {
                        service: svc.clone(),
                        detail: format!(
                            "service {svc:?} cannot prepare transactions: its Postgres has \
                             max_prepared_transactions = {} (raise it above 0, e.g. 256)",
                            status
                                .as_ref()
                                .and_then(|v| v.get("max_prepared_transactions"))
                                .cloned()
                                .unwrap_or(Value::Null)
                        ),
                    });
                }
                Some(true) => {
                    self.capable
                        .lock()
                        .expect("capable lock")
                        .insert(svc.clone(), Instant::now());
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Begin a transaction: check the request, log it (the `Begin` record, before any
    /// Prepare), then run its coordinator here. Nothing is stored for a refused request.
    pub async fn begin(
        self: &Arc<Self>,
        begin: Begin,
    ) -> Result<std::result::Result<Begun, CannotPrepare>> {
        let (version, def) = self.check(&begin).await?;
        let (protocol, req) = (begin.protocol, begin.run);
        if let Err(e) = self.capability(&def).await {
            return Ok(Err(e));
        }
        let participants: Vec<Part> = def
            .steps
            .iter()
            .map(|s| Part {
                step: s.name.clone(),
                service: s.action.service.clone(),
                action: s.action.path.clone(),
                vote: None,
                state: "pending".into(),
                prepared_at: None,
                finished_at: None,
                last_error: None,
            })
            .collect();
        let id = Uuid::now_v7();
        let new = NewTxn {
            run: req.new_run(id, &def, &version, &self.work.leases),
            protocol: &protocol,
            participants: &participants,
        };
        let created = store::create(self.pool(), &new).await?;
        Ok(Ok(match created {
            Created::New(row) => {
                let finished = req.watch.then(|| self.watch(id));
                self.run(*row.clone(), true);
                Begun::New { row, finished }
            }
            Created::Replay(id) | Created::SameBusinessKey(id) => Begun::Existing(id),
            Created::KeyReused(id) => Begun::KeyReused(id),
            Created::BusinessKeyConflict(id) => Begun::BusinessKeyTaken {
                id,
                kind: "transaction",
            },
            Created::TakenByOther(id) => Begun::BusinessKeyTaken { id, kind: "saga" },
        }))
    }

    /// "What was decided?" (a participant asks). A logged decision is answered. Otherwise, if
    /// this instance runs the transaction, nothing yet (None: ask again — its core answers
    /// nothing while it collects votes). Otherwise the core, recovered from the log (`Begin`
    /// without a decision), would force Abort: only a lease owner may write, so this instance
    /// first takes the lease (bumping the epoch, which fences the owner's Commit write), writes
    /// Abort, and only then answers what the core answers a query (abort); it then delivers the
    /// abort to every participant.
    pub async fn decision(self: &Arc<Self>, id: Uuid) -> Result<Option<Outcome>> {
        // The query and the answer are a message each, as on the participant's side.
        let pool = self.pool();
        tandem_kit::stats::message_received(pool, "query");
        let answer = self.answer_participant(id).await;
        tandem_kit::stats::message_sent(pool, "decision");
        answer
    }

    async fn answer_participant(self: &Arc<Self>, id: Uuid) -> Result<Option<Outcome>> {
        loop {
            let Some(row) = store::get(self.pool(), id).await? else {
                // Never logged: a core that knows nothing answers abort (presumed abort).
                return Ok(answer_query(&mut two_phase::Coordinator::recover(1, &[]).0));
            };
            if let Some(d) = &row.decision {
                return Ok(Some(outcome_of(d)));
            }
            if row.protocol == super::paxos::PAXOS_COMMIT
                || row.protocol == super::three_phase::THREE_PC
                || row.protocol == super::three_phase::THREE_PC_QUORUM
            {
                // A Paxos Commit leader answers a query only once it decided; nobody presumes
                // abort (the acceptors may already have chosen Prepared everywhere). Nor for
                // 3PC: its participants may have terminated with commit without us.
                return Ok(None);
            }
            if self.work.slots.contains(id) {
                return Ok(None);
            }
            let n = row.participants.len() as u8;
            let (mut core, actions) =
                two_phase::Coordinator::recover(n, &super::drive::records(&row));
            if actions.contains(&Action::ForceWrite(Record::Abort))
                && !self.take_over_and_abort(id).await?
            {
                continue; // decided meanwhile: read it
            }
            return Ok(answer_query(&mut core));
        }
    }

    /// Take the lease of an undecided transaction (fencing its owner), force Abort with the new
    /// epoch, and run its coordinator here (which tells every participant). False: it was
    /// decided meanwhile.
    async fn take_over_and_abort(self: &Arc<Self>, id: Uuid) -> Result<bool> {
        let Some(mut row) = self
            .work
            .leases
            .take::<TxnRow>(id, Take::Steal, "decision IS NULL")
            .await?
        else {
            return Ok(false);
        };
        for p in &mut row.participants {
            if p.state == "pending" || p.state == "prepared" {
                p.last_error = Some("presumed abort: asked while undecided".into());
            }
        }
        let progress = store::Progress {
            state: super::TxnState::Aborting,
            decision: Some("abort"),
            participants: &row.participants,
            messages: &[],
        };
        if !store::progress(self.pool(), id, row.lease.epoch, &progress).await? {
            return Ok(false);
        }
        tracing::warn!(txn = %id, epoch = row.lease.epoch, "undecided transaction taken over to answer a participant: abort (presumed)");
        row.decision = Some("abort".into());
        row.state = super::TxnState::Aborting;
        self.run(row, false);
        Ok(true)
    }

    /// Run the coordinator of a transaction leased here (`fresh`: just logged, begin it;
    /// otherwise recover it from its log).
    pub(super) fn run(self: &Arc<Self>, row: TxnRow, fresh: bool) {
        let Some(permit) = self.work.activate(row.id, row.lease.epoch) else {
            return;
        };
        let me = self.clone();
        // One span per transaction run, a child of the request that began it (a recovered one
        // starts a trace of its own): every message it sends carries it as `traceparent`.
        let span = tracing::info_span!(
            "transaction",
            txn = %row.id,
            protocol = %row.protocol,
            recovered = !fresh,
            trace_id = tracing::field::Empty,
        );
        tandem_kit::telemetry::record_trace_id(&span);
        let run = async move {
            let id = row.id;
            if row.protocol == super::paxos::PAXOS_COMMIT {
                me.lead(row, fresh).await;
            } else if row.protocol == super::three_phase::THREE_PC {
                me.run_three_phase::<tandem_protocols::three_phase::Coordinator>(row, fresh)
                    .await;
            } else if row.protocol == super::three_phase::THREE_PC_QUORUM {
                me.run_three_phase::<tandem_protocols::quorum_three_phase::Coordinator>(row, fresh)
                    .await;
            } else {
                me.drive(row, fresh).await;
            }
            me.work.finish(id, permit);
        };
        // One hop clock per transaction: its `POST /transactions`'s, or a new root on recovery.
        tandem_kit::hop::spawn(tracing::Instrument::instrument(run, span));
    }
}

/// What the core answers a participant's query.
fn answer_query(core: &mut two_phase::Coordinator) -> Option<Outcome> {
    let query = Input::Receive {
        from: NodeId::Participant(0),
        msg: Msg::Query,
    };
    core.handle(query).into_iter().find_map(|a| match a {
        Action::Send {
            msg: Msg::Outcome(o),
            ..
        } => Some(o),
        _ => None,
    })
}

pub(super) fn outcome_of(d: &str) -> Outcome {
    if d == "commit" {
        Outcome::Commit
    } else {
        Outcome::Abort
    }
}

impl Worker for Coordinator {
    type Row = TxnRow;
    fn plumbing(&self) -> &Plumbing {
        &self.work
    }
    fn start(self: &Arc<Self>, row: TxnRow) {
        self.run(row, false);
    }
}
