//! CI-sized runs of every benchmark scenario, so the benchmarks never rot. They assert
//! correctness (every decision allowed, exact review counts, cache hits), never speed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::sync::Arc;

use trustgate_tests::bench::{self, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_cost_smoke() {
    let cluster = Cluster::start().await;
    let kube = cluster.kube().await;
    let token = cluster.token();
    let request = bench::worker_request(&token);
    let (wasm, _rt) = bench::wasm_chain(kube.clone(), "tokenreview").await;
    let native = bench::native_chain(kube);
    let (_, n) = bench::decision_single(&wasm, &request, 3, 50).await;
    assert_eq!(n, 150);
    let (_, n) = bench::decision_single(&native, &request, 3, 50).await;
    assert_eq!(n, 150);
    let (_, n) = bench::decision_parallel(Arc::new(wasm), request.clone(), 4, 50).await;
    assert_eq!(n, 200);
    assert_eq!(
        cluster.api.token_reviews(),
        1,
        "only the first decision reviews the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_smoke_wasm_and_native() {
    let cluster = Cluster::start().await;
    let token = cluster.token();
    let sections = format!(
        "[kubernetes]\nkubeconfig = {:?}\n[limits]\n{}",
        cluster.kubeconfig.display().to_string(),
        bench::LOOPBACK_STORM_LIMITS
    );
    let gw = trustgate_tests::gateway(&sections, &bench::chain_toml("tokenreview")).await;
    let r = bench::handshakes(&gw.url(), None, &token, 8, 100).await;
    assert_eq!(r.handshakes, 100);
    let native = bench::native_chain(gw.running.kubernetes.clone().unwrap());
    gw.running.state.swap_chain(trustgate_gateway::LoadedChain {
        chain: Arc::new(native),
        plugins: gw.running.state.plugins(),
    });
    let r = bench::handshakes(&gw.url(), None, &token, 8, 100).await;
    assert_eq!(r.handshakes, 100);
    assert!(r.p50 <= r.p99);
    assert_eq!(cluster.api.token_reviews(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_smoke_counts_reviews_exactly() {
    for (mode, expected_reviews) in [("tokenreview", 10), ("jwks", 0)] {
        let cluster = Cluster::start().await;
        cluster
            .api
            .set_latency(std::time::Duration::from_millis(20));
        let tokens: Vec<String> = (0..10).map(|_| cluster.token()).collect();
        let sections = format!(
            "[kubernetes]\nkubeconfig = {:?}\n[limits]\n{}",
            cluster.kubeconfig.display().to_string(),
            bench::LOOPBACK_STORM_LIMITS
        );
        let gw = trustgate_tests::gateway(&sections, &bench::chain_toml(mode)).await;
        let (_, clients) = bench::join_storm(&gw.url(), &tokens, 100).await;
        assert_eq!(clients.len(), 100);
        assert_eq!(cluster.api.token_reviews(), expected_reviews, "{mode}");
        if mode == "jwks" {
            assert_eq!(cluster.api.jwks_fetches(), 1);
        }
        assert_eq!(gw.running.state.sessions().len(), 100);
    }
}

#[test]
fn plugin_load_smoke_hits_the_cache() {
    for name in ["allowlist", "k8s-sa-trust"] {
        let r = bench::plugin_load(name, 2);
        assert!(r.size > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_smoke_every_session_keeps_ticking() {
    let cluster = Cluster::start().await;
    let tokens: Vec<String> = (0..10).map(|_| cluster.token()).collect();
    let sections = format!(
        "[kubernetes]\nkubeconfig = {:?}\n[limits]\ntick_interval_ms = 50\n{}",
        cluster.kubeconfig.display().to_string(),
        bench::LOOPBACK_STORM_LIMITS
    );
    let gw = trustgate_tests::gateway(&sections, &bench::chain_toml("tokenreview")).await;
    let (_, mut clients) = bench::join_storm(&gw.url(), &tokens, 200).await;
    assert_eq!(gw.running.state.sessions().len(), 200);
    // the measurement the full benchmark takes works on this process too
    assert!(bench::proc_rss_kib(std::process::id()) > 0);
    for c in clients.iter_mut() {
        let first = c.event("tick").await;
        let second = c.event("tick").await;
        assert!(second["seq"].as_u64() > first["seq"].as_u64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_row_measures_a_permit() {
    // Each policy must let the benchmark's request through; policy_costs asserts every call.
    for (name, bytes, config) in bench::example_policies() {
        let r = bench::policy_costs(name, &bytes, config, 1, 2, 5).await;
        assert_eq!(r.calls, 11, "{name}");
        assert!(r.memory > 0, "{name}: an instance holds memory");
        assert!(r.size == bytes.len());
    }
}
