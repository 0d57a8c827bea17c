//! 2PC with the real binaries and real crashes:
//!
//! - a participant aborted by its crash point right after `PREPARE TRANSACTION` (before it
//!   votes): its prepared transaction survives the process, and after the restart the
//!   transaction is finished (committed in all three services);
//! - a randomized run: concurrent 2PC checkouts (some declined, some short of stock) while the
//!   coordinator and the participants die at their crash points with some probability and are
//!   restarted; then, per transaction id, all three effects or none across the three services'
//!   databases, stock conserved, and no prepared transaction left. Size:
//!   `TANDEM_2PC_CHAOS_TXNS` (default 12), crash probability `TANDEM_2PC_CHAOS_P` (default 0.15);
//! - a Postgres restart (a throwaway cluster of the test's own, never the shared server) while
//!   the three participants hold prepared transactions of a transaction whose coordinator died
//!   after logging Commit: they survive the restart and are committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tandem_cli::client::checkout_input;
use tandem_kit::auth::Role;
use tandem_tests::cluster::{Cluster, ClusterConfig};
use tandem_tests::pgcluster::PgCluster;

const HEALTHY: Duration = Duration::from_secs(60);

/// POST the 2PC checkout to the orchestrator at `base` until it is accepted (the orchestrator may
/// be down; the order id is the Idempotency-Key, so a resend is the same transaction): its id.
async fn begin(http: &reqwest::Client, base: &str, input: &Value) -> String {
    let key = input["order_id"].as_str().unwrap().to_string();
    let body = json!({ "protocol": "2pc", "definition": "checkout", "input": input });
    let send = || {
        http.post(format!("{base}/transactions"))
            .header("Idempotency-Key", &key)
            .json(&body)
    };
    let t = until_ok(&format!("{key} to be accepted"), send, |_| true).await;
    t["id"].as_str().unwrap().to_string()
}

/// Wait for transaction `id` to settle (`committed` / `aborted`), asking the orchestrator at
/// `base`.
async fn settled(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let send = || http.get(format!("{base}/transactions/{id}?wait=5"));
    let done = |t: &Value| matches!(t["state"].as_str(), Some("committed" | "aborted"));
    until_ok(&format!("{id} to settle"), send, done).await
}

/// Send the request `send` builds until it answers 2xx with a body that is `done` (the
/// orchestrator may be down meanwhile), for at most two minutes.
async fn until_ok(
    what: &str,
    send: impl Fn() -> reqwest::RequestBuilder,
    done: impl Fn(&Value) -> bool,
) -> Value {
    tandem_tests::eventually(Duration::from_secs(120), what, || {
        let request = send().timeout(Duration::from_secs(10));
        let done = &done;
        async move {
            let r = request.send().await.ok()?;
            if !r.status().is_success() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
            let t: Value = r.json().await.ok()?;
            done(&t).then_some(t)
        }
    })
    .await
}

/// Wait for node `node` to exit (by its crash point: SIGABRT).
async fn died(cluster: &mut Cluster, node: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.proc(node).exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "{} did not die",
            cluster.nodes[node].name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster.proc(node).aborted(),
        "died by its crash point (abort)"
    );
}

async fn connect(cluster: &Cluster, component: &str) -> PgConnection {
    PgConnection::connect(&cluster.db_url(component))
        .await
        .unwrap()
}

/// The prepared transactions of the test's own databases.
async fn prepared(cluster: &Cluster) -> Vec<(String, String)> {
    let mut c = connect(cluster, "orchestrator").await;
    let names = cluster.layout.databases();
    sqlx::query_as("SELECT database::text, gid FROM pg_prepared_xacts WHERE database = ANY($1)")
        .bind(&names)
        .fetch_all(&mut c)
        .await
        .unwrap()
}

/// Wait until none of the test's databases holds a prepared transaction.
async fn none_prepared(cluster: &Cluster) {
    tandem_tests::eventually(
        Duration::from_secs(60),
        "no prepared transaction",
        || async { prepared(cluster).await.is_empty().then_some(()) },
    )
    .await;
}

/// Transaction id → committed effects in (inventory, payment, shipping), from their tables.
async fn effects_by_txn(cluster: &Cluster) -> BTreeMap<String, [i64; 3]> {
    let mut by_txn: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for (i, (db, table)) in [
        ("inventory", "reservations"),
        ("payment", "payments"),
        ("shipping", "shipments"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = connect(cluster, db).await;
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT txn_id::text, count(*) FROM {table} WHERE txn_id IS NOT NULL GROUP BY 1"
        )))
        .fetch_all(&mut c)
        .await
        .unwrap();
        for (txn, n) in rows {
            by_txn.entry(txn).or_default()[i] = n;
        }
    }
    by_txn
}

/// The stock of `sku`: (available, reserved).
async fn stock(cluster: &Cluster, sku: &str) -> (i64, i64) {
    let mut c = connect(cluster, "inventory").await;
    sqlx::query_as("SELECT available::bigint, reserved::bigint FROM stock WHERE sku = $1")
        .bind(sku)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Restart `node` (crash points off), then: transaction `id` commits, all three effects, no
/// prepared transaction left, and the stock of `sku` is (available, reserved).
async fn restarted_and_committed(
    cluster: &mut Cluster,
    node: usize,
    id: &str,
    (sku, available, reserved): (&str, i64, i64),
) {
    cluster.start(node, None);
    cluster.wait_healthy(node, HEALTHY).await;
    let base = cluster.url(cluster.orchestrator(0));
    let t = settled(&cluster.http(Role::Operator), &base, id).await;
    assert_eq!(t["state"], "committed", "{t}");
    none_prepared(cluster).await;
    let effects = effects_by_txn(cluster).await;
    assert_eq!(effects.get(id), Some(&[1, 1, 1]), "{effects:?}");
    assert_eq!(stock(cluster, sku).await, (available, reserved));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_after_prepare_keeps_its_prepared_transaction_and_finishes_it() {
    let mut cluster = Cluster::new(ClusterConfig::new("tpc_pkill", 1).quick_takeover());
    let (payment, orch) = (cluster.service("payment"), cluster.orchestrator(0));
    for node in [0, 1, 2, orch] {
        let crash = (node == payment).then(|| "service.2pc.after_prepare".to_string());
        cluster.start(node, crash);
    }
    cluster.wait_all_healthy(HEALTHY).await;
    cluster.client(0).set_stock("pk-sku", 10).await.unwrap();
    let http = cluster.http(Role::Operator);

    let base = cluster.url(orch);
    let id = begin(
        &http,
        &base,
        &checkout_input("pk-1", "pk-sku", 2, "tok_visa", "FR"),
    )
    .await;
    // Payment dies right after PREPARE TRANSACTION, before its vote: its prepared transaction
    // is still on the server, holding the charge.
    died(&mut cluster, payment).await;
    let gids = prepared(&cluster).await;
    let payment_db = cluster.layout.database("payment");
    assert!(
        gids.iter()
            .any(|(db, gid)| *db == payment_db && gid.contains(&id)),
        "payment's prepared transaction survives its process: {gids:?}"
    );
    let t = http
        .get(format!("{base}/transactions/{id}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        t["state"], "preparing",
        "no decision without payment's vote: {t}"
    );

    // Restarted (crash point off): the branch is finished — all three committed.
    restarted_and_committed(&mut cluster, payment, &id, ("pk-sku", 8, 2)).await;
    assert!(
        cluster.log(payment).contains("service.2pc.after_prepare"),
        "payment died at its crash point"
    );
}

/// The crash points of node `node` in the randomized run (each hit aborts with probability p).
fn crash_points(cluster: &Cluster, node: usize, p: f64) -> String {
    let points: &[&str] = if node >= cluster.orchestrator(0) {
        &[
            "orchestrator.2pc.after_votes",
            "orchestrator.2pc.after_decision",
            "orchestrator.2pc.mid_broadcast",
        ]
    } else {
        &[
            "service.2pc.after_prepare",
            "service.2pc.after_commit_prepared",
        ]
    };
    points
        .iter()
        .map(|x| format!("{x}@{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Restart every node that died (with its crash points while `chaos`), and now and then
/// `kill -9` a random live one (restarted at once): returns how many of each.
fn nemesis(cluster: &mut Cluster, rng: &mut StdRng, p: f64, chaos: bool) -> (u32, u32) {
    let (mut restarts, mut kills) = (0, 0);
    for node in 0..cluster.nodes.len() {
        let crash = chaos.then(|| crash_points(cluster, node, p));
        if cluster.proc(node).exited().is_some() {
            cluster.start(node, crash);
            restarts += 1;
        } else if chaos && rng.random_bool(0.01) {
            cluster.start(node, crash); // kill -9, then a new process
            kills += 1;
        }
    }
    (restarts, kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_2pc_checkouts_with_kills_stay_all_or_nothing() {
    let n: usize = tandem_tests::env_or("TANDEM_2PC_CHAOS_TXNS", 12);
    let p: f64 = tandem_tests::env_or("TANDEM_2PC_CHAOS_P", 0.15);
    let seed: u64 = tandem_tests::env_or("TANDEM_2PC_CHAOS_SEED", rand::random());
    eprintln!("TANDEM_2PC_CHAOS_SEED={seed} TANDEM_2PC_CHAOS_TXNS={n} TANDEM_2PC_CHAOS_P={p}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::new(ClusterConfig::new("tpc_chaos", 1).quick_takeover());
    let orch = cluster.orchestrator(0);
    for node in 0..cluster.nodes.len() {
        let crash = crash_points(&cluster, node, p);
        cluster.start(node, Some(crash));
    }
    cluster.wait_all_healthy(HEALTHY).await;
    // Fewer items than checkouts: some are short of stock.
    let initial = i64::try_from(n / 2).unwrap().max(1);
    cluster
        .client(0)
        .set_stock("chaos-sku", initial)
        .await
        .unwrap();

    // The checkouts, all at once; about one in five with a declined card.
    let base = cluster.url(orch);
    let http = cluster.http(Role::Operator);
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..n {
        let card = tandem_tests::random_card(&mut rng);
        let input = checkout_input(&format!("tc-{i}"), "chaos-sku", 1, card, "FR");
        let (http, base) = (http.clone(), base.clone());
        runs.spawn(async move {
            let id = begin(&http, &base, &input).await;
            (id, card)
        });
    }
    let (mut restarts, mut kills) = (0, 0);
    let mut txns = Vec::new();
    while !runs.is_empty() {
        tokio::select! {
            done = runs.join_next() => txns.push(done.unwrap().unwrap()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let (r, k) = nemesis(&mut cluster, &mut rng, p, true);
                (restarts, kills) = (restarts + r, kills + k);
            }
        }
    }
    // Keep the nemesis on while the transactions run, then calm: every node restarted without
    // crash points (itself a kill -9 of each, wherever it is).
    let chaos_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < chaos_until {
        let (r, k) = nemesis(&mut cluster, &mut rng, p, true);
        (restarts, kills) = (restarts + r, kills + k);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in 0..cluster.nodes.len() {
        cluster.start(node, None);
    }
    cluster.wait_all_healthy(HEALTHY).await;
    eprintln!("{restarts} restarts after crash points, {kills} random kills");

    let mut states = BTreeMap::new();
    for (id, card) in &txns {
        let t = settled(&http, &base, id).await;
        let state = t["state"].as_str().unwrap().to_string();
        if *card == "tok_decline" {
            assert_eq!(state, "aborted", "a declined card never commits: {t}");
        }
        states.insert(id.clone(), state);
    }
    none_prepared(&cluster).await;

    let committed = all_or_nothing(&cluster, &states, initial).await;
    eprintln!("{committed} of {n} committed; {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_survive_a_postgres_restart_and_are_finished() {
    let Some(pg) = PgCluster::create() else {
        return PgCluster::missing();
    };
    let mut cfg = ClusterConfig::new("tpc_pgrestart", 1).quick_takeover();
    cfg.server_url = pg.url();
    let mut cluster = Cluster::new(cfg);
    let orch = cluster.orchestrator(0);
    for node in [0, 1, 2] {
        cluster.start(node, None);
    }
    // The coordinator dies once it has logged Commit, before sending any COMMIT.
    cluster.start(orch, Some("orchestrator.2pc.after_decision".into()));
    cluster.wait_all_healthy(HEALTHY).await;
    cluster.client(0).set_stock("pg-sku", 10).await.unwrap();
    let (http, base) = (cluster.http(Role::Operator), cluster.url(orch));
    let input = checkout_input("pgr-1", "pg-sku", 3, "tok_visa", "FR");
    let id = begin(&http, &base, &input).await;
    died(&mut cluster, orch).await;
    let ours = |gids: &[(String, String)]| gids.iter().filter(|(_, g)| g.contains(&id)).count();
    assert_eq!(ours(&prepared(&cluster).await), 3, "all three prepared");

    // Postgres restarts under the services, with the three prepared transactions in flight.
    pg.stop();
    pg.start();
    for node in [0, 1, 2] {
        cluster.wait_healthy(node, HEALTHY).await;
    }
    let gids = prepared(&cluster).await;
    assert_eq!(
        ours(&gids),
        3,
        "prepared transactions survive the restart: {gids:?}"
    );

    // The coordinator comes back, reads Commit in its log and finishes.
    restarted_and_committed(&mut cluster, orch, &id, ("pg-sku", 7, 3)).await;
    cluster.assert_all_running();
}

/// Atomicity per transaction id (transaction id → state) across the three services' own
/// tables, and the stock of `chaos-sku` conserved: returns how many committed.
async fn all_or_nothing(cluster: &Cluster, states: &BTreeMap<String, String>, initial: i64) -> i64 {
    // Atomicity per transaction id, across the three services' own tables.
    let effects = effects_by_txn(cluster).await;
    for (id, state) in states {
        let want = if state == "committed" {
            [1, 1, 1]
        } else {
            [0, 0, 0]
        };
        assert_eq!(
            effects.get(id).copied().unwrap_or_default(),
            want,
            "{id} {state}"
        );
    }
    let strays: Vec<_> = effects
        .keys()
        .filter(|k| !states.contains_key(*k))
        .collect();
    assert!(
        strays.is_empty(),
        "effects of unknown transactions: {strays:?}"
    );
    // Stock conserved: every committed checkout holds one item, the rest are available.
    let committed = states.values().filter(|s| *s == "committed").count() as i64;
    assert_eq!(
        stock(cluster, "chaos-sku").await,
        (initial - committed, committed)
    );
    committed
}
