//! The real binaries as a stack: `n` orchestrators (instance ids and node names `orch-0`,
//! `orch-1`, …), the three services, optionally 2F+1 Paxos Commit acceptors (`acceptor-0` …)
//! and, with NATS, the choreographed checkout's `orders` entry point — each with its own fresh
//! database `<prefix>_<component>` and a fixed loopback port, fault injection on everywhere, so a process can be killed (`SIGKILL`, a crash point), paused (`SIGSTOP`) and restarted
//! in place. Each process's output is appended to `<tmp>/tandem-tests/<prefix>/<node>.log`.
//!
//! [`Audit`] reads the services' own tables (and the orchestrator's saga rows) and lists every
//! violated invariant of the checkout saga (see [`Audit::violations`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};
use tandem_cli::client::Client;
use tandem_cli::launch::{self, Layout, Tokens};
use tandem_kit::auth::Role;
use tandem_kit::testing::TestDatabases;

use crate::procs::{Proc, free_port};

pub use tandem_cli::launch::SERVICES;

pub struct ClusterConfig {
    /// Any URL of the Postgres server to use.
    pub server_url: String,
    /// Short test name (part of the database names).
    pub name: String,
    pub orchestrators: usize,
    /// Extra environment of every orchestrator (`LEASE_TTL_MS`, `DEFINITIONS_DIR` …).
    pub orchestrator_env: Vec<(String, String)>,
    pub orchestrator_pool: u32,
    pub service_pool: u32,
    /// NATS with JetStream: the services run their part of the choreographed checkout, and an
    /// `orders` node (the entry point, after the orchestrators) is added.
    pub nats_url: Option<String>,
    /// The orders node's `STEP_TIMEOUT_MS`.
    pub step_timeout_ms: u64,
    /// Paxos Commit acceptors (`acceptor-0` …, after the orchestrators, each with its database
    /// `<prefix>_acceptor_<k>`), given to every orchestrator as `ACCEPTOR_URLS`; 0: none.
    pub acceptors: usize,
    /// Every node's bearer tokens (one per role, given as `TANDEM_TOKENS` and
    /// `TANDEM_SERVICE_TOKEN`); `None`: the nodes run open (on loopback).
    pub tokens: Option<Tokens>,
}

impl ClusterConfig {
    pub fn new(name: &str, orchestrators: usize) -> Self {
        ClusterConfig {
            server_url: tandem_kit::testing::server_url(),
            name: name.to_string(),
            orchestrators,
            orchestrator_env: vec![],
            orchestrator_pool: 4,
            service_pool: 3,
            nats_url: None,
            step_timeout_ms: 10_000,
            tokens: Some(Tokens::generate()),
            acceptors: 0,
        }
    }

    /// With `n` (2F+1) Paxos Commit acceptors.
    pub fn acceptors(mut self, n: usize) -> Self {
        self.acceptors = n;
        self
    }

    /// Nodes without tokens (open, on loopback).
    pub fn open(mut self) -> Self {
        self.tokens = None;
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.orchestrator_env.push((k.to_string(), v.into()));
        self
    }

    /// Leases that expire after 1.5 s and a 100 ms poll: a killed or paused holder's sagas are
    /// taken over within seconds (the crash and fencing tests).
    pub fn quick_takeover(self) -> Self {
        self.env("LEASE_TTL_MS", "1500")
            .env("POLL_INTERVAL_MS", "100")
    }
}

/// One process of the stack.
pub struct Node {
    /// `inventory`, `payment`, `shipping`, `orch-0`, `orch-1` …
    pub name: String,
    pub bin: &'static str,
    pub port: u16,
    env: Vec<(String, String)>,
    pub proc: Option<Proc>,
    /// `TANDEM_CRASH` of the running process, if any.
    pub crash: Option<String>,
    pub starts: u32,
}

impl Node {
    fn new(name: String, bin: &'static str, port: u16, env: Vec<(String, String)>) -> Node {
        Node {
            name,
            bin,
            port,
            env,
            proc: None,
            crash: None,
            starts: 0,
        }
    }
}

pub struct Cluster {
    pub layout: Layout,
    /// Services first (in [`SERVICES`] order), then the orchestrators, the acceptors, orders.
    pub nodes: Vec<Node>,
    pub log_dir: PathBuf,
    /// Dropped when the test passes, kept (and named) when it fails.
    pub databases: TestDatabases,
    /// The nodes' tokens ([`ClusterConfig::tokens`]).
    pub tokens: Option<Tokens>,
}

impl Cluster {
    /// Allocate ports and databases names; nothing runs yet (see [`Cluster::start_all`]).
    pub fn new(cfg: ClusterConfig) -> Cluster {
        let layout = Layout::new(
            &cfg.server_url,
            tandem_kit::testing::unique_prefix(&cfg.name),
        );
        let log_dir = std::env::temp_dir()
            .join("tandem-tests")
            .join(&layout.db_prefix);
        std::fs::create_dir_all(&log_dir).expect("creating the log directory");
        let mut nodes: Vec<Node> = SERVICES
            .iter()
            .map(|s| {
                let port = free_port();
                let env = match &cfg.nats_url {
                    Some(nats) => {
                        launch::choreo_service_env(&layout, s, port, cfg.service_pool, nats)
                    }
                    None => launch::service_env(&layout, s, port, cfg.service_pool),
                };
                Node::new(s.to_string(), s, port, env)
            })
            .collect();
        let services = [0, 1, 2].map(|i| launch::loopback_url(nodes[i].port));
        let acceptor_ports: Vec<u16> = (0..cfg.acceptors).map(|_| free_port()).collect();
        let acceptor_urls: Vec<String> = acceptor_ports
            .iter()
            .map(|p| launch::loopback_url(*p))
            .collect();
        for i in 0..cfg.orchestrators {
            let port = free_port();
            let name = format!("orch-{i}");
            let mut env =
                launch::orchestrator_env(&layout, port, &services, &name, cfg.orchestrator_pool);
            if !acceptor_urls.is_empty() {
                env.push(("ACCEPTOR_URLS".into(), acceptor_urls.join(",")));
            }
            env.extend(cfg.orchestrator_env.iter().cloned());
            nodes.push(Node::new(name, "orchestrator", port, env));
        }
        let mut names = layout.databases();
        for (k, port) in acceptor_ports.into_iter().enumerate() {
            let component = format!("acceptor_{k}");
            let env = launch::acceptor_env(&layout, &component, port);
            names.push(layout.database(&component));
            nodes.push(Node::new(format!("acceptor-{k}"), "acceptor", port, env));
        }
        if let Some(nats) = &cfg.nats_url {
            let port = free_port();
            let env =
                launch::orders_env(&layout, port, cfg.service_pool, nats, cfg.step_timeout_ms);
            nodes.push(Node::new(launch::ORDERS.into(), "orders", port, env));
            names.push(layout.database(launch::ORDERS));
        }
        if let Some(t) = &cfg.tokens {
            for n in &mut nodes {
                n.env.extend(t.env());
            }
        }
        let databases = TestDatabases::new(&cfg.server_url, names);
        Cluster {
            layout,
            nodes,
            log_dir,
            databases,
            tokens: cfg.tokens,
        }
    }

    /// Set `k=v` in the environment of every node (services and orchestrators), for their next
    /// start.
    pub fn env_all(&mut self, k: &str, v: &str) {
        for n in &mut self.nodes {
            n.env.push((k.to_string(), v.to_string()));
        }
    }

    /// Node index of a service.
    pub fn service(&self, name: &str) -> usize {
        SERVICES
            .iter()
            .position(|s| *s == name)
            .unwrap_or_else(|| panic!("unknown service {name}"))
    }

    /// Node index of orchestrator `i`.
    pub fn orchestrator(&self, i: usize) -> usize {
        SERVICES.len() + i
    }

    pub fn orchestrator_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.bin == "orchestrator")
            .count()
    }

    /// Node index of acceptor `k` (a cluster with [`ClusterConfig::acceptors`]).
    pub fn acceptor(&self, k: usize) -> usize {
        let name = format!("acceptor-{k}");
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no {name} in this cluster"))
    }

    /// Node index of the orders service (a cluster with `nats_url`).
    pub fn orders(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.bin == "orders")
            .expect("a cluster with NATS has an orders node")
    }

    pub fn url(&self, node: usize) -> String {
        launch::loopback_url(self.nodes[node].port)
    }

    pub fn db_url(&self, component: &str) -> String {
        self.layout.database_url(component)
    }

    /// A client talking to orchestrator `i`, sending the operator token.
    pub fn client(&self, i: usize) -> Client {
        let c = Client::new(
            &self.url(self.orchestrator(i)),
            &self.url(0),
            &self.url(1),
            &self.url(2),
        );
        match &self.tokens {
            Some(t) => c.with_token(&t.operator),
            None => c,
        }
    }

    /// A plain HTTP client sending the nodes' token of `role` (none when they run open).
    pub fn http(&self, role: Role) -> reqwest::Client {
        crate::http_as(self.tokens.as_ref().map(|t| t.get(role)))
    }

    pub fn log_path(&self, node: usize) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.nodes[node].name))
    }

    /// Everything node `node` wrote so far (all its incarnations).
    pub fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// (Re)start a node, with `crash` as its `TANDEM_CRASH` if given.
    pub fn start(&mut self, node: usize, crash: Option<String>) {
        let path = self.log_path(node);
        let n = &mut self.nodes[node];
        if let Some(p) = n.proc.as_mut() {
            p.kill9();
        }
        n.starts += 1;
        if let Ok(mut f) = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = writeln!(
                f,
                "==== start {} of {} (TANDEM_CRASH={})",
                n.starts,
                n.name,
                crash.as_deref().unwrap_or("")
            );
        }
        let mut env = n.env.clone();
        if let Some(c) = &crash {
            env.push(("TANDEM_CRASH".into(), c.clone()));
        }
        n.proc = Some(crate::procs::spawn(n.bin, &env, Some(&path)));
        n.crash = crash;
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i, None);
        }
    }

    pub fn kill9(&mut self, node: usize) {
        if let Some(p) = self.nodes[node].proc.as_mut() {
            p.kill9();
        }
    }

    pub fn proc(&mut self, node: usize) -> &mut Proc {
        self.nodes[node]
            .proc
            .as_mut()
            .expect("the node was started")
    }

    /// Wait until `GET /healthz` of the node answers 200 (its database included).
    pub async fn wait_healthy(&self, node: usize, timeout: Duration) {
        let url = format!("{}/healthz", self.url(node));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        crate::eventually(
            timeout,
            &format!("{} to answer {url}", self.nodes[node].name),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    (r.status() == 200).then_some(())
                }
            },
        )
        .await
    }

    /// Wait until every node's `GET /healthz` fails (its database is gone).
    pub async fn wait_all_unhealthy(&self, timeout: Duration) {
        for node in 0..self.nodes.len() {
            let url = format!("{}/healthz", self.url(node));
            crate::eventually(timeout, &format!("{url} to fail"), || {
                let url = url.clone();
                async move {
                    let r = reqwest::get(&url).await.ok()?;
                    (r.status() != 200).then_some(())
                }
            })
            .await;
        }
    }

    /// Panic naming the first node that exited.
    pub fn assert_all_running(&mut self) {
        for node in 0..self.nodes.len() {
            assert!(
                self.proc(node).exited().is_none(),
                "{} exited; log in {}",
                self.nodes[node].name,
                self.log_dir.display()
            );
        }
    }

    pub async fn wait_all_healthy(&self, timeout: Duration) {
        for i in 0..self.nodes.len() {
            self.wait_healthy(i, timeout).await;
        }
    }

    async fn connect(&self, component: &str) -> PgConnection {
        PgConnection::connect(&self.db_url(component))
            .await
            .unwrap_or_else(|e| panic!("connecting to the {component} database: {e}"))
    }

    /// Read the orchestrator's sagas and the services' own records.
    pub async fn audit(&self) -> Audit {
        let mut orch = self.connect("orchestrator").await;
        let sagas = records(
            &mut orch,
            "SELECT id::text AS id, input->>'order_id' AS order_id, status, lease_epoch AS epoch \
             FROM sagas",
        )
        .await;
        let mut inv = self.connect("inventory").await;
        let reservations = rows(
            &mut inv,
            "SELECT saga_id, step, status, items FROM reservations",
            |r| Reservation {
                saga_id: r.get("saga_id"),
                step: r.get("step"),
                status: r.get("status"),
                items: items(&r.get::<Value, _>("items")),
            },
        )
        .await;
        let stock = records(&mut inv, "SELECT sku, available, reserved FROM stock")
            .await
            .into_iter()
            .map(|(sku, available, reserved): (String, i64, i64)| (sku, (available, reserved)))
            .collect();
        let mut pay = self.connect("payment").await;
        let payments = records(
            &mut pay,
            "SELECT id::text AS id, kind, saga_id, step, charge_id::text AS charge_id FROM payments",
        )
        .await;
        let mut ship = self.connect("shipping").await;
        let shipments = records(&mut ship, "SELECT saga_id, step, status FROM shipments").await;
        for c in [orch, inv, pay, ship] {
            let _ = c.close().await;
        }
        Audit {
            sagas,
            reservations,
            stock,
            payments,
            shipments,
        }
    }

    /// Sagas not completed or compensated yet, and whether one is parked (`failed`).
    pub async fn unsettled(&self) -> (i64, i64) {
        let mut c = self.connect("orchestrator").await;
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE status NOT IN ('completed', 'compensated')) AS open, \
                    count(*) FILTER (WHERE status = 'failed') AS failed FROM sagas",
        )
        .fetch_one(&mut c)
        .await
        .expect("counting sagas");
        let _ = c.close().await;
        (row.get("open"), row.get("failed"))
    }

    /// Wait until every saga is completed or compensated (none parked as `failed`).
    pub async fn wait_settled(&self, timeout: Duration) {
        crate::eventually(timeout, "every saga to settle", || async move {
            let (open, failed) = self.unsettled().await;
            assert_eq!(failed, 0, "a saga was parked as failed");
            (open == 0).then_some(())
        })
        .await
    }
}

impl Drop for Cluster {
    /// Every process is killed before the databases are dropped (passing test) or kept
    /// (failing test, then the logs are named too).
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(p) = n.proc.as_mut() {
                p.kill9();
            }
        }
        if std::thread::panicking() {
            eprintln!("test failed: process logs in {}", self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// Every row of `sql`, mapped.
async fn rows<T>(
    conn: &mut PgConnection,
    sql: &'static str,
    map: impl Fn(&sqlx::postgres::PgRow) -> T,
) -> Vec<T> {
    sqlx::query(sql)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(map)
        .collect()
}

/// Every row of `sql`, each read into a `T` by its column names.
async fn records<T>(conn: &mut PgConnection, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A reservation's `items` column: (sku, quantity) pairs.
fn items(v: &Value) -> Vec<(String, i64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["sku"].as_str().unwrap_or_default().to_string(),
                i["quantity"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[derive(sqlx::FromRow)]
pub struct SagaRecord {
    pub id: String,
    pub order_id: String,
    pub status: String,
    pub epoch: i64,
}

pub struct Reservation {
    pub saga_id: String,
    pub step: String,
    pub status: String,
    pub items: Vec<(String, i64)>,
}

#[derive(sqlx::FromRow)]
pub struct Payment {
    pub id: String,
    pub kind: String,
    pub saga_id: String,
    pub step: String,
    pub charge_id: Option<String>,
}

#[derive(sqlx::FromRow)]
pub struct Shipment {
    pub saga_id: String,
    pub step: String,
    pub status: String,
}

/// The orchestrator's view and the services' records, read at one moment (after the run).
pub struct Audit {
    pub sagas: Vec<SagaRecord>,
    pub reservations: Vec<Reservation>,
    /// sku → (available, reserved)
    pub stock: BTreeMap<String, (i64, i64)>,
    pub payments: Vec<Payment>,
    pub shipments: Vec<Shipment>,
}

impl Audit {
    /// Sagas per status.
    pub fn by_status(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &self.sagas {
            *m.entry(s.status.clone()).or_default() += 1;
        }
        m
    }

    pub fn saga_by_order(&self, order_id: &str) -> Option<&SagaRecord> {
        self.sagas.iter().find(|s| s.order_id == order_id)
    }

    /// Every violated invariant, with the offending saga, as (invariant, message):
    /// - `settled`: every saga is `completed` or `compensated` (none running, none `failed`);
    /// - `completed`: exactly one held reservation, one charge and no refund, one live shipment;
    /// - `compensated`: no held reservation, every charge refunded exactly once, no live shipment;
    /// - `at_most_once`: per (saga, step, action|compensation) at most one business effect
    ///   (reservations, charges, refunds, shipments counted themselves), and every effect belongs
    ///   to a known saga;
    /// - `stock`: for each SKU, initial = available + held reservations, the service's own
    ///   `reserved` column agrees, nothing negative.
    pub fn violations(&self, initial_stock: &BTreeMap<String, i64>) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = Vec::new();
        let refunds_per_charge = self.at_most_once(&mut v);
        self.outcomes(&refunds_per_charge, &mut v);
        self.stock_conserved(initial_stock, &mut v);
        v
    }

    /// `at_most_once` violations; the refunds per charge id.
    fn at_most_once(&self, v: &mut Vec<(&'static str, String)>) -> HashMap<&str, usize> {
        let known: HashMap<&str, &SagaRecord> =
            self.sagas.iter().map(|s| (s.id.as_str(), s)).collect();
        // at most once, counting the effects themselves
        let mut per_key: HashMap<(&str, &str, &str), usize> = HashMap::new();
        for r in &self.reservations {
            *per_key
                .entry((&r.saga_id, &r.step, "reservation"))
                .or_default() += 1;
        }
        for p in &self.payments {
            *per_key.entry((&p.saga_id, &p.step, &p.kind)).or_default() += 1;
        }
        for s in &self.shipments {
            *per_key
                .entry((&s.saga_id, &s.step, "shipment"))
                .or_default() += 1;
        }
        for ((saga, step, what), n) in &per_key {
            if *n > 1 {
                v.push((
                    "at_most_once",
                    format!("saga {saga} step {step}: {n} × {what}"),
                ));
            }
            if !known.contains_key(saga) {
                v.push((
                    "at_most_once",
                    format!("{what} of step {step} for unknown saga {saga}"),
                ));
            }
        }
        let mut refunds_per_charge: HashMap<&str, usize> = HashMap::new();
        for p in self.payments.iter().filter(|p| p.kind == "refund") {
            *refunds_per_charge
                .entry(p.charge_id.as_deref().unwrap_or("?"))
                .or_default() += 1;
        }
        for (charge, n) in &refunds_per_charge {
            if *n > 1 {
                v.push((
                    "at_most_once",
                    format!("charge {charge} refunded {n} times"),
                ));
            }
        }

        refunds_per_charge
    }

    /// `settled`, `completed` and `compensated` violations, per saga.
    fn outcomes(
        &self,
        refunds_per_charge: &HashMap<&str, usize>,
        v: &mut Vec<(&'static str, String)>,
    ) {
        // per saga outcome
        let mut res: HashMap<&str, Vec<&Reservation>> = HashMap::new();
        for r in &self.reservations {
            res.entry(&r.saga_id).or_default().push(r);
        }
        let mut charges: HashMap<&str, Vec<&Payment>> = HashMap::new();
        for p in self.payments.iter().filter(|p| p.kind == "charge") {
            charges.entry(&p.saga_id).or_default().push(p);
        }
        let mut ships: HashMap<&str, Vec<&Shipment>> = HashMap::new();
        for s in &self.shipments {
            ships.entry(&s.saga_id).or_default().push(s);
        }
        for s in &self.sagas {
            let id = s.id.as_str();
            let r = res.get(id).map(Vec::as_slice).unwrap_or_default();
            let held = r.iter().filter(|r| r.status == "held").count();
            let c = charges.get(id).map(Vec::as_slice).unwrap_or_default();
            let refunded: Vec<usize> = c
                .iter()
                .map(|c| refunds_per_charge.get(c.id.as_str()).copied().unwrap_or(0))
                .collect();
            let sh = ships.get(id).map(Vec::as_slice).unwrap_or_default();
            let live = sh.iter().filter(|s| s.status == "created").count();
            let who = format!("saga {id} (order {})", s.order_id);
            match s.status.as_str() {
                "completed" => {
                    if !(held == 1 && r.len() == 1) {
                        v.push((
                            "completed",
                            format!("{who}: {held} held of {} reservations", r.len()),
                        ));
                    }
                    if !(c.len() == 1 && refunded.iter().all(|n| *n == 0)) {
                        v.push((
                            "completed",
                            format!("{who}: {} charges, refunds {refunded:?}", c.len()),
                        ));
                    }
                    if !(live == 1 && sh.len() == 1) {
                        v.push((
                            "completed",
                            format!("{who}: {live} live of {} shipments", sh.len()),
                        ));
                    }
                }
                "compensated" => {
                    if held != 0 {
                        v.push(("compensated", format!("{who}: {held} held reservations")));
                    }
                    if refunded.iter().any(|n| *n != 1) {
                        v.push((
                            "compensated",
                            format!("{who}: refunds per charge {refunded:?}"),
                        ));
                    }
                    if live != 0 {
                        v.push(("compensated", format!("{who}: {live} live shipments")));
                    }
                }
                other => v.push(("settled", format!("{who} is {other}"))),
            }
        }
    }

    /// `stock` violations.
    fn stock_conserved(
        &self,
        initial_stock: &BTreeMap<String, i64>,
        v: &mut Vec<(&'static str, String)>,
    ) {
        // stock conservation
        let mut held_qty: BTreeMap<&str, i64> = BTreeMap::new();
        for r in self.reservations.iter().filter(|r| r.status == "held") {
            for (sku, q) in &r.items {
                *held_qty.entry(sku).or_default() += q;
            }
        }
        for (sku, initial) in initial_stock {
            let (available, reserved) = self.stock.get(sku).copied().unwrap_or((-1, -1));
            let held = held_qty.get(sku.as_str()).copied().unwrap_or(0);
            if available < 0 || reserved < 0 || available + held != *initial || reserved != held {
                v.push((
                    "stock",
                    format!(
                        "{sku}: initial {initial}, available {available}, held reservations {held}, reserved column {reserved}"
                    ),
                ));
            }
        }
    }
}

/// Compare a settled saga's outcome with the services' read APIs (`GET /reservations`,
/// `/payments`, `/shipments` by order): problems found, if any.
pub async fn api_problems(c: &Client, order_id: &str, status: &str) -> Vec<String> {
    let mut p = Vec::new();
    let (res, pay, ship) = match (
        c.reservations(order_id).await,
        c.payments(order_id).await,
        c.shipments(order_id).await,
    ) {
        (Ok(r), Ok(p), Ok(s)) => (r, p, s),
        (r, pa, s) => {
            return vec![format!(
                "order {order_id}: read APIs failed: {:?} {:?} {:?}",
                r.err(),
                pa.err(),
                s.err()
            )];
        }
    };
    let count = |l: &[Value], k: &str, v: &str| l.iter().filter(|x| x[k] == v).count();
    let held = count(&res, "status", "held");
    let charges = count(&pay, "kind", "charge");
    let refunds = count(&pay, "kind", "refund");
    let live = count(&ship, "status", "created");
    let ok = match status {
        "completed" => held == 1 && charges == 1 && refunds == 0 && live == 1,
        "compensated" => held == 0 && refunds == charges && live == 0,
        _ => false,
    };
    if !ok {
        p.push(format!(
            "order {order_id} ({status}) per the APIs: {held} held, {charges} charges, {refunds} refunds, {live} live shipments"
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(id: &str, status: &str) -> SagaRecord {
        SagaRecord {
            id: id.into(),
            order_id: format!("o-{id}"),
            status: status.into(),
            epoch: 1,
        }
    }
    fn res(saga: &str, status: &str, qty: i64) -> Reservation {
        Reservation {
            saga_id: saga.into(),
            step: "reserve_inventory".into(),
            status: status.into(),
            items: vec![("sku".into(), qty)],
        }
    }
    fn pay(id: &str, kind: &str, saga: &str, charge: Option<&str>) -> Payment {
        Payment {
            id: id.into(),
            kind: kind.into(),
            saga_id: saga.into(),
            step: "charge_payment".into(),
            charge_id: charge.map(Into::into),
        }
    }
    fn ship(saga: &str, status: &str) -> Shipment {
        Shipment {
            saga_id: saga.into(),
            step: "create_shipment".into(),
            status: status.into(),
        }
    }

    fn consistent() -> Audit {
        Audit {
            sagas: vec![saga("a", "completed"), saga("b", "compensated")],
            reservations: vec![res("a", "held", 2), res("b", "released", 1)],
            stock: BTreeMap::from([("sku".to_string(), (8, 2))]),
            payments: vec![
                pay("c1", "charge", "a", None),
                pay("c2", "charge", "b", None),
                pay("r2", "refund", "b", Some("c2")),
            ],
            shipments: vec![ship("a", "created"), ship("b", "cancelled")],
        }
    }

    fn kinds(a: &Audit) -> Vec<&'static str> {
        let mut k: Vec<_> = a
            .violations(&BTreeMap::from([("sku".to_string(), 10)]))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        k.sort();
        k.dedup();
        k
    }

    #[test]
    fn a_consistent_outcome_passes() {
        assert!(kinds(&consistent()).is_empty());
    }

    #[test]
    fn every_kind_of_violation_is_caught() {
        let mut a = consistent();
        a.payments.push(pay("r2b", "refund", "b", Some("c2")));
        assert_eq!(kinds(&a), ["at_most_once", "compensated"]);

        let mut a = consistent();
        a.payments.push(pay("r1", "refund", "a", Some("c1")));
        assert_eq!(kinds(&a), ["completed"]);

        let mut a = consistent();
        a.reservations[1].status = "held".into();
        a.stock.insert("sku".into(), (7, 3));
        assert_eq!(kinds(&a), ["compensated"]);

        let mut a = consistent();
        a.stock.insert("sku".into(), (9, 2));
        assert_eq!(kinds(&a), ["stock"]);

        let mut a = consistent();
        a.shipments.push(ship("a", "created"));
        assert_eq!(kinds(&a), ["at_most_once", "completed"]);

        let mut a = consistent();
        a.sagas[0].status = "failed".into();
        assert!(kinds(&a).contains(&"settled"));

        let mut a = consistent();
        a.shipments.push(ship("ghost", "created"));
        assert_eq!(kinds(&a), ["at_most_once"]);
    }
}
