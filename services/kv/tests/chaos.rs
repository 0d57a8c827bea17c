//! The store under SIGKILL: many concurrent clients while shards and the coordinator are killed
//! and restarted at random.
//!
//! - list-append, checked by `kv_client::checker` (G1a, G1b, G0, G1c, G2, lost appends):
//!   at least `KV_CHAOS_TXNS` transaction attempts (default 300) and `KV_CHAOS_SECS` seconds
//!   (default 6), `KV_CHAOS_CLIENTS` clients (default 8);
//! - bank transfers across shards: the total never changes (`KV_BANK_TXNS`, default 300).
//!
//! Both print what they saw (`--nocapture`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Cluster, env_size};
use kv_client::checker::check;
use kv_client::history::History;
use kv_client::workload::{Bank, ListAppend, final_read, list_append};
use rand::Rng;
use tokio::sync::Mutex;

/// Kill -9 a random process every 150–450 ms and restart it 50–250 ms later, until `stop`.
fn killer(
    cluster: Arc<Mutex<Cluster>>,
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let (pause, down, victim) = {
                let mut rng = rand::rng();
                (
                    rng.random_range(150..450),
                    rng.random_range(50..250),
                    rng.random_range(0..4usize),
                )
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            cluster.lock().await.kill(victim);
            kills.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(down)).await;
            let mut c = cluster.lock().await;
            c.spawn(victim);
            c.wait_up(victim).await;
        }
    })
}

async fn all_up(cluster: &Arc<Mutex<Cluster>>) {
    let c = cluster.lock().await;
    for p in 0..4 {
        c.wait_up(p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_under_kill_9_is_serializable() {
    let cluster = Arc::new(Mutex::new(Cluster::start("chaos-la", 3, true, &[]).await));
    let client = cluster.lock().await.client();
    let cfg = ListAppend {
        clients: env_size("KV_CHAOS_CLIENTS", 8),
        txns: env_size("KV_CHAOS_TXNS", 300),
        keys: 8,
        max_mops: 4,
        prefix: "la-".into(),
        min_duration: Duration::from_secs(env_size("KV_CHAOS_SECS", 6) as u64),
    };
    let (stop, kills) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let k = killer(cluster.clone(), stop.clone(), kills.clone());
    let history = Arc::new(History::default());
    list_append(&client, &cfg, &history).await;
    stop.store(true, Ordering::Relaxed);
    k.await.expect("killer");
    all_up(&cluster).await;
    final_read(&client, &history, cfg.clients, &cfg.prefix, cfg.keys).await;
    let ops = history.ops();
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for op in &ops {
        if let Some(e) = &op.error {
            *errors
                .entry(e.split(':').next().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    println!("errors: {errors:?}");
    let report = check(&ops);
    println!(
        "list-append under {} kills: {report}",
        kills.load(Ordering::Relaxed)
    );
    assert!(kills.load(Ordering::Relaxed) > 0, "nothing was killed");
    assert!(report.ok > 0, "nothing committed: {report}");
    assert!(report.is_valid(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_total_never_changes_under_kill_9() {
    let cluster = Arc::new(Mutex::new(Cluster::start("chaos-bank", 3, true, &[]).await));
    let client = cluster.lock().await.client();
    let bank = Bank {
        clients: 6,
        txns: env_size("KV_BANK_TXNS", 300),
        accounts: 9,
        initial: 100,
        prefix: "acct-".into(),
    };
    bank.setup(&client).await.expect("open the accounts");
    let (stop, kills) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let k = killer(cluster.clone(), stop.clone(), kills.clone());
    let mut report = bank.run(&client).await;
    stop.store(true, Ordering::Relaxed);
    k.await.expect("killer");
    all_up(&cluster).await;
    report.final_total = Some(bank.read_total(&client).await.expect("final total"));
    println!(
        "bank under {} kills: {report:?}",
        kills.load(Ordering::Relaxed)
    );
    assert!(kills.load(Ordering::Relaxed) > 0, "nothing was killed");
    assert!(report.transfers_ok > 0, "no transfer committed: {report:?}");
    assert!(report.wrong_totals.is_empty(), "{report:?}");
    assert_eq!(report.final_total, Some(bank.total()));
}
