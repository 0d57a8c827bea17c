//! 3PC over the real services: the scripted demo (`tandem commit demo 3pc-unblocks`,
//! `tandem_cli::three_pc_demo`) run as a test on fresh databases — the real binaries (inventory,
//! payment, shipping, and two orchestrators on databases of their own). The coordinator
//! crashes after PreCommit: the 3PC participants time out, run the termination protocol and
//! commit in all three services without it; a 2PC coordinator crashing after the votes leaves
//! its participants blocked (prepared, nothing visible) until it returns. The demo checks
//! every step against the services' own records and fails naming the step; here its report
//! is checked too. Process logs: `<tmp>/tandem-tests/<prefix>/`.

use tandem_cli::three_pc_demo::{databases, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pc_participants_commit_without_their_coordinator_while_2pc_blocks() {
    let (opts, _databases, log_dir) = tandem_tests::demo_options("threepc", databases);
    let report = run(opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (process logs in {})", log_dir.display()));
    // A participant (term ≥ 1), not the coordinator (term 0), led the decision: the
    // termination protocol ran. (How long after the crash is reported, not asserted: the
    // participants' timers start at PreCommit, a little before the demo sees the crash, so the
    // seconds it measures can fall just under TIMEOUT_MS.)
    assert!(report.three_pc_term >= 1, "{report:?}");
    // 2PC stayed blocked for longer than 3PC needed to finish.
    assert!(
        report.two_pc_blocked_secs > report.three_pc_secs,
        "{report:?}"
    );
}

// ---------------------------------------------------------------- quorum-based 3PC (in process)

mod quorum {
    use reqwest::Method;
    use serde_json::{Value, json};
    use tandem_cli::client::{Client, checkout_input};
    use tandem_kit::auth::Role;
    use tandem_tests::TestStack;

    /// A fresh in-process stack with 10 `widget`s in stock.
    async fn start(name: &str) -> (TestStack, Client) {
        let (stack, c) = tandem_tests::in_process(name, |_| {}).await;
        assert_eq!(c.set_stock("widget", 10).await.unwrap().status, 200);
        (stack, c)
    }

    /// A checkout as one quorum 3PC transaction, waiting up to 20 s for it to settle.
    async fn checkout(c: &Client, order: &str, card: &str, country: &str) -> Value {
        checkout_of(c, order, 2, card, country).await
    }

    /// [`checkout`] of `qty` widgets.
    async fn checkout_of(c: &Client, order: &str, qty: i64, card: &str, country: &str) -> Value {
        let input = checkout_input(order, "widget", qty, card, country);
        let body = json!({ "protocol": "3pc-quorum", "definition": "checkout", "input": input });
        let url = format!("{}/transactions?wait=20", c.orchestrator);
        let r = c.send_json(Method::POST, &url, &body).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    /// (reservations, payments, shipments) of `order`.
    async fn effects(c: &Client, order: &str) -> [usize; 3] {
        [
            c.reservations(order).await.unwrap().len(),
            c.payments(order).await.unwrap().len(),
            c.shipments(order).await.unwrap().len(),
        ]
    }

    /// Each service's branch of `id` (its `GET /3pc/{id}`), in the leader order.
    async fn branches(c: &Client, id: &Value) -> Vec<Value> {
        let id = id.as_str().unwrap();
        let mut out = vec![];
        for url in [&c.inventory, &c.payment, &c.shipping] {
            let r = c.get(&format!("{url}/3pc/{id}")).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            out.push(r.body["branches"][0].clone());
        }
        out
    }

    async fn nothing_prepared(c: &Client) {
        for url in [&c.inventory, &c.payment, &c.shipping] {
            let r = c.get(&format!("{url}/2pc/status")).await.unwrap();
            assert_eq!(r.body["prepared"], json!([]), "{url}: {}", r.body);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quorum_3pc_checkout_commits_in_all_three_services() {
        let (stack, c) = start("tpc3q_commit").await;
        let t = checkout(&c, "q-1", "tok_visa", "FR").await;
        assert_eq!(t["state"], "committed", "{t}");
        assert_eq!(t["protocol"], "3pc-quorum", "{t}");
        assert_eq!(effects(&c, "q-1").await, [1, 1, 1]);
        assert_eq!(c.stock("widget").await.unwrap()["available"], 8);
        for b in branches(&c, &t["id"]).await {
            assert_eq!(b["protocol"], "3pc-quorum", "{b}");
            assert_eq!(b["state"], "committed", "{b}");
            assert_eq!(b["prepared"], false, "{b}");
        }
        // The coordinator's message log speaks the quorum core's messages.
        let kinds: Vec<&str> = t["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["kind"].as_str())
            .collect();
        for k in ["3pcq_can_commit", "3pcq_pre_commit", "3pcq_do_commit"] {
            assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
        }
        nothing_prepared(&c).await;

        // Quorums that do not intersect are refused at the participant (422, nothing kept).
        let peers = [&c.inventory, &c.payment, &c.shipping].map(|u| u.to_string());
        let txn = uuid::Uuid::now_v7();
        let env = json!({
            "txn_id": txn, "to": 0, "n": 3, "from": {"Coordinator": 0}, "msg": null,
            "setup": {
                "action": "/reservations",
                "body": {"order_id": "q-bad", "sku": "widget", "qty": 1},
                "coordinator_url": c.orchestrator, "peers": peers, "timeout_ms": 1000,
                "quorums": {"commit": 1, "abort": 2}
            }
        });
        let url = format!("{}/3pc-quorum/msg", c.inventory);
        let r = stack
            .http(Role::Service)
            .post(&url)
            .json(&env)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["pointer"], "/setup/quorums", "{body}");
        let r = c.get(&format!("{}/3pc/{txn}", c.inventory)).await.unwrap();
        assert_eq!(r.body["branches"], json!([]), "{}", r.body);
        stack.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_no_vote_aborts_a_quorum_3pc_checkout_everywhere() {
        let (stack, c) = start("tpc3q_abort").await;
        // Payment votes NO (declined card).
        let t = checkout(&c, "q-2", "tok_decline", "FR").await;
        assert_eq!(t["state"], "aborted", "{t}");
        assert_eq!(t["decision"], "abort", "{t}");
        assert_eq!(effects(&c, "q-2").await, [0, 0, 0]);
        assert_eq!(c.stock("widget").await.unwrap()["available"], 10);
        let parts = t["participants"].as_array().unwrap();
        assert!(parts.iter().any(|p| p["vote"] == "no"), "{t}");
        for b in branches(&c, &t["id"]).await {
            // A branch that never voted may have no row; one that did is aborted.
            assert!(b.is_null() || b["state"] == "aborted", "{b}");
        }
        // Shipping votes NO (undeliverable): the same.
        let t = checkout(&c, "q-3", "tok_visa", "ZZ").await;
        assert_eq!(t["state"], "aborted", "{t}");
        assert_eq!(effects(&c, "q-3").await, [0, 0, 0]);
        assert_eq!(c.stock("widget").await.unwrap()["available"], 10);
        // Inventory — participant 0, the initiator — votes NO (short of stock): it aborts
        // alone and sends nothing; the coordinator's timer on it aborts the transaction.
        let t = checkout_of(&c, "q-4", 50, "tok_visa", "FR").await;
        assert_eq!(t["state"], "aborted", "{t}");
        assert_eq!(effects(&c, "q-4").await, [0, 0, 0]);
        assert_eq!(c.stock("widget").await.unwrap()["available"], 10);
        nothing_prepared(&c).await;
        stack.stop().await.unwrap();
    }
}
