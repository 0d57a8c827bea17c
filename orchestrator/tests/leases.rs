//! The lease machinery is not saga-specific: a second kind of row — a `jobs` table this test
//! creates — goes through claim, renew, hand-back (with its NOTIFY), fencing and the wake-up of
//! an idle worker's claim loop, with the same code the sagas use.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator::lease::{LeaseColumns, LeaseKind, Leased, Leases, Take};
use orchestrator::worker::{Plumbing, Worker, claim_loop};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

const JOBS: LeaseKind = LeaseKind {
    name: "job",
    table: "jobs",
    columns: "job_id, owner, owner_until, fence, wake_at, payload",
    lease: LeaseColumns {
        id: "job_id",
        owner: "owner",
        until: "owner_until",
        epoch: "fence",
        due: "wake_at",
    },
    channel: "test_jobs",
};

#[derive(Debug)]
struct Job {
    id: Uuid,
    epoch: i64,
    payload: String,
}

impl sqlx::FromRow<'_, PgRow> for Job {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Job {
            id: row.try_get("job_id")?,
            epoch: row.try_get("fence")?,
            payload: row.try_get("payload")?,
        })
    }
}

// A leased row decodes from both stores' rows (the lease machinery runs on either).
impl sqlx::FromRow<'_, sqlx::sqlite::SqliteRow> for Job {
    fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Job {
            id: row.try_get("job_id")?,
            epoch: row.try_get("fence")?,
            payload: row.try_get("payload")?,
        })
    }
}

impl Leased for Job {
    fn id(&self) -> Uuid {
        self.id
    }
    fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// A fresh database with a `jobs` table; the guard drops it when the test passes.
async fn jobs_db() -> (PgPool, tandem_kit::testing::TestDatabases) {
    let dbs = tandem_kit::testing::fresh_database("leases_jobs").await;
    let url = dbs.first_url();
    let pool = tandem_kit::db::connect(&url, 4).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE jobs (job_id uuid PRIMARY KEY, owner text, owner_until timestamptz, \
         fence bigint NOT NULL DEFAULT 0, wake_at timestamptz, payload text NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pool, dbs)
}

async fn add_job(pool: &PgPool, payload: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO jobs (job_id, wake_at, payload) VALUES ($1, now(), $2)")
        .bind(id)
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
    id
}

/// The holder's fenced write of a job (what a kind's own writes look like).
async fn fenced_write(pool: &PgPool, job: &Job, payload: &str) -> bool {
    let sql = format!(
        "UPDATE jobs SET payload = $3 WHERE job_id = $1 AND {}",
        JOBS.fence(2)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(job.id)
        .bind(job.epoch)
        .bind(payload)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected()
        == 1
}

async fn lease_until(pool: &PgPool, id: Uuid) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT owner_until FROM jobs WHERE job_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kind_of_row_is_claimed_renewed_fenced_and_handed_back() {
    let (pool, _dbs) = jobs_db().await;
    let a = Leases::new(JOBS, pool.clone(), "a", Duration::from_secs(30));
    let b = Leases::new(JOBS, pool.clone(), "b", Duration::from_secs(30));
    let id = add_job(&pool, "p").await;

    // Claim: a takes it (epoch 1); b finds nothing claimable, and learns when it will be.
    let claimed = a.claim::<Job>(10).await.unwrap();
    assert_eq!(claimed.rows.len(), 1);
    let job = &claimed.rows[0];
    assert_eq!((job.id, job.epoch, job.payload.as_str()), (id, 1, "p"));
    let other = b.claim::<Job>(10).await.unwrap();
    assert!(other.rows.is_empty());
    let next = other
        .next_due_in
        .expect("the held job is claimable at its expiry");
    assert!(next > Duration::from_secs(25), "{next:?}");

    // Renew: only the holder extends its lease.
    let before = lease_until(&pool, id).await;
    assert_eq!(b.renew(&[id]).await.unwrap(), 0);
    assert_eq!(a.renew(&[id]).await.unwrap(), 1);
    assert!(lease_until(&pool, id).await > before);

    // Fencing: b takes the job over (epoch 2); a's writes and hand-back no longer apply.
    assert!(fenced_write(&pool, job, "a1").await);
    assert!(
        b.take::<Job>(id, Take::IfFree, "true")
            .await
            .unwrap()
            .is_none(),
        "a holds it"
    );
    let taken = b
        .take::<Job>(id, Take::Steal, "true")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.epoch, 2);
    assert!(!fenced_write(&pool, job, "a2").await, "a is fenced");
    assert_eq!(a.release(&[id], &[job.epoch], "a").await.unwrap(), 0);
    assert!(fenced_write(&pool, &taken, "b1").await);

    // Hand-back: one NOTIFY on the kind's channel; the job is due at once for anyone.
    let opts = (*pool.connect_options()).clone();
    let mut listener = orchestrator::wake::connect(&opts, &[JOBS.channel])
        .await
        .unwrap();
    assert_eq!(b.release(&[id], &[taken.epoch], "b").await.unwrap(), 1);
    let n = tokio::time::timeout(Duration::from_secs(5), listener.try_recv())
        .await
        .expect("the hand-back is announced")
        .unwrap()
        .unwrap();
    assert_eq!((n.channel(), n.payload()), (JOBS.channel, "b"));
    let again = a.claim::<Job>(10).await.unwrap();
    assert_eq!(again.rows.len(), 1);
    assert_eq!(
        (again.rows[0].epoch, again.rows[0].payload.as_str()),
        (3, "b1")
    );

    // Reclaim at start-up: a's own leases come back with a new epoch.
    let back = a.reclaim_own::<Job>().await.unwrap();
    assert_eq!((back.len(), back[0].epoch), (1, 4));
}

/// A worker for jobs that records what it was given.
struct JobWorker {
    work: Plumbing,
    started: Mutex<Vec<Uuid>>,
    got: tokio::sync::Notify,
}

impl Worker for JobWorker {
    type Row = Job;
    fn plumbing(&self) -> &Plumbing {
        &self.work
    }
    fn start(self: &Arc<Self>, row: Job) {
        self.started.lock().unwrap().push(row.id);
        self.got.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_of_another_kind_is_woken_by_a_hand_back() {
    let (pool, _dbs) = jobs_db().await;
    let w = Arc::new(JobWorker {
        work: Plumbing::new(
            Leases::new(JOBS, pool.clone(), "idle", Duration::from_secs(30)),
            8,
        ),
        started: Mutex::new(Vec::new()),
        got: tokio::sync::Notify::new(),
    });
    let other = Leases::new(JOBS, pool.clone(), "busy", Duration::from_secs(30));
    let id = add_job(&pool, "p").await;
    let held = other.claim::<Job>(1).await.unwrap().rows.pop().unwrap();

    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    // An hour between polls, so only the wake-up can explain a prompt claim.
    tokio::spawn(claim_loop(
        w.clone(),
        Duration::from_secs(3600),
        16,
        shutdown.clone(),
    ));
    let wl = w.clone();
    tokio::spawn(orchestrator::wake::listen(
        (*pool.connect_options()).clone(),
        vec![JOBS.channel],
        orchestrator::wake::Heartbeat {
            every: Some(Duration::from_secs(5)),
            timeout: Duration::from_secs(5),
        },
        move || wl.signals().wake(),
        shutdown,
    ));
    // Let the first pass (and the listener's first wake-up) find nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.started.lock().unwrap().is_empty());

    let t0 = std::time::Instant::now();
    assert_eq!(
        other.release(&[id], &[held.epoch], "busy").await.unwrap(),
        1
    );
    tokio::time::timeout(Duration::from_secs(5), w.got.notified())
        .await
        .expect("the idle worker claims the handed-back job at once");
    assert_eq!(*w.started.lock().unwrap(), vec![id]);
    eprintln!(
        "handed-back job claimed by the idle worker after {:?}",
        t0.elapsed()
    );
}
