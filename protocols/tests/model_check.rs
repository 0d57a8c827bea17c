//! Exhaustive model checks (stateright, breadth-first) of the three commit cores, each under
//! its own fault model. Run with `--nocapture` to see state counts, times and traces.
//! `TANDEM_MC_LARGE=1` raises the bounds (more participants / crashes / ballots).

use stateright::Checker;
use tandem_protocols::core::{NodeId, Outcome, Vote};
use tandem_protocols::model::{CommitModel, Faults, McState, run_bfs, run_dfs_symmetric};
use tandem_protocols::two_phase::{self, TwoPc};

fn large() -> bool {
    std::env::var("TANDEM_MC_LARGE").is_ok_and(|v| v == "1")
}

fn votes(n: u8) -> Vec<Vec<Vote>> {
    let all_yes = vec![Vote::Yes; n as usize];
    let mut last_no = all_yes.clone();
    *last_no.last_mut().unwrap() = Vote::No;
    vec![all_yes, last_no]
}

// ---------------------------------------------------------------- 2PC

/// Crash-recovery (every node crashes and restarts at most once), duplicating and reordering
/// links; loss is subsumed (no timer is muted). Votes all YES, and the last one NO.
fn two_pc_safety(sys: TwoPc) -> CommitModel<TwoPc> {
    let n = sys.n;
    let mut faults = Faults::crash_recovery(&sys);
    faults.lossy = false;
    CommitModel::new(sys, faults, votes(n))
}

#[test]
fn two_phase_commit_is_safe_under_crash_recovery_loss_duplication_reordering() {
    let n = if large() { 4 } else { 3 };
    let model = two_pc_safety(TwoPc::new(n));
    let label = format!(
        "2PC n={n}, crash-recovery (each node crashes <= 1), dup+reorder links (loss subsumed)"
    );
    let (checker, stats) = run_bfs(&label, model);
    assert!(stats.complete);
    checker.assert_properties();
}

/// The topology over HTTP: the coordinator logs the transaction (`Begin`, forced) and sends
/// Prepare to all N participants. Same fault model as above; a coordinator that restarts after
/// `Begin` without a decision forces `Abort` and tells everyone (reachable, asserted).
#[test]
fn two_phase_commit_coordinator_begins_is_safe_under_crash_recovery_loss_duplication_reordering() {
    let n = if large() { 4 } else { 3 };
    let model = two_pc_safety(TwoPc::coordinator_begins(n)).sometimes(
        "a restarted coordinator aborts from its Begin record",
        |_, s| {
            s.slots
                .iter()
                .any(|sl| sl.log.contains(&two_phase::Record::Abort))
        },
    );
    let label = format!(
        "2PC n={n}, coordinator begins, crash-recovery (each node crashes <= 1), \
         dup+reorder links (loss subsumed)"
    );
    let (checker, stats) = run_bfs(&label, model);
    assert!(stats.complete);
    checker.assert_properties();
}

fn two_pc_blocked(m: &CommitModel<TwoPc>, s: &McState<two_phase::Node>) -> bool {
    !m.up(s, NodeId::Coordinator(0))
        && m.participant_slots(s)
            .all(|p| p.log.contains(&two_phase::Record::Prepared))
        && m.participant_slots(s)
            .all(|p| p.node.is_none() || p.decided.is_none())
        && m.is_terminal(s)
}

#[test]
fn two_phase_commit_blocks_when_the_coordinator_dies_after_all_voted_yes() {
    two_pc_blocks(TwoPc::new(3));
}

#[test]
fn two_phase_commit_coordinator_begins_blocks_when_the_coordinator_dies_after_all_voted_yes() {
    two_pc_blocks(TwoPc::coordinator_begins(3));
}

fn two_pc_blocks(sys: TwoPc) {
    let n = sys.n;
    let faults = Faults {
        lossy: false,
        duplicating: true,
        crashable: vec![NodeId::Coordinator(0)],
        max_crashes_per_node: 1,
        max_crashes_total: 1,
        recovery: false,
        partitions: vec![],
        partition_changes: 1,
        synchronous_timers: false,
        initially_down: vec![],
    };
    let sys_begin = sys.begin;
    let model = CommitModel::new(sys, faults, vec![vec![Vote::Yes; n as usize]])
        .without_standard()
        .sometimes(
            "blocked: coordinator down, all prepared, nobody decided",
            two_pc_blocked,
        );
    let label = format!(
        "2PC n=3, {:?} begins, coordinator crash-stop, blocking search",
        sys_begin
    );
    let (checker, stats) = run_bfs(&label, model);
    let path =
        checker.assert_any_discovery("blocked: coordinator down, all prepared, nobody decided");
    println!(
        "2PC blocking trace (found after {} states):\n{}",
        stats.unique_states,
        checker.model().trace(&path)
    );
    let last = path.last_state();
    assert!(
        checker
            .model()
            .participant_slots(last)
            .all(|p| p.decided.is_none())
    );
}

// ---------------------------------------------------------------- Paxos Commit

use tandem_protocols::paxos_commit::{self, PaxosCommit};

fn terminal_implies_decided(m: &CommitModel<PaxosCommit>, s: &McState<paxos_commit::Node>) -> bool {
    // Cheap test first: the terminal test enumerates every successor.
    m.live_participants_decided(s) || !m.is_terminal(s)
}

fn blocked_undecided(m: &CommitModel<PaxosCommit>, s: &McState<paxos_commit::Node>) -> bool {
    !m.live_participants_decided(s) && m.is_terminal(s)
}

/// Participants' vote-deadline and in-doubt timers only fire when messages are lost or a
/// peer is slow. Muting them is a bound (loss is then not modelled), stated with each check.
fn paxos_quiet_participants(id: NodeId, t: &paxos_commit::Timer) -> bool {
    matches!(id, NodeId::Participant(_)) && *t != paxos_commit::Timer::Progress
}

/// `Outcome` to a prepared participant that cannot crash, in a duplicating network, with its
/// timers muted: delivering it changes only that participant (it decides and sends nothing;
/// its only other reactions, re-sending its ballot-0 2a on `Prepare`, add messages already in
/// the set). So the delivery commutes with every other step, and delivering it at once, in
/// the step that sends it, reaches the same states of every other node. The checked
/// properties only get stronger: the participant's decision appears sooner, and a second,
/// different outcome still flips it (agreement fails either way).
///
/// `BeginCommit` to a leader that cannot crash: its handler reads and writes only `started`
/// and sends `Prepare`, no other step of that leader reads or writes `started`, so it too
/// commutes with every other step, and it decides nothing.
///
/// (The model applies neither to a receiver that may crash.)
fn paxos_eager(n: &paxos_commit::Node, m: &paxos_commit::Msg) -> bool {
    use paxos_commit::{Msg, Node, RmState};
    matches!(
        (n, m),
        (Node::Participant(r), Msg::Outcome(_)) if r.state == RmState::Prepared
    ) || matches!((n, m), (Node::Coordinator(_), Msg::BeginCommit))
}

/// The two-leader check: N participants, F = 1 (A0..A2), leader C0 runs the fast path (ballot
/// 0 belongs to the participants; C0's own ballot-1 timer is muted unless `dueling`), leader
/// C1 may start ballot 2 at any moment. Duplicating, reordering links; participants' timers
/// muted (no loss). Checked with symmetry reduction over the three acceptors.
fn paxos_two_leaders(
    n: u8,
    votes: Vec<Vec<Vote>>,
    leader_faults: Vec<NodeId>,
    recovery: bool,
    dueling: bool,
) -> CommitModel<PaxosCommit> {
    let sys = PaxosCommit::new(n, 1, 2, 1);
    let faults = Faults {
        lossy: false,
        duplicating: true,
        max_crashes_total: leader_faults.len() as u8,
        crashable: leader_faults,
        max_crashes_per_node: 1,
        recovery,
        partitions: vec![],
        partition_changes: 1,
        synchronous_timers: false,
        initially_down: vec![],
    };
    let mut model = CommitModel::new(sys, faults, votes);
    model.muted = Some(if dueling {
        paxos_quiet_participants
    } else {
        |id, t| paxos_quiet_participants(id, t) || id == NodeId::Coordinator(0)
    });
    model.eager = Some(paxos_eager);
    model
}

#[test]
fn paxos_commit_is_safe_with_two_leaders_n3() {
    // CI: all participants vote YES (both outcomes reachable: C1 may propose Aborted for an
    // instance it heard nothing about). TANDEM_MC_LARGE adds P2 voting NO (validity).
    let all_yes = vec![Vote::Yes; 3];
    let vs = if large() { votes(3) } else { vec![all_yes] };
    // No crashes in CI: a leader that crashes for good is, to every other node, a leader that
    // takes no more steps, which asynchrony already covers (and the properties checked here
    // do not ask for progress). TANDEM_MC_LARGE: C1 may crash once and restart (crash-recovery
    // does add behaviour; CI checks it at N=2 below).
    let crashing = if large() {
        vec![NodeId::Coordinator(1)]
    } else {
        vec![]
    };
    let model = paxos_two_leaders(3, vs, crashing, large(), false);
    let (checker, stats) = run_dfs_symmetric(
        &format!(
            "Paxos Commit n=3 F=1, leaders C0 (fast path) + C1 (ballot 2, any time{}), \
             dup+reorder links, votes {}, acceptor symmetry",
            if large() { ", crash-recovers <= 1" } else { "" },
            if large() { "YYY and YYN" } else { "YYY" }
        ),
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

#[test]
fn paxos_commit_is_safe_with_two_leaders_and_leader_crash_recovery_n2() {
    // C1 (TANDEM_MC_LARGE: both leaders) may crash once and restart from its ballot record,
    // losing its tallies and phase-1 state; old messages stay deliverable. Without the forced
    // `Ballot` record a restarted C1 would run ballot 2 a second time and could propose a
    // different value in it. TANDEM_MC_LARGE adds P1 voting NO.
    let c = NodeId::Coordinator;
    let crashing = if large() {
        vec![c(0), c(1)]
    } else {
        vec![c(1)]
    };
    let vs = if large() {
        votes(2)
    } else {
        vec![vec![Vote::Yes; 2]]
    };
    let model = paxos_two_leaders(2, vs, crashing, true, false);
    let (checker, stats) = run_dfs_symmetric(
        &format!(
            "Paxos Commit n=2 F=1, leaders C0 (fast path) + C1 (ballot 2, any time), \
             {} crash-recovers <= 1, dup+reorder links, votes {}, acceptor symmetry",
            if large() { "each leader" } else { "C1" },
            if large() { "YY and YN" } else { "YY" }
        ),
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

/// N = 3, F = 1, `k` acceptors down from the start, one leader C0 with ballots <= 1. With
/// `loss`, participants' vote-deadline and in-doubt timers fire at any time, so a message that
/// is never delivered behaves as a lost one (the timeout -> abort and query paths are explored);
/// without it they are muted.
fn paxos_acceptors_down(k: u8, loss: bool) -> CommitModel<PaxosCommit> {
    paxos_acceptors_down_in(PaxosCommit::new(3, 1, 1, 1), k, loss)
}

/// [`paxos_acceptors_down`] for any topology of N = 3, F = 1, one leader.
fn paxos_acceptors_down_in(sys: PaxosCommit, k: u8, loss: bool) -> CommitModel<PaxosCommit> {
    let n = sys.shape.n;
    let faults = Faults {
        lossy: false,
        duplicating: true,
        crashable: vec![],
        max_crashes_per_node: 0,
        max_crashes_total: 0,
        recovery: false,
        partitions: vec![],
        partition_changes: 1,
        synchronous_timers: false,
        initially_down: (0..k).map(|i| NodeId::Acceptor(2 - i)).collect(),
    };
    let model = CommitModel::new(sys, faults, votes(n));
    if loss {
        model
    } else {
        model.mute(paxos_quiet_participants)
    }
}

#[test]
fn paxos_commit_decides_with_f_acceptors_down() {
    let model = paxos_acceptors_down(1, false).always(
        "terminal => every live participant decided",
        terminal_implies_decided,
    );
    let (checker, stats) = run_bfs(
        "Paxos Commit n=3 F=1, A2 down, leader C0 with ballots <= 1",
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

#[test]
fn paxos_commit_decides_under_message_loss_with_f_acceptors_down() {
    let model = paxos_acceptors_down(1, true)
        .always(
            "terminal => every live participant decided",
            terminal_implies_decided,
        )
        .sometimes("a YES voter aborts on its vote deadline", |m, s| {
            m.participant_slots(s).any(|p| {
                matches!(&p.node, Some(paxos_commit::Node::Participant(r))
                    if r.vote == Vote::Yes && r.state == paxos_commit::RmState::Aborted)
                    && !p.log.contains(&paxos_commit::Record::Prepared)
            })
        })
        .sometimes("an in-doubt participant queries the leader", |_, s| {
            s.net.keys().any(|e| e.msg == paxos_commit::Msg::Query)
        });
    let (checker, stats) = run_bfs(
        "Paxos Commit n=3 F=1, A2 down, leader C0 with ballots <= 1, loss (participants' \
         timers fire at any time), dup+reorder links",
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

/// The topology Tandem runs over HTTP: the leader (the orchestrator) begins and sends Prepare
/// to every participant. Safe and decided with F acceptors down, under loss.
#[test]
fn paxos_commit_leader_begins_decides_under_message_loss_with_f_acceptors_down() {
    let sys = PaxosCommit::leader_begins(3, 1, 1, 1);
    let model = paxos_acceptors_down_in(sys, 1, true)
        .always(
            "terminal => every live participant decided",
            terminal_implies_decided,
        )
        .sometimes("committed", |m, s| {
            m.participant_slots(s)
                .all(|p| p.decided == Some(tandem_protocols::Outcome::Commit))
        });
    let (checker, stats) = run_bfs(
        "Paxos Commit, leader begins, n=3 F=1, A2 down, leader C0 with ballots <= 1, loss \
         (participants' timers fire at any time), dup+reorder links",
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

#[test]
fn paxos_commit_may_block_but_stays_safe_with_f_plus_1_acceptors_down() {
    let model = paxos_acceptors_down(2, false).sometimes("blocked", blocked_undecided);
    let (checker, stats) = run_bfs(
        "Paxos Commit n=3 F=1, A1 and A2 down, leader C0 with ballots <= 1",
        model,
    );
    assert!(stats.complete);
    // Without a quorum nothing can be chosen: only safety is asserted, and that it blocks.
    checker.assert_no_discovery("agreement");
    checker.assert_no_discovery("commit only if all voted yes");
    let path = checker.assert_any_discovery("blocked");
    println!(
        "Paxos Commit blocked with F+1 acceptors down:\n{}",
        checker.model().trace(&path)
    );
}

// ---------------------------------------------------------------- 3PC

use tandem_protocols::three_phase::{self, ThreePc};

fn three_pc_faults(sys: &ThreePc, crashes: u8) -> Faults {
    use tandem_protocols::core::System;
    Faults {
        lossy: false,
        duplicating: false,
        crashable: sys.nodes(),
        max_crashes_per_node: 1,
        max_crashes_total: crashes,
        recovery: false,
        partitions: vec![],
        partition_changes: 1,
        synchronous_timers: true,
        initially_down: vec![],
    }
}

fn three_pc_terminal_decided(m: &CommitModel<ThreePc>, s: &McState<three_phase::Node>) -> bool {
    m.live_participants_decided(s) || !m.is_terminal(s)
}

#[test]
fn three_phase_commit_is_safe_and_non_blocking_under_crash_stop() {
    let n = if large() { 4 } else { 3 };
    let crashes = if large() { 4 } else { 3 };
    let sys = ThreePc { n };
    let faults = three_pc_faults(&sys, crashes);
    let model = CommitModel::new(sys, faults, votes(n)).always(
        "terminal => every live participant decided",
        three_pc_terminal_decided,
    );
    let (checker, stats) = run_bfs(
        &format!(
            "3PC n={n}, crash-stop (any node, <= {crashes} crashes), reliable links, \
             timeouts only for failed peers"
        ),
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

fn split(m: &CommitModel<ThreePc>, s: &McState<three_phase::Node>) -> bool {
    m.split(s)
}

#[test]
fn three_phase_commit_splits_under_a_partition() {
    let n = 3;
    let sys = ThreePc { n };
    let mut faults = three_pc_faults(&sys, 0);
    faults.partitions = every_cut_of_c0_and_3_participants();
    let model = CommitModel::new(sys, faults, vec![vec![Vote::Yes; n as usize]])
        .without_standard()
        .sometimes("split: one participant committed, another aborted", split);
    let (checker, stats) = run_bfs("3PC n=3, one partition, no crashes (split search)", model);
    let path = checker.assert_any_discovery("split: one participant committed, another aborted");
    println!(
        "3PC split decision under a partition (found after {} states):\n{}",
        stats.unique_states,
        checker.model().trace(&path)
    );
    let last = path.last_state();
    let m = checker.model();
    assert!(
        m.participant_slots(last)
            .any(|s| s.decided == Some(Outcome::Commit))
    );
    assert!(
        m.participant_slots(last)
            .any(|s| s.decided == Some(Outcome::Abort))
    );
}

/// The symmetry reduction's representative must be the same for every renaming of a state
/// (else the reduction only saves less; this guards the savings the table reports) and must
/// be a renaming of it (soundness). Checked on the first few thousand states of the
/// two-leader model.
#[test]
fn acceptor_symmetry_representative_is_canonical() {
    use stateright::{Model, Representative};
    let model = paxos_two_leaders(3, votes(3), vec![NodeId::Coordinator(1)], true, true);
    let perms: [[u8; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut stack = model.init_states();
    let mut seen = 0;
    let mut acts = vec![];
    while let Some(s) = stack.pop() {
        seen += 1;
        if seen > 3000 {
            break;
        }
        let rep = s.representative();
        assert!(perms.iter().any(|p| s.renamed(p) == rep));
        for p in &perms {
            assert!(s.renamed(p).representative() == rep);
        }
        model.actions(&s, &mut acts);
        for a in acts.drain(..) {
            if let Some(next) = model.next_state(&s, a) {
                stack.push(next);
            }
        }
    }
}

/// `TANDEM_MC_LARGE` only: C0 may also start ballot 1 at any moment, so two leaders run
/// phase 1 and 2 against each other (ballots 1 and 2) while the fast path (ballot 0) runs.
#[test]
fn paxos_commit_is_safe_with_dueling_leaders_n2() {
    if !large() {
        return;
    }
    let model = paxos_two_leaders(2, votes(2), vec![], false, true);
    let (checker, stats) = run_dfs_symmetric(
        "Paxos Commit n=2 F=1, leaders C0 (fast path + ballot 1, any time) + C1 (ballot 2, \
         any time), dup+reorder links, votes YY and YN, acceptor symmetry",
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

// ---------------------------------------------------------------- quorum-based 3PC

use tandem_protocols::quorum_three_phase::{self, QuorumThreePc};

/// Every cut of {C0, P0, P1, P2} (the side holding C0 is listed).
fn every_cut_of_c0_and_3_participants() -> Vec<Vec<NodeId>> {
    let c = NodeId::Coordinator(0);
    let p = NodeId::Participant;
    vec![
        vec![c],
        vec![c, p(0)],
        vec![c, p(1)],
        vec![c, p(2)],
        vec![c, p(0), p(1)],
        vec![c, p(0), p(2)],
        vec![c, p(1), p(2)],
    ]
}

/// CI: the coordinator alone; the coordinator with P0 against P1 and P2; the coordinator with
/// P1 against P0 and P2 (so the two participants that may lead can end up on either side of a
/// cut, or on the same side). `TANDEM_MC_LARGE`: every cut.
fn quorum_cuts() -> Vec<Vec<NodeId>> {
    let c = NodeId::Coordinator(0);
    let p = NodeId::Participant;
    if large() {
        every_cut_of_c0_and_3_participants()
    } else {
        vec![vec![c], vec![c, p(0)], vec![c, p(1)]]
    }
}

fn quorum_blocked(m: &CommitModel<QuorumThreePc>, s: &McState<quorum_three_phase::Node>) -> bool {
    !m.live_participants_decided(s) && m.is_terminal(s)
}

/// A participant stays pre-committed, undecided, with nothing left to do, while the others
/// decided abort: the minority side of a partition that blocks instead of splitting.
fn quorum_precommitted_minority_blocks(
    m: &CommitModel<QuorumThreePc>,
    s: &McState<quorum_three_phase::Node>,
) -> bool {
    let pre_committed_undecided = m.participant_slots(s).any(|p| {
        p.decided.is_none()
            && matches!(&p.node, Some(quorum_three_phase::Node::Participant(q))
                if q.state == quorum_three_phase::QState::PreCommitted)
    });
    pre_committed_undecided
        && m.participant_slots(s)
            .any(|p| p.decided == Some(Outcome::Abort))
        && m.is_terminal(s)
}

/// Quorum 3PC, N = 3, Vc = Va = 2, votes YYY and YYN: reliable links cut by partitions that
/// change (`changes` times: any cut, another cut, or a heal, at any moment). Every timer waits
/// for one peer and fires only while that peer is cut off — but the cut may move or heal
/// afterwards, so a suspicion can turn out wrong (the coordinator was alive after all), which
/// plain 3PC cannot survive. Bounds: P0 and P1 may lead a termination (`TANDEM_MC_LARGE`: all
/// three), once each. Safe, both outcomes reachable, and blocking reachable (the price of
/// never splitting).
fn quorum_three_pc(changes: u8) -> CommitModel<QuorumThreePc> {
    let n = 3;
    let leaders = if large() { 3 } else { 2 };
    let sys = QuorumThreePc::new(n, 2, 2).bounded(leaders, 1);
    let faults = Faults {
        lossy: false,
        duplicating: false,
        crashable: vec![],
        max_crashes_per_node: 0,
        max_crashes_total: 0,
        recovery: false,
        partitions: quorum_cuts(),
        partition_changes: changes,
        synchronous_timers: true,
        initially_down: vec![],
    };
    CommitModel::new(sys, faults, votes(n))
        .sometimes(
            "blocked: a live participant undecided, nothing left to do",
            quorum_blocked,
        )
        .sometimes(
            "a pre-committed participant blocks while another aborted",
            quorum_precommitted_minority_blocks,
        )
}

#[test]
fn quorum_three_phase_commit_is_safe_and_blocks_under_changing_partitions() {
    let changes = if large() { 3 } else { 2 };
    let (checker, stats) = run_bfs(
        &format!(
            "quorum 3PC n=3 Vc=Va=2, partitions change <= {changes} times (any cut, re-cut, \
             heal, any time), a timer fires while its peer is cut off, {} may lead once",
            if large() { "P0, P1, P2" } else { "P0, P1" }
        ),
        quorum_three_pc(changes),
    );
    // Safety first, so that a run capped with TANDEM_MC_MAX_STATES still says whether the part
    // it explored (every execution shorter than its depth) is safe.
    checker.assert_no_discovery("agreement");
    checker.assert_no_discovery("commit only if all voted yes");
    assert!(stats.complete);
    checker.assert_properties();
    let path =
        checker.assert_any_discovery("a pre-committed participant blocks while another aborted");
    println!(
        "quorum 3PC blocks instead of splitting:\n{}",
        checker.model().trace(&path)
    );
}
