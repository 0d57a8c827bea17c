//! The saga store's conformance suite: every test here runs on both implementations of
//! [`Store`] — `pg::<test>` on a fresh Postgres database, `sqlite::<test>` on a fresh SQLite
//! file — through the same interface the orchestrator uses (the store, the group-commit writer,
//! the saga leases). A behaviour that differs between the two fails one of the pair.

use std::time::Duration;

use orchestrator::lease::{Leases, Take};
use orchestrator::saga::{EventKind, EventRecord, SagaState, SagaStatus};
use orchestrator::store::{Created, NewRun, NewSaga, NextRun, SAGAS, SagaFilter, SagaRow, Store};
use orchestrator::writer::{TransitionWrite, TransitionWriter};
use serde_json::{Value, json};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30);

/// A store for one test, and what removes its database when the test passes.
struct Db {
    store: Store,
    _guard: Guard,
}

#[allow(dead_code)] // held for their Drop
enum Guard {
    Pg(tandem_kit::testing::TestDatabases),
    Sqlite(TempDir),
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn pg(name: &str) -> Db {
    let dbs = tandem_kit::testing::fresh_database(&format!("conf_{name}")).await;
    let store = Store::open(&dbs.first_url(), None, 4).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    Db {
        store,
        _guard: Guard::Pg(dbs),
    }
}

async fn sqlite(name: &str) -> Db {
    let dir = std::env::temp_dir().join(format!("tandem-conf-{name}-{}", Uuid::now_v7()));
    let url = tandem_kit::sqlite::url(&dir.join("orchestrator.db"));
    let store = Store::open(&url, None, 4).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    Db {
        store,
        _guard: Guard::Sqlite(TempDir(dir)),
    }
}

/// Each test `async fn name(db: Db)` runs twice: `pg::name` and `sqlite::name`.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::pg(stringify!($test)).await).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::sqlite(stringify!($test)).await).await
                }
            )*
        }
    };
}

conformance!(
    definitions_are_stored_once_newest_first,
    a_client_key_replays_the_same_request_and_refuses_another,
    a_business_key_holds_one_saga,
    transitions_are_fenced_by_the_lease_epoch,
    leases_claim_renew_release_take_and_reclaim,
    a_claim_waits_for_the_due_time,
    the_list_filters_and_pages_newest_first,
    old_client_keys_are_purged,
    finished_sagas_are_forgotten_then_deleted,
    events_keep_their_order,
);

fn state(status: SagaStatus) -> SagaState {
    SagaState {
        status,
        steps: Vec::new(),
        in_flight: None,
        next_attempt_at: None,
        reason: None,
    }
}

fn event(kind: EventKind, step: Option<&str>, n: u64) -> EventRecord {
    EventRecord {
        kind,
        step: step.map(String::from),
        detail: json!({ "n": n }),
    }
}

/// What a test asks of a new saga.
struct Req<'a> {
    definition: &'a str,
    input: Value,
    business_key: Option<&'a str>,
    key: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn new(input: Value) -> Self {
        Req {
            definition: "conf",
            input,
            business_key: None,
            key: None,
        }
    }
}

async fn with_definitions(s: &Store) {
    for name in ["conf", "other"] {
        s.insert_definition(name, "v1", &json!({ "name": name }))
            .await
            .unwrap();
    }
}

/// Create a saga (leased to `creator`, epoch 1) with two events.
async fn create(s: &Store, r: Req<'_>) -> Created<(SagaRow, Vec<orchestrator::store::EventRow>)> {
    let input_hash = format!("{:x}", md5ish(&r.input));
    let request_hash = format!("{}:{}", r.definition, input_hash);
    let st = state(SagaStatus::Running);
    let events = [
        event(EventKind::SagaStarted, None, 0),
        event(EventKind::StepStarted, Some("a"), 1),
    ];
    let new = NewSaga {
        run: NewRun {
            id: Uuid::now_v7(),
            definition: r.definition,
            version: "v1",
            business_key: r.business_key.map(String::from),
            input: &r.input,
            input_hash,
            request_hash: &request_hash,
            idempotency_key: r.key,
            owner: "creator",
            lease_ttl: TTL,
        },
        state: &st,
        events: &events,
    };
    s.create_saga(&new).await.unwrap()
}

/// A stable hash of a JSON value (the store compares hashes as given).
fn md5ish(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

fn new_id(c: Created<(SagaRow, Vec<orchestrator::store::EventRow>)>) -> SagaRow {
    match c {
        Created::New(b) => b.0,
        other => panic!("expected a new saga, got {other:?}"),
    }
}

/// Persist one transition of `id` through the group-commit writer, fenced by `epoch`.
async fn persist(
    s: &Store,
    id: Uuid,
    epoch: i64,
    status: SagaStatus,
    events: &[EventRecord],
    next: NextRun,
    keep_lease: bool,
) -> bool {
    let writer = TransitionWriter::start(s.clone(), TTL, 1, 8);
    writer
        .persist(
            id,
            epoch,
            TransitionWrite {
                state: &state(status),
                events,
                next,
                keep_lease,
            },
        )
        .await
        .unwrap()
}

async fn definitions_are_stored_once_newest_first(db: Db) {
    let s = &db.store;
    assert!(
        s.insert_definition("d", "v1", &json!({"a": 1}))
            .await
            .unwrap()
    );
    assert!(
        !s.insert_definition("d", "v1", &json!({"a": 1}))
            .await
            .unwrap()
    );
    assert!(
        s.insert_definition("d", "v2", &json!({"a": 2}))
            .await
            .unwrap()
    );
    let versions = s.definition_versions("d", 10).await.unwrap();
    let names: Vec<&str> = versions.iter().map(|v| v.0.as_str()).collect();
    assert_eq!(names, ["v2", "v1"]);
    assert_eq!(versions[0].1, json!({"a": 2}));
    assert_eq!(
        s.definition("d", "v1").await.unwrap(),
        Some(json!({"a": 1}))
    );
    assert_eq!(s.definition("d", "v3").await.unwrap(), None);
    let all = s.all_definitions().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].1.as_str(), all[1].1.as_str()),
        ("v1", "v2"),
        "oldest first"
    );
}

async fn a_client_key_replays_the_same_request_and_refuses_another(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let mut r = Req::new(json!({"x": 1}));
    r.key = Some("k-1");
    let first = new_id(create(s, r).await);
    assert_eq!(first.lease.epoch, 1);
    assert_eq!(first.lease.owner.as_deref(), Some("creator"));

    let mut same = Req::new(json!({"x": 1}));
    same.key = Some("k-1");
    match create(s, same).await {
        Created::Replay(id) => assert_eq!(id, first.id),
        other => panic!("{other:?}"),
    }
    let mut other = Req::new(json!({"x": 2}));
    other.key = Some("k-1");
    match create(s, other).await {
        Created::KeyReused(id) => assert_eq!(id, first.id),
        other => panic!("{other:?}"),
    }
    // Nothing was stored for the replays.
    let all = s.list(&SagaFilter::default(), 10).await.unwrap();
    assert_eq!(all.len(), 1);
}

async fn a_business_key_holds_one_saga(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let mut r = Req::new(json!({"order": "o-1"}));
    r.business_key = Some("o-1");
    let first = new_id(create(s, r).await);
    assert_eq!(first.run.business_key.as_deref(), Some("o-1"));

    // The same input: that saga (and a client key given with it now names it).
    let mut same = Req::new(json!({"order": "o-1"}));
    same.business_key = Some("o-1");
    same.key = Some("k-same");
    match create(s, same).await {
        Created::SameBusinessKey(id) => assert_eq!(id, first.id),
        other => panic!("{other:?}"),
    }
    let mut replay = Req::new(json!({"order": "o-1"}));
    replay.business_key = Some("o-1");
    replay.key = Some("k-same");
    match create(s, replay).await {
        Created::Replay(id) => assert_eq!(id, first.id, "the key names the existing saga"),
        other => panic!("{other:?}"),
    }

    // Another input: a conflict naming it; nothing stored (its client key neither).
    let mut other = Req::new(json!({"order": "o-1", "more": true}));
    other.business_key = Some("o-1");
    other.key = Some("k-other");
    match create(s, other).await {
        Created::BusinessKeyConflict(id) => assert_eq!(id, first.id),
        other => panic!("{other:?}"),
    }
    let mut again = Req::new(json!({"order": "o-9"}));
    again.key = Some("k-other");
    assert!(
        matches!(create(s, again).await, Created::New(_)),
        "the conflicting request's key was not kept"
    );

    // The same key under another definition is another saga.
    let mut elsewhere = Req::new(json!({"order": "o-1"}));
    elsewhere.definition = "other";
    elsewhere.business_key = Some("o-1");
    assert!(matches!(create(s, elsewhere).await, Created::New(_)));
}

async fn transitions_are_fenced_by_the_lease_epoch(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let saga = new_id(create(s, Req::new(json!({}))).await);
    let ev = [event(EventKind::StepSucceeded, Some("a"), 2)];
    assert!(persist(s, saga.id, 1, SagaStatus::Running, &ev, NextRun::Now, true).await);

    // Another instance takes the saga over (epoch 2): the first holder's writes apply nowhere.
    let other = Leases::new(SAGAS, s.clone(), "other", TTL);
    let taken = other
        .take::<SagaRow>(saga.id, Take::Steal, "true")
        .await
        .unwrap()
        .expect("steal");
    assert_eq!(taken.lease.epoch, 2);
    let stale = [event(EventKind::StepFailed, Some("a"), 99)];
    assert!(
        !persist(
            s,
            saga.id,
            1,
            SagaStatus::Compensating,
            &stale,
            NextRun::Now,
            true
        )
        .await
    );
    let (row, events) = s.saga_with_events(saga.id).await.unwrap().unwrap();
    assert_eq!(
        row.status,
        SagaStatus::Running,
        "the stale write changed nothing"
    );
    assert_eq!(events.len(), 3, "and added no event");
    assert!(events.iter().all(|e| e.detail["n"] != 99));

    // The new holder's write applies; handing the lease back frees it.
    let done = [event(EventKind::SagaCompleted, None, 3)];
    assert!(
        persist(
            s,
            saga.id,
            2,
            SagaStatus::Completed,
            &done,
            NextRun::Never,
            false
        )
        .await
    );
    let (row, events) = s.saga_with_events(saga.id).await.unwrap().unwrap();
    assert_eq!(row.status, SagaStatus::Completed);
    assert_eq!(row.lease.owner, None);
    assert_eq!(row.lease.next_run_at, None);
    assert_eq!(events.len(), 4);
}

async fn leases_claim_renew_release_take_and_reclaim(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let saga = new_id(create(s, Req::new(json!({}))).await);
    // Held by its creator: nobody can claim it; the claim says when it becomes claimable.
    let a = Leases::new(SAGAS, s.clone(), "a", TTL);
    let b = Leases::new(SAGAS, s.clone(), "b", TTL);
    let none = a.claim::<SagaRow>(10).await.unwrap();
    assert!(none.rows.is_empty());
    let next = none.next_due_in.expect("claimable at the lease's expiry");
    assert!(next > Duration::from_secs(25) && next <= TTL, "{next:?}");

    // Handed back (due now): a claims it (epoch 2, taken over from the creator).
    assert!(persist(s, saga.id, 1, SagaStatus::Running, &[], NextRun::Now, false).await);
    let claimed = a.claim::<SagaRow>(10).await.unwrap();
    assert_eq!(claimed.rows.len(), 1);
    let held = &claimed.rows[0];
    assert_eq!((held.id, held.lease.epoch), (saga.id, 2));
    assert_eq!(held.lease.owner.as_deref(), Some("a"));
    assert!(b.claim::<SagaRow>(10).await.unwrap().rows.is_empty());

    // Renew: only the holder extends its lease.
    let before = s.saga(saga.id).await.unwrap().unwrap().lease.until.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(b.renew(&[saga.id]).await.unwrap(), 0);
    assert_eq!(a.renew(&[saga.id]).await.unwrap(), 1);
    let after = s.saga(saga.id).await.unwrap().unwrap().lease.until.unwrap();
    assert!(after > before, "{before} → {after}");

    // Take: not while held (IfFree), or stealing (epoch 3); the old holder's hand-back is fenced.
    assert!(
        b.take::<SagaRow>(saga.id, Take::IfFree, "true")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.take::<SagaRow>(saga.id, Take::Steal, "status = 'failed'")
            .await
            .unwrap()
            .is_none(),
        "the condition is checked"
    );
    let stolen = b
        .take::<SagaRow>(saga.id, Take::Steal, "status = 'running'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stolen.lease.epoch, 3);
    assert_eq!(a.release(&[saga.id], &[2], "a").await.unwrap(), 0);
    assert_eq!(b.release(&[saga.id], &[3], "b").await.unwrap(), 1);
    let row = s.saga(saga.id).await.unwrap().unwrap();
    assert_eq!((row.lease.owner, row.lease.until), (None, None));

    // Claimed again, then a "restart" of a: its own leases come back with a new epoch.
    let again = a.claim::<SagaRow>(10).await.unwrap();
    assert_eq!(again.rows[0].lease.epoch, 4);
    let a_restarted = Leases::new(SAGAS, s.clone(), "a", TTL);
    let back = a_restarted.reclaim_own::<SagaRow>().await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].id, back[0].lease.epoch), (saga.id, 5));
    assert!(b.reclaim_own::<SagaRow>().await.unwrap().is_empty());
    // The previous incarnation's writes are fenced.
    assert!(!persist(s, saga.id, 4, SagaStatus::Running, &[], NextRun::Now, true).await);

    // A finished saga is never claimed.
    assert!(
        persist(
            s,
            saga.id,
            5,
            SagaStatus::Completed,
            &[],
            NextRun::Never,
            false
        )
        .await
    );
    let none = b.claim::<SagaRow>(10).await.unwrap();
    assert!(none.rows.is_empty());
    assert_eq!(none.next_due_in, None, "nothing is waiting");
}

async fn a_claim_waits_for_the_due_time(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let b = Leases::new(SAGAS, s.clone(), "b", TTL);
    // A saga due later is claimable only then (and the claim says when).
    let later = new_id(create(s, Req::new(json!({"later": true}))).await);
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(400);
    assert!(
        persist(
            s,
            later.id,
            1,
            SagaStatus::Running,
            &[],
            NextRun::At(at),
            false
        )
        .await
    );
    let wait = b.claim::<SagaRow>(10).await.unwrap();
    assert!(wait.rows.is_empty());
    let due_in = wait.next_due_in.expect("due later");
    assert!(due_in <= Duration::from_millis(400), "{due_in:?}");
    tokio::time::sleep(due_in + Duration::from_millis(20)).await;
    assert_eq!(b.claim::<SagaRow>(10).await.unwrap().rows.len(), 1);
}

async fn the_list_filters_and_pages_newest_first(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = Req::new(json!({ "i": i }));
        if i == 1 {
            r.definition = "other";
        }
        let bk = format!("bk-{i}");
        r.business_key = Some(&bk);
        ids.push(new_id(create(s, r).await).id);
    }
    // Two of them completed.
    for id in [ids[2], ids[4]] {
        assert!(persist(s, id, 1, SagaStatus::Completed, &[], NextRun::Never, false).await);
    }
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    let all: Vec<Uuid> = s
        .list(&SagaFilter::default(), 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, newest_first);

    let f = SagaFilter {
        status: Some(SagaStatus::Completed),
        ..Default::default()
    };
    let done: Vec<Uuid> = s.list(&f, 10).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(done, [ids[4], ids[2]]);
    let f = SagaFilter {
        definition: Some("other"),
        ..Default::default()
    };
    let other: Vec<Uuid> = s.list(&f, 10).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(other, [ids[1]]);
    let f = SagaFilter {
        business_key: Some("bk-3"),
        ..Default::default()
    };
    assert_eq!(s.list(&f, 10).await.unwrap()[0].id, ids[3]);
    let f = SagaFilter {
        id: Some(ids[0]),
        ..Default::default()
    };
    assert_eq!(s.list(&f, 10).await.unwrap().len(), 1);

    // Pages of two by cursor (the last id of the previous page), and a time range.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let f = SagaFilter {
            before,
            ..Default::default()
        };
        let page: Vec<Uuid> = s.list(&f, 2).await.unwrap().iter().map(|r| r.id).collect();
        if page.is_empty() {
            break;
        }
        before = page.last().copied();
        pages.push(page);
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat(), newest_first);
    let f = SagaFilter {
        from: Some(ids[1]),
        before: Some(ids[3]),
        ..Default::default()
    };
    let range: Vec<Uuid> = s.list(&f, 10).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(range, [ids[2], ids[1]]);
}

async fn old_client_keys_are_purged(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    for k in ["k-1", "k-2", "k-3"] {
        let mut r = Req::new(json!({ "k": k }));
        r.key = Some(k);
        new_id(create(s, r).await);
    }
    // Kept for a day: nothing to purge.
    assert_eq!(
        s.purge_keys(Duration::from_secs(86_400), 10)
            .await
            .unwrap()
            .0,
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Older than 10 ms: purged in batches of two.
    let retention = Duration::from_millis(10);
    assert_eq!(s.purge_keys(retention, 2).await.unwrap().0, 2);
    assert_eq!(s.purge_keys(retention, 2).await.unwrap().0, 1);
    assert_eq!(s.purge_keys(retention, 2).await.unwrap().0, 0);
    // A purged key is free again: the same key now starts a new saga.
    let mut r = Req::new(json!({ "k": "k-1" }));
    r.key = Some("k-1");
    assert!(matches!(create(s, r).await, Created::New(_)));
}

async fn finished_sagas_are_forgotten_then_deleted(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let mut r = Req::new(json!({"done": true}));
    r.key = Some("k-done");
    r.business_key = Some("o-done");
    let done = new_id(create(s, r).await);
    let running = new_id(create(s, Req::new(json!({"running": true}))).await);
    assert!(
        persist(
            s,
            done.id,
            1,
            SagaStatus::Completed,
            &[],
            NextRun::Never,
            false
        )
        .await
    );
    assert!(
        persist(
            s,
            running.id,
            1,
            SagaStatus::Running,
            &[],
            NextRun::Now,
            false
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let finals = ["completed", "compensated"];

    // A forget that fails deletes nothing.
    let r: Result<Option<u64>, sqlx::Error> = s
        .purge_finished_sagas(&finals, Duration::from_millis(10), 10, 42, async |_| {
            Err(sqlx::Error::Protocol("a service did not answer".into()))
        })
        .await;
    assert!(r.is_err());
    assert!(s.saga(done.id).await.unwrap().is_some());

    let mut forgotten = Vec::new();
    let n: Option<u64> = s
        .purge_finished_sagas(&finals, Duration::from_millis(10), 10, 42, async |ids| {
            forgotten.extend_from_slice(ids);
            Ok::<_, sqlx::Error>(())
        })
        .await
        .unwrap();
    assert_eq!(n, Some(1));
    assert_eq!(
        forgotten,
        [done.id],
        "only the finished saga, forgotten first"
    );
    assert!(s.saga(done.id).await.unwrap().is_none());
    assert!(s.saga(running.id).await.unwrap().is_some());
    // Its business key and client key went with it.
    let mut r = Req::new(json!({"done": "again"}));
    r.key = Some("k-done");
    r.business_key = Some("o-done");
    assert!(matches!(create(s, r).await, Created::New(_)));
}

async fn events_keep_their_order(db: Db) {
    let s = &db.store;
    with_definitions(s).await;
    let saga = new_id(create(s, Req::new(json!({}))).await);
    let mut epoch = 1;
    for round in 0..3u64 {
        let evs: Vec<EventRecord> = (0..3)
            .map(|i| event(EventKind::StepInProgress, Some("a"), 10 * (round + 1) + i))
            .collect();
        assert!(
            persist(
                s,
                saga.id,
                epoch,
                SagaStatus::Running,
                &evs,
                NextRun::Now,
                true
            )
            .await
        );
        epoch = s.saga(saga.id).await.unwrap().unwrap().lease.epoch;
    }
    let (_, events) = s.saga_with_events(saga.id).await.unwrap().unwrap();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e.detail["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 10, 11, 12, 20, 21, 22, 30, 31, 32]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(events[0].kind, "saga_started");
    assert_eq!(events[1].step.as_deref(), Some("a"));
}
