//! The HTTP API in-process: bad input is a clear 4xx with nothing stored, reads see only
//! committed data, wait-die orders conflicts, idle transactions time out, single- and
//! cross-shard commits, aborts and deletes.

mod common;

use common::{key_on, tempdir};
use kv::local::Local;
use kv_client::{Client, Error};
use serde_json::{Value, json};
use uuid::Uuid;

struct Store {
    local: Local,
    http: reqwest::Client,
}

impl Store {
    async fn start(tweak: impl Fn(kv::Config) -> kv::Config) -> Store {
        let local = Local::start(2, &tempdir("api"), None, tweak)
            .await
            .expect("start");
        Store {
            local,
            http: reqwest::Client::new(),
        }
    }

    fn client(&self) -> Client {
        Client::new(self.local.shard_urls.clone())
    }

    async fn post(&self, shard: usize, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.local.shard_urls[shard]))
            .json(&body)
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn raw(
        &self,
        shard: usize,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.local.shard_urls[shard]));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.body(body).send().await.expect("post");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn begin(&self, shard: usize, priority: Option<u64>) -> Uuid {
        let (s, b) = self
            .post(shard, "/txns", json!({"priority": priority}))
            .await;
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().expect("id").parse().expect("uuid")
    }

    async fn stop(self) {
        let dir = self.local.dir.clone();
        self.local.stop().await;
        std::fs::remove_dir_all(dir).ok();
    }
}

fn slug(b: &Value) -> &str {
    b["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:tandem:problem:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_stores_nothing() {
    let s = Store::start(|c| c).await;
    let k = key_on(0, 2, "bad-");
    let t = s.begin(0, None).await;
    let w = format!("/txns/{t}/write");

    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"key": "", "value": "v"}),
            422,
            "invalid-input",
            "/key",
        ),
        (
            json!({"key": "x".repeat(1025), "value": "v"}),
            422,
            "invalid-input",
            "/key",
        ),
        (
            json!({"key": k, "value": "v".repeat(64 * 1024 + 1)}),
            422,
            "invalid-input",
            "/value",
        ),
        (json!({"key": k}), 422, "invalid-input", "/value"),
        (
            json!({"key": k, "value": 5}),
            422,
            "invalid-input",
            "/value",
        ),
        (
            json!({"key": k, "value": "v", "extra": 1}),
            422,
            "invalid-input",
            "",
        ),
        (
            json!({"key": key_on(1, 2, "bad-"), "value": "v"}),
            421,
            "wrong-shard",
            "",
        ),
    ];
    for (body, status, want, pointer) in cases {
        let (got, b) = s.post(0, &w, body.clone()).await;
        assert_eq!((got, slug(&b)), (status, want), "{body}: {b}");
        if !pointer.is_empty() {
            assert_eq!(b["errors"][0]["pointer"], pointer, "{b}");
        }
    }
    let (st, b) = s
        .raw(0, &w, Some("application/json"), b"{not json".to_vec())
        .await;
    assert_eq!((st, slug(&b)), (400, "bad-request"), "{b}");
    let (st, b) = s.raw(0, &w, None, b"{}".to_vec()).await;
    assert_eq!((st, slug(&b)), (415, "unsupported-media-type"), "{b}");
    let big =
        serde_json::to_vec(&json!({"key": k, "value": "v".repeat(300 * 1024)})).expect("json");
    let (st, b) = s.raw(0, &w, Some("application/json"), big).await;
    assert_eq!((st, slug(&b)), (413, "payload-too-large"), "{b}");
    // Every rejected write left nothing behind: commit, then the key is still absent.
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{t}/commit"),
            json!({"participants": [0]}),
        )
        .await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("committed")), "{b}");
    assert_eq!(s.client().get(&k).await.expect("read"), None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_only_committed_data_and_wait_die_orders_conflicts() {
    let s = Store::start(|c| c).await;
    let k = key_on(0, 2, "wd-");
    let writer = s.begin(0, Some(100)).await;
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{writer}/write"),
            json!({"key": k, "value": "mine"}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    // Its own write is visible to itself.
    let (_, b) = s
        .post(0, &format!("/txns/{writer}/read"), json!({"key": k}))
        .await;
    assert_eq!(b["value"], "mine");

    // A younger reader dies at once: it never sees the uncommitted value.
    let young = s.begin(0, Some(200)).await;
    let (st, b) = s
        .post(0, &format!("/txns/{young}/read"), json!({"key": k}))
        .await;
    assert_eq!((st, slug(&b)), (409, "conflict"), "{b}");

    // An older reader waits, and sees the value once it is committed.
    let old = s.begin(0, Some(50)).await;
    let reader = {
        let (http, url) = (
            s.http.clone(),
            format!("{}/txns/{old}/read", s.local.shard_urls[0]),
        );
        let body = json!({"key": k});
        tokio::spawn(async move {
            let r = http.post(url).json(&body).send().await.expect("read");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        })
    };
    // The reader is parked on the lock (the shard counts it as waiting) until the writer
    // commits.
    let status = format!("{}/status", s.local.shard_urls[0]);
    loop {
        let st: Value = s
            .http
            .get(&status)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if st["waiting"] == 1 {
            break;
        }
        assert!(
            !reader.is_finished(),
            "the older reader must wait, not answer"
        );
        tokio::task::yield_now().await;
    }
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{writer}/commit"),
            json!({"participants": [0]}),
        )
        .await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("committed")), "{b}");
    let (st, b) = reader.await.expect("reader");
    assert_eq!((st, b["value"].as_str()), (200, Some("mine")), "{b}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactions_time_out_and_release_their_locks() {
    let s = Store::start(|mut c| {
        c.txn_timeout_ms = 200;
        c
    })
    .await;
    let k = key_on(0, 2, "idle-");
    let t = s.begin(0, Some(1)).await;
    let (st, _) = s
        .post(
            0,
            &format!("/txns/{t}/write"),
            json!({"key": k, "value": "v"}),
        )
        .await;
    assert_eq!(st, 200);
    // A younger writer can get the key once the idle one is aborted.
    s.client()
        .put(&k, "other")
        .await
        .expect("the lock is released after the idle timeout");
    // Asking to commit it reports its outcome.
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{t}/commit"),
            json!({"participants": [0]}),
        )
        .await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("aborted")), "{b}");
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{t}/write"),
            json!({"key": k, "value": "late"}),
        )
        .await;
    assert_eq!((st, slug(&b)), (409, "transaction-aborted"), "{b}");
    assert_eq!(
        s.client().get(&k).await.expect("read").as_deref(),
        Some("other")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_aborts_and_deletes_across_shards() {
    let s = Store::start(|c| c).await;
    let client = s.client();
    let (a, b) = (key_on(0, 2, "x-"), key_on(1, 2, "x-"));
    client
        .transaction(|t| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                t.write(&a, "1").await?;
                t.write(&b, "2").await?;
                assert_eq!(
                    t.read(&b).await?.as_deref(),
                    Some("2"),
                    "reads its own write"
                );
                Ok(())
            }
        })
        .await
        .expect("cross-shard commit");
    assert_eq!(client.get(&a).await.expect("a").as_deref(), Some("1"));
    assert_eq!(client.get(&b).await.expect("b").as_deref(), Some("2"));

    let t = client.begin();
    t.write(&a, "lost").await.expect("write");
    t.delete(&b).await.expect("delete");
    t.abort().await;
    assert_eq!(
        client.get(&a).await.expect("a").as_deref(),
        Some("1"),
        "abort discards"
    );
    assert_eq!(client.get(&b).await.expect("b").as_deref(), Some("2"));

    let user = client
        .transaction(|t| {
            let b = b.clone();
            async move {
                t.delete(&b).await?;
                Err::<(), _>(Error::User("changed my mind".into()))
            }
        })
        .await;
    assert!(matches!(user, Err(Error::User(_))), "{user:?}");
    assert_eq!(client.get(&b).await.expect("b").as_deref(), Some("2"));

    client
        .transaction(|t| {
            let b = b.clone();
            async move { t.delete(&b).await }
        })
        .await
        .expect("delete");
    assert_eq!(client.get(&b).await.expect("b"), None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_finished_and_excess_transactions_are_rejected() {
    let s = Store::start(|mut c| {
        c.max_open_txns = 4;
        c
    })
    .await;
    let k = key_on(0, 2, "rej-");
    let t = s.begin(0, None).await;
    let w = format!("/txns/{t}/write");
    let (st, b) = s.post(0, "/txns/not-a-uuid/read", json!({"key": k})).await;
    assert_eq!((st, slug(&b)), (400, "bad-path"), "{b}");
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{}/read", Uuid::now_v7()),
            json!({"key": k}),
        )
        .await;
    assert_eq!((st, slug(&b)), (404, "unknown-transaction"), "{b}");
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{t}/commit"),
            json!({"participants": [1]}),
        )
        .await;
    assert_eq!((st, slug(&b)), (422, "invalid-input"), "{b}");
    let (st, b) = s
        .post(
            0,
            &format!("/txns/{t}/commit"),
            json!({"participants": [0, 7]}),
        )
        .await;
    assert_eq!((st, slug(&b)), (422, "invalid-input"), "{b}");

    let (st, b) = s
        .post(
            0,
            &format!("/txns/{t}/commit"),
            json!({"participants": [0]}),
        )
        .await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("committed")), "{b}");
    // Writes after commit.
    let (st, b) = s.post(0, &w, json!({"key": k, "value": "late"})).await;
    assert_eq!((st, slug(&b)), (409, "transaction-committed"), "{b}");
    let (st, b) = s.post(0, "/txns", json!({"id": t})).await;
    assert_eq!((st, slug(&b)), (409, "transaction-committed"), "{b}");

    // Too many open transactions.
    for _ in 0..4 {
        s.begin(0, None).await;
    }
    let (st, b) = s.post(0, "/txns", json!({})).await;
    assert_eq!((st, slug(&b)), (429, "too-many-transactions"), "{b}");
    s.stop().await;
}
