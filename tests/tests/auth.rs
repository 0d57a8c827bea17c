//! Bearer tokens and roles (docs/security.md) on the real stack: the orchestrator and the three
//! services in-process with tokens configured, real Postgres, fresh databases.

use reqwest::Method;
use serde_json::{Value, json};
use tandem_cli::client::{Reply, checkout_input};
use tandem_kit::auth::{AuthConfig, Role};
use tandem_tests::in_process_with_auth;

const CLIENT: &str = "test-client-token-4f1c2a";
const OPERATOR: &str = "test-operator-token-9b7e3d";
const SERVICE: &str = "test-service-token-2d8a61";

fn tokens() -> AuthConfig {
    AuthConfig::with_tokens([
        (Role::Client, CLIENT),
        (Role::Operator, OPERATOR),
        (Role::Service, SERVICE),
    ])
}

/// Status of `method url` with `token` (none: no Authorization header), checking that every
/// refusal is problem+json and that a 401 challenges for a bearer token.
async fn status(method: Method, url: &str, token: Option<&str>, body: Option<&Value>) -> u16 {
    let http = reqwest::Client::new();
    let mut req = http.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    if s == 401 || s == 403 {
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct, "application/problem+json", "{method} {url}");
        if s == 401 {
            let challenge = r.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], s, "{v}");
    }
    s
}

/// Representative routes of the orchestrator and a service, each called with no token and
/// with a client, an operator and a service token.
async fn check_routes(stack: &tandem_cli::launch::stack::Stack) {
    let o = &stack.orchestrator_url;
    let inv = &stack.inventory_url;
    let pay = &stack.payment_url;
    let def = json!({"name": "x", "steps": []});
    let reserve = json!({"order_id": "o-auth", "items": [{"sku": "s", "quantity": 1}]});
    for (method, url, body, want) in [
        // orchestrator: open, client, operator, service routes
        (
            Method::GET,
            format!("{o}/healthz"),
            None,
            [200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("{o}/sagas"),
            None,
            [401, 200, 200, 403],
        ),
        (
            Method::POST,
            format!("{o}/definitions"),
            Some(&def),
            [401, 403, 422, 403],
        ),
        (
            Method::GET,
            format!("{o}/metrics"),
            None,
            [401, 403, 200, 403],
        ),
        (
            Method::GET,
            format!("{o}/transactions/{}/decision", uuid::Uuid::now_v7()),
            None,
            // an unknown transaction: presumed abort
            [401, 403, 200, 200],
        ),
        // a service: open, client reads, operator seeding, service-only saga actions
        (
            Method::GET,
            format!("{inv}/healthz"),
            None,
            [200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("{pay}/payments?order_id=x"),
            None,
            [401, 200, 200, 403],
        ),
        (
            Method::PUT,
            format!("{inv}/stock/auth-sku"),
            Some(&json!({"available": 5})),
            [401, 403, 200, 403],
        ),
        (
            Method::POST,
            format!("{inv}/reservations"),
            Some(&reserve),
            [401, 403, 403, 400],
        ),
        (
            Method::GET,
            format!("{inv}/faults"),
            None,
            [401, 403, 200, 403],
        ),
    ] {
        for (token, want) in [None, Some(CLIENT), Some(OPERATOR), Some(SERVICE)]
            .into_iter()
            .zip(want)
        {
            let got = status(method.clone(), &url, token, body).await;
            assert_eq!(got, want, "{method} {url} with {token:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_its_routes_and_a_checkout_completes_with_service_tokens() {
    let (stack, anonymous) = in_process_with_auth("auth", tokens(), |_| {}).await;
    let operator = anonymous.clone().with_token(OPERATOR);
    let client = anonymous.clone().with_token(CLIENT);
    check_routes(&stack).await;
    let o = &stack.orchestrator_url;
    // A token that is not one of ours is a 401 too.
    assert_eq!(
        status(
            Method::GET,
            &format!("{o}/sagas"),
            Some("x".repeat(24).as_str()),
            None
        )
        .await,
        401
    );

    // The checkout: a client starts it, the orchestrator's calls carry its service token (the
    // services refuse anything else on their action routes), so it completes.
    let seeded = operator.set_stock("auth-sku", 5).await.unwrap();
    assert_eq!(seeded.status, 200, "{}", seeded.body);
    let input = checkout_input("auth-1", "auth-sku", 2, "tok_visa", "GB");
    let started: Reply = client.start_saga("checkout", &input, None).await.unwrap();
    assert_eq!(started.status, 201, "{}", started.body);
    let id = started.body["id"].as_str().unwrap().to_string();
    let saga = client.settle(&id, 60).await.unwrap();
    assert_eq!(saga["status"], "completed", "{saga}");
    assert_eq!(operator.stock("auth-sku").await.unwrap()["available"], 3);
    assert_eq!(client.payments("auth-1").await.unwrap().len(), 1);
    // Without a token the same client reads nothing.
    assert!(anonymous.wait_saga(&id, 0).await.is_err());

    stack.stop().await.unwrap();
}

/// Without tokens a server refuses a non-loopback address, naming the setting, and serves
/// nothing; with tokens the same address is fine.
#[tokio::test]
async fn open_servers_refuse_non_loopback_addresses() {
    let db = tandem_kit::testing::fresh_database("auth-bind").await;
    let orch_db = tandem_kit::testing::fresh_database("auth-bind-o").await;
    let config = tandem_kit::service::Config::with_database(db.first_url());
    let app = tandem_kit::service::build(&inventory::SPEC, config.clone())
        .await
        .unwrap();
    let exposed = tandem_kit::http::bind(([0, 0, 0, 0], 0).into())
        .await
        .unwrap();
    let e = app
        .run(exposed, std::future::pending())
        .await
        .expect_err("an open server on 0.0.0.0 must not start")
        .to_string();
    assert!(e.contains("TANDEM_TOKENS") && e.contains("0.0.0.0"), "{e}");

    let mut oc = orchestrator::Config::new(orch_db.first_url(), "http://x", "http://x", "http://x");
    oc.db_pool_size = 2;
    oc.auth = AuthConfig::default();
    let orch = orchestrator::build(oc.clone()).await.unwrap();
    let exposed = tandem_kit::http::bind(([0, 0, 0, 0], 0).into())
        .await
        .unwrap();
    let e = orch
        .run(exposed, std::future::pending())
        .await
        .expect_err("an open orchestrator on 0.0.0.0 must not start")
        .to_string();
    assert!(e.contains("TANDEM_TOKENS"), "{e}");

    // With tokens it serves there (and stops when told).
    let protected = tandem_kit::service::build(&inventory::SPEC, config.with_auth(tokens()))
        .await
        .unwrap();
    let exposed = tandem_kit::http::bind(([0, 0, 0, 0], 0).into())
        .await
        .unwrap();
    let port = exposed.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(protected.run(exposed, async {
        let _ = rx.await;
    }));
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let _ = tx.send(());
    served.await.unwrap().unwrap();
}

/// The harness's default stack (what every other test runs on) has tokens of its own: nothing
/// is served without one, its client sends the operator's, and each role keeps to its routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_stack_runs_with_tokens_of_its_own() {
    let (stack, c) = tandem_tests::in_process("authdefault", |_| {}).await;
    let sagas = format!("{}/sagas", stack.orchestrator_url);
    let faults = format!("{}/faults", stack.inventory_url);
    assert_eq!(status(Method::GET, &sagas, None, None).await, 401);
    let t = stack.tokens().clone();
    assert_eq!(
        status(Method::GET, &sagas, Some(&t.client), None).await,
        200
    );
    assert_eq!(
        status(Method::GET, &sagas, Some(&t.service), None).await,
        403
    );
    assert_eq!(
        status(Method::GET, &faults, Some(&t.client), None).await,
        403
    );
    assert_eq!(
        status(Method::GET, &faults, Some(&t.operator), None).await,
        200
    );
    // The returned client is the operator: it may read faults and seed stock.
    let r = c.get(&faults).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.set_stock("auth-default", 1).await.unwrap().status, 200);
    // `http(role)` sends that role's token.
    let r = stack.http(Role::Client).get(&faults).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = stack.operator().get(&faults).send().await.unwrap();
    assert_eq!(r.status(), 200);
    stack.stop().await.unwrap();
}
