//! 3PC over the real services: the scripted demo (`tandem commit demo 3pc-unblocks`,
//! `tandem_cli::three_pc_demo`) run as a test on fresh databases — the real binaries (inventory,
//! payment, shipping, and two orchestrators on databases of their own). The coordinator
//! crashes after PreCommit: the 3PC participants time out, run the termination protocol and
//! commit in all three services without it; a 2PC coordinator crashing after the votes leaves
//! its participants blocked (prepared, nothing visible) until it returns. The demo checks
//! every step against the services' own records and fails naming the step; here its report
//! is checked too. Process logs: `<tmp>/tandem-tests/<prefix>/`.

use tandem_cli::three_pc_demo::{TIMEOUT_MS, databases, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pc_participants_commit_without_their_coordinator_while_2pc_blocks() {
    let (opts, _databases, log_dir) = tandem_tests::demo_options("threepc", databases);
    let report = run(opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (process logs in {})", log_dir.display()));
    // The participants waited out their timeout before suspecting the coordinator, and a
    // participant (term ≥ 1), not the coordinator (term 0), led the decision.
    assert!(
        report.three_pc_secs * 1000.0 >= TIMEOUT_MS as f64,
        "{report:?}"
    );
    assert!(report.three_pc_term >= 1, "{report:?}");
    // 2PC stayed blocked for longer than 3PC needed to finish.
    assert!(
        report.two_pc_blocked_secs > report.three_pc_secs,
        "{report:?}"
    );
}
