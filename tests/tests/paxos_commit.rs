//! Paxos Commit over the real services: the scripted demo (`tandem commit demo paxos`,
//! `tandem_cli::paxos_demo`) run as a test on fresh databases — the real binaries (two
//! orchestrators, inventory, payment, shipping, three acceptors), the leader crashing after the
//! votes (another orchestrator finishes with a higher ballot), one acceptor down as well, two of
//! three down (it waits, undecided and invisible, then finishes when one returns). The demo
//! checks every step against the services' own records and fails naming the step; here its
//! report is checked too. Process logs: `<tmp>/tandem-tests/<prefix>/`.

use tandem_cli::paxos_demo::{databases, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paxos_commit_survives_the_leader_and_f_acceptors_and_waits_for_a_majority() {
    let (opts, _databases, log_dir) = tandem_tests::demo_options("paxos", databases);
    let report = run(opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (process logs in {})", log_dir.display()));
    // Both takeovers finished under a later lease epoch than the crashed leader's (1), so with
    // a higher ballot; the blocked transaction's leader kept starting rounds.
    assert_eq!(report.takeover_epochs.len(), 2, "{report:?}");
    assert!(report.takeover_epochs.iter().all(|e| *e >= 2), "{report:?}");
    assert!(report.rounds_while_blocked >= 2, "{report:?}");
}
