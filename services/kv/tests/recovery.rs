//! Crash recovery with the real `kv` binaries and SIGKILL: prepared transactions keep their
//! locks across a restart (rebuilt before the first request is served) until the coordinator
//! answers; committed data survives every process being killed; a participant that lost its
//! unprepared work votes NO, so nothing is ever half-committed; a coordinator that dies right
//! after its commit record finishes the transaction when it restarts, and the participants hold
//! their locks until then.

mod common;

use common::{Api, COORDINATOR, Cluster, assert_problem, assert_value, key_on};
use uuid::Uuid;

/// Begin `t` as the oldest transaction there is (priority 1, so any later one is younger) on
/// shards 0 and 1 (processes 1 and 2), write `new` to `k0` and `k1`, and ask for the commit:
/// the coordinator is down or dies, so the answer is 503 and both shards stay prepared.
async fn prepare_both(c: &Cluster, t: Uuid, k0: &str, k1: &str) {
    for (p, k) in [(1, k0), (2, k1)] {
        c.begin_as(p, t, 1).await;
        let (s, b) = c.write(p, t, k, "new").await;
        assert_eq!(s, 200, "{b}");
    }
    let answer = c.commit(1, t, &[0, 1]).await;
    assert_problem(&answer, 503, "outcome-pending");
}

/// Process `p` holds one prepared transaction and its one exclusive lock.
async fn assert_one_prepared_lock(c: &Cluster, p: usize) {
    let s = c.status(p).await;
    assert_eq!(
        (s["prepared"].as_u64(), s["locked_keys"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shard_rebuilds_prepared_locks_before_serving_then_resolves_them() {
    let mut c = Cluster::start("prepared", 2, false, &[("KV_COMMIT_WAIT_MS", "300")]).await;
    let (k0, k1) = (key_on(0, 2, "p-"), key_on(1, 2, "p-"));
    let client = c.client();
    client.put(&k0, "old0").await.expect("seed k0");
    client.put(&k1, "old1").await.expect("seed k1");

    // The coordinator is down: shard 0 prepares, and the outcome stays pending.
    let t = Uuid::now_v7();
    prepare_both(&c, t, &k0, &k1).await;
    assert_eq!(c.status(1).await["prepared"], 1);

    c.kill(1);
    c.spawn(1);
    c.wait_up(1).await;
    // The very first requests served already see the prepared transaction and its lock.
    assert_one_prepared_lock(&c, 1).await;
    let u = Uuid::now_v7();
    c.begin_as(1, u, 2).await;
    // A younger reader must die on the prepared lock.
    assert_problem(&c.read(1, u, &k0).await, 409, "conflict");

    // The coordinator comes up knowing nothing of T: presumed abort resolves the shard.
    c.spawn(COORDINATOR);
    c.wait_up(COORDINATOR).await;
    c.wait_status(1, "the in-doubt transaction resolved", |s| {
        s["prepared"] == 0
    })
    .await;
    assert_value(&client, &k0, Some("old0")).await;
    assert_value(&client, &k1, Some("old1")).await;
    c.commit_is(1, t, &[0, 1], "aborted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_commits_survive_kill_9_of_every_process() {
    let mut c = Cluster::start("durable", 3, true, &[]).await;
    let keys: Vec<String> = (0..3).map(|s| key_on(s, 3, "d-")).collect();
    let client = c.client();
    client
        .transaction(|t| {
            let keys = keys.clone();
            async move {
                for k in &keys {
                    t.write(k, &format!("v-{k}")).await?;
                }
                Ok(())
            }
        })
        .await
        .expect("cross-shard commit");
    for p in 0..4 {
        c.kill(p);
    }
    for p in 0..4 {
        c.spawn(p);
    }
    for p in 0..4 {
        c.wait_up(p).await;
        assert_eq!(c.status(p).await["durability"], "immediate");
    }
    for k in &keys {
        assert_value(&client, k, Some(&format!("v-{k}"))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_lost_its_work_votes_no_and_nothing_is_half_committed() {
    let mut c = Cluster::start("vote-no", 2, true, &[]).await;
    let (k0, k1) = (key_on(0, 2, "n-"), key_on(1, 2, "n-"));
    let client = c.client();
    let t = client.begin();
    t.write(&k0, "x").await.expect("write k0");
    t.write(&k1, "x").await.expect("write k1");
    // Shard 1 dies before it prepared: its buffered write is gone.
    c.restart(2).await;
    let result = t.commit().await;
    assert!(
        matches!(result, Err(kv_client::Error::Aborted(_))),
        "commit must abort, got {result:?}"
    );
    assert_value(&client, &k0, None).await;
    assert_value(&client, &k1, None).await;
    c.wait_status(1, "no transaction left prepared", |s| s["prepared"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_participants_keep_their_locks_until_a_restarted_coordinator_commits() {
    let mut c = Cluster::start("coord-crash", 2, false, &[("KV_COMMIT_WAIT_MS", "300")]).await;
    c.spawn_with(
        COORDINATOR,
        &[("TANDEM_CRASH", "kv.coordinator.after_commit_record")],
    );
    c.wait_up(COORDINATOR).await;
    let (k0, k1) = (key_on(0, 2, "c-"), key_on(1, 2, "c-"));
    // The coordinator dies after its commit record.
    let t = Uuid::now_v7();
    prepare_both(&c, t, &k0, &k1).await;
    assert!(
        c.wait_exit(COORDINATOR),
        "the coordinator aborted at its crash point"
    );

    // Both participants voted YES and wait, holding their exclusive locks.
    for p in [1, 2] {
        assert_one_prepared_lock(&c, p).await;
    }
    let client = c.client();
    let reader = client.begin();
    let read = reader.read(&k1).await;
    assert!(
        matches!(read, Err(kv_client::Error::Conflict(_))),
        "{read:?}"
    );

    // The restarted coordinator finds its Commit record and finishes the transaction.
    c.spawn(COORDINATOR);
    c.wait_up(COORDINATOR).await;
    for p in [1, 2] {
        c.wait_status(p, "the commit delivered", |s| s["prepared"] == 0)
            .await;
    }
    assert_value(&client, &k0, Some("new")).await;
    assert_value(&client, &k1, Some("new")).await;
    c.commit_is(1, t, &[0, 1], "committed").await;
}
