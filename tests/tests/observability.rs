//! `/metrics` and traces. The metrics test is the only in-process stack in this binary (the
//! recorder is one per process, so the counters it reads move only by its own checkouts); the
//! trace test runs the real binaries, each exporting to an OTLP receiver the test starts.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_cli::client::checkout_input;
use tandem_kit::auth::Role;
use tandem_tests::{eventually, in_process};

/// `/metrics` of `base`, as text.
async fn scrape(c: &tandem_cli::client::Client, base: &str) -> String {
    let resp = c
        .http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    resp.text().await.unwrap()
}

/// One sample line: name and labels.
fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    Some((name.to_string(), labels, value))
}

/// The sum of the samples of `name` whose labels include `want` (0 if none).
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_line)
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// What moved between two scrapes.
struct Delta {
    before: String,
    after: String,
}

impl Delta {
    fn of(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        value(&self.after, name, want) - value(&self.before, name, want)
    }
}

/// One checkout that completes and one whose card is declined: the saga, step, HTTP and pool
/// metrics move by exactly what the two did, labelled by route templates and names, never ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_checkout() {
    let (stack, c) = in_process("metrics", |_| {}).await;
    c.set_stock("metrics-widget", 10).await.unwrap();
    let before = scrape(&c, &c.orchestrator).await;
    let mut ids = Vec::new();
    for (order, card, status) in [
        ("m-ok", "tok_visa", "completed"),
        ("m-declined", "tok_decline", "compensated"),
    ] {
        let r = c
            .start_saga(
                "checkout",
                &checkout_input(order, "metrics-widget", 1, card, "GB"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        let saga = c.settle(&id, 60).await.unwrap();
        assert_eq!(saga["status"], status, "{saga}");
        ids.push(id);
    }
    // A saga's task leaves the in-flight set just after its final state is written.
    let after = eventually(Duration::from_secs(10), "no saga in flight", || async {
        let text = scrape(&c, &c.orchestrator).await;
        (value(&text, "tandem_runs_in_flight", &[("kind", "sagas")]) == 0.0).then_some(text)
    })
    .await;
    let d = Delta { before, after };
    assert_saga_metrics(&d);
    assert_http_and_pool_metrics(&stack, &c, &d, &ids).await;
    stack.stop().await.unwrap();
}

/// The saga, step and batch metrics of [`metrics_count_a_checkout`].
fn assert_saga_metrics(d: &Delta) {
    let def = ("definition", "checkout");
    assert_eq!(d.of("tandem_sagas_started_total", &[def]), 2.0);
    for status in ["completed", "compensated"] {
        assert_eq!(
            d.of("tandem_sagas_ended_total", &[def, ("status", status)]),
            1.0,
            "{status}"
        );
    }
    assert_eq!(
        d.of("tandem_sagas_ended_total", &[def, ("status", "failed")]),
        0.0
    );
    let step = |step: &str, phase: &str, outcome: &str| {
        d.of(
            "tandem_saga_step_duration_seconds_count",
            &[def, ("step", step), ("phase", phase), ("outcome", outcome)],
        )
    };
    assert_eq!(step("reserve_inventory", "action", "success"), 2.0);
    assert_eq!(step("charge_payment", "action", "success"), 1.0);
    assert_eq!(step("charge_payment", "action", "business_failure"), 1.0);
    assert_eq!(step("create_shipment", "action", "success"), 1.0);
    // The declined checkout compensates the charge it sent and the reservation, nothing else.
    assert_eq!(step("charge_payment", "compensation", "success"), 1.0);
    assert_eq!(step("reserve_inventory", "compensation", "success"), 1.0);
    assert_eq!(step("create_shipment", "compensation", "success"), 0.0);
    assert_eq!(d.of("tandem_saga_step_retries_total", &[def]), 0.0);
    assert!(d.of("tandem_transition_batch_sagas_count", &[]) >= 1.0);
}

/// The HTTP and pool metrics of [`metrics_count_a_checkout`], as the orchestrator and each
/// service (one process here) saw them.
async fn assert_http_and_pool_metrics(
    stack: &tandem_tests::TestStack,
    c: &tandem_cli::client::Client,
    d: &Delta,
    ids: &[String],
) {
    // HTTP, as the orchestrator and each service (one process here) saw it.
    let http = |method: &str, route: &str, status: &str| {
        d.of(
            "tandem_http_request_duration_seconds_count",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", "/sagas", "201"), 2.0);
    assert_eq!(http("POST", "/reservations", "201"), 2.0);
    assert_eq!(http("POST", "/charges", "201"), 1.0);
    assert_eq!(http("POST", "/charges", "409"), 1.0);
    assert_eq!(http("POST", "/shipments", "201"), 1.0);
    assert_eq!(http("POST", "/refunds", "200"), 1.0);
    assert_eq!(http("POST", "/reservations/release", "200"), 1.0);
    assert!(http("GET", "/sagas/{id}", "200") >= 2.0);
    // Unknown paths are one series, not one per path.
    let _ = c
        .http()
        .get(format!("{}/no/such/{}", c.orchestrator, ids[0]))
        .send()
        .await
        .unwrap();
    let text = scrape(c, &c.orchestrator).await;
    assert!(
        value(
            &text,
            "tandem_http_request_duration_seconds_count",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    for id in ids {
        assert!(!text.contains(id.as_str()), "a saga id is a label value");
    }

    // Pools, read at scrape time (the in-process stack's orchestrator pool has 6).
    let orch_db = stack.layout.database("orchestrator");
    assert_eq!(
        value(
            &text,
            "tandem_db_pool_max_connections",
            &[("database", &orch_db), ("pool", "business")]
        ),
        6.0
    );
    let inv = scrape(c, &c.inventory).await;
    let inv_db = stack.layout.database("inventory");
    assert_eq!(
        value(
            &inv,
            "tandem_db_pool_max_connections",
            &[("database", &inv_db), ("pool", "control")]
        ),
        2.0
    );
    assert!(
        value(
            &inv,
            "tandem_db_pool_acquire_duration_seconds_count",
            &[("database", &inv_db)]
        ) >= 3.0,
        "the barrier's transactions time their pool waits"
    );
    // No 2PC ran: the participant has no prepared transaction.
    assert!(inv.contains("\ntandem_prepared_transactions 0\n"), "{inv}");
    assert!(inv.contains("\ntandem_prepared_transaction_oldest_age_seconds 0\n"));
}

/// One span as the test's OTLP receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP receiver on an ephemeral port: `POST /v1/traces` with protobuf bodies.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Got>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        spans.push(Got {
                            service: service.clone(),
                            trace_id: hex(&span.trace_id),
                            name: span.name,
                            attributes: span
                                .attributes
                                .iter()
                                .map(|a| (a.key.clone(), text(&a.value)))
                                .collect(),
                        });
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The real binaries export spans over OTLP: a checkout started with a client's `traceparent`
/// is one trace whose spans come from the orchestrator (its request and a span per step
/// attempt, with saga id, step, attempt and outcome) and from all three services; the
/// orchestrator's log lines carry the trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_across_all_processes() {
    use tandem_tests::cluster::{Cluster, ClusterConfig};
    let (endpoint, got) = otlp_receiver().await;
    let mut cluster = Cluster::new(ClusterConfig::new("traces", 1));
    cluster.env_all("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    cluster.env_all("OTEL_BSP_SCHEDULE_DELAY", "100");
    cluster.env_all("RUST_LOG", "info,orchestrator=debug");
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    let c = cluster.client(0);
    c.set_stock("trace-widget", 5).await.unwrap();
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let resp = c
        .http()
        .post(format!("{}/sagas", c.orchestrator))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({
            "definition": "checkout",
            "input": checkout_input("trace-1", "trace-widget", 1, "tok_visa", "GB"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let saga: serde_json::Value = resp.json().await.unwrap();
    let id = saga["id"].as_str().unwrap().to_string();
    let saga = c.settle(&id, 60).await.unwrap();
    assert_eq!(saga["status"], "completed", "{saga}");

    let want = ["orchestrator", "inventory", "payment", "shipping"];
    let spans = eventually(Duration::from_secs(30), "spans from every process", || {
        let got = got.clone();
        let trace_id = trace_id.clone();
        async move {
            let spans: Vec<Got> = got
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            let steps = spans.iter().filter(|s| s.name == "saga step").count();
            (want.iter().all(|w| spans.iter().any(|s| s.service == *w)) && steps >= 3)
                .then_some(spans)
        }
    })
    .await;
    assert_checkout_spans(&spans, &id);
    let orch = cluster.orchestrator(0);
    assert!(
        cluster.log(orch).contains(&trace_id),
        "the orchestrator's log lines carry the trace id"
    );
}

/// The orchestrator's step spans and every process's request span of one checkout's trace.
fn assert_checkout_spans(spans: &[Got], id: &str) {
    for step in ["reserve_inventory", "charge_payment", "create_shipment"] {
        let s = spans
            .iter()
            .find(|s| {
                s.name == "saga step" && s.attributes.get("step").map(String::as_str) == Some(step)
            })
            .unwrap_or_else(|| panic!("no span for step {step}: {spans:#?}"));
        assert_eq!(s.service, "orchestrator");
        assert_eq!(s.attributes["saga_id"], id);
        assert_eq!(s.attributes["attempt"], "1");
        assert_eq!(s.attributes["outcome"], "success");
        assert_eq!(s.attributes["phase"], "action");
    }
    let server = |service: &str, route: &str| {
        spans.iter().any(|s| {
            s.service == service
                && s.name == "request"
                && s.attributes.get("route").map(String::as_str) == Some(route)
        })
    };
    assert!(server("orchestrator", "/sagas"), "{spans:#?}");
    assert!(server("inventory", "/reservations"), "{spans:#?}");
    assert!(server("payment", "/charges"), "{spans:#?}");
    assert!(server("shipping", "/shipments"), "{spans:#?}");
}

/// The spans of trace `trace_id` received so far, once `done` holds for them (at most 30 s).
async fn trace_spans(
    got: &std::sync::Arc<std::sync::Mutex<Vec<Got>>>,
    trace_id: &str,
    what: &str,
    done: impl Fn(&[Got]) -> bool,
) -> Vec<Got> {
    let done = &done;
    eventually(Duration::from_secs(30), what, || async move {
        let spans: Vec<Got> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        done(&spans).then_some(spans)
    })
    .await
}

/// The 2PC's messages carry the trace too: a checkout as one 2PC transaction, begun with a
/// client's `traceparent`, is one trace holding the orchestrator's request and transaction spans
/// and each service's `/2pc/prepare` and `/2pc/commit` requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_2pc_checkout_is_one_trace_across_all_processes() {
    use tandem_tests::cluster::{Cluster, ClusterConfig};
    let (endpoint, got) = otlp_receiver().await;
    let mut cluster = Cluster::new(ClusterConfig::new("traces_2pc", 1));
    cluster.env_all("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    cluster.env_all("OTEL_BSP_SCHEDULE_DELAY", "100");
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    let c = cluster.client(0);
    c.set_stock("trace-2pc-widget", 5).await.unwrap();
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let resp = cluster
        .http(Role::Client)
        .post(format!("{}/transactions?wait=30", c.orchestrator))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({
            "protocol": "2pc",
            "definition": "checkout",
            "input": checkout_input("trace-2pc-1", "trace-2pc-widget", 1, "tok_visa", "GB"),
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let txn: serde_json::Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status} {txn}");
    assert_eq!(txn["state"], "committed", "{txn}");

    let services = ["inventory", "payment", "shipping"];
    let server = |spans: &[Got], service: &str, route: &str| {
        spans.iter().any(|s| {
            s.service == service
                && s.name == "request"
                && s.attributes.get("route").map(String::as_str) == Some(route)
        })
    };
    // every span awaited: the orchestrator's request span ends (and is exported) last
    let spans = trace_spans(&got, &trace_id, "2PC spans from every process", |spans| {
        server(spans, "orchestrator", "/transactions")
            && spans
                .iter()
                .any(|s| s.service == "orchestrator" && s.name == "transaction")
            && services
                .iter()
                .all(|s| server(spans, s, "/2pc/prepare") && server(spans, s, "/2pc/commit"))
    })
    .await;
    assert!(
        server(&spans, "orchestrator", "/transactions"),
        "{spans:#?}"
    );
    let txn_span = spans
        .iter()
        .find(|s| s.service == "orchestrator" && s.name == "transaction")
        .unwrap_or_else(|| panic!("no transaction span: {spans:#?}"));
    assert_eq!(txn_span.attributes["txn"], txn["id"].as_str().unwrap());
    assert_eq!(txn_span.attributes["protocol"], "2pc");
    for s in services {
        assert!(server(&spans, s, "/2pc/prepare"), "{s}: {spans:#?}");
    }
}

/// Choreographed events carry the trace through NATS: an order placed with a client's
/// `traceparent` is one trace holding the orders service's request and an `event` span in each
/// of the three services that handled its events (the outbox keeps the context, the relay
/// sends it as a header, the consumer continues it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_choreographed_checkout_is_one_trace_through_nats() {
    use tandem_kit::choreo::nats_testing::PrivateNats;
    use tandem_tests::cluster::{Cluster, ClusterConfig};
    let Some(nats) = PrivateNats::start().await else {
        return;
    };
    let (endpoint, got) = otlp_receiver().await;
    let mut cfg = ClusterConfig::new("traces_choreo", 0);
    cfg.nats_url = Some(nats.url.clone());
    let mut cluster = Cluster::new(cfg);
    cluster.env_all("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    cluster.env_all("OTEL_BSP_SCHEDULE_DELAY", "100");
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    let orders = cluster.url(cluster.orders());
    let c = tandem_cli::client::Client::new(
        &orders,
        &cluster.url(cluster.service("inventory")),
        &cluster.url(cluster.service("payment")),
        &cluster.url(cluster.service("shipping")),
    )
    .with_token(&cluster.tokens.as_ref().expect("tokens").operator);
    assert_eq!(
        c.set_stock("trace-choreo-widget", 5).await.unwrap().status,
        200
    );
    let http = cluster.http(Role::Client);
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let resp = http
        .post(format!("{orders}/orders"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&checkout_input(
            "trace-choreo-1",
            "trace-choreo-widget",
            1,
            "tok_visa",
            "GB",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let order = eventually(Duration::from_secs(60), "the order completed", || {
        let url = format!("{orders}/orders/trace-choreo-1?wait_ms=2000");
        let http = http.clone();
        async move {
            let v: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v["status"] == "completed").then_some(v)
        }
    })
    .await;
    assert_eq!(order["status"], "completed");

    let handlers = ["inventory", "payment", "shipping"];
    let spans = trace_spans(&got, &trace_id, "event spans in every service", |spans| {
        handlers
            .iter()
            .all(|h| spans.iter().any(|s| s.service == *h && s.name == "event"))
    })
    .await;
    assert!(
        spans.iter().any(|s| s.service == "orders"
            && s.name == "request"
            && s.attributes.get("route").map(String::as_str) == Some("/orders")),
        "{spans:#?}"
    );
    let subjects: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "event")
        .filter_map(|s| s.attributes.get("subject").map(String::as_str))
        .collect();
    assert!(
        subjects.iter().any(|s| s.ends_with("placed")),
        "{subjects:?}"
    );
}
