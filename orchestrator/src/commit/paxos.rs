//! The Paxos Commit leader: a transaction with `"protocol": "paxos-commit"` is driven here by
//! the pure `tandem_protocols::paxos_commit::Leader` core, on the same leases as 2PC (one row
//! in `transactions`, one owner at a time). Only the IO is here: feed the core, execute its
//! actions in order, nothing else.
//!
//! - **Ballots come from the lease.** The core runs under the row's `lease_epoch`: a fresh
//!   transaction's leader has epoch 1, and every takeover (another instance claiming an expired
//!   lease, or an instance reclaiming its own after a restart) runs `Leader::recover` under the
//!   epoch it now holds, with the highest ballot this transaction's leaders forced
//!   (`paxos_ballot`). So ballots `(epoch, round)` are unique and increasing by construction.
//!
//! | core action | here |
//! |---|---|
//! | `Send(Prepare)` to `Pi` | `POST {service}/paxos/prepare` (retried while the service is unreachable); its answer's vote is shown in the view only — the core learns votes from the acceptors |
//! | `Send(Phase1a / Phase2a)` to `Ak` | `POST {acceptor k}/paxos/phase1a|phase2a`; the answer's `reply` (`Phase1b` / `Phase2b`) is fed back as a message from `Ak` |
//! | (acceptor's ballot-0 `Phase2b` bundle) | arrives at `POST /transactions/{id}/paxos` and is fed to the core if it runs here |
//! | `ForceWrite(Ballot(b))` | `paxos_ballot` of the row, fenced by the lease epoch, before the 1a goes out |
//! | `Decide(o)` | the decision and state of the row (fenced; for the view and participants' queries) |
//! | `Send(Outcome(o))` to `Pi` | `POST {service}/paxos/outcome`, resent until it is answered; when every participant has answered, the row is settled and its lease ends |
//! | `SetTimer(Progress)` | after `PAXOS_PROGRESS_MS` without a decision, the core starts its next round |
//!
//! A leader that lost its lease (a fenced write) stops at once. Two leaders at once — the old
//! one not yet noticing — are safe: that is what Paxos is for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tandem_kit::paxos::{AcceptorReply, ToAcceptor, ToLeader, call};
use tandem_protocols::paxos_commit::{Ballot, Leader, Msg, Record, Timer};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::coordinator::Coordinator;
use super::drive::{Fenced, write_fenced};
use super::store::Message;
use super::{Part, TxnRow, TxnState};

/// The protocol name in `POST /transactions` and the row.
pub const PAXOS_COMMIT: &str = "paxos-commit";

/// What the leaders of this instance share: the acceptors, the progress timer, and where an
/// acceptor's message for a transaction led here goes.
#[derive(Default)]
pub struct Leaders {
    acceptors: OnceLock<Vec<String>>,
    progress: OnceLock<Duration>,
    inbox: Mutex<HashMap<Uuid, mpsc::UnboundedSender<Event>>>,
}

impl Leaders {
    /// Set once at start-up: the 2F+1 acceptors' base URLs and the progress timer.
    pub fn configure(&self, acceptors: Vec<String>, progress: Duration) {
        let _ = self.acceptors.set(acceptors);
        let _ = self.progress.set(progress);
    }

    fn acceptors(&self) -> &[String] {
        self.acceptors.get().map_or(&[], Vec::as_slice)
    }

    /// Hand an acceptor's message to the leader of `id`, if it runs here.
    pub fn deliver(&self, id: Uuid, m: ToLeader) -> bool {
        let inbox = self.inbox.lock().expect("inbox lock");
        inbox.get(&id).is_some_and(|tx| {
            tx.send(Event::Delivered(tandem_kit::hop::carry((
                NodeId::Acceptor(m.acceptor),
                m.msg,
            ))))
            .is_ok()
        })
    }
}

/// What reaches a leader's loop.
pub enum Event {
    /// A protocol message for the core.
    Msg { from: NodeId, msg: Msg },
    /// A protocol message that reached this process on another request (an acceptor's
    /// bundle), with that request's hop count.
    Delivered(tandem_kit::hop::Carried<(NodeId, Msg)>),
    /// A participant answered its Prepare (the view only).
    Voted { p: u8, answer: Value },
    /// A participant applied the outcome.
    Applied { p: u8 },
}

/// One transaction led here.
struct Led {
    id: Uuid,
    epoch: i64,
    core: Leader,
    parts: Vec<Part>,
    bodies: Vec<Value>,
    state: TxnState,
    progress: Option<Instant>,
    applied: std::collections::BTreeSet<u8>,
    messages: Vec<Message>,
    done: bool,
    tx: mpsc::UnboundedSender<Event>,
}

impl Led {
    fn log(&mut self, peer: String, dir: &str, kind: &str, detail: Value) {
        self.messages.push(Message::now(peer, dir, kind, detail));
    }
}

/// The highest ballot a leader of `id` forced (its log: `Record::Ballot`).
async fn ballot_log(pool: &sqlx::PgPool, id: Uuid) -> Result<Vec<Record>, sqlx::Error> {
    let b: Option<sqlx::types::Json<Ballot>> =
        sqlx::query_scalar("SELECT paxos_ballot FROM transactions WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    Ok(b.map(|b| Record::Ballot(b.0)).into_iter().collect())
}

/// Force a ballot, fenced by the lease epoch. False: fenced.
async fn force_ballot(
    pool: &sqlx::PgPool,
    id: Uuid,
    epoch: i64,
    b: Ballot,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE transactions SET paxos_ballot = $3, updated_at = now() \
         WHERE id = $1 AND lease_epoch = $2",
    )
    .bind(id)
    .bind(epoch)
    .bind(sqlx::types::Json(b))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

impl Coordinator {
    /// Lead transaction `row` (leased here) until it settles, is fenced or shutdown.
    pub(super) async fn lead(self: &Arc<Self>, row: TxnRow, fresh: bool) {
        let Some((bodies, _)) = self.prepare_bodies(&row).await else {
            return;
        };
        let pool = self.pool().clone();
        let n = row.participants.len() as u8;
        let shape = tandem_kit::paxos::shape(n, self.paxos.acceptors().len());
        let epoch = u64::try_from(row.lease.epoch).unwrap_or(1).max(1);
        let (core, actions) = if fresh {
            let (mut core, mut actions) = Leader::new(shape, epoch);
            actions.extend(core.handle(Input::Begin));
            (core, actions)
        } else {
            match ballot_log(&pool, row.id).await {
                Ok(log) => Leader::recover(shape, epoch, &log),
                Err(e) => {
                    tracing::warn!(txn = %row.id, error = %e, "paxos: reading the ballot failed");
                    self.work.releaser.release(row.id, row.lease.epoch).await;
                    return;
                }
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.paxos
            .inbox
            .lock()
            .expect("inbox lock")
            .insert(row.id, tx.clone());
        let mut t = Led {
            id: row.id,
            epoch: row.lease.epoch,
            core,
            parts: row.participants,
            bodies,
            state: row.state,
            progress: None,
            applied: Default::default(),
            messages: Vec::new(),
            done: false,
            tx,
        };
        tracing::info!(txn = %t.id, epoch, fresh, "paxos: leading");
        let mut actions = actions;
        let mut shutdown = self.shutdown.clone();
        while self.execute_leader(&mut t, actions).await && !t.done {
            let far = Instant::now() + Duration::from_secs(3600);
            actions = tokio::select! {
                Some(ev) = rx.recv() => self.on_leader_event(&mut t, ev).await,
                _ = tokio::time::sleep_until(t.progress.unwrap_or(far)), if t.progress.is_some() => {
                    t.progress = None;
                    tandem_kit::hop::disturbed();
                    t.core.handle(Input::Timeout(Timer::Progress))
                }
                _ = crate::until_shutdown(&mut shutdown) => {
                    self.work.releaser.release(t.id, t.epoch).await;
                    break;
                }
            };
        }
        self.paxos.inbox.lock().expect("inbox lock").remove(&t.id);
    }

    async fn on_leader_event(&self, t: &mut Led, ev: Event) -> Vec<Action<Msg, Record, Timer>> {
        match ev {
            Event::Delivered(m) => {
                let (from, msg) = m.open();
                t.log(format!("{from:?}"), "in", kind(&msg), json!(msg));
                t.core.handle(Input::Receive { from, msg })
            }
            Event::Msg { from, msg } => {
                t.log(format!("{from:?}"), "in", kind(&msg), json!(msg));
                t.core.handle(Input::Receive { from, msg })
            }
            Event::Voted { p, answer } => {
                let part = &mut t.parts[p as usize];
                let yes = answer["vote"] == "yes";
                part.vote = Some(if yes { "yes" } else { "no" }.into());
                if part.state == "pending" {
                    part.state = if yes { "prepared" } else { "refused" }.into();
                }
                if yes {
                    part.prepared_at.get_or_insert_with(Utc::now);
                }
                t.log(format!("P{p}"), "in", "prepared", answer);
                vec![]
            }
            Event::Applied { p } => {
                t.applied.insert(p);
                let part = &mut t.parts[p as usize];
                part.finished_at.get_or_insert_with(Utc::now);
                part.state = match t.state {
                    TxnState::Committing => "committed",
                    _ => "aborted",
                }
                .into();
                if t.applied.len() == t.parts.len() {
                    t.state = match t.state {
                        TxnState::Committing => TxnState::Committed,
                        _ => TxnState::Aborted,
                    };
                    if self.write_led(t, None).await {
                        self.work.watchers.settled(t.id);
                    }
                    t.done = true;
                }
                vec![]
            }
        }
    }

    /// Execute the core's actions in order. False: fenced, or the database is gone.
    async fn execute_leader(
        self: &Arc<Self>,
        t: &mut Led,
        actions: Vec<Action<Msg, Record, Timer>>,
    ) -> bool {
        for a in actions {
            match a {
                Action::ForceWrite(Record::Ballot(b)) => {
                    let pool = self.pool();
                    match force_ballot(pool, t.id, t.epoch, b).await {
                        Ok(true) => {}
                        Ok(false) => return fenced(t),
                        Err(e) => {
                            tracing::warn!(txn = %t.id, error = %e, "paxos: forcing a ballot failed");
                            self.work.releaser.release(t.id, t.epoch).await;
                            return false;
                        }
                    }
                    tracing::info!(txn = %t.id, ?b, "paxos: new ballot");
                }
                Action::Decide(o) => {
                    tandem_kit::crash::point("orchestrator.paxos.after_votes");
                    t.state = match o {
                        Outcome::Commit => TxnState::Committing,
                        Outcome::Abort => TxnState::Aborting,
                    };
                    let d = if o == Outcome::Commit {
                        "commit"
                    } else {
                        "abort"
                    };
                    if !self.write_led(t, Some(d)).await {
                        return false;
                    }
                    tracing::info!(txn = %t.id, ?o, "paxos: decided");
                }
                Action::Send { to, msg } => self.send_led(t, to, msg),
                Action::SetTimer(Timer::Progress) => {
                    let after = self.paxos.progress.get().copied().unwrap_or_default();
                    t.progress = Some(Instant::now() + after);
                }
                Action::CancelTimer(_) => t.progress = None,
                _ => {}
            }
        }
        true
    }

    /// Write the row's progress (and the messages logged since), fenced. False: fenced.
    async fn write_led(&self, t: &mut Led, decision: Option<&'static str>) -> bool {
        let row = Fenced::of(t.id, t.epoch, t.state, &t.parts);
        write_fenced(self.pool(), row, decision, &mut t.messages).await
    }

    /// One message of the core, in the background; answers come back as events.
    fn send_led(self: &Arc<Self>, t: &mut Led, to: NodeId, msg: Msg) {
        let http = self.http.clone();
        let tx = t.tx.clone();
        let id = t.id;
        match to {
            NodeId::Acceptor(k) => {
                let Some(base) = self.paxos.acceptors().get(k as usize).cloned() else {
                    return;
                };
                let path = if matches!(msg, Msg::Phase1a { .. }) {
                    "phase1a"
                } else {
                    "phase2a"
                };
                t.log(format!("A{k}"), "out", kind(&msg), json!(msg));
                let body = ToAcceptor {
                    txn_id: id,
                    n: t.parts.len() as u8,
                    acceptor: k,
                    from: NodeId::Coordinator(0),
                    leader_url: Some(self.public_url().to_string()),
                    msg,
                };
                tandem_kit::hop::spawn_send(tracing::Instrument::in_current_span(async move {
                    let url = format!("{base}/paxos/{path}");
                    match call::<_, AcceptorReply>(&http, &url, &body).await {
                        Ok(AcceptorReply { reply: Some(msg) }) => {
                            let from = NodeId::Acceptor(k);
                            let _ = tx.send(Event::Msg { from, msg });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::info!(txn = %id, error = %e, "paxos: acceptor unreachable")
                        }
                    }
                }));
            }
            NodeId::Participant(p) => self.send_to_participant(t, p, msg),
            NodeId::Coordinator(_) => {}
        }
    }

    fn send_to_participant(self: &Arc<Self>, t: &mut Led, p: u8, msg: Msg) {
        let part = &t.parts[p as usize];
        let Some(base) = self.registry.services().get(&part.service).cloned() else {
            tracing::warn!(txn = %t.id, service = part.service, "paxos: service not configured");
            return;
        };
        let (url, body) = match msg {
            Msg::Prepare => (
                format!("{base}/paxos/prepare"),
                json!(PaxosPrepareBody {
                    txn_id: t.id,
                    step: u16::from(p),
                    action: &part.action,
                    body: &t.bodies[p as usize],
                    leader_url: self.public_url(),
                    acceptors: self.paxos.acceptors(),
                    n: t.parts.len() as u8,
                }),
            ),
            Msg::Outcome(o) => (
                format!("{base}/paxos/outcome"),
                json!({ "txn_id": t.id, "step": p, "outcome": o }),
            ),
            _ => return,
        };
        t.log(format!("P{p}"), "out", kind(&msg), Value::Null);
        let (http, tx, id) = (self.http.clone(), t.tx.clone(), t.id);
        let prepare = msg == Msg::Prepare;
        tandem_kit::hop::spawn_send(tracing::Instrument::in_current_span(async move {
            let mut delay = Duration::from_millis(100);
            // A Prepare is retried a few times (the core's next ballot covers a participant
            // that never prepares); an outcome until it is applied.
            for attempt in 1u32.. {
                match call::<_, Value>(&http, &url, &body).await {
                    Ok(answer) => {
                        let ev = if prepare {
                            Event::Voted { p, answer }
                        } else {
                            Event::Applied { p }
                        };
                        let _ = tx.send(ev);
                        return;
                    }
                    Err(e) => {
                        tracing::info!(txn = %id, error = %e, attempt, "paxos: participant unreachable")
                    }
                }
                if tx.is_closed() || (prepare && attempt >= 5) {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }));
    }

    /// An acceptor's message for transaction `id` (its ballot-0 bundle): true if its leader runs
    /// here and took it.
    pub fn paxos_deliver(&self, id: Uuid, m: ToLeader) -> bool {
        self.paxos.deliver(id, m)
    }
}

/// The body of `POST /paxos/prepare` (`tandem_kit::paxos::PaxosPrepare` on the service's side).
#[derive(serde::Serialize)]
struct PaxosPrepareBody<'a> {
    txn_id: Uuid,
    step: u16,
    action: &'a str,
    body: &'a Value,
    leader_url: &'a str,
    acceptors: &'a [String],
    n: u8,
}

fn fenced(t: &Led) -> bool {
    tracing::warn!(txn = %t.id, epoch = t.epoch, "paxos: lease lost (fenced): another leader runs it now");
    false
}

/// A message's name in the transaction's message log.
fn kind(msg: &Msg) -> &'static str {
    match msg {
        Msg::BeginCommit => "begin",
        Msg::Prepare => "prepare",
        Msg::Phase2a { .. } => "phase2a",
        Msg::Phase2b { .. } => "phase2b",
        Msg::Phase1a { .. } => "phase1a",
        Msg::Phase1b { .. } => "phase1b",
        Msg::Outcome(_) => "outcome",
        Msg::Query => "query",
    }
}
