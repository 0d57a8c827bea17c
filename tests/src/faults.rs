//! The `/faults` API of any node (service, orchestrator, acceptor) from a test: install a fault,
//! read how often one fired, delete (heal) by a filter. `http` sends the operator token.

use serde_json::Value;

/// Most firings of one fault: a cut until healed.
pub const FOREVER: u32 = tandem_kit::faults::MAX_TIMES;

/// `POST {base}/faults` with `spec`: the installed fault (panics unless 201).
pub async fn add(http: &reqwest::Client, base: &str, spec: Value) -> Value {
    let r = http
        .post(format!("{base}/faults"))
        .json(&spec)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/faults: {e}"));
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "POST {base}/faults {spec}: {body}");
    body
}

/// How many times the fault `id` installed at `base` fired so far (None: not listed).
pub async fn fired(http: &reqwest::Client, base: &str, id: &Value) -> Option<u64> {
    let r = http.get(format!("{base}/faults")).send().await.ok()?;
    let list: Value = r.json().await.ok()?;
    let f = list.as_array()?.iter().find(|f| f["id"] == *id)?;
    Some(f["times"].as_u64()? - f["remaining"].as_u64()?)
}

/// `DELETE {base}/faults?{query}` (`""`: every fault): how many went (panics unless 200).
pub async fn delete(http: &reqwest::Client, base: &str, query: &str) -> u64 {
    let r = http
        .delete(format!("{base}/faults?{query}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {base}/faults?{query}: {e}"));
    assert_eq!(r.status(), 200, "DELETE {base}/faults?{query}");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    body["deleted"].as_u64().unwrap_or(0)
}
