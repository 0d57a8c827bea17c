//! A stateright [`Model`] that runs any [`System`]'s cores under a configurable fault model,
//! plus the helpers the model-checking tests use (timed runs, terminal-state tests, readable
//! traces).
//!
//! The model executes the very same [`Role::handle`] / `recover` code as a production driver.
//! One model step is one input to one node, and its whole action batch is applied at once:
//! forced writes go to the node's stable log (flushing any lazy writes before them), lazy writes
//! to a volatile buffer that a crash discards, sends to the network, timers to the node's armed
//! set. A crash between the forced write and the sends of a real driver is covered by "the whole
//! batch ran, then the messages were lost" (loss) or by the crash before the step.
//!
//! Network: a set of envelopes. With `duplicating`, delivering a message leaves it in the set
//! (so it can be delivered again, in any order); with `lossy` a `Lose` step removes it.
//! Without `duplicating` delivery consumes one copy (reliable FIFO-free links).
//!
//! Reductions (each argued in `docs/commit-protocols.md`): symmetry over interchangeable
//! acceptors ([`AcceptorSymmetry`], [`run_dfs_symmetric`]) and deliveries made in the step that
//! sends them when they commute with every other step ([`CommitModel::eager`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use stateright::{Checker, Model, Path, Property, Representative};

use crate::core::{Action, Input, Node as CoreNode, NodeId, Outcome, Role, System, Vote};
use crate::paxos_commit;

type Msg<S> = <<S as System>::Node as Role>::Msg;
type Rec<S> = <<S as System>::Node as Role>::Record;
type Tmr<S> = <<S as System>::Node as Role>::Timer;
/// A path through a [`CommitModel`].
pub type McPath<S> = Path<McState<<S as System>::Node>, McAction<Msg<S>, Tmr<S>>>;

/// Which faults the checker may inject.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Messages may be lost.
    pub lossy: bool,
    /// Messages may be delivered more than once (and in any order).
    pub duplicating: bool,
    /// Nodes that may crash.
    pub crashable: Vec<NodeId>,
    /// Crashes per node.
    pub max_crashes_per_node: u8,
    /// Crashes in total.
    pub max_crashes_total: u8,
    /// Crashed nodes may restart from their stable log (crash-recovery) — otherwise crash-stop.
    pub recovery: bool,
    /// Possible partitions (one side of the cut each); at most one happens, and it is permanent.
    pub partitions: Vec<Vec<NodeId>>,
    /// Timers for which [`System::timer_awaits`] names a peer fire only when that peer has
    /// crashed and none of its messages are still in flight, or is cut off by the partition
    /// (a perfect failure detector in a synchronous system). Otherwise timers fire any time.
    pub synchronous_timers: bool,
    /// Nodes that are down from the start (and never recover).
    pub initially_down: Vec<NodeId>,
}

impl Faults {
    /// Crash-recovery with lossy, duplicating, reordering links; every node may crash once.
    pub fn crash_recovery<S: System>(sys: &S) -> Self {
        let crashable = sys.nodes();
        Faults {
            lossy: true,
            duplicating: true,
            max_crashes_total: crashable.len() as u8,
            crashable,
            max_crashes_per_node: 1,
            recovery: true,
            partitions: vec![],
            synchronous_timers: false,
            initially_down: vec![],
        }
    }
}

/// A check attached to the model: an invariant (`always`) or a reachability target
/// (`sometimes`).
pub type Condition<S> = fn(&CommitModel<S>, &McState<<S as System>::Node>) -> bool;

/// See [`CommitModel::eager`].
pub type Eager<S> = fn(&<S as System>::Node, &Msg<S>) -> bool;

#[derive(Clone)]
pub struct CommitModel<S: System> {
    pub sys: S,
    pub faults: Faults,
    /// One initial state per vote vector.
    pub votes: Vec<Vec<Vote>>,
    /// Extra properties: (is invariant, name, condition).
    pub extra: Vec<(bool, &'static str, Condition<S>)>,
    /// Include the generic properties (agreement, validity, both outcomes reachable).
    pub standard: bool,
    /// Timers the checker never fires (a bound, stated with each check).
    pub muted: Option<fn(NodeId, &Tmr<S>) -> bool>,
    /// Messages delivered in the same step that sends them (the copy stays in the network),
    /// given the receiver's state. A state-space reduction: sound only for deliveries that
    /// commute with every other step, argued with each use. Never applied to a receiver that
    /// may crash.
    pub eager: Option<Eager<S>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Envelope<M> {
    pub from: NodeId,
    pub to: NodeId,
    pub msg: M,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slot<N: Role> {
    pub id: NodeId,
    /// `None` while crashed.
    pub node: Option<N>,
    pub log: Vec<N::Record>,
    pub buffer: Vec<N::Record>,
    pub timers: BTreeSet<N::Timer>,
    pub crashes: u8,
    /// Ghost: the outcome this node decided (kept across crashes).
    pub decided: Option<Outcome>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct McState<N: Role> {
    pub slots: Vec<Slot<N>>,
    pub net: BTreeMap<Envelope<N::Msg>, u8>,
    pub partition: Option<u8>,
    pub crashes: u8,
    /// Ghost: some node decided both outcomes at different times.
    pub flip_flop: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum McAction<M, T> {
    Begin,
    Deliver(Envelope<M>),
    Lose(Envelope<M>),
    Timeout(NodeId, T),
    Crash(NodeId),
    Recover(NodeId),
    Partition(u8),
}

impl<S: System> CommitModel<S> {
    pub fn new(sys: S, faults: Faults, votes: Vec<Vec<Vote>>) -> Self {
        CommitModel {
            sys,
            faults,
            votes,
            extra: vec![],
            standard: true,
            muted: None,
            eager: None,
        }
    }

    pub fn always(mut self, name: &'static str, c: Condition<S>) -> Self {
        self.extra.push((true, name, c));
        self
    }

    pub fn sometimes(mut self, name: &'static str, c: Condition<S>) -> Self {
        self.extra.push((false, name, c));
        self
    }

    pub fn mute(mut self, muted: fn(NodeId, &Tmr<S>) -> bool) -> Self {
        self.muted = Some(muted);
        self
    }

    pub fn without_standard(mut self) -> Self {
        self.standard = false;
        self
    }

    fn index(&self, s: &McState<S::Node>, id: NodeId) -> usize {
        s.slots
            .iter()
            .position(|sl| sl.id == id)
            .expect("unknown node")
    }

    fn cut(&self, s: &McState<S::Node>, a: NodeId, b: NodeId) -> bool {
        match s.partition {
            None => false,
            Some(i) => {
                let side = &self.faults.partitions[i as usize];
                side.contains(&a) != side.contains(&b)
            }
        }
    }

    fn apply(
        &self,
        s: &mut McState<S::Node>,
        i: usize,
        actions: Vec<Action<Msg<S>, Rec<S>, Tmr<S>>>,
    ) {
        let me = s.slots[i].id;
        for a in actions {
            match a {
                // Under crash-stop nobody ever reads a log except the validity check, which
                // reads participants' logs: other nodes' logs would only split equal states.
                Action::ForceWrite(_)
                    if !self.faults.recovery && !matches!(me, NodeId::Participant(_)) => {}
                Action::ForceWrite(r) => {
                    let slot = &mut s.slots[i];
                    let buffered = std::mem::take(&mut slot.buffer);
                    slot.log.extend(buffered);
                    slot.log.push(r);
                    self.sys.compact_log(me, &mut slot.log);
                }
                Action::Write(r) => s.slots[i].buffer.push(r),
                Action::Send { to, msg } => {
                    if self.cut(s, me, to) {
                        continue;
                    }
                    let dest_down = s.slots.iter().any(|sl| sl.id == to && sl.node.is_none());
                    if dest_down && !self.faults.recovery {
                        continue; // crash-stop: can never be delivered
                    }
                    if let Some(eager) = self.eager
                        && self.faults.duplicating
                        && !self.faults.crashable.contains(&to)
                        && let Some(j) = s.slots.iter().position(|sl| sl.id == to)
                        && s.slots[j].node.as_ref().is_some_and(|n| eager(n, &msg))
                    {
                        self.input(
                            s,
                            j,
                            Input::Receive {
                                from: me,
                                msg: msg.clone(),
                            },
                        );
                    }
                    let e = Envelope { from: me, to, msg };
                    let c = s.net.entry(e).or_insert(0);
                    if self.faults.duplicating {
                        *c = 1;
                    } else {
                        *c = c.saturating_add(1);
                    }
                }
                Action::SetTimer(t) => {
                    s.slots[i].timers.insert(t);
                }
                Action::CancelTimer(t) => {
                    s.slots[i].timers.remove(&t);
                }
                Action::Decide(o) => {
                    let slot = &mut s.slots[i];
                    if slot.decided.is_some_and(|d| d != o) {
                        s.flip_flop = true;
                    }
                    slot.decided = Some(o);
                }
                Action::Forget => {}
            }
        }
    }

    fn input(&self, s: &mut McState<S::Node>, i: usize, input: Input<Msg<S>, Tmr<S>>) {
        let Some(node) = s.slots[i].node.as_mut() else {
            return;
        };
        let out = node.handle(input);
        self.apply(s, i, out);
    }

    /// Has `peer` observably failed from `me`'s point of view (synchronous timers)?
    pub fn failed(&self, s: &McState<S::Node>, me: NodeId, peer: NodeId) -> bool {
        if self.cut(s, me, peer) {
            return true;
        }
        let down = s.slots.iter().any(|sl| sl.id == peer && sl.node.is_none());
        down && !s.net.keys().any(|e| e.from == peer)
    }

    /// In a duplicating network most deliveries are re-deliveries that change nothing. Find
    /// those on a copy of the receiver alone rather than of the whole state (only a speed-up:
    /// `next_state` would find the same state and return `None`).
    fn redelivery_is_no_op(&self, s: &McState<S::Node>, e: &Envelope<Msg<S>>) -> bool {
        let i = self.index(s, e.to);
        let Some(before) = s.slots[i].node.as_ref() else {
            return true;
        };
        let mut node = before.clone();
        let out = node.handle(Input::Receive {
            from: e.from,
            msg: e.msg.clone(),
        });
        node == *before
            && out.iter().all(|a| match a {
                Action::Send { to, msg } => s.net.contains_key(&Envelope {
                    from: e.to,
                    to: *to,
                    msg: msg.clone(),
                }),
                _ => false,
            })
    }

    /// No step changes the state.
    pub fn is_terminal(&self, s: &McState<S::Node>) -> bool {
        let mut acts = Vec::new();
        self.actions(s, &mut acts);
        acts.into_iter().all(|a| self.next_state(s, a).is_none())
    }

    pub fn up(&self, s: &McState<S::Node>, id: NodeId) -> bool {
        s.slots.iter().any(|sl| sl.id == id && sl.node.is_some())
    }

    pub fn participant_slots<'a>(
        &'a self,
        s: &'a McState<S::Node>,
    ) -> impl Iterator<Item = &'a Slot<S::Node>> + 'a {
        let ps = self.sys.participants();
        s.slots.iter().filter(move |sl| ps.contains(&sl.id))
    }

    /// Every live participant has decided.
    pub fn live_participants_decided(&self, s: &McState<S::Node>) -> bool {
        self.participant_slots(s)
            .all(|sl| sl.node.is_none() || sl.decided.is_some())
    }

    /// No two nodes decided differently, and no node changed its mind.
    pub fn agreement(&self, s: &McState<S::Node>) -> bool {
        let mut seen = None;
        for d in s.slots.iter().filter_map(|sl| sl.decided) {
            if seen.is_some_and(|x| x != d) {
                return false;
            }
            seen = Some(d);
        }
        !s.flip_flop
    }

    /// A commit decision implies every participant durably voted YES.
    pub fn validity(&self, s: &McState<S::Node>) -> bool {
        let committed = s.slots.iter().any(|sl| sl.decided == Some(Outcome::Commit));
        !committed
            || self
                .participant_slots(s)
                .all(|sl| sl.log.iter().any(|r| self.sys.is_yes_record(r)))
    }

    pub fn all_participants_decided(&self, s: &McState<S::Node>, o: Outcome) -> bool {
        self.participant_slots(s).all(|sl| sl.decided == Some(o))
    }

    /// A participant committed while another aborted.
    pub fn split(&self, s: &McState<S::Node>) -> bool {
        let ds: BTreeSet<_> = self
            .participant_slots(s)
            .filter_map(|sl| sl.decided)
            .collect();
        ds.len() == 2
    }

    fn describe(&self, s: &McState<S::Node>, a: &McAction<Msg<S>, Tmr<S>>) -> String {
        match a {
            McAction::Begin => format!("{}: the application asks to commit", self.sys.initiator()),
            McAction::Deliver(e) => format!("{} -> {}: {:?}", e.from, e.to, e.msg),
            McAction::Lose(e) => format!("LOST {} -> {}: {:?}", e.from, e.to, e.msg),
            McAction::Timeout(n, t) => format!("{n}: timeout {t:?}"),
            McAction::Crash(n) => format!("{n}: CRASH"),
            McAction::Recover(n) => {
                let i = self.index(s, *n);
                format!("{n}: restarts from its stable log {:?}", s.slots[i].log)
            }
            McAction::Partition(p) => {
                let side = &self.faults.partitions[*p as usize];
                let (a, b): (Vec<_>, Vec<_>) =
                    self.sys.nodes().into_iter().partition(|n| side.contains(n));
                format!("NETWORK PARTITION {} | {}", names(&a), names(&b))
            }
        }
    }

    /// A readable trace: one line per step, with the decisions it caused, then the final state.
    pub fn trace(&self, path: &McPath<S>) -> String {
        let steps = path.clone().into_vec();
        let mut out = String::new();
        let mut n = 0;
        for (state, action) in &steps {
            let Some(action) = action else { continue };
            n += 1;
            let _ = write!(out, "{n:>3}. {}", self.describe(state, action));
            if let Some(next) = self.next_state(state, action.clone()) {
                for (before, after) in state.slots.iter().zip(&next.slots) {
                    if after.decided != before.decided {
                        let _ = write!(
                            out,
                            "   => {} decides {:?}",
                            after.id,
                            after.decided.unwrap()
                        );
                    }
                }
                let new_log: Vec<_> = state
                    .slots
                    .iter()
                    .zip(&next.slots)
                    .filter(|(b, a)| a.log.len() > b.log.len() && a.node.is_some())
                    .map(|(_, a)| format!("{} forces {:?}", a.id, a.log.last().unwrap()))
                    .collect();
                if !new_log.is_empty() {
                    let _ = write!(out, "   [{}]", new_log.join(", "));
                }
            }
            out.push('\n');
        }
        out.push_str("  final state:\n");
        for sl in &path.last_state().slots {
            let status = match &sl.node {
                None => "DOWN".to_string(),
                Some(n) => format!("{n:?}"),
            };
            let _ = writeln!(
                out,
                "    {:<3} decided={:<13} log={:?}  {}",
                sl.id.to_string(),
                format!("{:?}", sl.decided),
                sl.log,
                status
            );
        }
        out
    }
}

fn names(v: &[NodeId]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl<S: System> Model for CommitModel<S> {
    type State = McState<S::Node>;
    type Action = McAction<Msg<S>, Tmr<S>>;

    fn init_states(&self) -> Vec<Self::State> {
        self.votes
            .iter()
            .map(|votes| {
                let mut s = McState {
                    slots: vec![],
                    net: BTreeMap::new(),
                    partition: None,
                    crashes: 0,
                    flip_flop: false,
                };
                let mut boots = vec![];
                for id in self.sys.nodes() {
                    let vote = match id {
                        NodeId::Participant(p) => votes[p as usize],
                        _ => Vote::Yes,
                    };
                    let (node, out) = self.sys.boot(id, vote);
                    s.slots.push(Slot {
                        id,
                        node: Some(node),
                        log: vec![],
                        buffer: vec![],
                        timers: BTreeSet::new(),
                        crashes: 0,
                        decided: None,
                    });
                    boots.push(out);
                }
                for (i, out) in boots.into_iter().enumerate() {
                    if self.faults.initially_down.contains(&s.slots[i].id) {
                        s.slots[i].node = None;
                    } else {
                        self.apply(&mut s, i, out);
                    }
                }
                s
            })
            .collect()
    }

    fn actions(&self, s: &Self::State, actions: &mut Vec<Self::Action>) {
        if self.up(s, self.sys.initiator()) {
            actions.push(McAction::Begin);
        }
        for e in s.net.keys() {
            if self.up(s, e.to) {
                actions.push(McAction::Deliver(e.clone()));
            }
            if self.faults.lossy {
                actions.push(McAction::Lose(e.clone()));
            }
        }
        for sl in &s.slots {
            if sl.node.is_none() {
                continue;
            }
            for t in &sl.timers {
                if self.muted.is_some_and(|m| m(sl.id, t)) {
                    continue;
                }
                let may = !self.faults.synchronous_timers
                    || match self.sys.timer_awaits(t) {
                        None => true,
                        Some(peer) => self.failed(s, sl.id, peer),
                    };
                if may {
                    actions.push(McAction::Timeout(sl.id, t.clone()));
                }
            }
        }
        for sl in &s.slots {
            match sl.node {
                Some(_) => {
                    if self.faults.crashable.contains(&sl.id)
                        && sl.crashes < self.faults.max_crashes_per_node
                        && s.crashes < self.faults.max_crashes_total
                    {
                        actions.push(McAction::Crash(sl.id));
                    }
                }
                None => {
                    if self.faults.recovery && !self.faults.initially_down.contains(&sl.id) {
                        actions.push(McAction::Recover(sl.id));
                    }
                }
            }
        }
        if s.partition.is_none() {
            for i in 0..self.faults.partitions.len() {
                actions.push(McAction::Partition(i as u8));
            }
        }
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        if let McAction::Deliver(e) = &action
            && self.faults.duplicating
            && self.redelivery_is_no_op(last, e)
        {
            return None;
        }
        let mut s = last.clone();
        match action {
            McAction::Begin => {
                let i = self.index(&s, self.sys.initiator());
                self.input(&mut s, i, Input::Begin);
            }
            McAction::Deliver(e) => {
                if !self.faults.duplicating {
                    let c = s.net.get_mut(&e)?;
                    *c -= 1;
                    if *c == 0 {
                        s.net.remove(&e);
                    }
                }
                let i = self.index(&s, e.to);
                self.input(
                    &mut s,
                    i,
                    Input::Receive {
                        from: e.from,
                        msg: e.msg,
                    },
                );
            }
            McAction::Lose(e) => {
                s.net.remove(&e);
            }
            McAction::Timeout(n, t) => {
                let i = self.index(&s, n);
                s.slots[i].timers.remove(&t);
                self.input(&mut s, i, Input::Timeout(t));
            }
            McAction::Crash(n) => {
                let i = self.index(&s, n);
                let sl = &mut s.slots[i];
                sl.node = None;
                sl.buffer.clear();
                sl.timers.clear();
                sl.crashes += 1;
                s.crashes += 1;
                if !self.faults.recovery {
                    s.net.retain(|e, _| e.to != n);
                }
            }
            McAction::Recover(n) => {
                let i = self.index(&s, n);
                let (node, out) = self.sys.recover(n, &s.slots[i].log);
                s.slots[i].node = Some(node);
                self.apply(&mut s, i, out);
            }
            McAction::Partition(p) => {
                s.partition = Some(p);
                let side = &self.faults.partitions[p as usize];
                s.net
                    .retain(|e, _| side.contains(&e.from) == side.contains(&e.to));
            }
        }
        if &s == last { None } else { Some(s) }
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut v = vec![];
        if self.standard {
            v.push(Property::always("agreement", |m: &Self, s| m.agreement(s)));
            v.push(Property::always(
                "commit only if all voted yes",
                |m: &Self, s| m.validity(s),
            ));
            v.push(Property::sometimes("all commit", |m: &Self, s| {
                m.all_participants_decided(s, Outcome::Commit)
            }));
            v.push(Property::sometimes("all abort", |m: &Self, s| {
                m.all_participants_decided(s, Outcome::Abort)
            }));
        }
        for (always, name, c) in &self.extra {
            v.push(if *always {
                Property::always(name, *c)
            } else {
                Property::sometimes(name, *c)
            });
        }
        v
    }
}

/// The figures of one exhaustive run.
#[derive(Clone, Debug)]
pub struct RunStats {
    pub label: String,
    pub unique_states: usize,
    pub total_states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    pub complete: bool,
}

impl std::fmt::Display for RunStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[model] {}: {} unique states ({} generated), max depth {}, {:.2}s{}",
            self.label,
            self.unique_states,
            self.total_states,
            self.max_depth,
            self.elapsed.as_secs_f64(),
            if self.complete {
                ""
            } else {
                " (stopped early)"
            }
        )
    }
}

/// Run a breadth-first exhaustive check (shortest counterexamples), print and return figures.
pub fn run_bfs<S: System>(
    label: &str,
    model: CommitModel<S>,
) -> (impl Checker<CommitModel<S>> + use<S>, RunStats) {
    run_bfs_capped(label, model, None)
}

/// Like [`run_bfs`], but stop after about `cap` generated states. Breadth-first order means
/// every execution shorter than the reported depth has been covered.
pub fn run_bfs_capped<S: System>(
    label: &str,
    model: CommitModel<S>,
    cap: Option<usize>,
) -> (impl Checker<CommitModel<S>> + use<S>, RunStats) {
    let start = Instant::now();
    let cap = state_cap().or(cap);
    let mut builder = model.checker().threads(checker_threads());
    if let Some(cap) = cap {
        builder = builder.target_state_count(cap);
    }
    let checker = builder.spawn_bfs().join();
    let stats = RunStats::of(label, &checker, start, cap);
    (checker, stats)
}

fn checker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A safety valve for exploring bounds: `TANDEM_MC_MAX_STATES` stops any run after about this
/// many generated states.
fn state_cap() -> Option<usize> {
    std::env::var("TANDEM_MC_MAX_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
}

impl RunStats {
    /// The figures of a finished run (printed too), which was capped at `cap` states if given.
    fn of<M: Model>(
        label: &str,
        checker: &impl Checker<M>,
        start: Instant,
        cap: Option<usize>,
    ) -> Self {
        let stats = RunStats {
            label: label.to_string(),
            unique_states: checker.unique_state_count(),
            total_states: checker.state_count(),
            max_depth: checker.max_depth(),
            elapsed: start.elapsed(),
            // `is_done` is also true when the cap stopped the search.
            complete: checker.is_done() && cap.is_none_or(|c| checker.state_count() < c),
        };
        println!("{stats}");
        stats
    }
}

/// A role whose acceptors are interchangeable: renaming acceptor `i` to `perm[i]` everywhere
/// (node ids, envelopes, and any acceptor sets a node keeps) maps runs to runs. Lets the checker
/// store one state per orbit of acceptor permutations (symmetry reduction, [`run_dfs_symmetric`]).
///
/// Implementors guarantee that messages, records and timers name no acceptor: only the node
/// state and envelope endpoints do (the model renames those).
pub trait AcceptorSymmetry: Role {
    /// Rename acceptor `i` to `perm[i]` inside this node's state.
    fn rename_acceptors(&mut self, perm: &[u8]);
    /// Hash what this node knows about acceptor `a` without naming `a` (for an acceptor, its
    /// state minus its id; for a leader, which of its tallies include `a`). Only steers which
    /// renaming is chosen as representative, so it cannot make the reduction unsound.
    fn hash_view_of_acceptor<H: std::hash::Hasher>(&self, a: u8, h: &mut H);
}

/// Paxos Commit's acceptors are interchangeable: they all get every 2a and 1a, and leaders count them only
/// through quorum sizes. Renaming one renames its id and the bits leaders keep for it.
impl AcceptorSymmetry for paxos_commit::Node {
    fn rename_acceptors(&mut self, perm: &[u8]) {
        let remask = |mask: u8| {
            (0..perm.len())
                .filter(|i| mask & (1 << i) != 0)
                .fold(0u8, |m, i| m | (1 << perm[i]))
        };
        match self {
            CoreNode::Participant(_) => {}
            CoreNode::Acceptor(a) => a.id = perm[a.id as usize],
            CoreNode::Coordinator(l) => {
                for mask in l.votes.values_mut() {
                    *mask = remask(*mask);
                }
                if let Some(p1) = l.phase1.as_mut() {
                    for (mask, _) in p1.reports.values_mut() {
                        *mask = remask(*mask);
                    }
                }
            }
        }
    }

    fn hash_view_of_acceptor<H: std::hash::Hasher>(&self, a: u8, h: &mut H) {
        use std::hash::Hash;
        match self {
            CoreNode::Participant(_) => {}
            CoreNode::Acceptor(acc) => (&acc.slots, acc.dirty).hash(h),
            CoreNode::Coordinator(l) => {
                for (k, mask) in &l.votes {
                    (k, mask >> a & 1).hash(h);
                }
                if let Some(p1) = &l.phase1 {
                    for (k, (mask, _)) in &p1.reports {
                        (k, mask >> a & 1).hash(h);
                    }
                }
            }
        }
    }
}

fn rename(id: NodeId, perm: &[u8]) -> NodeId {
    match id {
        NodeId::Acceptor(i) => NodeId::Acceptor(perm[i as usize]),
        other => other,
    }
}

impl<N: AcceptorSymmetry> McState<N> {
    /// This state with acceptor `i` renamed to `perm[i]`; slots stay ordered as before
    /// (the slot of `A{perm[i]}` takes the position `A{perm[i]}` had).
    pub fn renamed(&self, perm: &[u8]) -> Self {
        let mut slots = self.slots.clone();
        let order: Vec<NodeId> = self.slots.iter().map(|sl| sl.id).collect();
        for sl in &mut slots {
            sl.id = rename(sl.id, perm);
            if let Some(n) = sl.node.as_mut() {
                n.rename_acceptors(perm);
            }
        }
        slots.sort_by_key(|sl| order.iter().position(|id| *id == sl.id));
        let net = self
            .net
            .iter()
            .map(|(e, c)| {
                (
                    Envelope {
                        from: rename(e.from, perm),
                        to: rename(e.to, perm),
                        msg: e.msg.clone(),
                    },
                    *c,
                )
            })
            .collect();
        McState {
            slots,
            net,
            partition: self.partition,
            crashes: self.crashes,
            flip_flop: self.flip_flop,
        }
    }
}

/// The representative of a state's orbit under acceptor renaming: acceptors sorted by a
/// signature that does not depend on their names (their own slot, the messages to and from
/// them, what the other nodes know about them). Any renaming is a member of the orbit, so
/// exploring representatives is sound whatever the signatures are (two states of different
/// orbits never share a representative); the signatures only decide how much is saved. Two
/// acceptors with equal true signatures can be swapped without changing the state, so the
/// representative is canonical up to 64-bit hash collisions (which cost only reduction).
impl<N: AcceptorSymmetry> Representative for McState<N> {
    fn representative(&self) -> Self {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut sigs: Vec<(u64, u8)> = vec![];
        for sl in &self.slots {
            let NodeId::Acceptor(a) = sl.id else { continue };
            let mut h = DefaultHasher::new();
            (&sl.log, &sl.buffer, &sl.timers, sl.crashes, sl.decided).hash(&mut h);
            match &sl.node {
                None => 0u8.hash(&mut h),
                Some(n) => n.hash_view_of_acceptor(a, &mut h),
            }
            for other in &self.slots {
                if let (false, Some(n)) = (matches!(other.id, NodeId::Acceptor(_)), &other.node) {
                    n.hash_view_of_acceptor(a, &mut h);
                }
            }
            for (e, c) in &self.net {
                if e.from == sl.id {
                    (0u8, e.to, &e.msg, c).hash(&mut h);
                } else if e.to == sl.id {
                    (1u8, e.from, &e.msg, c).hash(&mut h);
                }
            }
            sigs.push((h.finish(), a));
        }
        sigs.sort();
        let mut perm = vec![0u8; sigs.len()];
        for (new, (_, old)) in sigs.iter().enumerate() {
            perm[*old as usize] = new as u8;
        }
        self.renamed(&perm)
    }
}

/// An exhaustive depth-first check with symmetry reduction over acceptors. Sound only if the
/// fault model treats every acceptor alike (asserted) and the properties do not name
/// acceptors (the standard ones read only participants). Counterexamples are not shortest.
pub fn run_dfs_symmetric<S: System>(
    label: &str,
    model: CommitModel<S>,
) -> (impl Checker<CommitModel<S>> + use<S>, RunStats)
where
    S::Node: AcceptorSymmetry,
{
    let acceptors: Vec<NodeId> = model
        .sys
        .nodes()
        .into_iter()
        .filter(|n| matches!(n, NodeId::Acceptor(_)))
        .collect();
    let f = &model.faults;
    for set in [&f.crashable, &f.initially_down] {
        let some = acceptors.iter().any(|a| set.contains(a));
        let all = acceptors.iter().all(|a| set.contains(a));
        assert!(
            !some || all,
            "acceptor symmetry needs a fault model that treats acceptors alike"
        );
    }
    assert!(f.partitions.is_empty(), "partitions may name acceptors");
    let start = Instant::now();
    let cap = state_cap();
    let mut builder = model.checker().threads(checker_threads()).symmetry();
    if let Some(cap) = cap {
        builder = builder.target_state_count(cap);
    }
    let checker = builder.spawn_dfs().join();
    let stats = RunStats::of(label, &checker, start, cap);
    (checker, stats)
}
