//! The orchestrator's OpenAPI document (`GET /openapi.json`, built from the same route table as
//! its router) and its router agree; `GET /docs` renders it.

mod common;

on_both_stores!(the_openapi_document_matches_the_router);

async fn the_openapi_document_matches_the_router(backend: common::Backend) {
    let o = common::start_with(backend, "openapi", "http://127.0.0.1:9", |_| {}).await;
    let n = tandem_kit::testing::assert_documented(&o.url).await;
    assert!(n >= 25, "{n} operations");
    let (status, doc) = o.get("/openapi.json").await;
    assert_eq!(status, 200);
    let create = &doc["paths"]["/sagas"]["post"];
    for code in [
        "201", "200", "400", "404", "405", "409", "413", "415", "422", "503",
    ] {
        assert!(create["responses"].get(code).is_some(), "{code}: {create}");
    }
    // What an orchestrator on SQLite answers to transactions is documented.
    let txn = &doc["paths"]["/transactions"]["post"];
    assert!(txn["responses"].get("501").is_some(), "{txn}");
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateSaga"
    );
    let page = reqwest::get(format!("{}/docs", o.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("openapi.json"));
}
