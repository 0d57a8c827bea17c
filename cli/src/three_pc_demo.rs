//! `tandem commit demo 3pc-unblocks`: the coordinator crashes after PreCommit — 2PC blocks, 3PC
//! does not. It starts the real binaries as processes — inventory, payment, shipping and two
//! orchestrators, `orch-2pc` and `orch-3pc` (each on a database of its own, so neither takes
//! over the other's transactions) — and runs, on the same services:
//!
//! 1. a 3PC checkout whose coordinator dies at `orchestrator.3pc.after_precommit` (every
//!    participant pre-committed, nothing decided): the participants time out, participant 0
//!    runs the termination protocol, and all three commit without the coordinator;
//! 2. a 2PC checkout whose coordinator dies at `orchestrator.2pc.after_votes` (every participant
//!    prepared, nothing decided): the participants stay blocked, holding their prepared
//!    transactions (and their locks), for as long as the coordinator is down — checked after
//!    twice the time 3PC needed, and more;
//! 3. both coordinators restart: 2PC's finishes its transaction (presumed abort), 3PC's finds
//!    its participants terminated and records their decision on the transaction.
//!
//! It prints both side by side with times, checks everything it shows against the services'
//! own records, and fails naming the check otherwise. The end-to-end test
//! (`tests/tests/three_pc.rs`) runs exactly this.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;

use crate::launch::{self, SERVICES};
use crate::paxos_demo::{Demo, Node, Options, node};

const CRASH_3PC: &str = "orchestrator.3pc.after_precommit";
const CRASH_2PC: &str = "orchestrator.2pc.after_votes";
/// Every 3PC timer of the demo (`THREE_PC_TIMEOUT_MS`).
pub const TIMEOUT_MS: u64 = 3000;

/// Node indices: services 0–2, then the two orchestrators.
const O2PC: usize = 3;
const O3PC: usize = 4;

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Seconds from the 3PC coordinator's crash until all three services committed.
    pub three_pc_secs: f64,
    /// The term the 3PC participants decided in (≥ 1: a participant led, not the coordinator).
    pub three_pc_term: u64,
    /// Seconds the 2PC participants were seen blocked (prepared, undecided) after the crash.
    pub two_pc_blocked_secs: f64,
    /// Seconds from the 2PC coordinator's restart until its transaction was finished.
    pub two_pc_after_restart_secs: f64,
}

/// The databases the demo uses (each process creates its own).
pub fn databases(layout: &launch::Layout) -> Vec<String> {
    let mut names = layout.databases();
    names.push(layout.database("orchestrator_3pc"));
    names
}

/// Run the demo; Err names the first check that failed.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let mut d = demo(opts)?;
    for i in 0..d.nodes.len() {
        let crash = match i {
            O2PC => Some(CRASH_2PC),
            O3PC => Some(CRASH_3PC),
            _ => None,
        };
        d.start(i, crash)?;
    }
    for i in 0..d.nodes.len() {
        d.wait_healthy(i).await?;
    }
    d.put_stock(10).await?;
    let mut report = Report::default();
    let id3 = three_pc(&mut d, &mut report).await?;
    let (id2, crashed) = two_pc(&mut d, &mut report).await?;
    restart(&mut d, &mut report, &id2, crashed, &id3).await?;
    d.say("every check passed");
    Ok(report)
}

/// Step 1: the 3PC coordinator dies after PreCommit; the participants commit without it.
async fn three_pc(d: &mut Demo, report: &mut Report) -> anyhow::Result<String> {
    d.say("1. 3PC: the coordinator (orch-3pc) crashes after PreCommit");
    let id3 = d.begin_with("3pc", O3PC, "tpc3-1", "tok_visa").await?;
    let crashed = crash(d, O3PC, CRASH_3PC).await?;
    d.say(&format!(
        "   orch-3pc crashed at {CRASH_3PC}; the participants wait {TIMEOUT_MS} ms for it"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if d.effects("tpc3-1").await? == [1, 1, 1]
            && d.prepared_in(Some(&id3)).await?.iter().all(|p| !p)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "tpc3-1: the 3PC participants did not commit without their coordinator"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.three_pc_secs = crashed.elapsed().as_secs_f64();
    report.three_pc_term = terminated_by(d, &id3).await?;
    d.say(&format!(
        "   tpc3-1: committed in inventory, payment and shipping {:.1} s after the crash, \
         decided by participant {} in term {} (termination protocol)",
        report.three_pc_secs,
        report.three_pc_term - 1,
        report.three_pc_term
    ));
    Ok(id3)
}

/// Step 2: the 2PC coordinator dies after the votes; the participants stay blocked.
async fn two_pc(d: &mut Demo, report: &mut Report) -> anyhow::Result<(String, Instant)> {
    d.say("2. 2PC: the coordinator (orch-2pc) crashes after the votes");
    let id2 = d.begin_with("2pc", O2PC, "tpc2-1", "tok_visa").await?;
    let crashed = crash(d, O2PC, CRASH_2PC).await?;
    d.say(&format!("   orch-2pc crashed at {CRASH_2PC}"));
    let watch = Duration::from_secs_f64((report.three_pc_secs * 2.0).max(3.0));
    while crashed.elapsed() < watch {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(
            d.prepared_in(Some(&id2)).await?.iter().all(|p| *p),
            "tpc2-1: a 2PC participant let go of its prepared transaction without a coordinator"
        );
        let e = d.effects("tpc2-1").await?;
        ensure!(
            e == [0, 0, 0],
            "tpc2-1 undecided, yet effects {e:?} are visible"
        );
    }
    report.two_pc_blocked_secs = crashed.elapsed().as_secs_f64();
    let held = oldest_prepared_ms(d).await?;
    d.say(&format!(
        "   tpc2-1: still blocked {:.1} s after the crash — prepared in all three services \
         (locks held for {:.1} s), nothing visible; 3PC needed {:.1} s",
        report.two_pc_blocked_secs,
        held as f64 / 1000.0,
        report.three_pc_secs
    ));
    Ok((id2, crashed))
}

/// Step 3: both coordinators restart; 2PC's finishes (presumed abort), 3PC's records the
/// participants' commit.
async fn restart(
    d: &mut Demo,
    report: &mut Report,
    id2: &str,
    crashed: Instant,
    id3: &str,
) -> anyhow::Result<()> {
    d.say("3. both coordinators restart");
    d.start(O2PC, None)?;
    d.start(O3PC, None)?;
    let restarted = Instant::now();
    d.wait_healthy(O2PC).await?;
    d.wait_healthy(O3PC).await?;
    let t2 = d.settled(O2PC, id2).await?;
    report.two_pc_after_restart_secs = restarted.elapsed().as_secs_f64();
    ensure!(t2["state"] == "aborted", "tpc2-1: {}", t2["state"]);
    ensure!(
        d.effects("tpc2-1").await? == [0, 0, 0],
        "tpc2-1 aborted, yet effects are visible"
    );
    d.say(&format!(
        "   tpc2-1: finished by the restarted orch-2pc after {:.1} s (presumed abort): \
         blocked for {:.1} s in all",
        report.two_pc_after_restart_secs,
        crashed.elapsed().as_secs_f64()
    ));
    let t3 = d.settled(O3PC, id3).await?;
    d.committed_everywhere(&t3, "tpc3-1").await?;
    d.say("   tpc3-1: the restarted orch-3pc finds it committed by its participants");
    ensure!(d.stock().await? == 9, "stock is not 10 - 1 committed unit");
    Ok(())
}

fn demo(opts: Options) -> anyhow::Result<Demo> {
    let layout = &opts.layout;
    let mut ports = Vec::new();
    for _ in 0..5 {
        ports.push(launch::free_port()?);
    }
    let mut nodes: Vec<Node> = Vec::new();
    for (i, s) in SERVICES.iter().enumerate() {
        let env = launch::service_env(layout, s, ports[i], 3);
        nodes.push(node(s, s, ports[i], env));
    }
    let services = [0, 1, 2].map(|i| launch::loopback_url(ports[i]));
    for (i, name, db) in [
        (O2PC, "orch-2pc", "orchestrator"),
        (O3PC, "orch-3pc", "orchestrator_3pc"),
    ] {
        let mut env = launch::orchestrator_env(layout, ports[i], &services, name, 4);
        env.retain(|(k, _)| k != "DATABASE_URL");
        env.push(("DATABASE_URL".into(), layout.database_url(db)));
        env.push(("THREE_PC_TIMEOUT_MS".into(), TIMEOUT_MS.to_string()));
        env.push(("LEASE_TTL_MS".into(), "1500".into()));
        env.push(("POLL_INTERVAL_MS".into(), "100".into()));
        nodes.push(node(name, "orchestrator", ports[i], env));
    }
    Demo::from_nodes(opts, nodes)
}

/// Wait for orchestrator node `o` to die at its crash point: when it did.
async fn crash(d: &mut Demo, o: usize, point: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = d.nodes[o].proc.as_mut().context("the orchestrator runs")?;
        if p.exited().is_some() {
            ensure!(
                p.aborted(),
                "{} exited, but not at its crash point",
                d.nodes[o].name
            );
            return Ok(Instant::now());
        }
        ensure!(
            Instant::now() < deadline,
            "{} never reached {point}",
            d.nodes[o].name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The term every service's 3PC branch of `id` decided in, checked to be committed and the same
/// (≥ 1: a participant led the decision).
async fn terminated_by(d: &Demo, id: &str) -> anyhow::Result<u64> {
    let mut terms = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let v = d.get(format!("{}/3pc/{id}", d.url(i))).await?;
        let b = v["branches"]
            .as_array()
            .and_then(|b| b.first())
            .cloned()
            .unwrap_or(Value::Null);
        ensure!(b["state"] == "committed", "{service}: 3PC branch {b}");
        terms.push(b["term"].as_u64().unwrap_or(0));
    }
    let leader_term = terms.iter().copied().max().unwrap_or(0);
    ensure!(
        leader_term >= 1,
        "the branches decided in term 0 (the coordinator's), not by the termination protocol"
    );
    Ok(leader_term)
}

/// The age of the oldest prepared transaction over the three services, in ms.
async fn oldest_prepared_ms(d: &Demo) -> anyhow::Result<i64> {
    let mut oldest = 0;
    for i in 0..SERVICES.len() {
        let s = d.get(format!("{}/2pc/status", d.url(i))).await?;
        oldest = oldest.max(s["oldest_prepared_age_ms"].as_i64().unwrap_or(0));
    }
    Ok(oldest)
}
