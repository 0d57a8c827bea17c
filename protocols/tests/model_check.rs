//! Exhaustive model checks (stateright, breadth-first) of the three commit cores, each under
//! its own fault model. Run with `--nocapture` to see state counts, times and traces.
//! `TANDEM_MC_LARGE=1` raises the bounds (more participants / crashes / ballots).

use stateright::Checker;
use tandem_protocols::core::{NodeId, Outcome, Vote};
use tandem_protocols::model::{CommitModel, Faults, McState, run_bfs};
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
        &format!("2PC n={n}, crash-recovery (each node crashes <= 1), lossy+dup+reorder links"),
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

fn acceptors(f: u8) -> Vec<NodeId> {
    (0..2 * f + 1).map(NodeId::Acceptor).collect()
}

fn terminal_implies_decided(m: &CommitModel<PaxosCommit>, s: &McState<paxos_commit::Node>) -> bool {
    // Cheap test first: the terminal test enumerates every successor.
    m.live_participants_decided(s) || !m.is_terminal(s)
}

fn blocked_undecided(m: &CommitModel<PaxosCommit>, s: &McState<paxos_commit::Node>) -> bool {
    !m.live_participants_decided(s) && m.is_terminal(s)
}

#[test]
fn paxos_commit_is_safe_with_two_leaders_and_crash_recovery() {
    let (n, f) = (3, 1);
    let (leaders, max_ballot, crashes) = if large() { (2, 4, 3) } else { (2, 2, 2) };
    let sys = PaxosCommit::new(n, f, leaders, max_ballot);
    let mut faults = Faults::crash_recovery(&sys);
    faults.lossy = false;
    faults.max_crashes_total = crashes;
    let model = CommitModel::new(sys, faults, votes(n));
    let (checker, stats) = run_bfs(
        &format!(
            "Paxos Commit n={n} F={f}, {leaders} leaders, ballots <= {max_ballot}, crash-recovery \
             (any node, <= 1 each, <= {crashes} in total), dup+reorder links"
        ),
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

fn paxos_acceptors_down(k: u8) -> CommitModel<PaxosCommit> {
    let (n, f) = (3, 1);
    let sys = PaxosCommit::new(n, f, 2, 2);
    let faults = Faults {
        lossy: false,
        duplicating: true,
        crashable: acceptors(f),
        max_crashes_per_node: 1,
        max_crashes_total: k,
        recovery: false,
        partitions: vec![],
        synchronous_timers: false,
    };
    CommitModel::new(sys, faults, votes(n))
}

#[test]
fn paxos_commit_decides_with_f_acceptors_down() {
    let model = paxos_acceptors_down(1).always(
        "terminal => every live participant decided",
        terminal_implies_decided,
    );
    let (checker, stats) = run_bfs(
        "Paxos Commit n=3 F=1, 2 leaders, ballots <= 2, F=1 acceptor crash-stops",
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
}

#[test]
fn paxos_commit_may_block_but_stays_safe_with_f_plus_1_acceptors_down() {
    let model = paxos_acceptors_down(2).sometimes("blocked", blocked_undecided);
    let (checker, stats) = run_bfs(
        "Paxos Commit n=3 F=1, 2 leaders, ballots <= 2, F+1=2 acceptors crash-stop",
        model,
    );
    assert!(stats.complete);
    checker.assert_properties();
    let path = checker.assert_any_discovery("blocked");
    println!(
        "Paxos Commit blocked with F+1 acceptors down:\n{}",
        checker.model().trace(&path)
    );
}
