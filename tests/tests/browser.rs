//! The operators' console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, the `fantoccini` client). From the URL `tandem up` prints (the orchestrator's),
//! open the saga list, filter to compensated, open one and see its compensations in reverse
//! order, cancel a running saga and watch it compensate, resume a failed one and watch it
//! finish; then the transactions list (filtered to aborted) and one committed 2PC transaction's
//! page, and the definitions page with every version of a definition. Screenshots of the main
//! pages go to `docs/img/` (the README and docs use them).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/steps` installs them): skipped without
//! them outside CI, a failure with `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::{eventually, in_process_with_auth, saga_reaches, start};

/// The compensation nodes of a saga's page, in the order shown (the order they ran).
const COMPS: &str =
    "[...document.querySelectorAll('#compensations .node.comp')].map(n => n.dataset.step)";
/// The status badge of a saga's page.
const STATUS: &str = "document.querySelector('#saga-status .badge').dataset.status";

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver and chromium, or None (outside CI) when they are not installed.
fn browser_binaries() -> Option<()> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let msg = format!(
        "the browser test needs {} (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipped: {msg}");
    None
}

async fn start_driver() -> Driver {
    let port = tandem_tests::procs::free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let d = Driver { child, url };
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), "chromedriver ready", || {
        let http = http.clone();
        let url = format!("{}/status", d.url);
        async move {
            http.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    d
}

async fn open_browser(driver: &Driver, profile: &Path) -> Browser {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": CHROMIUM, "args": args }),
    );
    ClientBuilder::rustls()
        .expect("a TLS config")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// The value of the JavaScript expression `expr` in the page.
async fn js(b: &Browser, expr: &str) -> Value {
    b.execute(&format!("return ({expr});"), vec![])
        .await
        .expect("script runs")
}

/// Wait until the page's `expr` equals `want` (at most 30 s); panics with the last value.
async fn until(b: &Browser, what: &str, expr: &str, want: Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = js(b, expr).await;
        if got == want {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let page = js(b, "document.getElementById('view').innerText").await;
            panic!("{what}: {expr} is {got}, not {want}; the page shows:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Click the element `css`.
async fn click(b: &Browser, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Show the console's route `hash` (same page: the console routes on the fragment).
async fn open(b: &Browser, hash: &str) {
    js(b, &format!("location.hash = {}", json!(hash))).await;
}

fn img_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
    std::fs::create_dir_all(&dir).expect("docs/img");
    dir
}

async fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot().await.expect("a screenshot");
    std::fs::write(img_dir().join(name), png).expect("writing the screenshot");
}

/// A saga of every kind the console shows: completed, compensated (a declined card), running
/// (a slow shipment, to cancel) and failed (a refund out of budget, to resume).
async fn sagas(c: &Client) -> (String, String, String) {
    let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = json!("checkout-short-budget");
    def["policy"]["compensation_max_attempts"] = json!(2);
    let r = tandem_tests::post_definition(c, &def).await;
    assert_eq!(r.status, 201, "{}", r.body);
    c.set_stock("sku-ui", 100).await.unwrap();
    let ok = start(
        c,
        "checkout",
        &checkout_input("ui-ok", "sku-ui", 1, "tok_visa", "GB"),
    )
    .await;
    let declined = start(
        c,
        "checkout",
        &checkout_input("ui-declined", "sku-ui", 2, "tok_decline", "GB"),
    )
    .await;
    for id in [&ok, &declined] {
        c.settle(id, 30).await.unwrap();
    }
    c.add_fault(
        "payment",
        &json!({"order_id": "ui-failed", "op": "compensation", "kind": "transient", "times": 2}),
    )
    .await
    .unwrap();
    let failed_input = checkout_input("ui-failed", "sku-ui", 1, "tok_decline", "GB");
    let failed = start(c, "checkout-short-budget", &failed_input).await;
    let s = c.settle(&failed, 30).await.unwrap();
    assert_eq!(s["status"], "failed", "{}", demo::timeline(&s));
    // A shipment slower than the checkout's 5 s timeout would be retried and succeed: this
    // version waits a minute for it, so it stays in flight until cancelled.
    def["name"] = json!("checkout-patient");
    def["policy"]["timeout_ms"] = json!(60_000);
    let r = tandem_tests::post_definition(c, &def).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let fault =
        json!({"order_id": "ui-running", "op": "action", "kind": "latency", "latency_ms": 30_000});
    c.add_fault("shipping", &fault).await.unwrap();
    let input = checkout_input("ui-running", "sku-ui", 1, "tok_visa", "GB");
    let running = start(c, "checkout-patient", &input).await;
    saga_reaches(c, &running, "step_started", "create_shipment").await;
    (declined, running, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_filters_shows_cancels_and_resumes_sagas() {
    if browser_binaries().is_none() {
        return;
    }
    // Open (no tokens): this test is about the console's pages, not its token prompt (the
    // guard's answers are tests/tests/auth.rs').
    let (stack, c) =
        in_process_with_auth("browser", tandem_kit::auth::AuthConfig::default(), |_| {}).await;
    let (declined, running, failed) = sagas(&c).await;
    let (committed, aborted) = transactions(&c).await;
    let driver = start_driver().await;
    let profile = std::env::temp_dir().join(format!("tandem-chromium-{}", uuid::Uuid::now_v7()));
    let b = open_browser(&driver, &profile).await;

    // The URL `tandem up` prints leads to the console.
    b.goto(&stack.orchestrator_url).await.unwrap();
    until(
        &b,
        "the list",
        "document.querySelectorAll('#saga-rows tr').length",
        json!(4),
    )
    .await;
    screenshot(&b, "console-sagas.png").await;

    // Filter to compensated: only the declined checkout is left.
    b.find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("compensated")
        .await
        .unwrap();
    let rows = "[...document.querySelectorAll('#saga-rows tr')].map(r => r.dataset.saga)";
    until(&b, "the filter", rows, json!([declined])).await;
    assert!(
        b.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("status=compensated")
    );

    // Its page: the compensations ran in reverse order (the charge, then the reservation).
    b.find(Locator::Css(&format!("tr[data-saga='{declined}'] a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let comps = COMPS;
    until(
        &b,
        "compensations",
        comps,
        json!(["charge_payment", "reserve_inventory"]),
    )
    .await;
    until(
        &b,
        "status",
        "document.querySelector('#saga-status .badge').dataset.status",
        json!("compensated"),
    )
    .await;
    screenshot(&b, "console-saga.png").await;

    cancel_and_watch(&b, &c, &running).await;
    resume_and_watch(&b, &failed).await;

    transactions_pages(&b, &committed, &aborted).await;

    definitions_page(&b, &c, &failed).await;

    b.close().await.unwrap();
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    stack.stop().await.unwrap();
}

/// Cancel the running saga (its shipment call is in flight) through the confirmation; it
/// compensates every sent step in reverse order, and the log names the console's actor.
async fn cancel_and_watch(b: &Browser, c: &Client, running: &str) {
    let comps = COMPS;
    // Cancel the running saga (its shipment call is in flight), with the confirmation.
    open(b, &format!("#/saga/{running}")).await;
    until(
        b,
        "the cancel button",
        "!!document.getElementById('action-cancel')",
        json!(true),
    )
    .await;
    b.find(Locator::Css("#action-cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        b,
        "the confirmation",
        "document.getElementById('confirm').hidden",
        json!(false),
    )
    .await;
    screenshot(b, "console-confirm.png").await;
    click(b, "#confirm-yes").await;
    let status = STATUS;
    until(
        b,
        "the cancelled saga compensates",
        status,
        json!("compensated"),
    )
    .await;
    let comps_now = js(b, comps).await;
    assert_eq!(
        comps_now,
        json!(["create_shipment", "charge_payment", "reserve_inventory"])
    );
    let s = c.wait_saga(running, 0).await.unwrap();
    let cancelled = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "saga_cancelled");
    assert_eq!(
        cancelled.unwrap()["detail"]["by"],
        "dashboard",
        "{}",
        demo::timeline(&s)
    );
}

/// Resume the failed saga through the confirmation and watch it finish compensating.
async fn resume_and_watch(b: &Browser, failed: &str) {
    let status = STATUS;
    // Resume the failed saga and watch it finish compensating.
    open(b, &format!("#/saga/{failed}")).await;
    until(b, "a failed saga", status, json!("failed")).await;
    screenshot(b, "console-failed.png").await;
    click(b, "#action-resume").await;
    click(b, "#confirm-yes").await;
    until(b, "the resumed saga finishes", status, json!("compensated")).await;
}

/// A committed and an aborted (declined card) 2PC checkout: (committed id, aborted id).
async fn transactions(c: &Client) -> (String, String) {
    let mut ids = Vec::new();
    for (order, card, want) in [
        ("ui-2pc-ok", "tok_visa", "committed"),
        ("ui-2pc-declined", "tok_decline", "aborted"),
    ] {
        let input = checkout_input(order, "sku-ui", 1, card, "GB");
        let body = json!({ "protocol": "2pc", "definition": "checkout", "input": input });
        let url = format!("{}/transactions?wait=20", c.orchestrator);
        let r = c
            .send_json(reqwest::Method::POST, &url, &body)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["state"], want, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    // The list's protocol filter (what the page's select asks for).
    for (protocol, want) in [("2pc", 2), ("paxos-commit", 0)] {
        let url = format!("{}/transactions?protocol={protocol}", c.orchestrator);
        let r = c.get(&url).await.unwrap();
        assert_eq!(
            r.body["items"].as_array().map(Vec::len),
            Some(want),
            "{}",
            r.body
        );
    }
    (ids[0].clone(), ids[1].clone())
}

/// The Transactions page (shown because transactions exist): both listed, the state filter
/// leaves the aborted one; the committed one's page shows three YES votes, the decision and the
/// coordinator's log.
async fn transactions_pages(b: &Browser, committed: &str, aborted: &str) {
    until(
        b,
        "the Transactions link",
        "document.getElementById('nav-transactions').hidden",
        json!(false),
    )
    .await;
    click(b, "#nav-transactions").await;
    let rows = "[...document.querySelectorAll('#txn-rows tr')].map(r => r.dataset.txn)";
    until(b, "the transactions", rows, json!([aborted, committed])).await;
    screenshot(b, "console-transactions.png").await;
    b.find(Locator::Css("#filter-state"))
        .await
        .unwrap()
        .select_by_value("aborted")
        .await
        .unwrap();
    until(b, "the state filter", rows, json!([aborted])).await;
    open(b, &format!("#/transaction/{committed}")).await;
    let votes = "[...document.querySelectorAll('#txn-participants tr')].map(r => r.dataset.vote)";
    until(b, "three YES votes", votes, json!(["yes", "yes", "yes"])).await;
    until(
        b,
        "the decision",
        "document.getElementById('txn-decision').innerText.startsWith('commit at')",
        json!(true),
    )
    .await;
    let log = "[...document.querySelectorAll('#txn-messages tr')].map(r => r.dataset.kind)";
    let kinds = js(b, log).await;
    for kind in ["prepare", "vote", "commit"] {
        assert!(
            kinds.as_array().unwrap().iter().any(|k| k == kind),
            "the coordinator's log shows {kind}: {kinds}"
        );
    }
    screenshot(b, "console-transaction.png").await;
}

/// The definitions page draws every version's steps and compensations: a second version of
/// checkout-short-budget (the failed saga stays on the first) makes two, the newer current.
async fn definitions_page(b: &Browser, c: &Client, failed: &str) {
    // The definitions page draws every version's steps and compensations: a second version of
    // checkout-short-budget (the failed saga stays on the first) makes two, the newer current.
    let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = json!("checkout-short-budget");
    def["policy"]["compensation_max_attempts"] = json!(3);
    let r = tandem_tests::post_definition(c, &def).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_version = r.body["version"].as_str().unwrap().to_string();
    open(b, "#/definitions").await;
    let versions = "[...document.querySelectorAll(\"[data-definition='checkout-short-budget'] .version\")]\
                    .map(v => [v.dataset.version, v.dataset.current, v.querySelectorAll('.node.comp').length])";
    let old_version = c.wait_saga(failed, 0).await.unwrap()["version"].clone();
    until(
        b,
        "both versions, newest first, each with its three compensations",
        versions,
        json!([[new_version, "true", 3], [old_version, "false", 3]]),
    )
    .await;
    js(
        b,
        "document.querySelector(\"[data-definition='checkout-short-budget']\").scrollIntoView()",
    )
    .await;
    screenshot(b, "console-definitions.png").await;
}
