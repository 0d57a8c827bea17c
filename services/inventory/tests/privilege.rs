//! Least privilege in Postgres (docs/security.md), on databases and roles these tests provision
//! with `tandem_kit::provision` and drop when they end, pass or fail (`Provisioned`): the
//! runtime role of one component cannot connect to another's database nor read its tables,
//! PUBLIC cannot connect, the runtime role cannot change the schema, and a service started with
//! the runtime URL and the owner URL migrates and serves a saga action and a 2PC round.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tandem_kit::provision::ident;
use tandem_kit::service::Config;
use tandem_kit::testing::{Provisioned, Served, TestDatabases};
use uuid::Uuid;

/// Insufficient privilege.
const DENIED: &str = "42501";

/// The SQLSTATE of a failed connection or statement.
fn code<T: std::fmt::Debug>(r: Result<T, sqlx::Error>) -> String {
    let e = r.expect_err("must be refused");
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.to_string())
        .unwrap_or_else(|| panic!("not a database error: {e}"))
}

/// The service's configuration on `p`'s database: its runtime URL, and its owner URL if `owner`.
fn config(p: &Provisioned, owner: bool) -> Config {
    let (runtime_url, owner_url) = p.urls(0);
    let mut config = Config::with_database(runtime_url);
    config.database_owner_url = owner.then_some(owner_url);
    config
}

#[tokio::test]
async fn a_component_role_reaches_only_its_own_database() {
    let p = Provisioned::new(&["priv_inventory", "priv_payment"]).await;
    let ((inventory_app, inventory_owner), (payment_app, _)) = (p.urls(0), p.urls(1));
    let payment_db = &p.components[1].database;

    // Payment's database holds a table (made by its owner, as its migrations would).
    let (_, payment_owner) = p.urls(1);
    let mut owner = PgConnection::connect(&payment_owner).await.unwrap();
    sqlx::raw_sql("CREATE TABLE charges (id int PRIMARY KEY); INSERT INTO charges VALUES (1)")
        .execute(&mut owner)
        .await
        .unwrap();
    owner.close().await.unwrap();
    let mut payment = PgConnection::connect(&payment_app).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&mut payment)
        .await
        .unwrap();
    assert_eq!(n, 1, "payment's runtime role reads its own table");
    payment.close().await.unwrap();

    // Inventory's roles (runtime and owner) cannot connect to payment's database.
    let other = |url: &str| tandem_kit::db::database_url(url, payment_db);
    for url in [other(&inventory_app), other(&inventory_owner)] {
        assert_eq!(code(PgConnection::connect(&url).await), DENIED, "{url}");
    }

    // Nor could it read a table there with CONNECT granted: its rights are on its own schema
    // and tables (qualified, or the search path would just not see the schema).
    let admin = &mut PgConnection::connect(&p.admin_url(1)).await.unwrap();
    let grant = format!(
        "GRANT CONNECT ON DATABASE {} TO {}",
        ident(payment_db),
        ident(&p.components[0].runtime.name)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
        .execute(&mut *admin)
        .await
        .unwrap();
    let mut intruder = PgConnection::connect(&other(&inventory_app)).await.unwrap();
    let read = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM public.charges")
        .fetch_one(&mut intruder)
        .await;
    assert_eq!(code(read), DENIED);
    intruder.close().await.unwrap();

    // PUBLIC cannot connect: a role with no grants of its own is refused.
    let nobody = format!("{}_nobody", p.components[1].database);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {} LOGIN",
        ident(&nobody)
    )))
    .execute(&mut *admin)
    .await
    .unwrap();
    let nobody_url =
        p.components[1]
            .urls(&p.server_url)
            .0
            .replacen(&p.components[1].runtime.name, &nobody, 1);
    let refused = PgConnection::connect(&nobody_url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE {}", ident(&nobody))))
        .execute(&mut *admin)
        .await
        .unwrap();
    assert_eq!(code(refused), DENIED, "{nobody_url}");

    // The runtime role changes rows, never the schema.
    let mut app = PgConnection::connect(&payment_app).await.unwrap();
    for ddl in [
        "CREATE TABLE sneaky (id int)",
        "DROP TABLE charges",
        "ALTER TABLE charges ADD COLUMN x int",
        "TRUNCATE charges",
    ] {
        let r = sqlx::raw_sql(ddl).execute(&mut app).await;
        assert_eq!(code(r), DENIED, "{ddl}");
    }
    app.close().await.unwrap();
}

#[tokio::test]
async fn a_service_migrates_as_owner_and_serves_as_its_runtime_role() {
    let p = Provisioned::new(&["priv_served"]).await;

    // Without the owner URL the runtime role cannot apply the migrations.
    let refused = tandem_kit::service::build(&inventory::SPEC, config(&p, false))
        .await
        .expect_err("refused");
    let chain = tandem_kit::error::chain(&refused);
    assert!(chain.contains("permission denied"), "{chain}");

    // Nothing for `Served` to drop: `p` owns the database and its roles.
    let none = TestDatabases::new(p.server_url.clone(), []);
    let svc = Served::serve(&inventory::SPEC, config(&p, true), none).await;
    let _cleanup = svc.prepared_cleanup();
    // The tables belong to the owner role; the service's pools log in as the runtime role.
    let (owner, app) = (&p.components[0].owner.name, &p.components[0].runtime.name);
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public'",
    )
    .fetch_all(&svc.app.postgres().unwrap().pool)
    .await
    .unwrap();
    assert_eq!(owners, std::slice::from_ref(owner));
    for pool in [
        &svc.app.postgres().unwrap().pool,
        &svc.app.postgres().unwrap().control,
    ] {
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(&user, app);
    }

    // A saga action and its compensation.
    let put = svc.http.put(format!("{}/stock/a", svc.url));
    let resp = put.json(&json!({ "available": 5 })).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let saga = Uuid::now_v7();
    let body = json!({ "order_id": "o-1", "items": [{ "sku": "a", "quantity": 2 }] });
    let (s, b) = svc
        .post("/reservations", Some(&format!("{saga}:0:action")), body)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = svc
        .compensate(
            "/reservations/release",
            &format!("{saga}:0:compensation"),
            "o-1",
        )
        .await;
    assert_eq!((s, &b["released"]), (StatusCode::OK, &json!(true)), "{b}");

    // A 2PC round: prepared and committed by the runtime role.
    if !svc.can_prepare().await {
        return;
    }
    let txn = Uuid::now_v7();
    let body = json!({ "order_id": "o-2", "items": [{ "sku": "a", "quantity": 3 }] });
    let (s, vote) = svc
        .tpc_prepare("http://127.0.0.1:9", txn, "/reservations", body)
        .await;
    assert_eq!(
        (s, &vote["vote"]),
        (StatusCode::OK, &json!("yes")),
        "{vote}"
    );
    let (s, b) = svc.tpc_decide("commit", txn).await;
    assert_eq!(
        (s, &b["state"]),
        (StatusCode::OK, &json!("committed")),
        "{b}"
    );
    let (s, stock) = svc.get("/stock/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&stock["available"], &stock["reserved"]),
        (&json!(2), &json!(3))
    );
}
