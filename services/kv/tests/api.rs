//! The HTTP API in-process: bad input is a clear 4xx with nothing stored, reads see only
//! committed data, wait-die orders conflicts, idle transactions time out, single- and
//! cross-shard commits, aborts and deletes.

mod common;

use common::{Api, assert_problem, assert_value, key_on, slug, tempdir};
use kv::local::Local;
use kv_client::{Client, Error};
use serde_json::{Value, json};
use uuid::Uuid;

struct Store {
    local: Local,
    http: reqwest::Client,
}

impl Store {
    /// Two shards and the coordinator in this process, each configured by `tweak`.
    async fn start(tweak: impl Fn(&mut kv::Config)) -> Store {
        let tweak = |mut c| {
            tweak(&mut c);
            c
        };
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

    async fn raw(
        &self,
        shard: usize,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url(shard)));
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

/// Processes are the shards, by index.
impl Api for Store {
    fn url(&self, shard: usize) -> String {
        self.local.shard_urls[shard].clone()
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_stores_nothing() {
    let s = Store::start(|_| {}).await;
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
    let json = Some("application/json");
    let answer = s.raw(0, &w, json, b"{not json".to_vec()).await;
    assert_problem(&answer, 400, "bad-request");
    let answer = s.raw(0, &w, None, b"{}".to_vec()).await;
    assert_problem(&answer, 415, "unsupported-media-type");
    let big =
        serde_json::to_vec(&json!({"key": k, "value": "v".repeat(300 * 1024)})).expect("json");
    assert_problem(&s.raw(0, &w, json, big).await, 413, "payload-too-large");
    // Every rejected write left nothing behind: commit, then the key is still absent.
    s.commit_is(0, t, &[0], "committed").await;
    assert_value(&s.client(), &k, None).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_only_committed_data_and_wait_die_orders_conflicts() {
    let s = Store::start(|_| {}).await;
    let k = key_on(0, 2, "wd-");
    let writer = s.begin(0, Some(100)).await;
    let (st, b) = s.write(0, writer, &k, "mine").await;
    assert_eq!(st, 200, "{b}");
    // Its own write is visible to itself.
    let (_, b) = s.read(0, writer, &k).await;
    assert_eq!(b["value"], "mine");

    // A younger reader dies at once: it never sees the uncommitted value.
    let young = s.begin(0, Some(200)).await;
    assert_problem(&s.read(0, young, &k).await, 409, "conflict");

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
    loop {
        if s.status(0).await["waiting"] == 1 {
            break;
        }
        assert!(
            !reader.is_finished(),
            "the older reader must wait, not answer"
        );
        tokio::task::yield_now().await;
    }
    s.commit_is(0, writer, &[0], "committed").await;
    let (st, b) = reader.await.expect("reader");
    assert_eq!((st, b["value"].as_str()), (200, Some("mine")), "{b}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactions_time_out_and_release_their_locks() {
    let s = Store::start(|c| c.txn_timeout_ms = 200).await;
    let k = key_on(0, 2, "idle-");
    let t = s.begin(0, Some(1)).await;
    let (st, b) = s.write(0, t, &k, "v").await;
    assert_eq!(st, 200, "{b}");
    // A younger writer can get the key once the idle one is aborted.
    s.client()
        .put(&k, "other")
        .await
        .expect("the lock is released after the idle timeout");
    // Asking to commit it reports its outcome.
    s.commit_is(0, t, &[0], "aborted").await;
    let late = s.write(0, t, &k, "late").await;
    assert_problem(&late, 409, "transaction-aborted");
    assert_value(&s.client(), &k, Some("other")).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_aborts_and_deletes_across_shards() {
    let s = Store::start(|_| {}).await;
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
    assert_value(&client, &a, Some("1")).await;
    assert_value(&client, &b, Some("2")).await;

    let t = client.begin();
    t.write(&a, "lost").await.expect("write");
    t.delete(&b).await.expect("delete");
    t.abort().await;
    // The abort discards both.
    assert_value(&client, &a, Some("1")).await;
    assert_value(&client, &b, Some("2")).await;

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
    assert_value(&client, &b, Some("2")).await;

    client
        .transaction(|t| {
            let b = b.clone();
            async move { t.delete(&b).await }
        })
        .await
        .expect("delete");
    assert_value(&client, &b, None).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_finished_and_excess_transactions_are_rejected() {
    let s = Store::start(|c| c.max_open_txns = 4).await;
    let k = key_on(0, 2, "rej-");
    let t = s.begin(0, None).await;
    let bad_path = s.post(0, "/txns/not-a-uuid/read", json!({"key": k})).await;
    assert_problem(&bad_path, 400, "bad-path");
    let unknown = s.read(0, Uuid::now_v7(), &k).await;
    assert_problem(&unknown, 404, "unknown-transaction");
    // Not led by this shard; a shard that does not exist.
    for participants in [&[1][..], &[0, 7]] {
        assert_problem(&s.commit(0, t, participants).await, 422, "invalid-input");
    }

    s.commit_is(0, t, &[0], "committed").await;
    // Writes after commit.
    let late = s.write(0, t, &k, "late").await;
    assert_problem(&late, 409, "transaction-committed");
    let again = s.post(0, "/txns", json!({"id": t})).await;
    assert_problem(&again, 409, "transaction-committed");

    // Too many open transactions.
    for _ in 0..4 {
        s.begin(0, None).await;
    }
    let excess = s.post(0, "/txns", json!({})).await;
    assert_problem(&excess, 429, "too-many-transactions");
    s.stop().await;
}
