//! A partition splits plain 3PC over the real services: the scripted demo (`tandem commit demo
//! 3pc-partition`, `tandem_cli::three_pc_partition_demo`) run as a test on fresh databases — the
//! real binaries (inventory, payment, shipping and one orchestrator). Link faults cut
//! `{orchestrator, inventory}` from `{payment, shipping}` for every message from PreCommit on:
//! the coordinator's side commits, payment's termination protocol aborts the other side, and
//! the invariant scan over the services' read endpoints finds the order's stock reserved with
//! no charge and no shipment. The demo checks each step and fails naming it; here its report
//! is checked too. Process logs: `<tmp>/tandem-tests/<prefix>/`.

use tandem_cli::three_pc_partition_demo::{TIMEOUT_MS, databases, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_splits_plain_3pc_and_the_scan_finds_it() {
    let (opts, _databases, log_dir) = tandem_tests::demo_options("threepcsplit", databases);
    let report = run(opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (process logs in {})", log_dir.display()));
    let states: Vec<&str> = report.branches.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["committed", "aborted", "aborted"], "{report:?}");
    assert_eq!(report.effects, [1, 0, 0], "{report:?}");
    assert_eq!(report.coordinator_state, "committed", "{report:?}");
    assert_eq!(report.violations.len(), 1, "{report:?}");
    // Payment's side waited out the coordinator and then participant 0 before it aborted.
    assert!(
        report.decided_secs * 1000.0 >= 2.0 * TIMEOUT_MS as f64,
        "{report:?}"
    );
}
