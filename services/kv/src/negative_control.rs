//! The checker's negative control: the same list-append workload against a store whose reads
//! take no locks ([`Config::weakened`], reachable only from this test module) must be flagged,
//! and against the real store must pass. Few hot keys, many short read-then-append
//! transactions and eight clients make the anomaly (write skew, lost appends) near-certain.

use std::sync::Arc;

use kv_client::Client;
use kv_client::checker::{Anomaly, check};
use kv_client::history::History;
use kv_client::workload::{ListAppend, final_read, list_append};

use crate::local::Local;

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-kv-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn run(weakened: bool) -> kv_client::checker::Report {
    let dir = tempdir(if weakened { "weak" } else { "strong" });
    let local = Local::start(3, &dir, None, |c| if weakened { c.weakened() } else { c })
        .await
        .expect("start the store");
    let client = Client::new(local.shard_urls.clone());
    let cfg = ListAppend {
        clients: 8,
        txns: 800,
        keys: 3,
        max_mops: 4,
        prefix: "nc-".into(),
        min_duration: std::time::Duration::ZERO,
    };
    let history = Arc::new(History::default());
    list_append(&client, &cfg, &history).await;
    final_read(&client, &history, cfg.clients, &cfg.prefix, cfg.keys).await;
    local.stop().await;
    std::fs::remove_dir_all(&dir).ok();
    let report = check(&history.ops());
    println!("weakened={weakened}: {report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_flags_reads_without_locks() {
    let report = run(true).await;
    assert!(report.ok > 30, "too few commits to judge: {report}");
    assert!(
        report.anomalies.iter().any(|a| matches!(
            a,
            Anomaly::Cycle { .. } | Anomaly::IncompatibleOrder { .. } | Anomaly::LostAppend { .. }
        )),
        "reads without locks went unnoticed: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_workload_on_the_real_store_is_serializable() {
    let report = run(false).await;
    assert!(report.ok > 30, "too few commits to judge: {report}");
    assert!(report.is_valid(), "{report}");
}
