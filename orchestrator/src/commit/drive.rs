//! One transaction's coordinator loop: feed the `two_phase` core its inputs (votes, acks,
//! timers), execute the actions it answers — forced writes (fenced), sends, timers — in order,
//! and nothing else. Sends run concurrently and report back as inputs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tandem_protocols::two_phase::{self, Msg, Record, Timer};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role, Vote};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::coordinator::{Coordinator, outcome_of};
use super::store::{self, Message, Progress};
use super::{Part, TxnRow, TxnState};
use crate::saga::definition::render;

/// What a send reported.
pub(super) enum Event {
    Vote {
        p: u8,
        vote: Vote,
        detail: Value,
    },
    Acked {
        p: u8,
        outcome: Outcome,
    },
    Failed {
        p: u8,
        error: String,
        given_up: bool,
    },
}

/// One transaction being coordinated here.
pub(super) struct Txn {
    pub(super) id: Uuid,
    epoch: i64,
    core: two_phase::Coordinator,
    pub(super) parts: Vec<Part>,
    /// The rendered Prepare bodies (the actions' bodies), one per participant.
    pub(super) bodies: Vec<Value>,
    state: TxnState,
    logged: Option<Outcome>,
    messages: Vec<Message>,
    timers: HashMap<Timer, Instant>,
    votes_timeout: Duration,
    pub(super) call_timeout: Duration,
    /// Participants whose ABORT has not been answered (or given up on) yet. A set, not a
    /// count: a late vote is answered with ABORT again, and its answer must not count twice.
    abort_pending: std::collections::BTreeSet<u8>,
    done: bool,
    pub(super) tx: mpsc::UnboundedSender<Event>,
}

impl Txn {
    fn peer(&self, p: u8) -> String {
        format!("{p}:{}", self.parts[p as usize].service)
    }

    pub(super) fn log(&mut self, p: u8, dir: &str, kind: &str, detail: Value) {
        let peer = self.peer(p);
        self.messages.push(Message::now(peer, dir, kind, detail));
    }
}

/// The core's stable log as a transaction row records it.
pub(super) fn records(row: &TxnRow) -> Vec<Record> {
    let mut log = vec![Record::Begin];
    match row.decision.as_deref() {
        Some("commit") => log.push(Record::Commit),
        Some(_) => log.push(Record::Abort),
        None => {}
    }
    if row.state.is_settled() {
        log.push(Record::End);
    }
    log
}

impl Coordinator {
    /// The rendered Prepare bodies (the actions' bodies, one per participant) of a transaction,
    /// and its definition's policy; None (logged) if the definition is gone or a body does
    /// not render.
    pub(super) async fn prepare_bodies(
        &self,
        row: &TxnRow,
    ) -> Option<(Vec<Value>, crate::saga::definition::Policy)> {
        let def = match self
            .registry
            .get(&row.run.definition, &row.run.version)
            .await
        {
            Ok(Some(def)) => def,
            other => {
                tracing::error!(txn = %row.id, ?other, "cannot load the transaction's definition");
                return None;
            }
        };
        let ctx =
            json!({ "saga": { "id": row.id.to_string() }, "input": row.run.input, "steps": {} });
        let bodies: Result<Vec<Value>, String> = def
            .steps
            .iter()
            .map(|s| render(&s.action.body, &ctx))
            .collect();
        let Ok(bodies) = bodies else {
            tracing::error!(txn = %row.id, "a Prepare body does not render");
            return None;
        };
        Some((bodies, def.policy.clone()))
    }

    /// Rebuild one transaction's coordinator: its definition, Prepare bodies, and the core —
    /// fresh (begin it) or recovered from the log — with the actions it starts with.
    async fn open(
        &self,
        row: TxnRow,
        fresh: bool,
    ) -> Option<(
        Txn,
        Vec<Action<Msg, Record, Timer>>,
        mpsc::UnboundedReceiver<Event>,
    )> {
        let (bodies, policy) = self.prepare_bodies(&row).await?;
        let n = row.participants.len() as u8;
        let (core, actions) = if fresh {
            let mut c = two_phase::Coordinator::new(n);
            let a = c.handle(Input::Begin);
            (c, a)
        } else {
            two_phase::Coordinator::recover(n, &records(&row))
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let t = Txn {
            id: row.id,
            epoch: row.lease.epoch,
            core,
            parts: row.participants,
            bodies,
            state: row.state,
            logged: row.decision.as_deref().map(outcome_of),
            messages: Vec::new(),
            timers: HashMap::new(),
            votes_timeout: Duration::from_millis(policy.deadline_ms),
            call_timeout: Duration::from_millis(policy.timeout_ms),
            abort_pending: Default::default(),
            done: row.state.is_settled(),
            tx,
        };
        Some((t, actions, rx))
    }

    /// Coordinate transaction `row` (leased here) until it settles, is fenced or shutdown.
    pub(super) async fn drive(self: &Arc<Self>, row: TxnRow, fresh: bool) {
        let Some((mut t, actions, mut rx)) = self.open(row, fresh).await else {
            return;
        };
        if !self.execute(&mut t, actions).await {
            return;
        }
        let mut shutdown = self.shutdown.clone();
        while !t.done {
            let next = t
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, at)| (k.clone(), *at));
            let far = Instant::now() + Duration::from_secs(3600);
            let input = tokio::select! {
                Some(ev) = rx.recv() => {
                    let vote = matches!(ev, Event::Vote { .. });
                    let input = self.on_event(&mut t, ev).await;
                    // A vote is recorded before the core sees it (not a forced write of the
                    // protocol: it shows who holds locks since when, also after a crash).
                    if vote && t.state == TxnState::Preparing && !self.write(&mut t, None).await {
                        return;
                    }
                    match input {
                        Some(input) => input,
                        None => continue,
                    }
                }
                _ = tokio::time::sleep_until(next.as_ref().map_or(far, |n| n.1)), if next.is_some() => {
                    let timer = next.expect("armed").0;
                    t.timers.remove(&timer);
                    tandem_kit::hop::disturbed();
                    Input::Timeout(timer)
                }
                _ = crate::until_shutdown(&mut shutdown) => {
                    self.work.releaser.release(t.id, t.epoch).await;
                    return;
                }
            };
            let actions = t.core.handle(input);
            if !self.execute(&mut t, actions).await {
                return;
            }
        }
    }

    /// Execute the core's actions in order. False: the transaction was fenced (another
    /// instance owns it now) — drop it at once, sending nothing more.
    async fn execute(
        self: &Arc<Self>,
        t: &mut Txn,
        actions: Vec<Action<Msg, Record, Timer>>,
    ) -> bool {
        let mut first_outcome_sent = false;
        for a in actions {
            match a {
                Action::ForceWrite(Record::Begin) => {} // the row itself, logged at POST
                Action::ForceWrite(Record::Commit) => {
                    tandem_kit::crash::point("orchestrator.2pc.after_votes");
                    if !self.log_decision(t, Outcome::Commit).await {
                        return false;
                    }
                    tandem_kit::crash::point("orchestrator.2pc.after_decision");
                }
                Action::ForceWrite(Record::Abort) => {
                    if !self.log_decision(t, Outcome::Abort).await {
                        return false;
                    }
                    tandem_kit::crash::point("orchestrator.2pc.after_decision");
                }
                Action::Write(Record::End) => {
                    t.state = TxnState::Committed;
                    if !self.write(t, None).await {
                        return false;
                    }
                    t.done = true;
                    self.work.watchers.settled(t.id);
                }
                Action::ForceWrite(_) | Action::Write(_) => {}
                Action::Decide(Outcome::Commit) => {}
                Action::Decide(Outcome::Abort) => {
                    // Presumed abort needs no record; it is written (lazily) so that the view
                    // and the participants' queries show it.
                    if t.logged.is_none() && !self.log_decision(t, Outcome::Abort).await {
                        return false;
                    }
                    t.state = TxnState::Aborting;
                    t.abort_pending = (0..t.parts.len() as u8).collect();
                }
                Action::Send {
                    to: NodeId::Participant(p),
                    msg,
                } => {
                    let outcome = matches!(msg, Msg::Outcome(_));
                    self.send(t, p, msg, outcome && !first_outcome_sent).await;
                    if outcome && !first_outcome_sent {
                        first_outcome_sent = true;
                        tandem_kit::crash::point("orchestrator.2pc.mid_broadcast");
                    }
                }
                Action::Send { .. } => {}
                Action::SetTimer(timer) => {
                    let after = match timer {
                        Timer::Votes => t.votes_timeout,
                        _ => Duration::from_secs(1),
                    };
                    t.timers.insert(timer, Instant::now() + after);
                }
                Action::CancelTimer(timer) => {
                    t.timers.remove(&timer);
                }
                Action::Forget => t.done = true,
            }
        }
        true
    }

    /// Force the decision record (fenced by the epoch): the commit point for Commit.
    async fn log_decision(&self, t: &mut Txn, o: Outcome) -> bool {
        t.state = match o {
            Outcome::Commit => TxnState::Committing,
            Outcome::Abort => TxnState::Aborting,
        };
        let d = match o {
            Outcome::Commit => "commit",
            Outcome::Abort => "abort",
        };
        if !self.write(t, Some(d)).await {
            return false;
        }
        t.logged = Some(o);
        true
    }

    /// Write the transaction's progress (and the messages logged since), fenced; retried until
    /// it lands or is fenced. False: fenced.
    async fn write(&self, t: &mut Txn, decision: Option<&'static str>) -> bool {
        let row = Fenced::of(t.id, t.epoch, t.state, &t.parts);
        write_fenced(self.pool(), row, decision, &mut t.messages).await
    }

    /// An event from a send: update what the view shows, and the core's input if any.
    async fn on_event(&self, t: &mut Txn, ev: Event) -> Option<Input<Msg, Timer>> {
        let from = |p: u8| NodeId::Participant(p);
        match ev {
            Event::Vote { p, vote, detail } => {
                let part = &mut t.parts[p as usize];
                part.vote = Some(if vote == Vote::Yes { "yes" } else { "no" }.into());
                part.state = if vote == Vote::Yes {
                    "prepared"
                } else {
                    "refused"
                }
                .into();
                if vote == Vote::Yes {
                    part.prepared_at = Some(Utc::now());
                }
                t.log(p, "in", "vote", detail);
                Some(Input::Receive {
                    from: from(p),
                    msg: Msg::Vote(vote),
                })
            }
            Event::Acked { p, outcome } => {
                let part = &mut t.parts[p as usize];
                part.state = if outcome == Outcome::Commit {
                    "committed"
                } else {
                    "aborted"
                }
                .into();
                part.finished_at.get_or_insert_with(Utc::now);
                t.log(
                    p,
                    "in",
                    "ack",
                    json!({ "outcome": format!("{outcome:?}").to_lowercase() }),
                );
                match outcome {
                    Outcome::Commit => Some(Input::Receive {
                        from: from(p),
                        msg: Msg::Ack,
                    }),
                    Outcome::Abort => {
                        self.abort_answered(t, p).await;
                        None
                    }
                }
            }
            Event::Failed { p, error, given_up } => {
                t.parts[p as usize].last_error = Some(error);
                if given_up {
                    // The participant will ask (GET /transactions/{id}/decision) and hear abort.
                    self.abort_answered(t, p).await;
                }
                None
            }
        }
    }

    /// Participant `p` answered ABORT (or was given up on): once all have, settle.
    async fn abort_answered(&self, t: &mut Txn, p: u8) {
        let was_waiting = t.abort_pending.remove(&p);
        if was_waiting && t.abort_pending.is_empty() && t.state == TxnState::Aborting {
            t.state = TxnState::Aborted;
            if self.write(t, None).await {
                self.work.watchers.settled(t.id);
            }
            t.done = true;
        }
    }
}

/// The row a fenced progress write names.
pub(super) struct Fenced<'a> {
    pub(super) id: Uuid,
    pub(super) epoch: i64,
    pub(super) state: TxnState,
    pub(super) parts: &'a [Part],
}

impl<'a> Fenced<'a> {
    pub(super) fn of(id: Uuid, epoch: i64, state: TxnState, parts: &'a [Part]) -> Self {
        Fenced {
            id,
            epoch,
            state,
            parts,
        }
    }
}

/// Write a transaction's progress and `messages` (cleared once written), fenced by the epoch;
/// retried with backoff until it lands or is fenced. False: fenced (another instance owns it).
pub(super) async fn write_fenced(
    pool: &sqlx::PgPool,
    row: Fenced<'_>,
    decision: Option<&'static str>,
    messages: &mut Vec<Message>,
) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        let p = Progress {
            state: row.state,
            decision,
            participants: row.parts,
            messages,
        };
        match store::progress(pool, row.id, row.epoch, &p).await {
            Ok(true) => {
                messages.clear();
                return true;
            }
            Ok(false) => {
                tracing::warn!(txn = %row.id, epoch = row.epoch, "lease lost (fenced): dropping the transaction");
                return false;
            }
            Err(e) => {
                tracing::warn!(txn = %row.id, error = %e, "writing transaction progress failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
