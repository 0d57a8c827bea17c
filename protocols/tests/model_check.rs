//! Exhaustive model checks (stateright, breadth-first) of the three commit cores, each under
//! its own fault model. Run with `--nocapture` to see state counts, times and traces.
//! `TANDEM_MC_LARGE=1` raises the bounds (more participants / crashes / ballots).

use stateright::Checker;
use tandem_protocols::core::{NodeId, Outcome, Vote};
use tandem_protocols::model::{CommitModel, Faults, McState, run_bfs, run_bfs_capped};
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

#[test]
fn two_phase_commit_is_safe_under_crash_recovery_loss_duplication_reordering() {
    let n = if large() { 4 } else { 3 };
    let sys = TwoPc { n };
    let mut faults = Faults::crash_recovery(&sys);
    faults.lossy = false;
    let model = CommitModel::new(sys, faults, votes(n));
    let (checker, stats) = run_bfs(
        &format!(
            "2PC n={n}, crash-recovery (each node crashes <= 1), dup+reorder links (loss subsumed)"
        ),
        model,
    );
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
    let n = 3;
    let sys = TwoPc { n };
    let faults = Faults {
        lossy: false,
        duplicating: true,
        crashable: vec![NodeId::Coordinator(0)],
        max_crashes_per_node: 1,
        max_crashes_total: 1,
        recovery: false,
        partitions: vec![],
        synchronous_timers: false,
        initially_down: vec![],
    };
    let model = CommitModel::new(sys, faults, vec![vec![Vote::Yes; n as usize]])
        .without_standard()
        .sometimes(
            "blocked: coordinator down, all prepared, nobody decided",
            two_pc_blocked,
        );
    let (checker, stats) = run_bfs("2PC n=3, coordinator crash-stop, blocking search", model);
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
    let _ = Outcome::Commit;
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

/// Bounds shared by the Paxos Commit checks: `n` participants, F = 1 (three acceptors).
/// Default: n = 2; `TANDEM_MC_LARGE=1`: n = 3.
fn paxos_n() -> u8 {
    if large() { 3 } else { 2 }
}

/// Participants' vote-deadline and in-doubt timers only matter when messages are lost; the
/// checks below run without loss (the duplicating network keeps every message), so they are
/// muted to keep the state space within CI's budget.
fn paxos_quiet_participants(id: NodeId, t: &paxos_commit::Timer) -> bool {
    matches!(id, NodeId::Participant(_)) && *t != paxos_commit::Timer::Progress
}

#[test]
fn paxos_commit_is_safe_with_two_leaders_and_leader_crashes() {
    let n = paxos_n();
    // C0 runs the fast path (ballot 0 is the participants'); C1 may start ballot 2 at any
    // moment, concurrently. Default: C0 may crash for good (C1 must finish); large: both
    // leaders may crash and restart.
    let sys = PaxosCommit::new(n, 1, 2, 2);
    let faults = Faults {
        lossy: false,
        duplicating: std::env::var("DUP").is_ok(),
        crashable: if large() {
            vec![NodeId::Coordinator(0), NodeId::Coordinator(1)]
        } else {
            vec![NodeId::Coordinator(0)]
        },
        max_crashes_per_node: 1,
        max_crashes_total: 2,
        recovery: large(),
        partitions: vec![],
        synchronous_timers: false,
        initially_down: vec![],
    };
    let model = CommitModel::new(sys, faults, votes(n))
        .mute(|id, t| paxos_quiet_participants(id, t) || id == NodeId::Coordinator(0));
    // ~10^7 states: too many for CI. Default: the first 3M generated states in BFS order
    // (every execution up to the printed depth); TANDEM_MC_LARGE: 40M.
    let cap = if large() { 40_000_000 } else { 3_000_000 };
    let (checker, stats) = run_bfs_capped(
        &format!(
            "Paxos Commit n={n} F=1, leaders C0 (fast path) + C1 (ballot 2, any time), \
             C0 may crash (both crash-recover with TANDEM_MC_LARGE), dup+reorder links, \
             BFS capped at {cap} generated states"
        ),
        model,
        Some(cap),
    );
    println!("  covered every execution of depth < {}", stats.max_depth);
    checker.assert_no_discovery("agreement");
    checker.assert_no_discovery("commit only if all voted yes");
    checker.assert_any_discovery("all commit");
    checker.assert_any_discovery("all abort");
}

fn paxos_acceptors_down(k: u8) -> CommitModel<PaxosCommit> {
    let n = 3;
    let sys = PaxosCommit::new(n, 1, 1, 1);
    let faults = Faults {
        lossy: false,
        duplicating: true,
        crashable: vec![],
        max_crashes_per_node: 0,
        max_crashes_total: 0,
        recovery: false,
        partitions: vec![],
        synchronous_timers: false,
        initially_down: (0..k).map(|i| NodeId::Acceptor(2 - i)).collect(),
    };
    CommitModel::new(sys, faults, votes(n)).mute(paxos_quiet_participants)
}

#[test]
fn paxos_commit_decides_with_f_acceptors_down() {
    let model = paxos_acceptors_down(1).always(
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
fn paxos_commit_may_block_but_stays_safe_with_f_plus_1_acceptors_down() {
    let model = paxos_acceptors_down(2).sometimes("blocked", blocked_undecided);
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
    // Every cut of {C0, P0, P1, P2} (the side holding C0 is listed).
    let c = NodeId::Coordinator(0);
    let p = NodeId::Participant;
    faults.partitions = vec![
        vec![c],
        vec![c, p(0)],
        vec![c, p(1)],
        vec![c, p(2)],
        vec![c, p(0), p(1)],
        vec![c, p(0), p(2)],
        vec![c, p(1), p(2)],
    ];
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
