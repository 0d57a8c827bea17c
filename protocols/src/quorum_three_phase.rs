//! Quorum-based three-phase commit (Skeen, "A Quorum-Based Commit Protocol", 1982).
//!
//! Nodes: coordinator `C0`, participants `P0..P{n-1}` (`P0` initiates with `BeginCommit`, its
//! YES vote, as in plain 3PC). Every participant has one vote (V = N). A **commit quorum** is
//! `vc` participants, an **abort quorum** `va`, with `vc + va > N`: any two such quorums share
//! a participant.
//!
//! States: Working → Uncertain → PreCommitted → Committed, or Uncertain → **PreAborted** →
//! Aborted (or Working/Uncertain → Aborted on an explicit abort). A participant moves from
//! Uncertain to PreCommitted or to PreAborted, never between those two.
//!
//! - Coordinator: waits for P0's `BeginCommit` and collects votes (a silent participant ⇒
//!   abort, nobody is pre-committed yet);
//!   on all YES sends `PreCommit` to everyone and commits once everyone acknowledged — or, when
//!   its ack timer fires, **only if a commit quorum acknowledged** (else it waits: blocked).
//! - Termination (an undecided participant that suspects the coordinator, at most
//!   `max_attempts` times): it collects the states it can reach (`StateReq`/`StateRep`), then applies Skeen's rule:
//!   any committed ⇒ commit; any aborted ⇒ abort; any pre-committed and the uncertain plus
//!   pre-committed reach `vc` ⇒ pre-commit the uncertain ones and commit once `vc`
//!   participants acknowledged being pre-committed; else, if the uncertain plus pre-aborted
//!   reach `va` ⇒ pre-abort the uncertain ones and abort once `va` acknowledged being
//!   pre-aborted; else **block** (wait for the partition to change).
//!
//! Why it is safe whatever the timers and partitions do: a commit needs `vc` participants
//! that are pre-committed, an abort (after anyone was pre-committed) needs `va` that are
//! pre-aborted; no participant is both, and `vc + va > N`. An abort before anyone is
//! pre-committed (a NO vote, a coordinator's vote timeout, a participant that never voted)
//! rules out any pre-commit, because pre-commit needs every vote to be YES.
//!
//! Fault model: reliable links cut by partitions that change (cut, re-cut, heal), timeouts that
//! may be wrong (a suspected node may be alive and reachable again later). Every timer waits
//! for one peer ([`Timer::Peer`]); the model fires it while that peer is cut off. Pre-commit and
//! pre-abort are written to the log lazily ([`Record::PreCommitted`], [`Record::PreAborted`]),
//! so that a driver's restarted participant reports them; crash-recovery is not covered, as in
//! plain 3PC (a restarted node is passive: [`Coordinator::recover`], `Start::restart`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::{self, Action, Actions, NodeId, Outcome, Role, Start, System, Vote};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QState {
    Working,
    Uncertain,
    PreCommitted,
    PreAborted,
    Committed,
    Aborted,
}

/// A termination attempt: `(round, leader)`; the coordinator's own pre-commit is round 0.
pub type Attempt = (u8, u8);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Msg {
    BeginCommit,
    CanCommit,
    Vote(Vote),
    PreCommit(Attempt),
    PreAbort(Attempt),
    /// "I am now in the state you asked for" (pre-committed or pre-aborted).
    Ack(Attempt),
    DoCommit,
    Abort,
    StateReq(Attempt),
    StateRep(Attempt, QState),
}

/// The same records as plain 3PC: `Prepared` before the YES vote, `Committed` (forced) and
/// `Aborted` (lazy) on the decision, the coordinator's `Commit` (forced) before `DoCommit`.
/// And the same timers: [`Timer::Peer`]`(x)`, waiting for `x` (here nothing relies on the
/// timeout being right).
pub use crate::three_phase::{Record, Timer};

const COORD: NodeId = NodeId::Coordinator(0);

/// The quorum sizes of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quorums {
    pub n: u8,
    pub vc: u8,
    pub va: u8,
    /// Termination attempts per participant (a model-checking bound; large in practice).
    pub max_attempts: u8,
    /// Participants `P0..P{leaders-1}` may lead a termination (a model-checking bound that
    /// limits concurrent leaders; `n` in practice).
    pub leaders: u8,
}

/// What a termination leader is doing; `waiting` are the participants it still waits for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lead {
    Collecting {
        waiting: BTreeSet<u8>,
        states: BTreeMap<u8, QState>,
    },
    /// Moving participants to `target` (PreCommitted or PreAborted); who is there already.
    Moving {
        target: QState,
        waiting: BTreeSet<u8>,
        there: BTreeSet<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Participant {
    pub q: Quorums,
    pub id: u8,
    pub vote: Vote,
    pub state: QState,
    pub attempts: u8,
    pub lead: Option<Lead>,
}

impl Participant {
    fn me(&self) -> Attempt {
        (self.attempts, self.id)
    }

    fn decided(&self) -> bool {
        matches!(self.state, QState::Committed | QState::Aborted)
    }

    fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.q.n)
            .filter(move |p| *p != self.id)
            .map(NodeId::Participant)
    }

    fn cancel_all(&self) -> impl Iterator<Item = Action<Msg, Record, Timer>> + use<> {
        std::iter::once(COORD)
            .chain(core::participants(self.q.n))
            .map(|x| Action::CancelTimer(Timer::Peer(x)))
    }

    fn decide(&mut self, o: Outcome) -> Actions<Self> {
        if self.decided() {
            return vec![];
        }
        self.lead = None;
        let (state, msg) = match o {
            Outcome::Commit => (QState::Committed, Msg::DoCommit),
            Outcome::Abort => (QState::Aborted, Msg::Abort),
        };
        self.state = state;
        let mut out = vec![match o {
            Outcome::Commit => Action::ForceWrite(Record::Committed),
            Outcome::Abort => Action::Write(Record::Aborted),
        }];
        out.extend(self.cancel_all());
        out.push(Action::Decide(o));
        if self.attempts > 0 {
            // A termination leader tells everyone; a follower heard it from someone who did.
            out.extend(self.others().map(|p| Action::send(p, msg.clone())));
        }
        out
    }

    /// Move from uncertain to `target` (pre-committed or pre-aborted), written once.
    fn move_to(&mut self, target: QState) -> Actions<Self> {
        if self.state != QState::Uncertain {
            return vec![];
        }
        self.state = target;
        vec![Action::Write(match target {
            QState::PreCommitted => Record::PreCommitted,
            _ => Record::PreAborted,
        })]
    }

    /// Follow a pre-commit or pre-abort if the state allows it, and acknowledge.
    fn follow(&mut self, from: NodeId, attempt: Attempt, target: QState) -> Actions<Self> {
        let mut out = self.move_to(target);
        if self.state == target {
            out.push(Action::send(from, Msg::Ack(attempt)));
        }
        out
    }

    /// Ask `to` and wait for it.
    fn ask(to: &BTreeSet<u8>, msg: &Msg) -> Actions<Self> {
        to.iter()
            .flat_map(|q| {
                let q = NodeId::Participant(*q);
                [
                    Action::send(q, msg.clone()),
                    Action::SetTimer(Timer::Peer(q)),
                ]
            })
            .collect()
    }

    /// Start a termination attempt as its leader.
    fn terminate(&mut self) -> Actions<Self> {
        self.attempts += 1;
        let waiting: BTreeSet<u8> = (0..self.q.n).filter(|q| *q != self.id).collect();
        let out = Self::ask(&waiting, &Msg::StateReq(self.me()));
        let states = BTreeMap::from([(self.id, self.state)]);
        self.lead = Some(Lead::Collecting { waiting, states });
        out
    }

    /// Skeen's quorum rule over the states collected.
    fn rule(&mut self, states: &BTreeMap<u8, QState>) -> Actions<Self> {
        let count = |a: QState, b: QState| states.values().filter(|s| **s == a || **s == b).count();
        let has = |s: QState| states.values().any(|x| *x == s);
        let (u, pc, pa) = (QState::Uncertain, QState::PreCommitted, QState::PreAborted);
        let target = if has(QState::Committed) {
            return self.decide(Outcome::Commit);
        } else if has(QState::Aborted) {
            return self.decide(Outcome::Abort);
        } else if has(pc) && count(u, pc) >= self.q.vc as usize {
            pc
        } else if count(u, pa) >= self.q.va as usize {
            pa
        } else {
            return self.give_up(); // blocked until the partition changes
        };
        let mut out = self.move_to(target);
        // Already there (they can only move on to the decision), plus the leader.
        let mut there: BTreeSet<u8> = states
            .iter()
            .filter(|(_, s)| **s == target)
            .map(|(p, _)| *p)
            .collect();
        if self.state == target {
            there.insert(self.id);
        }
        let waiting: BTreeSet<u8> = states
            .iter()
            .filter(|(p, s)| **p != self.id && **s == u)
            .map(|(p, _)| *p)
            .collect();
        let msg = match target {
            QState::PreCommitted => Msg::PreCommit(self.me()),
            _ => Msg::PreAbort(self.me()),
        };
        out.extend(Self::ask(&waiting, &msg));
        self.lead = Some(Lead::Moving {
            target,
            waiting,
            there,
        });
        out.extend(self.progress());
        out
    }

    /// Move on when nobody is left to wait for: apply the rule, or decide once a quorum is
    /// in the target state, or give up the attempt (blocked).
    fn progress(&mut self) -> Actions<Self> {
        match &self.lead {
            Some(Lead::Collecting { waiting, states }) if waiting.is_empty() => {
                let states = states.clone();
                self.rule(&states)
            }
            Some(Lead::Moving { target, there, .. })
                if there.len() >= self.quorum(*target) as usize =>
            {
                let o = match target {
                    QState::PreCommitted => Outcome::Commit,
                    _ => Outcome::Abort,
                };
                self.decide(o)
            }
            Some(Lead::Moving { waiting, .. }) if waiting.is_empty() => self.give_up(),
            _ => vec![],
        }
    }

    fn may_lead(&self) -> bool {
        self.id < self.q.leaders && self.attempts < self.q.max_attempts
    }

    /// End this attempt undecided; try again later if attempts are left.
    fn give_up(&mut self) -> Actions<Self> {
        self.lead = None;
        if self.may_lead() {
            vec![Action::SetTimer(Timer::Peer(COORD))]
        } else {
            vec![]
        }
    }

    fn quorum(&self, target: QState) -> u8 {
        match target {
            QState::PreCommitted => self.q.vc,
            _ => self.q.va,
        }
    }

    /// A reply from `q` to the current attempt: a state (collecting) or an ack (moving).
    fn on_reply(&mut self, q: u8, attempt: Attempt, state: Option<QState>) -> Actions<Self> {
        if attempt != self.me() {
            return vec![];
        }
        let counted = match (&mut self.lead, state) {
            // Counted once: a state is recorded only for a participant still awaited.
            (Some(Lead::Collecting { waiting, states }), Some(s)) => {
                waiting.remove(&q) && states.insert(q, s).is_none()
            }
            (Some(Lead::Moving { waiting, there, .. }), None) => {
                there.insert(q);
                waiting.remove(&q)
            }
            _ => false,
        };
        if !counted {
            return vec![];
        }
        let mut out = vec![Action::CancelTimer(Timer::Peer(NodeId::Participant(q)))];
        out.extend(self.progress());
        out
    }
}

impl Role for Participant {
    type Protocol = QuorumThreePc;

    fn on_begin(&mut self) -> Actions<Self> {
        match (self.state, self.vote) {
            (QState::Working, Vote::Yes) => {
                self.state = QState::Uncertain;
                vec![
                    Action::ForceWrite(Record::Prepared),
                    Action::send(COORD, Msg::BeginCommit),
                ]
            }
            (QState::Working, Vote::No) => self.decide(Outcome::Abort),
            _ => vec![],
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        match msg {
            Msg::CanCommit if self.state == QState::Working => match self.vote {
                Vote::Yes => {
                    self.state = QState::Uncertain;
                    vec![
                        Action::ForceWrite(Record::Prepared),
                        Action::send(COORD, Msg::Vote(Vote::Yes)),
                    ]
                }
                Vote::No => {
                    let mut out = self.decide(Outcome::Abort);
                    out.push(Action::send(COORD, Msg::Vote(Vote::No)));
                    out
                }
            },
            Msg::PreCommit(a) => self.follow(from, a, QState::PreCommitted),
            Msg::PreAbort(a) => self.follow(from, a, QState::PreAborted),
            Msg::DoCommit => self.decide(Outcome::Commit),
            Msg::Abort => self.decide(Outcome::Abort),
            Msg::StateReq(a) => {
                let mut out = vec![];
                if self.state == QState::Working {
                    out.extend(self.decide(Outcome::Abort));
                }
                out.push(Action::send(from, Msg::StateRep(a, self.state)));
                out
            }
            Msg::StateRep(a, s) => self.on_reply(from.index(), a, Some(s)),
            Msg::Ack(a) => self.on_reply(from.index(), a, None),
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, Timer::Peer(x): Timer) -> Actions<Self> {
        if self.decided() {
            return vec![];
        }
        if x == COORD {
            return match self.state {
                // Never asked to vote: abort alone.
                QState::Working => self.decide(Outcome::Abort),
                _ if self.lead.is_none() && self.may_lead() => self.terminate(),
                _ => vec![],
            };
        }
        let waiting = match &mut self.lead {
            Some(Lead::Collecting { waiting, .. } | Lead::Moving { waiting, .. }) => waiting,
            None => return vec![],
        };
        if waiting.remove(&x.index()) {
            self.progress()
        } else {
            vec![]
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CState {
    Fresh,
    Collecting {
        yes: BTreeSet<u8>,
    },
    /// Acknowledged, and silent (timed out) participants.
    PreCommitting {
        acked: BTreeSet<u8>,
        silent: BTreeSet<u8>,
    },
    Committed,
    Aborted,
    /// Restarted without a commit record: stays out of the way (crash-recovery is outside the
    /// model; the participants' termination decides).
    Passive,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    pub q: Quorums,
    pub state: CState,
}

impl Coordinator {
    pub fn new(q: Quorums) -> Self {
        let state = CState::Fresh;
        Coordinator { q, state }
    }

    /// Rebuilt from the log after a restart: with a commit record it resends `DoCommit`;
    /// without one it stays passive (it never decides: the participants may have terminated
    /// either way).
    pub fn recover(q: Quorums, log: &[Record]) -> (Self, Actions<Self>) {
        if log.contains(&Record::Commit) {
            let c = Coordinator {
                q,
                state: CState::Committed,
            };
            let out = c.all().map(|p| Action::send(p, Msg::DoCommit)).collect();
            (c, out)
        } else {
            let state = CState::Passive;
            (Coordinator { q, state }, vec![])
        }
    }

    /// Pre-committing with every timer fired and fewer than `vc` acks: waiting for nothing.
    pub fn blocked(&self) -> bool {
        matches!(&self.state, CState::PreCommitting { acked, silent }
            if acked.len() + silent.len() == self.q.n as usize && acked.len() < self.q.vc as usize)
    }

    fn all(&self) -> impl Iterator<Item = NodeId> + use<> {
        core::participants(self.q.n)
    }

    fn decide(&mut self, o: Outcome) -> Actions<Self> {
        let (state, msg) = match o {
            Outcome::Commit => (CState::Committed, Msg::DoCommit),
            Outcome::Abort => (CState::Aborted, Msg::Abort),
        };
        self.state = state;
        let mut out = vec![];
        if o == Outcome::Commit {
            out.push(Action::ForceWrite(Record::Commit));
        }
        out.extend(self.all().map(|p| Action::CancelTimer(Timer::Peer(p))));
        out.push(Action::Decide(o));
        out.extend(self.all().map(|p| Action::send(p, msg.clone())));
        out
    }

    fn check(&mut self) -> Actions<Self> {
        let n = self.q.n as usize;
        match &self.state {
            CState::Collecting { yes } if yes.len() == n => {
                self.state = CState::PreCommitting {
                    acked: BTreeSet::new(),
                    silent: BTreeSet::new(),
                };
                self.all()
                    .flat_map(|p| {
                        [
                            Action::send(p, Msg::PreCommit((0, 0))),
                            Action::SetTimer(Timer::Peer(p)),
                        ]
                    })
                    .collect()
            }
            CState::PreCommitting { acked, .. } if acked.len() == n => self.decide(Outcome::Commit),
            // Everyone voted YES, but only a commit quorum of acks makes the commit safe.
            CState::PreCommitting { acked, silent } if acked.len() + silent.len() == n => {
                if acked.len() >= self.q.vc as usize {
                    self.decide(Outcome::Commit)
                } else {
                    vec![] // blocked: the participants' termination may finish it
                }
            }
            _ => vec![],
        }
    }
}

impl Role for Coordinator {
    type Protocol = QuorumThreePc;

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        let NodeId::Participant(p) = from else {
            return vec![];
        };
        let mut out = vec![Action::CancelTimer(Timer::Peer(from))];
        match (&mut self.state, msg) {
            (CState::Fresh, Msg::BeginCommit) => {
                self.state = CState::Collecting {
                    yes: BTreeSet::from([p]),
                };
                out.extend(self.all().filter(|q| *q != from).flat_map(|q| {
                    [
                        Action::send(q, Msg::CanCommit),
                        Action::SetTimer(Timer::Peer(q)),
                    ]
                }));
            }
            (CState::Collecting { yes }, Msg::Vote(Vote::Yes)) => {
                yes.insert(p);
            }
            (CState::Collecting { .. }, Msg::Vote(Vote::No)) => return self.decide(Outcome::Abort),
            (CState::PreCommitting { acked, silent }, Msg::Ack((0, 0))) => {
                silent.remove(&p);
                acked.insert(p);
            }
            _ => return vec![],
        }
        out.extend(self.check());
        out
    }

    fn on_timeout(&mut self, Timer::Peer(x): Timer) -> Actions<Self> {
        match &mut self.state {
            // No BeginCommit (P0 voted NO, or its message was lost), or a vote missing.
            CState::Fresh | CState::Collecting { .. } => self.decide(Outcome::Abort),
            CState::PreCommitting { silent, .. } => {
                silent.insert(x.index());
                self.check()
            }
            _ => vec![],
        }
    }
}

impl Start<QuorumThreePc> for Coordinator {
    /// The coordinator waits for the initiator, as in plain 3PC: if P0 never asks to commit
    /// (it voted NO and aborted alone, or it is gone), the transaction is aborted.
    fn start(sys: &QuorumThreePc, _: NodeId, _: Vote) -> (Self, Actions<Self>) {
        let timer = Action::SetTimer(Timer::Peer(NodeId::Participant(0)));
        (Coordinator::new(sys.q), vec![timer])
    }
    /// Crash-stop: never restarted by the checks; a restarted coordinator stays passive.
    fn restart(sys: &QuorumThreePc, _: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Coordinator::recover(sys.q, log)
    }
}

impl Start<QuorumThreePc> for Participant {
    fn start(sys: &QuorumThreePc, id: NodeId, vote: Vote) -> (Self, Actions<Self>) {
        let p = Participant {
            q: sys.q,
            id: id.index(),
            vote,
            state: QState::Working,
            attempts: 0,
            lead: None,
        };
        (p, vec![Action::SetTimer(Timer::Peer(COORD))])
    }
    /// Crash-stop: a restarted participant keeps what its log says and stays passive.
    fn restart(sys: &QuorumThreePc, id: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        let (mut p, _) = Self::start(sys, id, Vote::No);
        p.attempts = sys.q.max_attempts;
        p.state = if log.contains(&Record::Committed) {
            QState::Committed
        } else if log.contains(&Record::Prepared) && !log.contains(&Record::Aborted) {
            // What it acknowledged stays true: it counted towards a quorum.
            if log.contains(&Record::PreCommitted) {
                QState::PreCommitted
            } else if log.contains(&Record::PreAborted) {
                QState::PreAborted
            } else {
                QState::Uncertain
            }
        } else {
            QState::Aborted
        };
        (p, vec![])
    }
}

/// A quorum 3PC node: the coordinator or a participant.
pub type Node = core::Node<Coordinator, Participant>;

/// A quorum-based 3PC instance.
#[derive(Clone, Debug)]
pub struct QuorumThreePc {
    pub q: Quorums,
}

impl QuorumThreePc {
    /// `n` participants, commit quorum `vc`, abort quorum `va` (`vc + va > n`).
    pub fn new(n: u8, vc: u8, va: u8) -> Self {
        assert!(
            u16::from(vc) + u16::from(va) > u16::from(n) && vc <= n && va <= n,
            "quorums must intersect: vc + va > n"
        );
        QuorumThreePc {
            q: Quorums {
                n,
                vc,
                va,
                max_attempts: u8::MAX,
                leaders: n,
            },
        }
    }

    /// Bound the termination protocol for model checking: participants `P0..P{leaders-1}`
    /// may lead, each at most `max_attempts` times.
    pub fn bounded(mut self, leaders: u8, max_attempts: u8) -> Self {
        self.q.leaders = leaders;
        self.q.max_attempts = max_attempts;
        self
    }
}

core::vocabulary!(QuorumThreePc);

impl System for QuorumThreePc {
    type Node = Node;

    fn nodes(&self) -> Vec<NodeId> {
        core::coordinator_and_participants(self.q.n)
    }

    fn is_yes_record(&self, record: &Record) -> bool {
        *record == Record::Prepared
    }

    /// Every timer waits for one peer. Under the model's synchronous timers it fires only
    /// while that peer is cut off; partitions change afterwards, so a suspicion can still turn
    /// out wrong (the coordinator was alive after all), which is what the quorums are for.
    fn timer_awaits(&self, Timer::Peer(x): &Timer) -> Option<NodeId> {
        Some(*x)
    }
}
