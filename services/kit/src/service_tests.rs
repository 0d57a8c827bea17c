//! Helpers for the services' own tests: more methods on [`crate::testing::Served`] (start with
//! fault injection on, list an audit endpoint, count rows).

use crate::testing::Served;
impl Served {
    /// `spec` on a fresh database with fault injection on (off is the default everywhere else).
    pub async fn with_faults(spec: &'static crate::service::Spec) -> Served {
        Served::start(spec, |c| {
            c.fault_injection = crate::faults::Switch::On;
        })
        .await
    }

    /// [`Served::with_faults`] on `store`.
    pub async fn with_faults_on(
        store: crate::testing::Store,
        spec: &'static crate::service::Spec,
    ) -> Served {
        Served::start_on(store, spec, |c| {
            c.fault_injection = crate::faults::Switch::On;
        })
        .await
    }

    /// `GET {path}?order_id={order}`, which must answer 200 with a JSON array: its items.
    pub async fn list(&self, path: &str, order: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.get(&format!("{path}?order_id={order}")).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        match body {
            serde_json::Value::Array(items) => items,
            other => panic!("GET {path}: not an array: {other}"),
        }
    }

    /// `DELETE path`: status and JSON body (`null` if the body is not JSON).
    pub async fn delete(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        let url = format!("{}{path}", self.url);
        let resp = self.http.delete(url).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or_default())
    }

    /// Rows in each of `tables` (plain identifiers), in order.
    pub async fn counts<const N: usize>(&self, tables: [&str; N]) -> [i64; N] {
        let mut out = [0; N];
        for (n, table) in out.iter_mut().zip(tables) {
            *n = self.count(table).await;
        }
        out
    }

    /// `POST path` of a saga compensation under `key`: `{"order_id": order}` (its body is
    /// informational; the key names the step).
    pub async fn compensate(
        &self,
        path: &str,
        key: &str,
        order: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let body = serde_json::json!({ "order_id": order });
        self.post(path, Some(key), body).await
    }
}

impl Served {
    /// A saga step's endpoints check the `Idempotency-Key` before anything else: missing,
    /// malformed, or naming the other side of the step → 400 `bad-request`. `action_body` is a
    /// valid action body; the compensation gets `{"order_id": "o-1"}`.
    pub async fn assert_keys_checked(
        &self,
        action: &str,
        action_body: &serde_json::Value,
        compensation: &str,
    ) {
        let comp_body = serde_json::json!({ "order_id": "o-1" });
        let malformed = ["nope", "s1:Bad:action", "s1:step:undo", "a:b:c:action"];
        let mut calls = vec![
            (action, None, action_body),
            (action, Some("s1:step:compensation"), action_body),
            (compensation, None, &comp_body),
            (compensation, Some("s1:step:action"), &comp_body),
        ];
        calls.extend(malformed.iter().map(|k| (action, Some(*k), action_body)));
        for (path, key, body) in calls {
            let (s, b) = self.post(path, key, body.clone()).await;
            crate::testing::assert_problem(s, &b, reqwest::StatusCode::BAD_REQUEST, "bad-request");
        }
    }

    /// Each `(body, pointer)` posted to `path` under `key` is a 422 `invalid-input` whose first
    /// error names `pointer` (an empty pointer: any).
    pub async fn assert_invalid(&self, path: &str, key: &str, cases: &[(serde_json::Value, &str)]) {
        for (body, pointer) in cases {
            let (s, b) = self.post(path, Some(key), body.clone()).await;
            crate::testing::assert_problem(
                s,
                &b,
                reqwest::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-input",
            );
            if !pointer.is_empty() {
                assert_eq!(b["errors"][0]["pointer"], *pointer, "{body} → {b}");
            }
        }
    }
}

/// Rolls back every prepared transaction of a test's database when dropped — pass or fail —
/// because an orphaned one holds its locks and makes `DROP DATABASE` fail even `WITH (FORCE)`.
pub struct PreparedCleanup {
    options: sqlx::postgres::PgConnectOptions,
}

impl Served {
    /// A guard that rolls back this service's prepared transactions at the end of the test.
    pub fn prepared_cleanup(&self) -> PreparedCleanup {
        PreparedCleanup {
            options: (*self
                .app
                .postgres()
                .expect("a Postgres service")
                .control
                .connect_options())
            .clone(),
        }
    }
}

impl Drop for PreparedCleanup {
    fn drop(&mut self) {
        let options = self.options.clone();
        // A thread with its own runtime: this may run while the test's runtime unwinds.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(roll_back_prepared(options))
        })
        .join();
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => eprintln!("test cleanup: rolled back {n} prepared transaction(s)"),
            Ok(Err(e)) => eprintln!("test cleanup: prepared transactions NOT rolled back: {e}"),
            Err(_) => eprintln!("test cleanup: the cleanup thread panicked"),
        }
    }
}

async fn roll_back_prepared(
    options: sqlx::postgres::PgConnectOptions,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use sqlx::ConnectOptions;
    let mut conn = options.connect().await?;
    let gids: Vec<String> =
        sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
            .fetch_all(&mut conn)
            .await?;
    for gid in &gids {
        let sql = format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    }
    Ok(gids.len())
}

impl Served {
    /// Whether this server can prepare transactions (`max_prepared_transactions > 0`). Outside
    /// CI a test may skip when it cannot; with `CI=true` this panics naming the setting.
    pub async fn can_prepare(&self) -> bool {
        let max: String = sqlx::query_scalar("SELECT current_setting('max_prepared_transactions')")
            .fetch_one(&self.app.postgres().expect("a Postgres service").control)
            .await
            .unwrap();
        let can = max.parse::<i64>().unwrap_or(0) > 0;
        if !can {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "missing prerequisite: Postgres max_prepared_transactions is 0 (2PC tests need it above 0, e.g. 256)"
            );
            eprintln!("skipped: Postgres max_prepared_transactions is 0");
        }
        can
    }
}

impl Served {
    /// `POST /2pc/prepare` of branch `(txn, 0)`: `action` with `body`, naming `coordinator`.
    pub async fn tpc_prepare(
        &self,
        coordinator: &str,
        txn: uuid::Uuid,
        action: &str,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let request = serde_json::json!({
            "txn_id": txn, "step": 0, "action": action, "body": body,
            "coordinator_url": coordinator,
        });
        self.post("/2pc/prepare", None, request).await
    }

    /// `POST /2pc/{verb}` (`commit` or `abort`) of branch `(txn, 0)`.
    pub async fn tpc_decide(
        &self,
        verb: &str,
        txn: uuid::Uuid,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let body = serde_json::json!({ "txn_id": txn, "step": 0 });
        self.post(&format!("/2pc/{verb}"), None, body).await
    }
}

impl Served {
    /// The 2PC participant on one of this service's actions: `good` prepared is invisible until
    /// committed, then listed at `list` (`?order_id=o-1`) with its transaction id; `refused`
    /// (for order `o-2`) votes NO with reason `slug` and prepares nothing.
    ///
    /// It rolls back what it leaves prepared when it ends, and checks nothing where this
    /// Postgres cannot prepare transactions (outside CI; see [`Served::can_prepare`]).
    pub async fn assert_two_pc_commit_and_refusal(
        &self,
        action: &str,
        list: &str,
        good: serde_json::Value,
        refused: serde_json::Value,
        slug: &str,
    ) {
        use serde_json::json;
        let _cleanup = self.prepared_cleanup();
        if !self.can_prepare().await {
            return;
        }
        let (txn, nobody) = (uuid::Uuid::now_v7(), "http://127.0.0.1:9");
        let (s, vote) = self.tpc_prepare(nobody, txn, action, good).await;
        assert_eq!((s.as_u16(), &vote["vote"]), (200, &json!("yes")), "{vote}");
        assert!(
            self.list(list, "o-1").await.is_empty(),
            "invisible while prepared"
        );
        let (s, b) = self.tpc_decide("commit", txn).await;
        assert_eq!((s.as_u16(), &b["state"]), (200, &json!("committed")), "{b}");
        let rows = self.list(list, "o-1").await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["txn_id"], json!(txn));

        let (s, vote) = self
            .tpc_prepare(nobody, uuid::Uuid::now_v7(), action, refused)
            .await;
        assert_eq!((s.as_u16(), &vote["vote"]), (200, &json!("no")), "{vote}");
        assert_eq!(vote["reason"]["type"], format!("urn:tandem:problem:{slug}"));
        assert!(self.list(list, "o-2").await.is_empty());
    }
}

/// The OpenAPI document and the router of `spec` agree ([`crate::testing::assert_documented`]),
/// with fault injection on (its `/faults` routes documented) and off (neither routed nor
/// documented).
pub async fn assert_documented(spec: &'static crate::service::Spec) {
    let on = Served::with_faults(spec).await;
    let n = crate::testing::assert_documented(&on.url).await;
    let (_, doc) = on.get("/openapi.json").await;
    assert!(doc["paths"]["/faults"]["post"].is_object(), "{doc}");
    let off = Served::start(spec, |_| {}).await;
    let m = crate::testing::assert_documented(&off.url).await;
    assert_eq!(n, m + 3, "the fault endpoints are the difference");
    let (_, doc) = off.get("/openapi.json").await;
    assert!(doc["paths"].get("/faults").is_none(), "{doc}");
}
