//! Chaos: the real binaries (2 orchestrators, the 3 services) on Postgres, hundreds of checkouts
//! with mixed outcomes, while a nemesis kills processes with `SIGKILL` at random moments and
//! restarts them with crash points armed (`TANDEM_CRASH`), so they also abort at the exact
//! places that matter. At the end every invariant is checked from the services' own tables and
//! read APIs (see `tandem_tests::cluster::Audit::violations`).
//!
//! Short run (CI): `cargo test -p tandem-tests --test chaos`.
//! Long run: `TANDEM_CHAOS_SAGAS=2000 TANDEM_CHAOS_KILLS=150 cargo test -p tandem-tests --release
//! --test chaos -- --nocapture` (prints the summary). `TANDEM_CHAOS_SEED` fixes the workload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::cluster::{Audit, Cluster, ClusterConfig, api_problems};
use tandem_tests::write_chaos_definition;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Decline,
    Undeliverable,
    Transient,
    EffectThen503,
    InProgress,
    SlowerThanTimeout,
    Scarce,
    Plain,
}

fn scenario(i: usize) -> Scenario {
    match i % 10 {
        0 => Scenario::Decline,
        1 => Scenario::Undeliverable,
        2 => Scenario::Transient,
        3 => Scenario::EffectThen503,
        4 => Scenario::InProgress,
        5 => Scenario::SlowerThanTimeout,
        6 | 7 => Scenario::Scarce,
        _ => Scenario::Plain,
    }
}

const SKUS: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];
const SCARCE: &str = "chaos-scarce";
const ORCH_POINTS: [&str; 5] = [
    "orchestrator.after_claim",
    "orchestrator.before_call",
    "orchestrator.before_compensation_call",
    "orchestrator.after_call_before_persist",
    "orchestrator.after_persist",
];
const SERVICE_POINTS: [&str; 4] = [
    "service.action.before_commit",
    "service.action.after_commit",
    "service.compensation.before_commit",
    "service.compensation.after_commit",
];

/// Order `i`: its input and the faults to install (service, fault body).
fn order(i: usize, rng: &mut StdRng) -> (String, Scenario, Value, Vec<(&'static str, Value)>) {
    let id = format!("chaos-{i}");
    let sc = scenario(i);
    let card = if sc == Scenario::Decline {
        "tok_decline"
    } else {
        "tok_visa"
    };
    let country = if sc == Scenario::Undeliverable {
        "ZZ"
    } else {
        "GB"
    };
    let mut input = checkout_input(&id, SKUS[0], 1, card, country);
    let mut items =
        vec![json!({"sku": SKUS[rng.random_range(0..3)], "quantity": rng.random_range(1..=3)})];
    if rng.random_bool(0.3) {
        items.push(json!({"sku": SKUS[rng.random_range(0..3)], "quantity": 1}));
    }
    if sc == Scenario::Scarce {
        items = vec![json!({"sku": SCARCE, "quantity": rng.random_range(1..=3)})];
    }
    input["items"] = json!(items);
    let service = ["inventory", "payment", "shipping"][rng.random_range(0..3)];
    let f = |kind: &str| json!({"order_id": id, "kind": kind, "op": "action"});
    let faults = match sc {
        Scenario::Transient => {
            let mut x = f("transient");
            x["times"] = json!(rng.random_range(1..=3));
            vec![(service, x)]
        }
        Scenario::EffectThen503 => vec![(service, f("effect_then_503"))],
        Scenario::InProgress => {
            let mut x = f("in_progress");
            x["times"] = json!(rng.random_range(2..=4));
            vec![(service, x)]
        }
        Scenario::SlowerThanTimeout => {
            let mut x = f("latency");
            x["latency_ms"] = json!(1500);
            vec![(service, x)]
        }
        // the refund's answer is lost once, and the release is slow to start
        Scenario::Undeliverable => vec![
            (
                "payment",
                json!({"order_id": id, "kind": "effect_then_503", "op": "compensation"}),
            ),
            (
                "inventory",
                json!({"order_id": id, "kind": "in_progress", "op": "compensation", "times": 2}),
            ),
        ],
        _ => vec![],
    };
    (id, sc, input, faults)
}

/// `POST /sagas` until some orchestrator takes it (the business key makes retries safe).
async fn submit(clients: &[Client], first: usize, def: &str, input: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = first;
    loop {
        let c = &clients[i % clients.len()];
        if let Ok(r) = c.start_saga(def, input, None).await {
            if r.status == 201 || r.status == 200 {
                return r.body["id"].as_str().unwrap().to_string();
            }
            assert!(
                r.status >= 500,
                "POST /sagas answered {}: {}",
                r.status,
                r.body
            );
        }
        assert!(
            Instant::now() < deadline,
            "no orchestrator took order {input}"
        );
        i += 1;
        if i % clients.len() == first % clients.len() {
            tokio::time::sleep(Duration::from_millis(50)).await; // every orchestrator is down
        }
    }
}

/// A crash point to arm on a restart (or none).
fn arm(rng: &mut StdRng, orchestrator: bool) -> Option<String> {
    if rng.random_bool(0.5) {
        return None;
    }
    let point = if orchestrator {
        ORCH_POINTS[rng.random_range(0..ORCH_POINTS.len())]
    } else {
        SERVICE_POINTS[rng.random_range(0..SERVICE_POINTS.len())]
    };
    Some(if rng.random_bool(0.25) {
        format!("{point}@0.03")
    } else {
        let max = if point.contains("compensation") || point.ends_with("after_claim") {
            3
        } else {
            25
        };
        format!("{point}={}", rng.random_range(1..=max))
    })
}

/// What the workload submitted: (order id, scenario, saga id answered).
type Submitted = Vec<(String, Scenario, String)>;

/// The workload, paced by `pace`: `sagas` checkouts from `seed`, each with its faults installed
/// first (a fault a service could not take is counted in `faults_lost`).
fn spawn_workload(
    clients: Vec<Client>,
    sagas: usize,
    seed: u64,
    pace: Duration,
    faults_lost: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Submitted> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tasks = Vec::new();
        for i in 0..sagas {
            let (id, sc, input, faults) = order(i, &mut rng);
            let clients = clients.clone();
            let faults_lost = faults_lost.clone();
            tasks.push(tokio::spawn(async move {
                for (service, f) in &faults {
                    // A service that is down (or restarts later) just forgets the fault.
                    if clients[0].add_fault(service, f).await.is_err() {
                        faults_lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let saga = submit(&clients, i, "checkout_chaos", &input).await;
                (id, sc, saga)
            }));
            tokio::time::sleep(pace).await;
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

/// The nemesis: kills a random process every `mean_gap_ms` or so, restarts what died (killed,
/// aborted at a crash point, or exited unexpectedly) with a crash point armed or not.
struct Nemesis {
    rng: StdRng,
    mean_gap_ms: u64,
    kills: BTreeMap<String, usize>,
    unexpected_exits: Vec<String>,
    /// (when, node) restarts scheduled.
    restarts: Vec<(Instant, usize)>,
    next_kill: Instant,
}

impl Nemesis {
    fn new(seed: u64, mean_gap_ms: u64) -> Self {
        let mut n = Nemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            mean_gap_ms,
            kills: BTreeMap::new(),
            unexpected_exits: Vec::new(),
            restarts: Vec::new(),
            next_kill: Instant::now(),
        };
        let gap = n.gap();
        n.next_kill += gap;
        n
    }

    fn gap(&mut self) -> Duration {
        let m = self.mean_gap_ms;
        Duration::from_millis(self.rng.random_range(m / 2..=m * 3 / 2))
    }

    fn total(&self) -> usize {
        self.kills.values().sum()
    }

    fn pending(&self, node: usize) -> bool {
        self.restarts.iter().any(|(_, n)| *n == node)
    }

    /// Processes that ended on their own: count crash points, note other exits, restart soon.
    fn reap(&mut self, cluster: &mut Cluster, now: Instant) {
        for node in 0..cluster.nodes.len() {
            let pending = self.pending(node);
            let Some(p) = cluster.nodes[node].proc.as_mut() else {
                continue;
            };
            if pending || p.exited().is_none() {
                continue;
            }
            if p.aborted() {
                let point = cluster.nodes[node].crash.clone().unwrap_or_default();
                let point = point.split(['=', '@']).next().unwrap_or_default();
                *self
                    .kills
                    .entry(format!("crash point {point}"))
                    .or_default() += 1;
            } else {
                let status = p.exited();
                let name = &cluster.nodes[node].name;
                self.unexpected_exits
                    .push(format!("{name} exited: {status:?}"));
            }
            let at = now + Duration::from_millis(self.rng.random_range(0..300));
            self.restarts.push((at, node));
        }
    }

    /// One step: reap, kill when due, restart what is due.
    fn step(&mut self, cluster: &mut Cluster) {
        let now = Instant::now();
        self.reap(cluster, now);
        if now >= self.next_kill {
            let node = self.rng.random_range(0..cluster.nodes.len());
            if !self.pending(node) {
                cluster.kill9(node);
                let kind = if node >= 3 {
                    "orchestrator"
                } else {
                    cluster.nodes[node].bin
                };
                *self.kills.entry(format!("SIGKILL {kind}")).or_default() += 1;
                let at = now + Duration::from_millis(self.rng.random_range(0..400));
                self.restarts.push((at, node));
            }
            self.next_kill = now + self.gap();
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.restarts)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.restarts = later;
        for (_, node) in due {
            let crash = arm(&mut self.rng, node >= 3);
            cluster.start(node, crash);
        }
    }
}

/// Calm: every process up without crash points.
async fn calm(cluster: &mut Cluster) {
    for node in 0..cluster.nodes.len() {
        let running = cluster.nodes[node]
            .proc
            .as_mut()
            .is_some_and(|p| p.exited().is_none());
        if !running || cluster.nodes[node].crash.is_some() {
            cluster.start(node, None);
        }
    }
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
}

type Violations = Vec<(&'static str, String)>;

/// Every submitted order: stored once under the saga id answered, business failures
/// compensated, the read APIs agree. Also the outcomes per scenario.
async fn check_orders(
    audit: &Audit,
    submitted: &Submitted,
    client: &Client,
    v: &mut Violations,
) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut by_scenario: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (order_id, sc, saga_id) in submitted {
        let Some(s) = audit.saga_by_order(order_id) else {
            v.push((
                "settled",
                format!("order {order_id} (saga {saga_id}) is lost"),
            ));
            continue;
        };
        if &s.id != saga_id {
            let m = format!("order {order_id}: saga {saga_id} answered, {} stored", s.id);
            v.push(("settled", m));
        }
        *by_scenario
            .entry(format!("{sc:?}"))
            .or_default()
            .entry(s.status.clone())
            .or_default() += 1;
        // Business failures are deterministic whatever the chaos.
        if matches!(sc, Scenario::Decline | Scenario::Undeliverable) && s.status != "compensated" {
            v.push((
                "outcome",
                format!("order {order_id} ({sc:?}) is {}", s.status),
            ));
        }
        for p in api_problems(client, order_id, &s.status).await {
            v.push(("api", p));
        }
    }
    by_scenario
}

/// Violations per invariant, every invariant listed.
fn per_invariant(v: &Violations) -> BTreeMap<&'static str, usize> {
    let mut m: BTreeMap<&str, usize> = [
        "settled",
        "completed",
        "compensated",
        "at_most_once",
        "stock",
        "outcome",
        "api",
        "process",
    ]
    .into_iter()
    .map(|k| (k, 0))
    .collect();
    for (k, _) in v {
        *m.entry(k).or_default() += 1;
    }
    m
}

fn effects(audit: &Audit) -> Value {
    json!({
        "reservations": audit.reservations.len(),
        "charges": audit.payments.iter().filter(|p| p.kind == "charge").count(),
        "refunds": audit.payments.iter().filter(|p| p.kind == "refund").count(),
        "shipments": audit.shipments.len(),
    })
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

async fn chaos_cluster(sagas: usize, defs: &std::path::Path) -> (Cluster, BTreeMap<String, i64>) {
    write_chaos_definition(defs, "checkout_chaos", 5000);
    let mut cluster = Cluster::new(
        ClusterConfig::new("chaos", 2)
            .env("LEASE_TTL_MS", "1000")
            .env("POLL_INTERVAL_MS", "100")
            .env("DEFINITIONS_DIR", defs.display().to_string()),
    );
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    let mut initial: BTreeMap<String, i64> =
        SKUS.iter().map(|s| (s.to_string(), 1_000_000)).collect();
    initial.insert(SCARCE.to_string(), (sagas / 10).max(10) as i64);
    for (sku, n) in &initial {
        let r = cluster.client(0).set_stock(sku, *n).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    (cluster, initial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_lose_nothing_and_double_nothing() {
    let sagas = env_usize("TANDEM_CHAOS_SAGAS", 200);
    let target_kills = env_usize("TANDEM_CHAOS_KILLS", 20);
    let seed = std::env::var("TANDEM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mean_gap_ms = 600u64;
    let defs = std::env::temp_dir().join(format!(
        "tandem-chaos-defs-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let (mut cluster, initial) = chaos_cluster(sagas, &defs).await;
    eprintln!(
        "chaos: seed {seed}, {sagas} sagas, ≥ {target_kills} kills, logs in {}",
        cluster.log_dir.display()
    );
    let clients: Vec<Client> = (0..2).map(|i| cluster.client(i)).collect();
    let started = Instant::now(); // the stack is up (binaries built, databases migrated)

    // The workload, paced to span the kill schedule, and the nemesis.
    let pace = Duration::from_millis(target_kills as u64 * mean_gap_ms / sagas.max(1) as u64);
    let faults_lost = Arc::new(AtomicUsize::new(0));
    let workload = spawn_workload(clients.clone(), sagas, seed, pace, faults_lost.clone());
    let mut nemesis = Nemesis::new(seed, mean_gap_ms);
    while !(workload.is_finished() && nemesis.total() >= target_kills) {
        nemesis.step(&mut cluster);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submitted = workload.await.unwrap();
    let chaos_time = started.elapsed();

    calm(&mut cluster).await;
    let settle_start = Instant::now();
    cluster.wait_settled(Duration::from_secs(300)).await;
    let settle_time = settle_start.elapsed();

    // Audit: the services' own tables and their read APIs.
    let audit = cluster.audit().await;
    let mut violations = audit.violations(&initial);
    if audit.sagas.len() != sagas {
        let m = format!("{} sagas stored, {sagas} submitted", audit.sagas.len());
        violations.push(("settled", m));
    }
    let by_scenario = check_orders(&audit, &submitted, &clients[0], &mut violations).await;
    for e in &nemesis.unexpected_exits {
        violations.push(("process", e.clone()));
    }
    let summary = json!({
        "seed": seed,
        "sagas": sagas,
        "by_status": audit.by_status(),
        "by_scenario": by_scenario,
        "kills_total": nemesis.total(),
        "kills": nemesis.kills,
        "faults_not_installed": faults_lost.load(Ordering::Relaxed),
        "effects": effects(&audit),
        "invariant_violations": per_invariant(&violations),
        "chaos_secs": secs(chaos_time),
        "settle_after_chaos_secs": secs(settle_time),
        "total_secs": secs(started.elapsed()),
    });
    println!(
        "chaos summary:\n{}",
        serde_json::to_string_pretty(&summary).unwrap()
    );
    let listed: Vec<String> = violations
        .iter()
        .take(50)
        .map(|(k, m)| format!("{k}: {m}"))
        .collect();
    assert!(
        violations.is_empty(),
        "{} invariant violations (logs in {}):\n{}",
        violations.len(),
        cluster.log_dir.display(),
        listed.join("\n")
    );
    assert!(
        nemesis.total() >= target_kills,
        "only {} kills",
        nemesis.total()
    );
    let _ = std::fs::remove_dir_all(&defs);
}

/// Step `name` of saga `s`.
fn step(s: &Value, name: &str) -> Value {
    s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap()
        .clone()
}

/// The events of kind `kind` of step `step` of saga `s`.
fn events(s: &Value, kind: &str, step: &str) -> Vec<Value> {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["step"] == step)
        .cloned()
        .collect()
}

/// Per-step timeout and 425 polling through the real binaries' fault injection: a call slower
/// than `timeout_ms` is a transient failure (retried with the same key: one effect); 425 answers
/// are polled until success; 425 past the step's deadline fails the step and compensates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_in_progress_polling_end_to_end() {
    let defs =
        std::env::temp_dir().join(format!("tandem-e2e-defs-{}", uuid::Uuid::now_v7().simple()));
    write_chaos_definition(&defs, "checkout_e2e", 2500);
    let mut cluster = Cluster::new(
        ClusterConfig::new("e2e", 1)
            .env("POLL_INTERVAL_MS", "100")
            .env("DEFINITIONS_DIR", defs.display().to_string()),
    );
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    let c = cluster.client(0);
    c.set_stock("e2e-sku", 100).await.unwrap();
    let mut ids = Vec::new();
    for (service, order, kind, times) in [
        ("shipping", "e2e-slow", "latency", 1),
        ("payment", "e2e-425", "in_progress", 3),
        ("inventory", "e2e-deadline", "in_progress", 1000),
    ] {
        let mut f = json!({"order_id": order, "kind": kind, "op": "action", "times": times});
        if kind == "latency" {
            f["latency_ms"] = json!(1500);
        }
        c.add_fault(service, &f).await.unwrap();
        let input = checkout_input(order, "e2e-sku", 1, "tok_visa", "GB");
        ids.push(tandem_tests::start(&c, "checkout_e2e", &input).await);
    }
    // Slower than the 1 s timeout once: a transient failure, re-sent, one shipment.
    let s = c.settle(&ids[0], 60).await.unwrap();
    let tl = demo::timeline(&s);
    assert_eq!(s["status"], "completed", "{tl}");
    assert_eq!(step(&s, "create_shipment")["attempts"], 2, "{tl}");
    let retry = events(&s, "step_retry_scheduled", "create_shipment");
    assert_eq!(retry.len(), 1, "{tl}");
    assert_eq!(retry[0]["detail"]["error"], "timed out", "{tl}");
    // 425 three times, polled at the poll interval, then success.
    let s = c.settle(&ids[1], 60).await.unwrap();
    let tl = demo::timeline(&s);
    assert_eq!(s["status"], "completed", "{tl}");
    assert_eq!(step(&s, "charge_payment")["attempts"], 4, "{tl}");
    assert_eq!(
        events(&s, "step_in_progress", "charge_payment").len(),
        3,
        "{tl}"
    );
    // 425 until the 2.5 s deadline: the step fails, the saga compensates.
    let s = c.settle(&ids[2], 60).await.unwrap();
    let tl = demo::timeline(&s);
    assert_eq!(s["status"], "compensated", "{tl}");
    let failed = events(&s, "step_failed", "reserve_inventory");
    assert_eq!(failed.len(), 1, "{tl}");
    assert!(failed[0]["detail"].to_string().contains("deadline"), "{tl}");

    // The services' records: the slow call's effect happened once.
    let audit = cluster.audit().await;
    let initial = BTreeMap::from([("e2e-sku".to_string(), 100)]);
    let v = audit.violations(&initial);
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(audit.shipments.len(), 2);
    let _ = std::fs::remove_dir_all(&defs);
}
