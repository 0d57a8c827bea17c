//! Message faults between named nodes, applied by the receiver (`POST /faults` with `from`):
//! a `drop_request` is never handled (no effect, no record), a `drop_reply` is handled and
//! committed and only its answer is lost — on a saga call and on a 2PC prepare — and a 2PC
//! transaction stays all-or-nothing under either, in the prepare and in the commit phase.
//! With the real binaries: the link from an in-doubt participant to the coordinator cut at the
//! orchestrator for one transaction — the participant keeps asking and decides nothing, another
//! transaction's query gets through; healed, it finishes.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::checkout_input;
use tandem_kit::auth::Role;
use tandem_tests::TestStack;
use tandem_tests::cluster::{Cluster, ClusterConfig};
use tandem_tests::faults::{self, FOREVER};

/// The stack's orchestrator names itself this (`NODE_NAME`).
const ORCH: &str = "orch-links";

async fn start(name: &str) -> (TestStack, reqwest::Client) {
    let (stack, _) = tandem_tests::in_process(name, |c| c.node_name = ORCH.to_string()).await;
    let http = stack.operator();
    let r = http
        .put(format!("{}/stock/widget", stack.inventory_url))
        .json(&json!({ "available": 10 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // The checkout with a 3 s vote deadline, so a lost prepare aborts quickly.
    let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = json!("checkout_links");
    def["policy"]["deadline_ms"] = json!(3000);
    def["policy"]["timeout_ms"] = json!(1000);
    let r = http
        .post(format!("{}/definitions", stack.orchestrator_url))
        .json(&def)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    (stack, http)
}

async fn fault(http: &reqwest::Client, base: &str, spec: Value) -> Value {
    let r = http
        .post(format!("{base}/faults"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{spec}");
    r.json().await.unwrap()
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(&url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

/// Rows each service's audit lists for `order`: [reservations, payments, shipments].
async fn effects(http: &reqwest::Client, stack: &TestStack, order: &str) -> [usize; 3] {
    let mut n = [0; 3];
    for (i, (base, path)) in [
        (&stack.inventory_url, "reservations"),
        (&stack.payment_url, "payments"),
        (&stack.shipping_url, "shipments"),
    ]
    .into_iter()
    .enumerate()
    {
        let rows = get(http, format!("{base}/{path}?order_id={order}")).await;
        n[i] = rows.as_array().map_or(0, Vec::len);
    }
    n
}

/// POST a reservation as node `from` (with the service token: `http`): the status, or None
/// when no answer came back.
async fn reserve(http: &reqwest::Client, base: &str, from: &str, order: &str) -> Option<u16> {
    let r = http
        .post(format!("{base}/reservations"))
        .header("Tandem-Sender", from)
        .header("Idempotency-Key", format!("saga-{order}:0:action"))
        .json(
            &json!({ "order_id": order, "items": [{ "sku": "widget", "quantity": 1 }],
                       "reservation_id": uuid::Uuid::now_v7() }),
        )
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            // A lost answer may show its head (503) and then fail in the body.
            r.bytes().await.ok().map(|_| status)
        }
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_request_is_never_handled_and_drop_reply_loses_only_the_answer() {
    let (stack, http) = start("links_saga").await;
    let inv = stack.inventory_url.clone();
    for (order, kind) in [("l-req", "drop_request"), ("l-rep", "drop_reply")] {
        fault(
            &http,
            &inv,
            json!({ "order_id": order, "from": ORCH, "to": "inventory",
                                   "op": "action", "kind": kind }),
        )
        .await;
    }
    // Another sender's message is not on the faulted link.
    assert_eq!(
        reserve(
            &stack.http(tandem_kit::auth::Role::Service),
            &inv,
            "someone-else",
            "l-other"
        )
        .await,
        Some(201)
    );

    let lost = reserve(
        &stack.http(tandem_kit::auth::Role::Service),
        &inv,
        ORCH,
        "l-req",
    )
    .await;
    assert!(matches!(lost, None | Some(503)), "{lost:?}");
    assert_eq!(effects(&http, &stack, "l-req").await[0], 0, "never handled");

    let lost = reserve(
        &stack.http(tandem_kit::auth::Role::Service),
        &inv,
        ORCH,
        "l-rep",
    )
    .await;
    assert!(matches!(lost, None | Some(503)), "{lost:?}");
    assert_eq!(
        effects(&http, &stack, "l-rep").await[0],
        1,
        "handled, answer lost"
    );
    // The resend gets the stored outcome: still one reservation.
    assert_eq!(
        reserve(
            &stack.http(tandem_kit::auth::Role::Service),
            &inv,
            ORCH,
            "l-rep"
        )
        .await,
        Some(201)
    );
    assert_eq!(effects(&http, &stack, "l-rep").await[0], 1);
    let available = get(&http, format!("{inv}/stock/widget")).await["available"].clone();
    assert_eq!(available, 8, "l-other and l-rep hold one each");
    stack.stop().await.unwrap();
}

/// Run the 2PC checkout of `order` and wait for its end: the transaction.
async fn run_2pc(http: &reqwest::Client, stack: &TestStack, order: &str) -> Value {
    let input = checkout_input(order, "widget", 2, "tok_visa", "FR");
    let r = http
        .post(format!("{}/transactions?wait=20", stack.orchestrator_url))
        .json(&json!({ "protocol": "2pc", "definition": "checkout_links", "input": input }))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// The action inventory's branch of the transaction was prepared for (`tpc_branch.action`):
/// None when inventory never handled a prepare of it (no row, or the tombstone of an abort).
async fn inventory_prepare_seen(stack: &TestStack, txn: &Value) -> Option<String> {
    let url = stack.layout.database_url("inventory");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let txn_id: uuid::Uuid = txn["id"].as_str().unwrap().parse().unwrap();
    let action: Option<Option<String>> =
        sqlx::query_scalar("SELECT action FROM tpc_branch WHERE txn_id = $1")
            .bind(txn_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
    pool.close().await;
    action.flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_2pc_messages_keep_the_transaction_all_or_nothing() {
    let (stack, http) = start("links_2pc").await;
    let inv = stack.inventory_url.clone();

    // Prepare phase: every prepare of the order to inventory is lost (until the vote deadline).
    for (order, kind) in [("p-req", "drop_request"), ("p-rep", "drop_reply")] {
        fault(
            &http,
            &inv,
            json!({ "order_id": order, "from": ORCH, "op": "prepare",
                                   "kind": kind, "times": 1000 }),
        )
        .await;
        let t = run_2pc(&http, &stack, order).await;
        assert_eq!(t["state"], "aborted", "{kind}: {t}");
        assert_eq!(
            effects(&http, &stack, order).await,
            [0, 0, 0],
            "{kind}: {t}"
        );
        let seen = inventory_prepare_seen(&stack, &t).await;
        match kind {
            // Never handled: no prepare on record (the abort leaves a tombstone at most).
            "drop_request" => assert_eq!(seen, None),
            // Handled: prepared (its vote lost), then rolled back by the abort.
            _ => assert_eq!(seen.as_deref(), Some("/reservations")),
        }
    }

    // Commit phase: the first COMMIT to payment is lost, either way; the resend finishes it.
    let pay = stack.payment_url.clone();
    for (order, kind) in [("c-req", "drop_request"), ("c-rep", "drop_reply")] {
        let f = fault(
            &http,
            &pay,
            json!({ "from": ORCH, "op": "commit", "kind": kind }),
        )
        .await;
        let t = run_2pc(&http, &stack, order).await;
        assert_eq!(t["state"], "committed", "{kind}: {t}");
        tandem_tests::eventually(Duration::from_secs(20), "all three effects", || async {
            (effects(&http, &stack, order).await == [1, 1, 1]).then_some(())
        })
        .await;
        let faults = get(&http, format!("{pay}/faults")).await;
        let fired = faults
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == f["id"])
            .unwrap();
        assert_eq!(fired["remaining"], 0, "the fault fired: {faults}");
    }
    tandem_tests::eventually(
        Duration::from_secs(20),
        "no prepared transaction",
        || async {
            let mut left = 0;
            for url in [
                &stack.inventory_url,
                &stack.payment_url,
                &stack.shipping_url,
            ] {
                left += get(&http, format!("{url}/2pc/status")).await["prepared"]
                    .as_array()
                    .map_or(0, Vec::len);
            }
            (left == 0).then_some(())
        },
    )
    .await;
    let available = get(&http, format!("{inv}/stock/widget")).await["available"].clone();
    assert_eq!(available, 6, "two committed checkouts of 2");
    stack.stop().await.unwrap();
}

/// Payment's committed effects of `order` and whether it holds transaction `id` prepared.
async fn payment_side(http: &reqwest::Client, pay: &str, order: &str, id: &str) -> (usize, bool) {
    let rows = get(http, format!("{pay}/payments?order_id={order}")).await;
    let status = get(http, format!("{pay}/2pc/status")).await;
    let prepared = status["prepared"]
        .as_array()
        .is_some_and(|p| p.iter().any(|b| b["txn_id"] == id));
    (rows.as_array().map_or(0, Vec::len), prepared)
}

/// Start the 2PC checkout of `order` (one unit) at `base`: the transaction's id.
async fn begin_2pc(http: &reqwest::Client, base: &str, order: &str) -> String {
    let input = checkout_input(order, "q-sku", 1, "tok_visa", "FR");
    let r = http
        .post(format!("{base}/transactions"))
        .json(&json!({ "protocol": "2pc", "definition": "checkout", "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    t["id"].as_str().unwrap().to_string()
}

/// The real binaries, participants in doubt after 300 ms (they ask often), stock of `q-sku`:
/// the cluster, an operator's client, the orchestrator's and payment's URLs.
async fn query_cluster() -> (Cluster, reqwest::Client, String, String) {
    let mut cluster = Cluster::new(ClusterConfig::new("links_query", 1).quick_takeover());
    cluster.env_all("TPC_IN_DOUBT_AFTER_MS", "300");
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    cluster.client(0).set_stock("q-sku", 10).await.unwrap();
    let http = cluster.http(Role::Operator);
    let (orch, pay) = (
        cluster.url(cluster.orchestrator(0)),
        cluster.url(cluster.service("payment")),
    );
    (cluster, http, orch, pay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_query_link_keeps_the_participant_in_doubt_until_healed() {
    let (mut cluster, http, orch, pay) = query_cluster().await;
    // Payment never hears the coordinator's COMMIT (a cut at payment, every transaction): once
    // prepared it is in doubt, and only its own query can finish it.
    let commit_cut = json!({ "from": "orch-0", "to": "payment", "op": "commit",
                             "kind": "drop_request", "times": FOREVER });
    faults::add(&http, &pay, commit_cut).await;
    // Its queries are lost at the orchestrator: first on the whole link (the transaction's id is
    // not known before it begins), then for transaction T only.
    let query_cut = |scope: Value| {
        let mut f = json!({ "from": "payment", "to": "orch-0", "op": "query",
                            "kind": "drop_request", "times": FOREVER });
        if let Some(t) = scope.as_str() {
            f["txn_id"] = json!(t);
        }
        f
    };
    let link = faults::add(&http, &orch, query_cut(Value::Null)).await;
    let t = begin_2pc(&http, &orch, "q-t").await;
    let cut = faults::add(&http, &orch, query_cut(json!(t))).await;
    assert_eq!(
        faults::delete(
            &http,
            &orch,
            &format!("id={}", link["id"].as_str().unwrap())
        )
        .await,
        1
    );

    // T commits in the log; inventory and shipping apply it; payment keeps asking and is
    // never answered, so it holds T prepared — nothing visible, nothing decided on its own.
    let view = |id: String| {
        let (http, orch) = (http.clone(), orch.clone());
        async move { get(&http, format!("{orch}/transactions/{id}")).await }
    };
    tandem_tests::eventually(Duration::from_secs(30), "T decided", || async {
        (view(t.clone()).await["decision"] == "commit").then_some(())
    })
    .await;
    tandem_tests::eventually(Duration::from_secs(30), "payment asking", || async {
        (faults::fired(&http, &orch, &cut["id"]).await? >= 3).then_some(())
    })
    .await;
    assert_eq!(payment_side(&http, &pay, "q-t", &t).await, (0, true));
    assert_eq!(effects_of(&cluster, &http, "q-t").await, [1, 0, 1]);
    assert_eq!(view(t.clone()).await["state"], "committing");

    // The cut is T's alone: U, in doubt at payment the same way, is finished by its query.
    let u = begin_2pc(&http, &orch, "q-u").await;
    tandem_tests::eventually(
        Duration::from_secs(30),
        "U finished by its query",
        || async { (payment_side(&http, &pay, "q-u", &u).await == (1, false)).then_some(()) },
    )
    .await;
    assert_eq!(payment_side(&http, &pay, "q-t", &t).await, (0, true));

    // Healed: payment's next query is answered, and it commits T.
    assert_eq!(
        faults::delete(&http, &orch, &format!("txn_id={t}")).await,
        1
    );
    tandem_tests::eventually(
        Duration::from_secs(30),
        "T finished by its query",
        || async { (payment_side(&http, &pay, "q-t", &t).await == (1, false)).then_some(()) },
    )
    .await;
    // The coordinator's COMMIT gets through again: both transactions settle, all three effects.
    faults::delete(&http, &pay, "from=orch-0").await;
    for id in [&t, &u] {
        tandem_tests::eventually(Duration::from_secs(30), "committed", || async {
            (view(id.clone()).await["state"] == "committed").then_some(())
        })
        .await;
    }
    for order in ["q-t", "q-u"] {
        assert_eq!(
            effects_of(&cluster, &http, order).await,
            [1, 1, 1],
            "{order}"
        );
    }
    let stock = get(&http, format!("{}/stock/q-sku", cluster.url(0))).await;
    assert_eq!(stock["available"], 8);
    cluster.assert_all_running();
}

/// [`effects`] on a cluster.
async fn effects_of(cluster: &Cluster, http: &reqwest::Client, order: &str) -> [usize; 3] {
    let mut n = [0; 3];
    for (i, path) in ["reservations", "payments", "shipments"].iter().enumerate() {
        let rows = get(http, format!("{}/{path}?order_id={order}", cluster.url(i))).await;
        n[i] = rows.as_array().map_or(0, Vec::len);
    }
    n
}
