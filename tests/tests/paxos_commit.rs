//! Paxos Commit over the real services: the scripted demo (`tandem commit demo paxos`,
//! `tandem_cli::paxos_demo`) run as a test on fresh databases — the real binaries (two
//! orchestrators, inventory, payment, shipping, three acceptors), the leader crashing after the
//! votes (another orchestrator finishes with a higher ballot), one acceptor down as well, two of
//! three down (it waits, undecided and invisible, then finishes when one returns). The demo
//! checks every step against the services' own records and fails naming the step; here its
//! report is checked too. Process logs: `<tmp>/tandem-tests/<prefix>/`.
//!
//! And a partition instead of crashes: two of three acceptors cut off from the leader for one
//! transaction by link faults (`/faults` on the acceptors and the orchestrator) — it waits,
//! safely, then commits when the links are healed.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::checkout_input;
use tandem_cli::paxos_demo::{databases, run};
use tandem_kit::auth::Role;
use tandem_tests::cluster::{Cluster, ClusterConfig};
use tandem_tests::faults::{self, FOREVER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paxos_commit_survives_the_leader_and_f_acceptors_and_waits_for_a_majority() {
    let (opts, _databases, log_dir) = tandem_tests::demo_options("paxos", databases);
    let report = run(opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (process logs in {})", log_dir.display()));
    // Both takeovers finished under a later lease epoch than the crashed leader's (1), so with
    // a higher ballot; the blocked transaction's leader kept starting rounds.
    assert_eq!(report.takeover_epochs.len(), 2, "{report:?}");
    assert!(report.takeover_epochs.iter().all(|e| *e >= 2), "{report:?}");
    assert!(report.rounds_while_blocked >= 2, "{report:?}");
}

/// Start the Paxos Commit checkout of `order` (one unit of `sku`) at `base`: its id.
async fn begin_paxos(http: &reqwest::Client, base: &str, order: &str, sku: &str) -> String {
    let input = checkout_input(order, sku, 1, "tok_visa", "FR");
    let r = http
        .post(format!("{base}/transactions"))
        .json(&json!({ "protocol": "paxos-commit", "definition": "checkout", "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    t["id"].as_str().unwrap().to_string()
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(&url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

/// Each service's committed records of `order` (reservations, payments, shipments) and how many
/// services hold transaction `id` prepared.
async fn services_of(cluster: &Cluster, order: &str, id: &str) -> ([usize; 3], usize) {
    let http = cluster.http(Role::Operator);
    let (mut effects, mut prepared) = ([0; 3], 0);
    for (i, path) in ["reservations", "payments", "shipments"].iter().enumerate() {
        let base = cluster.url(i);
        let rows = get(&http, format!("{base}/{path}?order_id={order}")).await;
        effects[i] = rows.as_array().map_or(0, Vec::len);
        let status = get(&http, format!("{base}/2pc/status")).await;
        let held = status["prepared"]
            .as_array()
            .is_some_and(|p| p.iter().any(|b| b["txn_id"] == id));
        prepared += usize::from(held);
    }
    (effects, prepared)
}

/// The real binaries with three acceptors and a quick leader (a ballot every 300 ms), stock of
/// `cut-sku` and `cut-sku-u`: the cluster and an operator's client.
async fn paxos_cluster() -> (Cluster, reqwest::Client) {
    let cfg = ClusterConfig::new("paxos_cut", 1)
        .acceptors(3)
        .quick_takeover()
        .env("PAXOS_PROGRESS_MS", "300");
    let mut cluster = Cluster::new(cfg);
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    for sku in ["cut-sku", "cut-sku-u"] {
        cluster.client(0).set_stock(sku, 10).await.unwrap();
    }
    let http = cluster.http(Role::Operator);
    (cluster, http)
}

/// Two of three acceptors cut off from the leader, both ways, for one transaction (faults at
/// the acceptors on what `orch-0` sends them, at `orch-0` on what they send it): the leader
/// keeps starting ballots and waits — undecided, every participant prepared, nothing visible,
/// queries answered 503 — while another transaction commits; healed, it commits, and the three
/// services agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_from_two_of_three_acceptors_waits_then_commits_when_healed() {
    let (mut cluster, http) = paxos_cluster().await;
    let orch = cluster.url(cluster.orchestrator(0));
    let (a1, a2) = (
        cluster.url(cluster.acceptor(1)),
        cluster.url(cluster.acceptor(2)),
    );
    // The cuts: (where, from whom). First on the whole links (the transaction's id is not known
    // before it begins), then for transaction T only.
    let cuts = [
        (a1.clone(), "orch-0"),
        (a2.clone(), "orch-0"),
        (orch.clone(), "acceptor-1"),
        (orch.clone(), "acceptor-2"),
    ];
    let cut = |from: &str, txn: Option<&str>| {
        let mut f = json!({ "from": from, "op": "all", "kind": "drop_request", "times": FOREVER });
        if let Some(t) = txn {
            f["txn_id"] = json!(t);
        }
        f
    };
    let mut links = Vec::new();
    for (base, from) in &cuts {
        links.push(faults::add(&http, base, cut(from, None)).await);
    }
    let t = begin_paxos(&http, &orch, "cut-t", "cut-sku").await;
    let mut scoped = Vec::new();
    for ((base, from), link) in cuts.iter().zip(&links) {
        scoped.push(faults::add(&http, base, cut(from, Some(&t))).await);
        let id = link["id"].as_str().unwrap();
        assert_eq!(faults::delete(&http, base, &format!("id={id}")).await, 1);
    }

    // Another transaction is not on the cut: it commits (another SKU: T holds cut-sku's row
    // locked, prepared, until it is decided).
    let u = begin_paxos(&http, &orch, "cut-u", "cut-sku-u").await;
    tandem_tests::eventually(Duration::from_secs(30), "U committed", || async {
        let v = get(&http, format!("{orch}/transactions/{u}")).await;
        (v["state"] == "committed").then_some(())
    })
    .await;

    // T waits: every participant prepared, the leader's ballots lost at acceptors 1 and 2 again
    // and again, no decision, nothing visible, a participant's query answered 503.
    tandem_tests::eventually(Duration::from_secs(30), "T prepared everywhere", || async {
        (services_of(&cluster, "cut-t", &t).await.1 == 3).then_some(())
    })
    .await;
    for (i, f) in scoped.iter().enumerate().take(2) {
        let base = &cuts[i].0;
        tandem_tests::eventually(Duration::from_secs(30), "the leader's ballots", || async {
            (faults::fired(&http, base, &f["id"]).await? >= 3).then_some(())
        })
        .await;
    }
    let v = get(&http, format!("{orch}/transactions/{t}")).await;
    assert_eq!(
        (v["state"].as_str(), &v["decision"]),
        (Some("preparing"), &Value::Null),
        "{v}"
    );
    assert_eq!(services_of(&cluster, "cut-t", &t).await, ([0, 0, 0], 3));
    let q = cluster
        .http(Role::Service)
        .get(format!("{orch}/transactions/{t}/decision"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 503, "no decision, none presumed");

    // Healed: the next ballot reaches a majority, and T commits in all three services.
    for (base, cuts_there) in [(&a1, 1), (&a2, 1), (&orch, 2)] {
        let healed = faults::delete(&http, base, &format!("txn_id={t}")).await;
        assert_eq!(healed, cuts_there);
    }
    both_committed(&cluster, &http, &orch, [&t, &u]).await;
    cluster.assert_all_running();
}

/// `t` (order `cut-t`) and `u` (`cut-u`) committed: all three effects each, nothing prepared,
/// one unit of `cut-sku` and one of `cut-sku-u` gone.
async fn both_committed(cluster: &Cluster, http: &reqwest::Client, orch: &str, [t, u]: [&str; 2]) {
    tandem_tests::eventually(Duration::from_secs(30), "T committed", || async {
        let v = get(http, format!("{orch}/transactions/{t}")).await;
        (v["state"] == "committed").then_some(())
    })
    .await;
    for (order, id) in [("cut-t", t), ("cut-u", u)] {
        tandem_tests::eventually(Duration::from_secs(30), "all three effects", || async {
            (services_of(cluster, order, id).await == ([1, 1, 1], 0)).then_some(())
        })
        .await;
    }
    for sku in ["cut-sku", "cut-sku-u"] {
        let stock = get(http, format!("{}/stock/{sku}", cluster.url(0))).await;
        assert_eq!(stock["available"], 9, "{sku}");
    }
}
