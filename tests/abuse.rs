//! Load and abuse on loopback, bounded in count and time: while hundreds of idle, slow and
//! garbage connections and a flood of failing handshakes come from other addresses, honest
//! handshakes keep succeeding with a p99 under 50 ms — or, on a machine so busy that honest
//! handshakes alone are slow, within 4× of their p99 without the attack, measured just
//! before it. Under `tests/stress.sh`, which starves the machine on purpose
//! (`TRUSTGATE_STARVED=1`), no latency can be promised: the test still requires every honest
//! handshake to succeed and the attackers to be drained, and reports the latencies.
//!
//! Loopback is a /8 on Linux, so each kind of attacker gets addresses of its own (127.0.0.x)
//! and the honest client comes from 127.0.0.1, as distinct hosts would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use trustgate_tests::client::{WsClient, connect_params, tcp_from};
use trustgate_tests::{gateway, scripted};

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn addr(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_handshakes_stay_fast_under_idle_slow_garbage_and_failing_floods() {
    let gw = gateway(
        "[limits]\nhandshake_timeout_ms = 2000\n[audit]\noutput = \"off\"\n",
        &scripted(
            "authn",
            r#"decision = "allow", method = "token", token = "good", subject = "w", roles = ["worker"], skip_pairing = true"#,
        ),
    )
    .await;
    let url = gw.url();
    let (_, baseline_p99) = honest_handshakes(&url).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = tokio::task::JoinSet::new();

    // 300 idle sockets (never a byte) from 127.0.0.10-19.
    let mut idle = Vec::new();
    for i in 0..300u32 {
        idle.push(tcp_from(&url, addr(10 + (i % 10) as u8)).await);
    }
    // 150 slow peers: upgraded, then silent, re-opened as the deadline closes them.
    for i in 0..150u32 {
        let (url, stop) = (url.clone(), stop.clone());
        attackers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut s = tcp_from(&url, addr(20 + (i % 5) as u8)).await;
                let _ = s.write_all(UPGRADE.as_bytes()).await;
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
            }
        });
    }
    // 100 garbage senders, 20 connections each: upgraded, then frames that are not the protocol.
    let garbage = Arc::new(AtomicU64::new(0));
    for i in 0..100u32 {
        let (url, stop, garbage) = (url.clone(), stop.clone(), garbage.clone());
        attackers.spawn(async move {
            for _ in 0..20 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = WsClient::open_from(&url, addr(30 + (i % 5) as u8)).await;
                c.send_text("{\"type\":\"req\",\"id\":1,\"method\":[]}")
                    .await;
                let _ = c.closed().await;
                garbage.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // A flood of failing handshakes from 20 addresses, 100 each.
    let refused = Arc::new(AtomicU64::new(0));
    for i in 0..20u32 {
        let (url, stop, refused) = (url.clone(), stop.clone(), refused.clone());
        attackers.spawn(async move {
            for _ in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = WsClient::open_from(&url, addr(40 + i as u8)).await;
                let res = c
                    .connect(connect_params(
                        "worker",
                        Some(json!({"method": "token", "token": "bad"})),
                        None,
                    ))
                    .await;
                assert_eq!(res["ok"], false);
                refused.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // The honest client, under attack.
    let (p50, p99) = honest_handshakes(&url).await;
    stop.store(true, Ordering::Relaxed);
    drop(idle);
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while attackers.join_next().await.is_some() {}
    })
    .await;
    assert!(
        drained.is_ok(),
        "the attackers stop within the handshake deadline"
    );

    eprintln!(
        "honest handshakes under abuse: p50 {p50:?}, p99 {p99:?} (without: p99 {baseline_p99:?}); {} failing handshakes, {} garbage connections",
        refused.load(Ordering::Relaxed),
        garbage.load(Ordering::Relaxed)
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0 && garbage.load(Ordering::Relaxed) > 0,
        "the attack ran"
    );
    if std::env::var_os("TRUSTGATE_STARVED").is_some() {
        return; // a CPU hog holds every core: latency is the hog's, not the gateway's
    }
    let bound = Duration::from_millis(50).max(baseline_p99 * 4);
    assert!(
        p99 < bound,
        "p99 {p99:?} (p50 {p50:?}); without the attack p99 {baseline_p99:?}"
    );
}

/// 200 honest handshakes, one after another, from the honest client's own address; returns
/// (p50, p99).
async fn honest_handshakes(url: &str) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        let mut c = WsClient::open_from(url, addr(1)).await;
        let res = c
            .connect(connect_params(
                "worker",
                Some(json!({"method": "token", "token": "good"})),
                None,
            ))
            .await;
        latencies.push(started.elapsed());
        assert_eq!(
            res["ok"], true,
            "an honest handshake failed under abuse: {res}"
        );
        c.close().await;
    }
    latencies.sort();
    (
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    )
}
