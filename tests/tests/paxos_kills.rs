//! Paxos Commit with the real binaries under crash-recovery and message faults, randomized:
//! concurrent Paxos Commit checkouts (some declined, some short of stock, four SKUs) on two
//! orchestrators and three acceptors, each run to its decision while (for at most 20 s)
//!
//! - every process may die at its crash points (the leader after the votes, an acceptor after
//!   forcing its state, a participant after `PREPARE TRANSACTION` or `COMMIT PREPARED`) and is
//!   restarted; acceptors, orchestrators (the other one takes the leader's transactions over)
//!   and services are also `kill -9`ed at random and come back a moment later — any number of
//!   acceptors may be down at once (crash-recovery, not F = 1);
//! - random link faults (`/faults` with `from`, at the receiver, 1–3 firings each): lost
//!   requests, lost answers and delays on what leaders and participants send the acceptors, what
//!   leaders send the participants, and what acceptors and participants send the orchestrators.
//!
//! Then, everything back and calm (every node restarted without crash points, which clears the
//! faults): every transaction ends decided, a declined card never
//! commits, per transaction id all three effects or none across the three services' databases,
//! no effect of an unknown transaction, stock conserved, no prepared transaction left. It prints
//! how many committed and aborted. Size: `TANDEM_PAXOS_CHAOS_TXNS` (default 12), crash
//! probability `TANDEM_PAXOS_CHAOS_P` (default 0.05), `TANDEM_PAXOS_CHAOS_SEED`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tandem_cli::client::checkout_input;
use tandem_kit::auth::Role;
use tandem_tests::cluster::{Cluster, ClusterConfig};

const HEALTHY: Duration = Duration::from_secs(60);
/// Checkouts go round these SKUs (contention on each, not on one).
const SKUS: [&str; 4] = ["pc-sku-0", "pc-sku-1", "pc-sku-2", "pc-sku-3"];
/// Longest time the chaos goes on (while transactions are unsettled).
const CHAOS: Duration = Duration::from_secs(20);

/// Send the request `send(i)` builds (`i` counts the tries, so they can go round the
/// orchestrators) until it answers 2xx with a body that is `done`, for at most two minutes.
async fn until_ok(
    what: &str,
    send: impl Fn(usize) -> reqwest::RequestBuilder,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut i = 0;
    tandem_tests::eventually(Duration::from_secs(120), what, || {
        i += 1;
        let request = send(i).timeout(Duration::from_secs(10));
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

/// POST the Paxos Commit checkout until an orchestrator accepts it (the order id is the
/// `Idempotency-Key`: a resend, to either, is the same transaction): its id.
async fn begin(http: &reqwest::Client, bases: &[String], input: &Value) -> String {
    let key = input["order_id"].as_str().unwrap().to_string();
    let body = json!({ "protocol": "paxos-commit", "definition": "checkout", "input": input });
    let send = |i: usize| {
        http.post(format!("{}/transactions", bases[i % bases.len()]))
            .header("Idempotency-Key", &key)
            .json(&body)
    };
    let t = until_ok(&format!("{key} to be accepted"), send, |_| true).await;
    t["id"].as_str().unwrap().to_string()
}

/// Transaction `id` once committed or aborted.
async fn settled(http: &reqwest::Client, bases: &[String], id: &str) -> Value {
    let send = |i: usize| {
        http.get(format!(
            "{}/transactions/{id}?wait=5",
            bases[i % bases.len()]
        ))
    };
    let done = |t: &Value| matches!(t["state"].as_str(), Some("committed" | "aborted"));
    until_ok(&format!("{id} to settle"), send, done).await
}

/// The crash points of node `node` (each hit aborts the process with probability `p`; none
/// when `p` is 0).
fn crash_points(cluster: &Cluster, node: usize, p: f64) -> Option<String> {
    let points: &[&str] = match cluster.nodes[node].bin {
        "orchestrator" => &["orchestrator.paxos.after_votes"],
        "acceptor" => &["acceptor.after_force"],
        _ => &[
            "service.2pc.after_prepare",
            "service.2pc.after_commit_prepared",
        ],
    };
    let points: Vec<String> = points.iter().map(|x| format!("{x}@{p}")).collect();
    (p > 0.0).then(|| points.join(","))
}

/// Restart every node that died (with its crash points while `chaos`), and now and then
/// `kill -9` a live one (restarted at the next call): (restarts, kills).
fn nemesis(cluster: &mut Cluster, rng: &mut StdRng, p: f64, chaos: bool) -> (u32, u32) {
    let (mut restarts, mut kills) = (0, 0);
    for node in 0..cluster.nodes.len() {
        let crash = if chaos {
            crash_points(cluster, node, p)
        } else {
            None
        };
        let kill_p = match cluster.nodes[node].bin {
            "acceptor" => 0.03,
            "orchestrator" => 0.01,
            _ => 0.005,
        };
        if cluster.proc(node).exited().is_some() {
            cluster.start(node, crash);
            restarts += 1;
        } else if chaos && rng.random_bool(kill_p) {
            cluster.kill9(node);
            kills += 1;
        }
    }
    (restarts, kills)
}

/// One random link fault at a random node, on a link that carries Paxos Commit messages; false
/// when the node did not take it (it may be down).
async fn inject(cluster: &Cluster, http: &reqwest::Client, rng: &mut StdRng) -> bool {
    let node = rng.random_range(0..cluster.nodes.len());
    let services = ["inventory", "payment", "shipping"];
    let leaders = ["orch-0", "orch-1"];
    let acceptors = ["acceptor-0", "acceptor-1", "acceptor-2"];
    let (from, op) = match cluster.nodes[node].bin {
        "acceptor" => {
            let all: Vec<&str> = leaders.iter().chain(&services).copied().collect();
            (*all.choose(rng).unwrap(), "all")
        }
        "orchestrator" if rng.random_bool(0.5) => (*acceptors.choose(rng).unwrap(), "phase2b"),
        "orchestrator" => (*services.choose(rng).unwrap(), "query"),
        _ => (
            *leaders.choose(rng).unwrap(),
            *["prepare", "commit", "abort"].choose(rng).unwrap(),
        ),
    };
    let mut spec = json!({ "from": from, "op": op, "times": rng.random_range(1..=3) });
    match rng.random_range(0..3) {
        0 => spec["kind"] = json!("drop_request"),
        1 => spec["kind"] = json!("drop_reply"),
        _ => {
            spec["kind"] = json!("delay");
            spec["delay_ms"] = json!(rng.random_range(50..400));
        }
    }
    let r = http
        .post(format!("{}/faults", cluster.url(node)))
        .json(&spec)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    r.is_ok_and(|r| r.status() == 201)
}

async fn connect(cluster: &Cluster, component: &str) -> PgConnection {
    PgConnection::connect(&cluster.db_url(component))
        .await
        .unwrap()
}

/// The prepared transactions of the test's services' databases.
async fn prepared(cluster: &Cluster) -> Vec<(String, String)> {
    let mut c = connect(cluster, "orchestrator").await;
    let names = cluster.layout.databases();
    sqlx::query_as("SELECT database::text, gid FROM pg_prepared_xacts WHERE database = ANY($1)")
        .bind(&names)
        .fetch_all(&mut c)
        .await
        .unwrap()
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

/// What the chaos did.
#[derive(Debug, Default)]
struct Chaos {
    restarts: u32,
    kills: u32,
    faults: u32,
}

impl Chaos {
    /// One tick: the nemesis, and with some probability a link fault.
    async fn tick(
        &mut self,
        cluster: &mut Cluster,
        http: &reqwest::Client,
        rng: &mut StdRng,
        p: f64,
    ) {
        let (r, k) = nemesis(cluster, rng, p, true);
        self.restarts += r;
        self.kills += k;
        if rng.random_bool(0.5) && inject(cluster, http, rng).await {
            self.faults += 1;
        }
    }
}

/// Two orchestrators, three acceptors, every node started with its crash points at `p`, in-doubt
/// participants asking every second, a leader's next ballot after 1.5 s without a decision
/// (a shorter one aborts what is merely slow), `initial` units of each of [`SKUS`].
async fn chaos_cluster(p: f64, initial: i64) -> Cluster {
    let cfg = ClusterConfig::new("paxos_chaos", 2)
        .acceptors(3)
        .quick_takeover()
        .env("PAXOS_PROGRESS_MS", "1500");
    let mut cluster = Cluster::new(cfg);
    cluster.env_all("TPC_IN_DOUBT_AFTER_MS", "1000");
    for node in 0..cluster.nodes.len() {
        let crash = crash_points(&cluster, node, p);
        cluster.start(node, crash);
    }
    cluster.wait_all_healthy(HEALTHY).await;
    for sku in SKUS {
        cluster.client(0).set_stock(sku, initial).await.unwrap();
    }
    cluster
}

/// All three effects or none per transaction id (id → state) across the three services' own
/// tables, and none of an unknown transaction: how many committed.
async fn all_or_nothing(cluster: &Cluster, states: &BTreeMap<String, String>) -> usize {
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
    states.values().filter(|s| *s == "committed").count()
}

/// Stock conserved per SKU (transaction id → its SKU, id → state): every committed checkout
/// holds one item, the rest of `initial` are available.
async fn stock_conserved(
    cluster: &Cluster,
    skus: &BTreeMap<String, &str>,
    states: &BTreeMap<String, String>,
    initial: i64,
) {
    for sku in SKUS {
        let held = skus
            .iter()
            .filter(|(id, s)| **s == sku && states[*id] == "committed")
            .count();
        let held = i64::try_from(held).unwrap();
        assert_eq!(stock(cluster, sku).await, (initial - held, held), "{sku}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_paxos_commit_with_kills_and_lost_messages_stays_all_or_nothing() {
    let n: usize = tandem_tests::env_or("TANDEM_PAXOS_CHAOS_TXNS", 12);
    let p: f64 = tandem_tests::env_or("TANDEM_PAXOS_CHAOS_P", 0.05);
    let seed: u64 = tandem_tests::env_or("TANDEM_PAXOS_CHAOS_SEED", rand::random());
    eprintln!(
        "TANDEM_PAXOS_CHAOS_SEED={seed} TANDEM_PAXOS_CHAOS_TXNS={n} TANDEM_PAXOS_CHAOS_P={p}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // Fewer items than checkouts: some are short of stock.
    let initial = i64::try_from(n / 6).unwrap().max(1);
    let mut cluster = chaos_cluster(p, initial).await;
    let bases: Vec<String> = (0..2)
        .map(|i| cluster.url(cluster.orchestrator(i)))
        .collect();
    let http = cluster.http(Role::Operator);

    // Every checkout begins and runs to its decision under the chaos (at most CHAOS long).
    let mut runs = tokio::task::JoinSet::new();
    let mut txns = BTreeMap::new();
    for i in 0..n {
        let card = tandem_tests::random_card(&mut rng);
        let sku = SKUS[i % SKUS.len()];
        let input = checkout_input(&format!("pc-{i}"), sku, 1, card, "FR");
        // Half of them begin at orch-1.
        let mut bases = bases.clone();
        bases.rotate_left(i % 2);
        let http = http.clone();
        // Spread over the first seconds: a kill hits some transactions, not all of them.
        let after = Duration::from_millis(400 * u64::try_from(i).unwrap());
        runs.spawn(async move {
            tokio::time::sleep(after).await;
            let id = begin(&http, &bases, &input).await;
            settled(&http, &bases, &id).await;
            (id, (card, sku))
        });
    }
    let mut chaos = Chaos::default();
    let calm_at = Instant::now() + CHAOS;
    while !runs.is_empty() && Instant::now() < calm_at {
        tokio::select! {
            done = runs.join_next() => {
                let (id, what) = done.unwrap().unwrap();
                txns.insert(id, what);
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                chaos.tick(&mut cluster, &http, &mut rng, p).await;
            }
        }
    }
    // Calm: every node restarted without crash points (itself a kill -9 of each, wherever it
    // is), which also clears every fault; the rest settle.
    for node in 0..cluster.nodes.len() {
        cluster.start(node, None);
    }
    cluster.wait_all_healthy(HEALTHY).await;
    eprintln!("{chaos:?}, {} of {n} settled before the calm", txns.len());
    while let Some(done) = runs.join_next().await {
        let (id, what) = done.unwrap();
        txns.insert(id, what);
    }

    let mut states = BTreeMap::new();
    for (id, (card, _)) in &txns {
        let t = settled(&http, &bases, id).await;
        let state = t["state"].as_str().unwrap().to_string();
        if *card == "tok_decline" {
            assert_eq!(state, "aborted", "a declined card never commits: {t}");
        }
        states.insert(id.clone(), state);
    }
    tandem_tests::eventually(HEALTHY, "no prepared transaction", || async {
        prepared(&cluster).await.is_empty().then_some(())
    })
    .await;

    let committed = all_or_nothing(&cluster, &states).await;
    let skus = txns
        .iter()
        .map(|(id, (_, sku))| (id.clone(), *sku))
        .collect();
    stock_conserved(&cluster, &skus, &states, initial).await;
    eprintln!(
        "paxos chaos: {committed} committed, {} aborted of {n}",
        n - committed
    );
}
