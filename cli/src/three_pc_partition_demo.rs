//! `tandem commit demo 3pc-partition`: a network partition splits plain 3PC. It starts the real
//! binaries as processes — inventory, payment, shipping and one orchestrator (`orch-3pc`) — and
//! cuts the network in two before a 3PC checkout: `{orch-3pc, inventory}` | `{payment, shipping}`.
//! The cut is made of link faults (`POST /faults` with `from`, at each receiver, both ways)
//! that drop every message from PreCommit on — PreCommit, DoCommit, Abort and the termination
//! protocol's messages — so the votes get through and the partition falls between the votes and
//! PreCommit. No process crashes, and every one of them follows its core:
//!
//! - the coordinator's PreCommit reaches inventory (participant 0) only; its ack timer takes
//!   payment and shipping — silent, not dead — as crashed, so it commits (everyone voted YES)
//!   and inventory commits with it;
//! - payment and shipping, uncertain, time out on the coordinator, then on participant 0 (the
//!   next leader, across the cut); payment leads term 2, finds every state it can reach
//!   uncertain, and aborts both (Skeen's rule: nobody pre-committed ⇒ nobody committed — true
//!   under crash-stop, false here).
//!
//! Then an **invariant scan over the three services** — their read endpoints only
//! (`/reservations`, `/payments`, `/shipments`, `/3pc/{txn}`, `/2pc/status`), never another
//! service's database — finds the order's stock reserved but no charge and no shipment, while
//! the coordinator's own view says `committed`, and prints the split. Healing the partition
//! (deleting the faults) changes nothing: every side has decided. The demo checks each of these
//! and exits non-zero, naming the check, on anything else.
//!
//! **Second half: the same partition under quorum-based 3PC** (`"protocol": "3pc-quorum"`, commit
//! and abort quorums 2 of 3). The cut is installed again and a second checkout runs:
//!
//! - payment and shipping (two participants: an abort quorum) time out on the coordinator; one
//!   of them leads a termination attempt, finds both uncertain, pre-aborts both and aborts;
//! - the coordinator's ack timer has only inventory's ack — fewer than a commit quorum — so it
//!   does not commit: it is **blocked**; inventory, pre-committed, cannot reach anyone across the
//!   cut, so each of its termination attempts gives up and re-arms its timer: it holds its
//!   prepared transaction (the demo shows its state and age, and that it stays undecided for two
//!   more timeouts after the other side decided);
//! - the invariant scan finds no split (no service has the order's effect; inventory's is still
//!   prepared, not committed);
//! - the partition heals: inventory's next attempt reaches payment, finds it aborted and aborts;
//!   the coordinator, observing the branches, records the abort. Nothing is left prepared and the
//!   scan finds no split.
//!
//! The end-to-end test (`tests/tests/three_pc_partition.rs`) runs exactly this.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::launch::{self, SERVICES};
use crate::paxos_demo::{Demo, Node, Options, node};

/// Every 3PC timer of the demo (`THREE_PC_TIMEOUT_MS`).
pub const TIMEOUT_MS: u64 = 2000;
/// The orchestrator's node name (the `from` of its links).
const COORDINATOR: &str = "orch-3pc";
/// Node index of the orchestrator (services are 0–2).
const O: usize = 3;
const ORDER: &str = "tpc3-split-1";
/// The quorum half's order.
const ORDER_QUORUM: &str = "tpc3q-block-1";
/// The message kinds the partition drops (everything after the votes).
const CUT_OPS: [&str; 4] = ["precommit", "commit", "abort", "termination"];
/// Firings allowed per link fault: far more than the demo sends.
const CUT_TIMES: u32 = 1000;

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Each service's 3PC branch: (state, term), in the leader order.
    pub branches: Vec<(String, u64)>,
    /// Each service's committed records of the order (reservations, payments, shipments).
    pub effects: [usize; 3],
    /// The coordinator's view of the transaction (`state`).
    pub coordinator_state: String,
    /// Messages the partition dropped (link-fault firings over the three services).
    pub dropped: u64,
    /// Seconds from the checkout's start until every branch had decided.
    pub decided_secs: f64,
    /// What the invariant scan printed: one line per violation.
    pub violations: Vec<String>,
    /// The second half: the same partition under quorum 3PC.
    pub quorum: QuorumReport,
}

/// What the quorum 3PC half saw.
#[derive(Debug, Default)]
pub struct QuorumReport {
    /// Each branch (state, term = attempts) once payment and shipping had decided.
    pub during: Vec<(String, u64)>,
    /// Inventory still held its prepared transaction, after the other side decided.
    pub inventory_prepared: bool,
    /// Inventory's branch age (seconds since it began) when last seen blocked.
    pub blocked_age_secs: f64,
    /// The coordinator's view while blocked, and after the heal.
    pub coordinator_blocked: String,
    pub coordinator_after: String,
    /// Each branch after the heal.
    pub after: Vec<(String, u64)>,
    /// Effects while blocked and after the heal.
    pub effects_during: [usize; 3],
    pub effects_after: [usize; 3],
    /// Violations the scans found while blocked and after the heal (none expected).
    pub violations: Vec<String>,
    /// Seconds from the checkout until payment and shipping decided; from the heal until
    /// inventory decided.
    pub other_side_secs: f64,
    pub heal_to_decided_secs: f64,
}

/// The databases the demo uses (each process creates its own).
pub fn databases(layout: &launch::Layout) -> Vec<String> {
    layout.databases()
}

/// Run the demo; Err names the first check that failed.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let mut d = demo(opts)?;
    for i in 0..d.nodes.len() {
        d.start(i, None)?;
    }
    for i in 0..d.nodes.len() {
        d.wait_healthy(i).await?;
    }
    d.put_stock(10).await?;
    let mut report = Report::default();

    d.say("1. partition {orch-3pc, inventory} | {payment, shipping}, from PreCommit on");
    let cuts = partition(&d).await?;
    d.say(&format!(
        "   {cuts} link faults installed (drop_request at each receiver, both ways)"
    ));

    d.say("2. a 3PC checkout across the partition");
    let begun = Instant::now();
    let id = d.begin_with("3pc", O, ORDER, "tok_visa").await?;
    let branches = decided(&d, &id).await?;
    report.decided_secs = begun.elapsed().as_secs_f64();
    for (i, (state, term)) in branches.iter().enumerate() {
        d.say(&format!(
            "   {}: {state} in term {term} ({})",
            SERVICES[i],
            match term {
                0 => "the coordinator's decision".to_string(),
                t => format!("participant {}'s termination", t - 1),
            }
        ));
    }
    report.branches = branches;
    report.dropped = dropped(&d).await?;
    d.say(&format!(
        "   every branch decided {:.1} s after the checkout began; the partition dropped {} \
         messages",
        report.decided_secs, report.dropped
    ));

    d.say("3. invariant scan over the three services (their HTTP read endpoints)");
    let t = d.get(format!("{}/transactions/{id}", d.url(O))).await?;
    report.coordinator_state = t["state"].as_str().unwrap_or("?").to_string();
    let found = scan(&d, &id, ORDER).await?;
    report.effects = found.effects;
    report.violations = found.violations.clone();
    for line in &found.lines {
        d.say(&format!("   {line}"));
    }
    d.say(&format!(
        "   the coordinator's view of {id}: {}",
        report.coordinator_state
    ));
    for v in &found.violations {
        d.say(&format!("   SPLIT: {v}"));
    }
    check(&report)?;

    d.say("4. the partition heals");
    for i in 0..SERVICES.len() {
        d.delete(format!("{}/faults", d.url(i))).await?;
    }
    // Nothing is waiting to run: give the nodes a timeout's worth of time to show it.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS)).await;
    let again = scan(&d, &id, ORDER).await?;
    ensure!(
        again.effects == report.effects && decided(&d, &id).await? == report.branches,
        "after the heal the services changed: {:?} → {:?}",
        report.effects,
        again.effects
    );
    d.say("   nothing changes: each side decided; only a scan like the one above finds the split");
    d.say("plain 3PC split under a partition");
    report.quorum = quorum_half(&d).await?;
    d.say("every check passed: plain 3PC split under a partition; quorum 3PC blocked instead, and finished when it healed");
    Ok(report)
}

/// The second half: the same partition under quorum 3PC.
async fn quorum_half(d: &Demo) -> anyhow::Result<QuorumReport> {
    let mut r = QuorumReport::default();
    d.say("5. the same partition, now under quorum 3PC (commit quorum 2, abort quorum 2 of 3)");
    let cuts = partition(d).await?;
    d.say(&format!("   {cuts} link faults installed again"));
    let begun = Instant::now();
    let id = d
        .begin_with("3pc-quorum", O, ORDER_QUORUM, "tok_visa")
        .await?;
    let deadline = Instant::now() + Duration::from_millis(10 * TIMEOUT_MS + 10_000);
    loop {
        let b = branch_views(d, &id).await?;
        if b[1]["state"] == "aborted" && b[2]["state"] == "aborted" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{id}: payment and shipping did not abort: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.other_side_secs = begun.elapsed().as_secs_f64();
    d.say(&format!(
        "   payment and shipping aborted {:.1} s after the checkout began: two of three \
         participants are an abort quorum (pre-abort, then abort)",
        r.other_side_secs
    ));
    // Inventory cannot decide while cut off (it reaches nobody); two more timeouts show it
    // retrying its termination and staying blocked.
    d.say("   inventory's side: watching it for two more timeouts");
    tokio::time::sleep(Duration::from_millis(2 * TIMEOUT_MS)).await;
    let b = branch_views(d, &id).await?;
    r.during = pairs(&b);
    let inv = &b[0];
    r.inventory_prepared = inv["prepared"] == true;
    r.blocked_age_secs = age_secs(inv);
    let t = d.get(format!("{}/transactions/{id}", d.url(O))).await?;
    r.coordinator_blocked = t["state"].as_str().unwrap_or("?").to_string();
    d.say(&format!(
        "   inventory: {}{}, its branch {:.1} s old — BLOCKED (one ack is no commit quorum; \
         alone it is no abort quorum)",
        inv["state"].as_str().unwrap_or("?"),
        if r.inventory_prepared {
            ", prepared transaction held"
        } else {
            ""
        },
        r.blocked_age_secs
    ));
    d.say(&format!(
        "   the coordinator's view of {id}: {} (its ack timer found 1 ack of the 2 a commit \
         needs)",
        r.coordinator_blocked
    ));
    d.say("   invariant scan while blocked:");
    let found = scan(d, &id, ORDER_QUORUM).await?;
    for line in &found.lines {
        d.say(&format!("   {line}"));
    }
    r.effects_during = found.effects;
    r.violations.extend(found.violations);
    ensure!(
        r.during[0].0 == "precommitted" && r.inventory_prepared,
        "inventory is not blocked pre-committed with its transaction prepared: {:?}",
        r.during
    );
    ensure!(
        r.coordinator_blocked != "committed" && r.coordinator_blocked != "aborted",
        "the coordinator decided ({}) although it had no commit quorum",
        r.coordinator_blocked
    );
    ensure!(
        r.violations.is_empty() && r.effects_during == [0, 0, 0],
        "the scan found {:?} / effects {:?} while blocked",
        r.violations,
        r.effects_during
    );
    d.say("   no split: nothing committed anywhere");
    healed(d, &id, &mut r).await?;
    Ok(r)
}

/// The quorum half's end: heal, and check that inventory finishes consistently.
async fn healed(d: &Demo, id: &str, r: &mut QuorumReport) -> anyhow::Result<()> {
    d.say("6. the partition heals");
    for i in 0..SERVICES.len() {
        d.delete(format!("{}/faults", d.url(i))).await?;
    }
    let healed = Instant::now();
    let after = decided(d, id).await?;
    r.heal_to_decided_secs = healed.elapsed().as_secs_f64();
    r.after.clone_from(&after);
    d.say(&format!(
        "   inventory's next termination attempt reaches the other side: {} after {:.1} s \
         (attempt {})",
        after[0].0, r.heal_to_decided_secs, after[0].1
    ));
    let t = d.settled(O, id).await?;
    r.coordinator_after = t["state"].as_str().unwrap_or("?").to_string();
    d.say(&format!(
        "   the coordinator, observing the branches, records: {}",
        r.coordinator_after
    ));
    let found = scan(d, id, ORDER_QUORUM).await?;
    for line in &found.lines {
        d.say(&format!("   {line}"));
    }
    r.effects_after = found.effects;
    r.violations.extend(found.violations);
    let states: Vec<&str> = after.iter().map(|(s, _)| s.as_str()).collect();
    ensure!(
        states == ["aborted", "aborted", "aborted"],
        "after the heal the branches are {after:?}, not all aborted"
    );
    ensure!(
        r.coordinator_after == "aborted",
        "the coordinator's view says {} after the heal, not aborted",
        r.coordinator_after
    );
    let prepared = d.prepared_in(Some(id)).await?;
    ensure!(
        !prepared.iter().any(|p| *p),
        "still prepared after the heal: {prepared:?}"
    );
    ensure!(
        r.violations.is_empty() && r.effects_after == [0, 0, 0],
        "the scan found {:?} / effects {:?} after the heal",
        r.violations,
        r.effects_after
    );
    d.say("   no split, nothing prepared: quorum 3PC blocked the minority instead of splitting");
    Ok(())
}

/// Each service's branch of `id` as its `GET /3pc/{id}` shows it (null: none).
async fn branch_views(d: &Demo, id: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = vec![];
    for i in 0..SERVICES.len() {
        let v = d.get(format!("{}/3pc/{id}", d.url(i))).await?;
        out.push(
            v["branches"]
                .as_array()
                .and_then(|b| b.first())
                .cloned()
                .unwrap_or(Value::Null),
        );
    }
    Ok(out)
}

/// (state, term) of each branch view.
fn pairs(views: &[Value]) -> Vec<(String, u64)> {
    views
        .iter()
        .map(|b| {
            (
                b["state"].as_str().unwrap_or("none").to_string(),
                b["term"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Seconds since a branch view's `created_at`.
fn age_secs(view: &Value) -> f64 {
    view["created_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0.0, |t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).as_seconds_f64()
        })
}

/// What the demo expects: exactly the split plain 3PC makes here.
fn check(r: &Report) -> anyhow::Result<()> {
    let states: Vec<&str> = r.branches.iter().map(|(s, _)| s.as_str()).collect();
    ensure!(
        states == ["committed", "aborted", "aborted"],
        "branches {:?}: not inventory committed, payment and shipping aborted",
        r.branches
    );
    // Payment (participant 1) led term 2 on its side; inventory's commit was the coordinator's
    // (term 0) or its own termination's (term 1), whichever came first.
    ensure!(
        r.branches[1].1 == 2 && r.branches[2].1 == 2 && r.branches[0].1 <= 1,
        "terms {:?}: payment did not lead its side in term 2",
        r.branches
    );
    ensure!(
        r.effects == [1, 0, 0],
        "effects {:?}: not one reservation, no charge, no shipment",
        r.effects
    );
    ensure!(
        r.coordinator_state == "committed",
        "the coordinator's view says {}, not committed",
        r.coordinator_state
    );
    ensure!(r.dropped > 0, "the partition dropped no message");
    ensure!(!r.violations.is_empty(), "the invariant scan found nothing");
    Ok(())
}

/// Cut every link between the two sides for the ops after the votes, at each receiver: the
/// number of faults installed.
async fn partition(d: &Demo) -> anyhow::Result<usize> {
    let [inventory, payment, shipping] = SERVICES;
    let links: [(usize, &str); 6] = [
        (1, COORDINATOR),
        (2, COORDINATOR),
        (0, payment),
        (0, shipping),
        (1, inventory),
        (2, inventory),
    ];
    let mut n = 0;
    for (to, from) in links {
        for op in CUT_OPS {
            d.post(
                format!("{}/faults", d.url(to)),
                &json!({ "from": from, "to": SERVICES[to], "op": op,
                         "kind": "drop_request", "times": CUT_TIMES }),
            )
            .await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Wait until every service's branch of `id` has decided: (state, term) per service.
async fn decided(d: &Demo, id: &str) -> anyhow::Result<Vec<(String, u64)>> {
    // Coordinator timeout, leader timeout, term-2 leader's collection (or a quorum 3PC
    // participant's next termination attempt): well under 10 timeouts.
    let deadline = Instant::now() + Duration::from_millis(10 * TIMEOUT_MS + 10_000);
    loop {
        let out = pairs(&branch_views(d, id).await?);
        if out.iter().all(|(s, _)| s == "committed" || s == "aborted") {
            return Ok(out);
        }
        ensure!(
            Instant::now() < deadline,
            "{id}: the branches did not all decide: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Link-fault firings over the three services.
async fn dropped(d: &Demo) -> anyhow::Result<u64> {
    let mut n = 0;
    for i in 0..SERVICES.len() {
        let faults = d.get(format!("{}/faults", d.url(i))).await?;
        for f in faults.as_array().context("GET /faults: not a list")? {
            let times = f["times"].as_u64().unwrap_or(0);
            let remaining = f["remaining"].as_u64().unwrap_or(times);
            n += times - remaining.min(times);
        }
    }
    Ok(n)
}

/// What the invariant scan found.
pub struct Scan {
    /// Committed records of the order per service (reservations, payments, shipments).
    pub effects: [usize; 3],
    /// What it read, one line per service.
    pub lines: Vec<String>,
    /// Violations of all-or-nothing, one line each.
    pub violations: Vec<String>,
}

/// The invariant scan: the order's committed records in each service and the transaction's
/// branches, read through the services' HTTP APIs; all-or-nothing holds when every service
/// has the order's effect or none has, and nothing is left prepared.
pub(crate) async fn scan(d: &Demo, id: &str, order: &str) -> anyhow::Result<Scan> {
    let effects = d.effects(order).await?;
    let prepared = d.prepared_in(Some(id)).await?;
    let what = ["stock reserved", "card charged", "shipment booked"];
    let missing = ["no reservation", "no charge", "no shipment"];
    let mut lines = vec![];
    for (i, service) in SERVICES.iter().enumerate() {
        lines.push(format!(
            "{service:<9}: {} record(s) of {order} — {}{}",
            effects[i],
            if effects[i] > 0 { what[i] } else { missing[i] },
            if prepared[i] {
                " (still prepared: undecided)"
            } else {
                ""
            }
        ));
    }
    let mut violations = vec![];
    let has: Vec<bool> = effects.iter().map(|e| *e > 0).collect();
    if has.iter().any(|h| *h) && !has.iter().all(|h| *h) {
        let yes: Vec<&str> = (0..3).filter(|i| has[*i]).map(|i| what[i]).collect();
        let no: Vec<&str> = (0..3).filter(|i| !has[*i]).map(|i| missing[i]).collect();
        violations.push(format!(
            "{order}: {} but {} — one transaction, committed in part",
            yes.join(" and "),
            no.join(" and ")
        ));
    }
    if effects.iter().any(|e| *e > 1) {
        violations.push(format!("{order}: an effect applied twice: {effects:?}"));
    }
    Ok(Scan {
        effects,
        lines,
        violations,
    })
}

fn demo(opts: Options) -> anyhow::Result<Demo> {
    let layout = &opts.layout;
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(launch::free_port()?);
    }
    let mut nodes: Vec<Node> = Vec::new();
    for (i, s) in SERVICES.iter().enumerate() {
        let env = launch::service_env(layout, s, ports[i], 3);
        nodes.push(node(s, s, ports[i], env));
    }
    let services = [0, 1, 2].map(|i| launch::loopback_url(ports[i]));
    let mut env = launch::orchestrator_env(layout, ports[O], &services, COORDINATOR, 4);
    env.push(("NODE_NAME".into(), COORDINATOR.into()));
    env.push(("THREE_PC_TIMEOUT_MS".into(), TIMEOUT_MS.to_string()));
    env.push(("LEASE_TTL_MS".into(), "1500".into()));
    env.push(("POLL_INTERVAL_MS".into(), "100".into()));
    nodes.push(node(COORDINATOR, "orchestrator", ports[O], env));
    Demo::from_nodes(opts, nodes)
}
