//! 3PC's randomized runs on the real binaries (inventory, payment, shipping and one
//! orchestrator), one per fault model (docs/commit-protocols.md, "3PC over the services"):
//!
//! - **In the model — asserted.** Crash-stop, with timeouts far above the worst delay. Waves of
//!   concurrent 3PC checkouts (some with a declined card); in each wave random nodes die by
//!   `kill -9` at random moments (the coordinator, or up to two of the three participants), and
//!   a dead node stays down until every live participant of the wave's transactions has decided:
//!   for those transactions it never comes back. Then, per transaction, no service committed
//!   while another aborted, every participant that stayed up decided, and the coordinator's
//!   decision, when it recorded one, is the participants'. Size: `TANDEM_3PC_CHAOS_WAVES`
//!   (default 3) × `TANDEM_3PC_CHAOS_TXNS` (default 4); `TANDEM_3PC_CHAOS_SEED` replays a run.
//! - **Quorum 3PC under changing partitions — asserted.** Its model: links cut by partitions
//!   that change (cut, re-cut, heal) and timeouts that may be wrong. Waves of concurrent
//!   `3pc-quorum` checkouts while random partitions of {coordinator, inventory, payment,
//!   shipping} come and go (every link between the two sides cut at its receiver, both ways);
//!   then everything heals. Per transaction: no split, and after the heal every service decided
//!   and the coordinator recorded the same decision. Size: `TANDEM_3PC_CHAOS_WAVES` ×
//!   `TANDEM_3PC_CHAOS_TXNS`, as above.
//! - **Outside the model — reported, not asserted.** Crash-recovery (a killed node restarts at
//!   once) and a timeout (400 ms) shorter than the delays (200–900 ms) injected on random links. 3PC promises
//!   nothing here: the run prints how many transactions split (committed in one service,
//!   aborted in another), how many stayed blocked (a branch still undecided after a grace
//!   period) and how many ended consistent. Size: `TANDEM_3PC_LOOSE_TXNS` (default 8).
//!
//! Each checkout has a SKU of its own: a participant that died holding a prepared reservation
//! keeps its row lock, and these runs are about crashes and timeouts, not lock waits.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tandem_cli::client::checkout_input;
use tandem_kit::auth::Role;
use tandem_tests::cluster::{Cluster, ClusterConfig};

const HEALTHY: Duration = Duration::from_secs(60);
const SERVICES: [(&str, &str); 3] = [
    ("inventory", "reservations"),
    ("payment", "payments"),
    ("shipping", "shipments"),
];

/// What one service's records say of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Its effect is committed.
    Committed,
    /// Its branch aborted (nothing committed).
    Aborted,
    /// Its branch exists and has not decided (prepared, or about to).
    Undecided,
    /// It never had a branch of the transaction.
    Absent,
}

impl Verdict {
    fn decided(self) -> bool {
        matches!(self, Verdict::Committed | Verdict::Aborted)
    }
}

/// The transaction's verdict in every service, read from their own databases (so also of a
/// service whose process is down).
async fn verdicts(cluster: &Cluster, txn: &str) -> [Verdict; 3] {
    let mut out = [Verdict::Absent; 3];
    for (i, (service, table)) in SERVICES.into_iter().enumerate() {
        let mut c = PgConnection::connect(&cluster.db_url(service))
            .await
            .unwrap();
        let effects: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE txn_id::text = $1"
        )))
        .bind(txn)
        .fetch_one(&mut c)
        .await
        .unwrap();
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM tpc3_branch WHERE txn_id::text = $1")
                .bind(txn)
                .fetch_optional(&mut c)
                .await
                .unwrap();
        out[i] = match (effects, state.as_deref()) {
            (n, _) if n > 0 => Verdict::Committed,
            (_, Some("aborted")) => Verdict::Aborted,
            (_, Some(_)) => Verdict::Undecided,
            (_, None) => Verdict::Absent,
        };
    }
    out
}

fn split(v: &[Verdict; 3]) -> bool {
    v.contains(&Verdict::Committed) && v.contains(&Verdict::Aborted)
}

/// POST one 3PC (`protocol`: `3pc` or `3pc-quorum`) checkout (the order id is its Idempotency-Key): its transaction id, or None when
/// the orchestrator did not answer (it may be down).
async fn begin(
    http: &reqwest::Client,
    base: &str,
    protocol: &str,
    input: &Value,
) -> Option<String> {
    let key = input["order_id"].as_str().unwrap().to_string();
    let body = json!({ "protocol": protocol, "definition": "checkout", "input": input });
    let r = http
        .post(format!("{base}/transactions"))
        .header("Idempotency-Key", &key)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    assert!(
        r.status().is_success(),
        "{key}: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    let t: Value = r.json().await.ok()?;
    Some(t["id"].as_str()?.to_string())
}

/// The coordinator's recorded decision (`commit` / `abort`), if it has one.
async fn recorded(http: &reqwest::Client, base: &str, txn: &str) -> Option<String> {
    let r = http
        .get(format!("{base}/transactions/{txn}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let t: Value = r.json().await.ok()?;
    t["decision"].as_str().map(str::to_owned)
}

/// Start one wave's checkouts at once; their transaction ids (a checkout the orchestrator did not
/// accept is begun again once everything is back, with the same key).
async fn start_wave(
    cluster: &Cluster,
    rng: &mut StdRng,
    protocol: &'static str,
    wave: usize,
    n: usize,
) -> (Vec<String>, Vec<Value>) {
    let (http, base) = (
        cluster.http(Role::Operator),
        cluster.url(cluster.orchestrator(0)),
    );
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..n {
        let card = tandem_tests::random_card(rng);
        let sku = format!("w{wave}-{i}-sku");
        cluster.client(0).set_stock(&sku, 10).await.unwrap();
        let input = checkout_input(&format!("w{wave}-{i}"), &sku, 1, card, "FR");
        let (http, base) = (http.clone(), base.clone());
        runs.spawn(async move { (begin(&http, &base, protocol, &input).await, input) });
    }
    let (mut ids, mut unanswered) = (vec![], vec![]);
    while let Some(done) = runs.join_next().await {
        match done.unwrap() {
            (Some(id), _) => ids.push(id),
            (None, input) => unanswered.push(input),
        }
    }
    (ids, unanswered)
}

/// Wait until no live service holds an undecided branch of `txns`, and the coordinator, when it
/// is up, recorded a decision for each.
async fn settle(cluster: &Cluster, txns: &[String], up: &[bool], what: &str) {
    let (http, base) = (
        cluster.http(Role::Operator),
        cluster.url(cluster.orchestrator(0)),
    );
    let coordinator_up = up[cluster.orchestrator(0)];
    tandem_tests::eventually(Duration::from_secs(90), what, || async {
        for txn in txns {
            let v = verdicts(cluster, txn).await;
            if (0..3).any(|s| up[s] && v[s] == Verdict::Undecided) {
                return None;
            }
            if coordinator_up && recorded(&http, &base, txn).await.is_none() {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// One crash-stop transaction's verdicts, checked: no split, every participant that stayed up
/// decided, and the coordinator's record (when it stayed up) is the participants' decision.
async fn checked(cluster: &Cluster, txn: &str, up: &[bool]) -> [Verdict; 3] {
    let v = verdicts(cluster, txn).await;
    assert!(!split(&v), "{txn} split under crash-stop: {v:?}");
    for s in 0..3 {
        assert!(
            !up[s] || v[s] != Verdict::Undecided,
            "{txn}: {} stayed up and did not decide: {v:?}",
            cluster.nodes[s].name
        );
    }
    let orch = cluster.orchestrator(0);
    if up[orch] && v.iter().any(|x| x.decided()) {
        let (http, base) = (cluster.http(Role::Operator), cluster.url(orch));
        let want = if v.contains(&Verdict::Committed) {
            "commit"
        } else {
            "abort"
        };
        let d = recorded(&http, &base, txn).await;
        assert_eq!(
            d.as_deref(),
            Some(want),
            "{txn}: the coordinator's record {v:?}"
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_3pc_under_crash_stop_never_splits() {
    let waves: usize = tandem_tests::env_or("TANDEM_3PC_CHAOS_WAVES", 3);
    let n: usize = tandem_tests::env_or("TANDEM_3PC_CHAOS_TXNS", 4);
    let seed: u64 = tandem_tests::env_or("TANDEM_3PC_CHAOS_SEED", rand::random());
    eprintln!(
        "TANDEM_3PC_CHAOS_SEED={seed} TANDEM_3PC_CHAOS_WAVES={waves} TANDEM_3PC_CHAOS_TXNS={n}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // Far above the worst delay on loopback (a loaded CI machine included).
    let cfg = ClusterConfig::new("tpc3_chaos", 1).env("THREE_PC_TIMEOUT_MS", "3000");
    let mut cluster = Cluster::new(cfg);
    let orch = cluster.orchestrator(0);
    cluster.start_all();
    cluster.wait_all_healthy(HEALTHY).await;

    let mut verdict_of: BTreeMap<String, [Verdict; 3]> = BTreeMap::new();
    let (mut kills, mut dead_branches) = (0, 0);
    for wave in 0..waves {
        let (txns, unanswered) = start_wave(&cluster, &mut rng, "3pc", wave, n).await;
        assert!(unanswered.is_empty(), "every node is up at a wave's start");
        // The victims: the coordinator half the time, and up to two participants.
        let mut victims = vec![];
        if rng.random_bool(0.5) {
            victims.push(orch);
        }
        let mut services = vec![0, 1, 2];
        services.shuffle(&mut rng);
        // Every wave loses at least one node.
        let least = usize::from(victims.is_empty());
        victims.extend(services.into_iter().take(rng.random_range(least..=2)));
        let mut up = vec![true; cluster.nodes.len()];
        for &v in &victims {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1200))).await;
            cluster.kill9(v);
            up[v] = false;
            kills += 1;
        }
        let names: Vec<_> = victims
            .iter()
            .map(|&v| cluster.nodes[v].name.clone())
            .collect();
        eprintln!("wave {wave}: {} transactions, killed {names:?}", txns.len());
        settle(&cluster, &txns, &up, &format!("wave {wave} to settle")).await;

        for txn in &txns {
            let v = checked(&cluster, txn, &up).await;
            dead_branches += (0..3)
                .filter(|&s| !up[s] && v[s] == Verdict::Undecided)
                .count();
            verdict_of.insert(txn.clone(), v);
        }
        // The dead come back for the next wave's transactions (those of this wave are over
        // for them: their branches stay as the crash left them, as crash-stop has it).
        for v in victims {
            cluster.start(v, None);
        }
        cluster.wait_all_healthy(HEALTHY).await;
    }
    let count = |f: &dyn Fn(&[Verdict; 3]) -> bool| verdict_of.values().filter(|v| f(v)).count();
    let committed = count(&|v| v.contains(&Verdict::Committed));
    let aborted = count(&|v| v.contains(&Verdict::Aborted) && !v.contains(&Verdict::Committed));
    // A coordinator killed before its first message leaves a transaction nobody heard of.
    let unheard = count(&|v| !v.iter().any(|x| x.decided()));
    eprintln!(
        "{} transactions: {committed} committed, {aborted} aborted, {unheard} never reached a \
         participant; {kills} kills; {dead_branches} branches left undecided in a dead participant",
        verdict_of.len()
    );
    assert!(
        committed + aborted > 0,
        "a run that decided nothing proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_3pc_outside_its_model_reports_its_splits() {
    let n: usize = tandem_tests::env_or("TANDEM_3PC_LOOSE_TXNS", 8);
    let seed: u64 = tandem_tests::env_or("TANDEM_3PC_CHAOS_SEED", rand::random());
    eprintln!("TANDEM_3PC_CHAOS_SEED={seed} TANDEM_3PC_LOOSE_TXNS={n}");
    let mut rng = StdRng::seed_from_u64(seed);
    // A timeout shorter than the delays below: suspicion of live nodes is the point.
    let cfg = ClusterConfig::new("tpc3_loose", 1).env("THREE_PC_TIMEOUT_MS", "400");
    let mut cluster = Cluster::new(cfg);
    let orch = cluster.orchestrator(0);
    cluster.start_all();
    cluster.wait_all_healthy(HEALTHY).await;
    let http = cluster.http(Role::Operator);

    // Delays on random links into the services: PreCommit from the coordinator, and the
    // termination protocol's messages between participants.
    let names = ["orchestrator", "inventory", "payment", "shipping"];
    for s in 0..3 {
        for (from, op) in [
            ("orchestrator", "precommit"),
            (names[1 + (s + 1) % 3], "termination"),
        ] {
            if rng.random_bool(0.5) {
                let fault = json!({ "from": from, "op": op, "kind": "delay",
                    "delay_ms": rng.random_range(200..900), "times": 1_000_000 });
                let r = http
                    .post(format!("{}/faults", cluster.url(s)))
                    .json(&fault)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{fault}: {}", r.status());
            }
        }
    }

    let (mut txns, mut late) = start_wave(&cluster, &mut rng, "3pc", 0, n).await;
    // Crash-recovery: a random node is killed and restarted at once, a few times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        let v = rng.random_range(0..=orch);
        cluster.start(v, None); // kill -9, then a new process at once
    }
    cluster.wait_all_healthy(HEALTHY).await;
    for input in late.drain(..) {
        if let Some(id) = begin(&http, &cluster.url(orch), "3pc", &input).await {
            txns.push(id);
        }
    }
    // A grace period for whatever can still finish.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (mut splits, mut blocked, mut consistent) = (0, 0, 0);
    for txn in &txns {
        let v = verdicts(&cluster, txn).await;
        if split(&v) {
            splits += 1;
        } else if v.contains(&Verdict::Undecided) {
            blocked += 1;
        } else {
            consistent += 1;
        }
        eprintln!("{txn}: {v:?}");
    }
    eprintln!(
        "3PC outside its model (crash-recovery, 400 ms timeouts under 200–900 ms delays): \
         {} transactions: {splits} split, {blocked} blocked, {consistent} consistent",
        txns.len()
    );
    // Reported, not asserted: only that the run ran and its accounting adds up.
    assert_eq!(splits + blocked + consistent, txns.len());
    assert!(!txns.is_empty());
}

/// Cut every link between the two sides of a random partition of the four nodes (at each
/// receiving service; the coordinator receives no 3PC message): the cuts installed.
async fn random_partition(cluster: &Cluster, rng: &mut StdRng) -> Vec<(String, String)> {
    let names: Vec<String> = (0..=3).map(|i| cluster.nodes[i].name.clone()).collect();
    // A side for each node, both sides non-empty.
    let sides: Vec<bool> = loop {
        let s: Vec<bool> = (0..4).map(|_| rng.random_bool(0.5)).collect();
        if s.iter().any(|x| *x) && s.iter().any(|x| !*x) {
            break s;
        }
    };
    let http = cluster.http(Role::Operator);
    let mut cuts = vec![];
    for to in 0..3 {
        for from in 0..4 {
            if sides[to] == sides[from] {
                continue;
            }
            let fault = json!({ "from": names[from], "op": "all", "kind": "drop_request",
                                "times": 1_000_000 });
            let r = http
                .post(format!("{}/faults", cluster.url(to)))
                .json(&fault)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{fault}: {}", r.status());
            cuts.push((names[from].clone(), names[to].clone()));
        }
    }
    cuts
}

/// Heal every link: each service's faults deleted.
async fn heal(cluster: &Cluster) {
    let http = cluster.http(Role::Operator);
    for to in 0..3 {
        let r = http
            .delete(format!("{}/faults", cluster.url(to)))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "heal {}: {}",
            cluster.nodes[to].name,
            r.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_quorum_3pc_under_changing_partitions_never_splits() {
    let waves: usize = tandem_tests::env_or("TANDEM_3PC_CHAOS_WAVES", 3);
    let n: usize = tandem_tests::env_or("TANDEM_3PC_CHAOS_TXNS", 4);
    let seed: u64 = tandem_tests::env_or("TANDEM_3PC_CHAOS_SEED", rand::random());
    eprintln!(
        "TANDEM_3PC_CHAOS_SEED={seed} TANDEM_3PC_CHAOS_WAVES={waves} TANDEM_3PC_CHAOS_TXNS={n}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // Timeouts may be wrong in this model: short ones make suspicion (and termination
    // attempts on both sides of a cut) frequent.
    let cfg = ClusterConfig::new("tpc3q_parts", 1).env("THREE_PC_TIMEOUT_MS", "500");
    let mut cluster = Cluster::new(cfg);
    cluster.start_all();
    cluster.wait_all_healthy(HEALTHY).await;
    let up = vec![true; cluster.nodes.len()];

    let (mut verdict_of, mut partitions) = (BTreeMap::new(), 0);
    for wave in 0..waves {
        let (txns, unanswered) = start_wave(&cluster, &mut rng, "3pc-quorum", wave, n).await;
        assert!(unanswered.is_empty(), "{unanswered:?}");
        // Two partitions, one after the other at random moments, then the heal.
        for max_ms in [300, 800] {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..max_ms))).await;
            heal(&cluster).await;
            let cuts = random_partition(&cluster, &mut rng).await;
            eprintln!("wave {wave}: cut {cuts:?}");
            partitions += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        heal(&cluster).await;
        settle(
            &cluster,
            &txns,
            &up,
            &format!("wave {wave} to settle after the heal"),
        )
        .await;
        for txn in &txns {
            let v = checked(&cluster, txn, &up).await;
            assert!(
                v.iter().all(|x| x.decided()),
                "{txn}: all decide after the heal: {v:?}"
            );
            verdict_of.insert(txn.clone(), v);
        }
    }
    let committed = verdict_of
        .values()
        .filter(|v| v.contains(&Verdict::Committed))
        .count();
    eprintln!(
        "quorum 3PC: {} transactions under {partitions} partitions: {committed} committed, {} aborted, none split",
        verdict_of.len(),
        verdict_of.len() - committed
    );
}
