//! Defect 5: a silent network break on the LISTEN connection. A small TCP proxy of the test's
//! own sits between the listener and Postgres; "going silent" stops forwarding on the
//! connections it has (without closing them), as a dead peer or a dropped route does. The
//! listener must notice through its heartbeat, reconnect, and deliver wake-ups again. The same
//! set-up without a heartbeat shows the defect: nothing is noticed, wake-ups stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orchestrator::wake::{Heartbeat, listen};
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Forwards to Postgres; [`Proxy::silence`] freezes every connection open at that moment.
struct Proxy {
    port: u16,
    /// Connections numbered below this are silent.
    cutoff: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cutoff = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (c, n) = (cutoff.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let (down, _) = l.accept().await.unwrap();
                let up = TcpStream::connect(&upstream).await.unwrap();
                let me = n.fetch_add(1, Ordering::SeqCst);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, me, c.clone()));
                tokio::spawn(pump(ur, dw, me, c.clone()));
            }
        });
        Proxy { port, cutoff, next }
    }

    fn silence(&self) {
        self.cutoff
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Copy until the connection goes silent; then hold both ends open and forward nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    me: u64,
    cutoff: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if me < cutoff.load(Ordering::SeqCst) {
            let _keep_open = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn notify(channel: &str) {
    let opts: PgConnectOptions = tandem_kit::testing::server_url().parse().unwrap();
    let pool = sqlx::PgPool::connect_with(opts).await.unwrap();
    sqlx::query("SELECT pg_notify($1, 'x')")
        .bind(channel)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Listen through a proxy; then silence it and announce work. Some(time until the listener
/// heard again) or None if it did not within `bound`.
async fn silent_break(heartbeat: Option<Duration>, bound: Duration) -> Option<Duration> {
    let server: PgConnectOptions = tandem_kit::testing::server_url().parse().unwrap();
    let upstream = format!("{}:{}", server.get_host(), server.get_port());
    let proxy = Proxy::start(upstream).await;
    let opts = server.clone().host("127.0.0.1").port(proxy.port);
    let channel = format!("hb_{}", uuid::Uuid::now_v7().simple());
    let woken = Arc::new(Notify::new());
    let (_stop, shutdown) = watch::channel(false);
    let w = woken.clone();
    let ch: &'static str = Box::leak(channel.clone().into_boxed_str());
    tokio::spawn(listen(
        opts,
        vec![ch],
        Heartbeat {
            every: heartbeat,
            timeout: heartbeat.unwrap_or(Duration::from_secs(1)),
        },
        move || w.notify_one(),
        shutdown,
    ));
    // Connected: the first wake-up; a notification is heard.
    tokio::time::timeout(Duration::from_secs(10), woken.notified())
        .await
        .expect("the listener connects");
    notify(&channel).await;
    tokio::time::timeout(Duration::from_secs(10), woken.notified())
        .await
        .expect("a notification is heard through the proxy");

    proxy.silence();
    let t0 = tokio::time::Instant::now();
    // Announce work now and then while the connection is silent; the listener must hear again
    // (its reconnect wakes it, and it hears the announcements after that).
    let heard = async {
        loop {
            notify(&channel).await;
            if tokio::time::timeout(Duration::from_millis(200), woken.notified())
                .await
                .is_ok()
            {
                return t0.elapsed();
            }
        }
    };
    let heard = tokio::time::timeout(bound, heard).await.ok()?;
    // And wake-ups work again after the reconnect.
    notify(&channel).await;
    tokio::time::timeout(Duration::from_secs(5), woken.notified())
        .await
        .expect("wake-ups work again");
    Some(heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_notices_a_silent_break_and_the_listener_reconnects() {
    let took = silent_break(Some(Duration::from_millis(300)), Duration::from_secs(5))
        .await
        .expect("the listener noticed the silent break and reconnected");
    eprintln!("silent break noticed and wake-ups back after {took:?} (heartbeat 300 ms)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_heartbeat_a_silent_break_goes_unnoticed() {
    // The control: the proxy really makes the connection silent, and nothing else notices.
    assert_eq!(silent_break(None, Duration::from_secs(3)).await, None);
}
