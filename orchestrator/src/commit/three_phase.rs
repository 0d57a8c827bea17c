//! The 3PC coordinator: a transaction with `"protocol": "3pc"` is driven here by the pure
//! `tandem_protocols::three_phase::Coordinator` core, and one with `"protocol": "3pc-quorum"` by
//! `tandem_protocols::quorum_three_phase::Coordinator` (Skeen's quorum-based protocol), on the
//! same rows and leases as 2PC. One driver runs both cores ([`CoordCore`]: what differs between
//! them is the core and its message type; the IO is written once). The participants run the
//! matching participant core (`tandem_kit::three_phase`): its timeouts and its termination
//! protocol need no coordinator, so a transaction carries every participant's base URL (in the
//! leader order: participant k is step k) in its first message to each — and, for quorum 3PC,
//! the quorums ([`tandem_kit::three_phase::Quorums::majority`]: 2 and 2 for three services).
//!
//! | core action | here |
//! |---|---|
//! | (the initiator's `Begin`) | `POST {P0}/3pc/msg` (`/3pc-quorum/msg`) with `msg: null` and the setup: participant 0 prepares and answers `BeginCommit` (its YES vote) |
//! | `Send(m)` to `Pi` | `POST {Pi}/3pc/msg` (`CanCommit` with the setup); the answer's replies (`Vote`, `Ack`) are fed back as messages from `Pi` |
//! | `SetTimer(Peer(Pi))` | fires after `THREE_PC_TIMEOUT_MS` unless cancelled |
//! | `ForceWrite(Commit)` | the decision `commit` on the row, fenced by the lease epoch |
//! | `Decide(Abort)` | the decision `abort` on the row (fenced; for the view and queries) |
//!
//! When every DoCommit / Abort sent has been answered (or failed: a participant that missed it
//! times out and terminates without us), the row is settled. A restarted coordinator with a
//! commit record resends DoCommit; without one the core stays **passive** (3PC is crash-stop:
//! the participants have terminated or will); this driver then only *observes* the branches
//! (`GET {service}/3pc/{txn}`) until they all decided, and records what they decided on the row
//! so that the transaction's view is not left undecided (it sends no protocol message). A
//! quorum 3PC coordinator whose ack timers all fired with fewer acks than a commit quorum is
//! **blocked**: its core waits for nothing more, so the driver observes the same way (outside
//! the core's model: it only reads the participants' views, and records what they decided).
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tandem_kit::three_phase::{Core, Envelope, Quorums, Replies, Setup, send};
use tandem_protocols::quorum_three_phase::{self as quorum, QuorumThreePc};
use tandem_protocols::three_phase::{self, Record, ThreePc, Timer};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role, Start, Vote};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::coordinator::Coordinator;
use super::drive::{Fenced, write_fenced};
use super::store::Message;
use super::{Part, TxnRow, TxnState};

/// The protocol name in `POST /transactions` and the row.
pub const THREE_PC: &str = tandem_kit::three_phase::PLAIN;
/// Quorum-based 3PC's name in `POST /transactions` and the row.
pub const THREE_PC_QUORUM: &str = tandem_kit::three_phase::QUORUM;

/// The participant core's message type of coordinator core `C`.
type MsgOf<C> = <<C as CoordCore>::P as Core>::Msg;
/// The actions of coordinator core `C`.
type Acts<C> = Vec<Action<MsgOf<C>, Record, Timer>>;

/// What a participant's reply means to the row.
pub(super) enum Reply {
    Yes,
    No,
    Ack,
    Other,
}

/// A 3PC coordinator core as this driver runs it: plain ([`three_phase::Coordinator`]) or
/// quorum ([`quorum::Coordinator`]). `P` is the participant core on the other end.
pub(super) trait CoordCore: Sized + Send + 'static {
    type P: Core;
    /// The quorums a fresh transaction's setup carries (quorum 3PC only).
    fn quorums(n: u8) -> Option<Quorums>;
    fn start(n: u8) -> (Self, Acts<Self>);
    fn recover(n: u8, log: &[Record]) -> (Self, Acts<Self>);
    fn handle(&mut self, input: Input<MsgOf<Self>, Timer>) -> Acts<Self>;
    fn outcome(&self) -> Option<Outcome>;
    /// Waiting for nothing: restarted without a commit record, or (quorum) blocked.
    fn passive(&self) -> bool;
    fn classify(msg: &MsgOf<Self>) -> Reply;
    /// A decision message (DoCommit or Abort).
    fn is_outcome(msg: &MsgOf<Self>) -> bool;
    /// The message that carries the setup (`CanCommit`).
    fn is_first(msg: &MsgOf<Self>) -> bool;
    /// Participant 0's answer to the initiator's Begin.
    fn begin_commit() -> MsgOf<Self>;
    fn state_name(s: <Self::P as Core>::State) -> &'static str;
}

impl CoordCore for three_phase::Coordinator {
    type P = three_phase::Participant;
    fn quorums(_: u8) -> Option<Quorums> {
        None
    }
    fn start(n: u8) -> (Self, Acts<Self>) {
        <Self as Start<ThreePc>>::start(&ThreePc { n }, NodeId::Coordinator(0), Vote::Yes)
    }
    fn recover(n: u8, log: &[Record]) -> (Self, Acts<Self>) {
        three_phase::Coordinator::recover(n, log)
    }
    fn handle(&mut self, input: Input<MsgOf<Self>, Timer>) -> Acts<Self> {
        Role::handle(self, input)
    }
    fn outcome(&self) -> Option<Outcome> {
        match self.state {
            three_phase::CState::Committed => Some(Outcome::Commit),
            three_phase::CState::Aborted => Some(Outcome::Abort),
            _ => None,
        }
    }
    fn passive(&self) -> bool {
        self.state == three_phase::CState::Passive
    }
    fn classify(msg: &three_phase::Msg) -> Reply {
        use three_phase::Msg as M;
        match msg {
            M::BeginCommit | M::Vote(Vote::Yes) => Reply::Yes,
            M::Vote(Vote::No) => Reply::No,
            M::Ack { .. } => Reply::Ack,
            _ => Reply::Other,
        }
    }
    fn is_outcome(msg: &three_phase::Msg) -> bool {
        matches!(msg, three_phase::Msg::DoCommit | three_phase::Msg::Abort)
    }
    fn is_first(msg: &three_phase::Msg) -> bool {
        *msg == three_phase::Msg::CanCommit
    }
    fn begin_commit() -> three_phase::Msg {
        three_phase::Msg::BeginCommit
    }
    fn state_name(s: three_phase::PState) -> &'static str {
        tandem_kit::three_phase::state_name(s)
    }
}

impl CoordCore for quorum::Coordinator {
    type P = quorum::Participant;
    fn quorums(n: u8) -> Option<Quorums> {
        Some(Quorums::majority(n))
    }
    fn start(n: u8) -> (Self, Acts<Self>) {
        let q = Quorums::majority(n);
        let sys = QuorumThreePc::new(n, q.commit, q.abort);
        <Self as Start<QuorumThreePc>>::start(&sys, NodeId::Coordinator(0), Vote::Yes)
    }
    fn recover(n: u8, log: &[Record]) -> (Self, Acts<Self>) {
        let q = Quorums::majority(n);
        quorum::Coordinator::recover(QuorumThreePc::new(n, q.commit, q.abort).q, log)
    }
    fn handle(&mut self, input: Input<MsgOf<Self>, Timer>) -> Acts<Self> {
        Role::handle(self, input)
    }
    fn outcome(&self) -> Option<Outcome> {
        match self.state {
            quorum::CState::Committed => Some(Outcome::Commit),
            quorum::CState::Aborted => Some(Outcome::Abort),
            _ => None,
        }
    }
    fn passive(&self) -> bool {
        self.state == quorum::CState::Passive || self.blocked()
    }
    fn classify(msg: &quorum::Msg) -> Reply {
        use quorum::Msg as M;
        match msg {
            M::BeginCommit | M::Vote(Vote::Yes) => Reply::Yes,
            M::Vote(Vote::No) => Reply::No,
            M::Ack(_) => Reply::Ack,
            _ => Reply::Other,
        }
    }
    fn is_outcome(msg: &quorum::Msg) -> bool {
        matches!(msg, quorum::Msg::DoCommit | quorum::Msg::Abort)
    }
    fn is_first(msg: &quorum::Msg) -> bool {
        *msg == quorum::Msg::CanCommit
    }
    fn begin_commit() -> quorum::Msg {
        quorum::Msg::BeginCommit
    }
    fn state_name(s: quorum::QState) -> &'static str {
        tandem_kit::three_phase::quorum_state_name(s)
    }
}

/// This instance's 3PC settings.
#[derive(Default)]
pub struct Settings {
    timeout: OnceLock<Duration>,
}

impl Settings {
    /// Set once at start-up: every 3PC timer (coordinator and participants).
    pub fn configure(&self, timeout: Duration) {
        let _ = self.timeout.set(timeout);
    }

    fn timeout(&self) -> Duration {
        self.timeout
            .get()
            .copied()
            .unwrap_or(Duration::from_secs(2))
    }
}

/// What a send reported.
enum Event<C: CoordCore> {
    Replied {
        p: u8,
        msg: MsgOf<C>,
        replies: Replies<MsgOf<C>, <C::P as Core>::State>,
    },
    Failed {
        p: u8,
        msg: MsgOf<C>,
        error: String,
    },
}

/// One transaction coordinated here.
struct Run<C: CoordCore> {
    id: Uuid,
    epoch: i64,
    core: C,
    parts: Vec<Part>,
    bodies: Vec<Value>,
    peers: Vec<String>,
    state: TxnState,
    timers: HashMap<Timer, Instant>,
    /// Participants whose DoCommit / Abort has not been answered (or failed) yet.
    outcome_pending: BTreeSet<u8>,
    messages: Vec<Message>,
    done: bool,
    tx: mpsc::UnboundedSender<Event<C>>,
}

impl<C: CoordCore> Run<C> {
    fn log(&mut self, p: u8, dir: &str, kind: &str, detail: Value) {
        let peer = format!("{p}:{}", self.parts[p as usize].service);
        self.messages.push(Message::now(peer, dir, kind, detail));
    }
}

impl Coordinator {
    /// Coordinate 3PC transaction `row` (leased here) with core `C` until it settles, is
    /// fenced or shutdown.
    pub(super) async fn run_three_phase<C: CoordCore>(self: &Arc<Self>, row: TxnRow, fresh: bool) {
        let Some((bodies, _)) = self.prepare_bodies(&row).await else {
            return;
        };
        let mut peers = vec![];
        for part in &row.participants {
            let Some(base) = self.registry.services().get(&part.service) else {
                tracing::error!(txn = %row.id, service = part.service, "3pc: service not configured");
                return;
            };
            peers.push(base.clone());
        }
        let n = row.participants.len() as u8;
        let (core, actions) = if fresh {
            C::start(n)
        } else {
            let log: Vec<Record> = match row.decision.as_deref() {
                Some("commit") => vec![Record::Commit],
                _ => vec![],
            };
            C::recover(n, &log)
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut t = Run::<C> {
            id: row.id,
            epoch: row.lease.epoch,
            core,
            parts: row.participants,
            bodies,
            peers,
            state: row.state,
            timers: HashMap::new(),
            outcome_pending: BTreeSet::new(),
            messages: vec![],
            done: row.state.is_settled(),
            tx,
        };
        if !self.execute_3pc(&mut t, actions).await {
            return;
        }
        if fresh {
            // The initiator's Begin (the core's `Input::Begin` at participant 0).
            self.send_3pc(&mut t, 0, None);
        } else if t.core.passive() {
            self.observe(&mut t).await;
            return;
        }
        self.settle_if_answered(&mut t).await;
        let mut shutdown = self.shutdown.clone();
        while !t.done {
            let next = t.timers.iter().min_by_key(|(_, at)| **at);
            let next = next.map(|(k, at)| (k.clone(), *at));
            let far = Instant::now() + Duration::from_secs(3600);
            let actions = tokio::select! {
                Some(ev) = rx.recv() => self.on_3pc_event(&mut t, ev).await,
                _ = tokio::time::sleep_until(next.as_ref().map_or(far, |n| n.1)), if next.is_some() => {
                    let timer = next.expect("armed").0;
                    t.timers.remove(&timer);
                    tracing::info!(txn = %t.id, ?timer, "3pc: coordinator timeout");
                    tandem_kit::hop::disturbed();
                    t.core.handle(Input::Timeout(timer))
                }
                _ = crate::until_shutdown(&mut shutdown) => {
                    self.work.releaser.release(t.id, t.epoch).await;
                    return;
                }
            };
            if !self.execute_3pc(&mut t, actions).await {
                return;
            }
            self.settle_if_answered(&mut t).await;
            if !t.done && t.core.passive() {
                // Quorum 3PC, blocked: fewer acks than a commit quorum and nothing to wait for.
                tracing::warn!(txn = %t.id, "3pc-quorum: the coordinator is blocked (no commit quorum of acks); observing the participants");
                self.observe(&mut t).await;
                return;
            }
        }
    }

    async fn on_3pc_event<C: CoordCore>(&self, t: &mut Run<C>, ev: Event<C>) -> Acts<C> {
        match ev {
            Event::Replied { p, msg, replies } => {
                let mut actions = vec![];
                if C::is_outcome(&msg) {
                    let part = &mut t.parts[p as usize];
                    part.state = C::state_name(replies.state).into();
                    part.finished_at.get_or_insert_with(Utc::now);
                    t.outcome_pending.remove(&p);
                }
                for reply in replies.replies {
                    let part = &mut t.parts[p as usize];
                    match C::classify(&reply) {
                        Reply::Yes => {
                            part.vote = Some("yes".into());
                            part.state = "prepared".into();
                            part.prepared_at.get_or_insert_with(Utc::now);
                        }
                        Reply::No => {
                            part.vote = Some("no".into());
                            part.state = "refused".into();
                            part.last_error = replies.reason.as_ref().map(Value::to_string);
                        }
                        Reply::Ack => part.state = "precommitted".into(),
                        Reply::Other => {}
                    }
                    t.log(p, "in", C::P::kind(Some(&reply)), json!(reply));
                    actions.extend(t.core.handle(Input::Receive {
                        from: NodeId::Participant(p),
                        msg: reply,
                    }));
                }
                actions
            }
            Event::Failed { p, msg, error } => {
                t.parts[p as usize].last_error = Some(error);
                if C::is_outcome(&msg) {
                    t.outcome_pending.remove(&p);
                }
                // The core's timer for `p` covers a lost message.
                vec![]
            }
        }
    }

    /// Execute the core's actions in order. False: fenced.
    async fn execute_3pc<C: CoordCore>(self: &Arc<Self>, t: &mut Run<C>, actions: Acts<C>) -> bool {
        for a in actions {
            match a {
                Action::ForceWrite(Record::Commit) => {
                    // Every participant acknowledged PreCommit (or timed out): the crash here
                    // is 3PC's showcase — the participants terminate without us.
                    tandem_kit::crash::point("orchestrator.3pc.after_precommit");
                    if !self.decide_3pc(t, Outcome::Commit).await {
                        return false;
                    }
                }
                Action::Decide(Outcome::Abort) => {
                    if !self.decide_3pc(t, Outcome::Abort).await {
                        return false;
                    }
                }
                Action::Decide(Outcome::Commit) | Action::ForceWrite(_) | Action::Write(_) => {}
                Action::Forget => {}
                Action::Send {
                    to: NodeId::Participant(p),
                    msg,
                } => {
                    if C::is_outcome(&msg) {
                        t.outcome_pending.insert(p);
                    }
                    self.send_3pc(t, p, Some(msg));
                }
                Action::Send { .. } => {}
                Action::SetTimer(timer) => {
                    let at = Instant::now() + self.three_pc.timeout();
                    t.timers.insert(timer, at);
                }
                Action::CancelTimer(timer) => {
                    t.timers.remove(&timer);
                }
            }
        }
        true
    }

    /// Write the decision (fenced). False: fenced.
    async fn decide_3pc<C: CoordCore>(&self, t: &mut Run<C>, o: Outcome) -> bool {
        t.state = match o {
            Outcome::Commit => TxnState::Committing,
            Outcome::Abort => TxnState::Aborting,
        };
        let d = if o == Outcome::Commit {
            "commit"
        } else {
            "abort"
        };
        tracing::info!(txn = %t.id, ?o, "3pc: decided");
        let row = Fenced::of(t.id, t.epoch, t.state, &t.parts);
        write_fenced(self.pool(), row, Some(d), &mut t.messages).await
    }

    /// Settle the row once decided and every outcome sent was answered (or failed).
    async fn settle_if_answered<C: CoordCore>(&self, t: &mut Run<C>) {
        let settled = match t.core.outcome() {
            Some(Outcome::Commit) => TxnState::Committed,
            Some(Outcome::Abort) => TxnState::Aborted,
            None => return,
        };
        if !t.outcome_pending.is_empty() || t.done {
            return;
        }
        t.state = settled;
        let row = Fenced::of(t.id, t.epoch, t.state, &t.parts);
        if write_fenced(self.pool(), row, None, &mut t.messages).await {
            self.work.watchers.settled(t.id);
        }
        t.done = true;
    }

    /// One message to participant `p` in the background (`None`: the initiator's Begin); the
    /// answer comes back as an event.
    fn send_3pc<C: CoordCore>(self: &Arc<Self>, t: &mut Run<C>, p: u8, msg: Option<MsgOf<C>>) {
        let first = msg.as_ref().is_none_or(C::is_first);
        let n = t.parts.len() as u8;
        let part = &t.parts[p as usize];
        let setup = first.then(|| Setup {
            action: part.action.clone(),
            body: t.bodies[p as usize].clone(),
            coordinator_url: self.public_url().to_string(),
            peers: t.peers.clone(),
            timeout_ms: u64::try_from(self.three_pc.timeout().as_millis()).unwrap_or(u64::MAX),
            quorums: C::quorums(n),
        });
        let env = Envelope {
            txn_id: t.id,
            to: p,
            n,
            from: NodeId::Coordinator(0),
            msg: msg.clone(),
            setup,
        };
        let kind = C::P::kind(msg.as_ref());
        t.log(
            p,
            "out",
            kind,
            msg.as_ref().map_or(Value::Null, |m| json!(m)),
        );
        let base = t.peers[p as usize].clone();
        let (http, tx, id) = (self.http.clone(), t.tx.clone(), t.id);
        let timeout = self.three_pc.timeout();
        let pool = self.pool().clone();
        // A Begin is answered by participant 0's BeginCommit.
        let msg = msg.unwrap_or_else(C::begin_commit);
        tandem_kit::hop::spawn_send(tracing::Instrument::in_current_span(async move {
            tandem_kit::stats::message_sent(&pool, kind);
            let ev = match send::<C::P>(&http, &base, &env, timeout).await {
                Ok(replies) => Event::Replied { p, msg, replies },
                Err(error) => {
                    tracing::info!(txn = %id, error, "3pc: a message was not delivered");
                    Event::Failed { p, msg, error }
                }
            };
            let _ = tx.send(ev);
        }));
    }

    /// A passive coordinator (restarted without a commit record) sends nothing: it watches the
    /// participants' branches until they all decided and records the outcome they reached for
    /// the view — or, if they disagree, leaves the row undecided and says so.
    async fn observe<C: CoordCore>(self: &Arc<Self>, t: &mut Run<C>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let mut states = vec![];
            for (p, base) in t.peers.iter().enumerate() {
                let url = format!("{base}/3pc/{}", t.id);
                let got: Option<Value> = match self
                    .http
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                };
                // A service that answers with no branch for this step never prepared it.
                let state = got.as_ref().map(|v| {
                    v["branches"]
                        .as_array()
                        .and_then(|bs| bs.iter().find(|b| b["step"] == json!(p)))
                        .and_then(|b| b["state"].as_str())
                        .unwrap_or("aborted")
                        .to_owned()
                });
                states.push(state);
            }
            let all = |s: &str| states.iter().all(|x| x.as_deref() == Some(s));
            let outcome = if all("committed") {
                Some(Outcome::Commit)
            } else if all("aborted") {
                Some(Outcome::Abort)
            } else {
                None
            };
            if let Some(o) = outcome {
                let detail = json!({ "observed": format!("{o:?}").to_lowercase() });
                for p in 0..t.parts.len() as u8 {
                    let part = &mut t.parts[p as usize];
                    part.state = if o == Outcome::Commit {
                        "committed"
                    } else {
                        "aborted"
                    }
                    .into();
                    part.finished_at.get_or_insert_with(Utc::now);
                    t.log(p, "in", "terminated", detail.clone());
                }
                t.state = if o == Outcome::Commit {
                    TxnState::Committed
                } else {
                    TxnState::Aborted
                };
                let d = if o == Outcome::Commit {
                    "commit"
                } else {
                    "abort"
                };
                tracing::info!(txn = %t.id, ?o, "3pc: the participants terminated without the coordinator");
                let row = Fenced::of(t.id, t.epoch, t.state, &t.parts);
                if write_fenced(self.pool(), row, Some(d), &mut t.messages).await {
                    self.work.watchers.settled(t.id);
                }
                return;
            }
            if states.iter().any(|s| s.as_deref() == Some("committed"))
                && states.iter().any(|s| s.as_deref() == Some("aborted"))
            {
                tracing::error!(txn = %t.id, ?states, "3pc: the participants decided differently (split)");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.three_pc.timeout()) => {}
                _ = crate::until_shutdown(&mut shutdown) => {
                    self.work.releaser.release(t.id, t.epoch).await;
                    return;
                }
            }
        }
    }
}
