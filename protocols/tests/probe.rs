use tandem_protocols::core::{NodeId, Vote};
use tandem_protocols::model::{CommitModel, Faults, run_bfs};
use tandem_protocols::paxos_commit::PaxosCommit;

#[test]
fn probe() {
    let n: u8 = std::env::var("N").unwrap().parse().unwrap();
    let k: u8 = std::env::var("K").unwrap().parse().unwrap();
    let l: u8 = std::env::var("L").unwrap().parse().unwrap();
    let sys = PaxosCommit::new(n, 1, l, l);
    let faults = Faults {
        lossy: false,
        duplicating: true,
        crashable: (0..3).map(NodeId::Acceptor).collect(),
        max_crashes_per_node: 1,
        max_crashes_total: k,
        recovery: false,
        partitions: vec![],
        synchronous_timers: false,
    };
    let m = CommitModel::new(sys, faults, vec![vec![Vote::Yes; n as usize]])
        .mute(|t| *t != tandem_protocols::paxos_commit::Timer::Progress);
    run_bfs(&format!("probe n={n} k={k} l={l}"), m);
}
