//! Tests leave nothing behind when they pass, and keep everything when they fail: the
//! databases of an end-to-end cluster and of an in-process stack are dropped with the harness
//! object on a passing path and kept (named in the output) on a panicking one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use tandem_tests::cluster::{Cluster, ClusterConfig};

/// Databases on the test server whose name starts with `prefix`.
async fn count(prefix: &str) -> i64 {
    let mut c = tandem_kit::db::admin_connection(&tandem_kit::testing::server_url())
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)")
        .bind(prefix)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Wait until no database starts with `prefix` (a drop may finish in the background when
/// checkpoints are slow).
async fn all_gone(prefix: &str) {
    tandem_tests::eventually(
        Duration::from_secs(120),
        &format!("the databases {prefix}_* to be dropped"),
        || async move { (count(prefix).await == 0).then_some(()) },
    )
    .await
}

/// A cluster whose four databases exist (as its processes would create them).
async fn cluster_with_databases(name: &str) -> (Cluster, String) {
    let cluster = Cluster::new(ClusterConfig::new(name, 1));
    for component in tandem_cli::launch::COMPONENTS {
        let url = cluster.layout.database_url(component);
        let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        tandem_kit::db::create_database_if_missing(&opts)
            .await
            .unwrap();
    }
    let prefix = cluster.layout.db_prefix.clone();
    assert_eq!(count(&prefix).await, 4);
    (cluster, prefix)
}

#[tokio::test]
async fn a_passing_cluster_test_drops_its_databases() {
    let (cluster, prefix) = cluster_with_databases("cleanpass").await;
    drop(cluster);
    all_gone(&prefix).await;
}

#[tokio::test]
async fn a_failing_cluster_test_keeps_its_databases() {
    let (cluster, prefix) = cluster_with_databases("cleanfail").await;
    let (layout, logs) = (cluster.layout.clone(), cluster.log_dir.clone());
    let r = catch_unwind(AssertUnwindSafe(move || {
        let _cluster = cluster;
        panic!("a failing test (on purpose)");
    }));
    assert!(r.is_err());
    assert_eq!(count(&prefix).await, 4, "kept for inspection");
    assert!(logs.exists(), "the logs are kept too");
    layout.drop_databases().await.unwrap();
    assert_eq!(count(&prefix).await, 0);
    std::fs::remove_dir_all(&logs).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_in_process_test_drops_its_databases() {
    let (stack, _client) = tandem_tests::in_process("cleanstack", |_| {}).await;
    let prefix = stack.layout.db_prefix.clone();
    assert_eq!(count(&prefix).await, 4);
    stack.stop().await.unwrap();
    all_gone(&prefix).await;
}
