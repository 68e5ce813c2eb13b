//! k8s-sa-trust end to end: real WebSocket clients, a real gateway, the built-in plugin, the
//! `kube` client talking TLS to the test API server through a kubeconfig, and real RS256 tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trustgate_devcluster::{ApiServer, Fault, TokenRequest};
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway};

const AUDIENCE: &str = "trustgate";

fn plugin(mode: &str) -> String {
    format!(
        r#"[[auth.plugins]]
builtin = "k8s-sa-trust"
[auth.plugins.config]
mode = "{mode}"
audiences = ["{AUDIENCE}"]
require_pod_binding = true
[[auth.plugins.config.allow]]
namespace = "workers"
service_account = "runner"
[[auth.plugins.config.allow]]
namespace = "ops"
service_account = "console"
roles = ["operator"]
"#
    )
}

struct Cluster {
    api: ApiServer,
    gw: TestGateway,
    _dir: tempfile::TempDir,
}

async fn cluster_with(mode: &str, kube_extra: &str, limits: &str) -> Cluster {
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path()).unwrap();
    // Every client of these tests comes from 127.0.0.1: a storm of a thousand workers, or a
    // series of refusals, would otherwise meet the per-address pre-auth budget.
    // A short request timeout keeps the outage tests quick; a test that sets its own wins.
    let timeout = if kube_extra.contains("request_timeout_ms") {
        ""
    } else {
        "request_timeout_ms = 1000\n"
    };
    let sections = format!(
        "[kubernetes]\nkubeconfig = {:?}\n{timeout}retries = 1\n{kube_extra}\n[limits]\nmax_unauthenticated_per_address = 2048\nfailed_handshake_burst = 10000\n{limits}",
        kubeconfig.display().to_string()
    );
    let gw = gateway(&sections, &plugin(mode)).await;
    Cluster { api, gw, _dir: dir }
}

async fn cluster(mode: &str) -> Cluster {
    cluster_with(mode, "", "").await
}

async fn connect(gw: &TestGateway, role: &str, token: &str) -> Value {
    let mut c = WsClient::open(&gw.url()).await;
    c.connect(connect_params(
        role,
        Some(json!({"method": "k8s-sa-trust", "token": token})),
        None,
    ))
    .await
}

fn denied(res: &Value, code: &str, reason: &str) {
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], code, "{res}");
    assert_eq!(res["error"]["details"]["reason"], reason, "{res}");
    let retryable = code == "UNAVAILABLE";
    assert_eq!(res["error"]["retryable"], retryable, "{res}");
}

fn runner_token(api: &ApiServer) -> (String, trustgate_devcluster::Claims) {
    api.token(&TokenRequest::new("workers", "runner", AUDIENCE))
        .unwrap()
}

#[tokio::test]
async fn an_allowed_service_account_joins_without_pairing() {
    let k = cluster("tokenreview").await;
    let (token, claims) = runner_token(&k.api);
    let mut c = WsClient::open(&k.gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": token})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    let auth = &res["payload"]["auth"];
    assert_eq!(auth["pairing"], "skipped");
    assert_eq!(auth["method"], "k8s-sa-trust");
    assert_eq!(auth["subject"], "system:serviceaccount:workers:runner");
    assert_eq!(auth["expiresAtMs"], claims.exp * 1000);
    let info = c.request("i", "session.info", json!({})).await;
    let attrs = &info["payload"]["attributes"];
    let pod = claims.kubernetes.pod.as_ref().unwrap();
    assert_eq!(
        attrs["pod-uid"], pod.uid,
        "the pod uid comes from the pod-uid extra"
    );
    assert_ne!(attrs["pod-uid"], claims.kubernetes.serviceaccount.uid);
    assert_eq!(
        attrs["service-account-uid"],
        claims.kubernetes.serviceaccount.uid
    );
    assert_eq!(attrs["pod-name"], pod.name);
    assert_eq!(attrs["node-name"], "node-1");
    assert_eq!(attrs["namespace"], "workers");
    assert!(
        info["payload"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("system:serviceaccounts:workers"))
    );
}

#[tokio::test]
async fn every_bad_token_is_denied_with_its_own_reason_and_never_cached_as_allowed() {
    let k = cluster("tokenreview").await;
    let api = &k.api;
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "wrong namespace",
            api.token(&TokenRequest::new("default", "runner", AUDIENCE))
                .unwrap()
                .0,
            "FORBIDDEN",
            "namespace-not-allowed",
        ),
        (
            "wrong service account",
            api.token(&TokenRequest::new("workers", "intruder", AUDIENCE))
                .unwrap()
                .0,
            "FORBIDDEN",
            "service-account-not-allowed",
        ),
        (
            "wrong audience",
            api.token(&TokenRequest::new("workers", "runner", "someone-else"))
                .unwrap()
                .0,
            "UNAUTHENTICATED",
            "audience-mismatch",
        ),
        (
            "expired",
            {
                let mut r = TokenRequest::new("workers", "runner", AUDIENCE);
                r.issued_at = Some(trustgate_protocol::now_ms() / 1000 - 7200);
                api.token(&r).unwrap().0
            },
            "UNAUTHENTICATED",
            "token-expired",
        ),
        (
            "deleted pod",
            {
                let (t, c) = runner_token(api);
                assert!(api.delete_pod("workers", &c.kubernetes.pod.unwrap().name));
                t
            },
            "UNAUTHENTICATED",
            "token-invalidated",
        ),
        (
            "bad signature",
            {
                let (t, _) = runner_token(api);
                let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
                parts[2] = parts[2].chars().rev().collect();
                parts.join(".")
            },
            "UNAUTHENTICATED",
            "token-rejected",
        ),
        (
            "not bound to a pod",
            {
                let mut r = TokenRequest::new("workers", "runner", AUDIENCE);
                r.pod = None;
                api.token(&r).unwrap().0
            },
            "UNAUTHENTICATED",
            "pod-binding-required",
        ),
    ];
    for (what, token, code, reason) in &cases {
        let res = connect(&k.gw, "worker", token).await;
        assert_eq!(res["error"]["code"], *code, "{what}: {res}");
        denied(&res, code, reason);
        // again: still denied (whatever the cache holds, it is not an allow)
        let again = connect(&k.gw, "worker", token).await;
        denied(&again, code, reason);
    }
    let (token, _) = runner_token(api);
    denied(
        &connect(&k.gw, "operator", &token).await,
        "FORBIDDEN",
        "role-not-allowed",
    );
    let mut c = WsClient::open(&k.gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust"})),
            None,
        ))
        .await;
    denied(&res, "UNAUTHENTICATED", "token-missing");
    // an operator ServiceAccount may take the operator role
    let (ops, _) = api
        .token(&TokenRequest::new("ops", "console", AUDIENCE))
        .unwrap();
    assert_eq!(connect(&k.gw, "operator", &ops).await["ok"], true);
}

#[tokio::test]
async fn api_outages_are_unavailable_and_retryable_and_recover() {
    let k = cluster("tokenreview").await;
    let (token, _) = runner_token(&k.api);

    k.api.set_down(true);
    let res = connect(&k.gw, "worker", &token).await;
    denied(&res, "UNAVAILABLE", "review-unavailable");
    assert!(res["error"]["retryAfterMs"].as_u64().is_some());
    k.api.set_down(false);
    assert_eq!(
        connect(&k.gw, "worker", &token).await["ok"],
        true,
        "recovers once the API is back"
    );

    let (token, _) = runner_token(&k.api);
    let before = k.api.token_reviews();
    k.api.inject([Fault::InternalError, Fault::InternalError]);
    denied(
        &connect(&k.gw, "worker", &token).await,
        "UNAVAILABLE",
        "review-unavailable",
    );
    assert_eq!(
        k.api.token_reviews() - before,
        2,
        "one retry after a 500, then give up"
    );
    assert_eq!(
        connect(&k.gw, "worker", &token).await["ok"],
        true,
        "errors are never cached"
    );

    let (token, _) = runner_token(&k.api);
    k.api.set_latency(Duration::from_millis(1500));
    denied(
        &connect(&k.gw, "worker", &token).await,
        "UNAVAILABLE",
        "review-unavailable",
    );
    k.api.set_latency(Duration::ZERO);
    assert_eq!(connect(&k.gw, "worker", &token).await["ok"], true);
}

#[tokio::test]
async fn too_many_requests_is_retried_after_retry_after() {
    let k = cluster("tokenreview").await;
    let (token, _) = runner_token(&k.api);
    k.api.inject([Fault::TooManyRequests { retry_after_s: 1 }]);
    let before = k.api.token_reviews();
    let started = Instant::now();
    let res = connect(&k.gw, "worker", &token).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(k.api.token_reviews() - before, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
}

#[tokio::test]
async fn the_gateways_own_credentials_or_ca_being_wrong_is_unavailable_and_not_retried() {
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let forbidden = api
        .kubeconfig_with(
            dir.path(),
            "forbidden",
            &api.ca_pem(),
            api.unprivileged_token(),
        )
        .unwrap();
    let gw = gateway(
        &format!(
            "[kubernetes]\nkubeconfig = {:?}\nretries = 2\n",
            forbidden.display().to_string()
        ),
        &plugin("tokenreview"),
    )
    .await;
    let (token, _) = runner_token(&api);
    let before = api.token_reviews();
    denied(
        &connect(&gw, "worker", &token).await,
        "UNAVAILABLE",
        "review-forbidden",
    );
    assert_eq!(api.token_reviews() - before, 1, "a 403 is never retried");

    let other_ca = trustgate_tests::tls::TestCa::new();
    let wrong_ca = api
        .kubeconfig_with(
            dir.path(),
            "wrong-ca",
            &other_ca.pem(),
            api.reviewer_token(),
        )
        .unwrap();
    let gw = gateway(
        &format!(
            "[kubernetes]\nkubeconfig = {:?}\nretries = 0\n",
            wrong_ca.display().to_string()
        ),
        &plugin("tokenreview"),
    )
    .await;
    let before = api.token_reviews();
    denied(
        &connect(&gw, "worker", &token).await,
        "UNAVAILABLE",
        "review-unavailable",
    );
    assert_eq!(
        api.token_reviews(),
        before,
        "no request reaches a server whose CA is not trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_workers_with_a_hundred_tokens_cost_a_hundred_reviews() {
    // What is counted is coalescing: a review that times out on a starved machine and is
    // retried would count twice, so the request timeout is far above the 20 ms latency.
    let k = cluster_with("tokenreview", "request_timeout_ms = 30000", "").await;
    k.api.set_latency(Duration::from_millis(20));
    let tokens: Vec<String> = (0..100).map(|_| runner_token(&k.api).0).collect();
    let (_, clients) = trustgate_tests::bench::join_storm(&k.gw.url(), &tokens, 1000).await;
    assert_eq!(k.api.token_reviews(), 100);
    assert_eq!(k.gw.running.state.sessions().len(), 1000);
    drop(clients);
    // reconnecting within the cache TTL costs nothing
    let (_, _again) = trustgate_tests::bench::join_storm(&k.gw.url(), &tokens, 1000).await;
    assert_eq!(k.api.token_reviews(), 100);
    let stats = k.gw.running.kubernetes.as_ref().unwrap().stats();
    assert_eq!(
        stats
            .api_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        100
    );
}

#[tokio::test]
async fn jwks_mode_needs_no_review_and_follows_key_rotation() {
    let k = cluster_with("jwks", "jwks_min_refresh_ms = 0", "").await;
    let (token, claims) = runner_token(&k.api);
    let res = connect(&k.gw, "worker", &token).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["auth"]["expiresAtMs"], claims.exp * 1000);
    for _ in 0..20 {
        let (t, _) = runner_token(&k.api);
        assert_eq!(connect(&k.gw, "worker", &t).await["ok"], true);
    }
    assert_eq!(k.api.token_reviews(), 0);
    assert_eq!(k.api.jwks_fetches(), 1, "keys are fetched once and cached");

    // rotation: a token signed by a new key triggers one refresh
    k.api.rotate_key(false).unwrap();
    let (rotated, _) = runner_token(&k.api);
    assert_eq!(connect(&k.gw, "worker", &rotated).await["ok"], true);
    assert_eq!(k.api.jwks_fetches(), 2);

    let mut wrong_aud = TokenRequest::new("workers", "runner", "elsewhere");
    wrong_aud.pod = Some("p1".into());
    let (t, _) = k.api.token(&wrong_aud).unwrap();
    denied(
        &connect(&k.gw, "worker", &t).await,
        "UNAUTHENTICATED",
        "audience-mismatch",
    );
    let mut expired = TokenRequest::new("workers", "runner", AUDIENCE);
    expired.issued_at = Some(trustgate_protocol::now_ms() / 1000 - 7200);
    let (t, _) = k.api.token(&expired).unwrap();
    denied(
        &connect(&k.gw, "worker", &t).await,
        "UNAUTHENTICATED",
        "token-expired",
    );
    let (t, _) = k
        .api
        .token(&TokenRequest::new("default", "runner", AUDIENCE))
        .unwrap();
    denied(
        &connect(&k.gw, "worker", &t).await,
        "FORBIDDEN",
        "namespace-not-allowed",
    );
    // a token from another cluster (unknown key) is rejected
    let other = ApiServer::start().await.unwrap();
    let (foreign, _) = runner_token(&other);
    denied(
        &connect(&k.gw, "worker", &foreign).await,
        "UNAUTHENTICATED",
        "token-rejected",
    );
    assert_eq!(k.api.token_reviews(), 0);
}

#[tokio::test]
async fn a_deleted_pods_live_session_is_closed_within_one_interval() {
    let interval = Duration::from_millis(400);
    let k = cluster_with(
        "tokenreview",
        "",
        &format!("revalidate_interval_ms = {}\n", interval.as_millis()),
    )
    .await;
    let (token, claims) = runner_token(&k.api);
    let (other_token, _) = runner_token(&k.api);
    let mut doomed = WsClient::open(&k.gw.url()).await;
    let res = doomed
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": token})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true);
    let mut survivor = WsClient::open(&k.gw.url()).await;
    let res = survivor
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": other_token})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true);
    // The review of `token` is cached as allowed; re-validation must not trust that.
    let deleted_at = Instant::now();
    assert!(
        k.api
            .delete_pod("workers", &claims.kubernetes.pod.unwrap().name)
    );
    let (code, reason) = doomed.closed().await;
    assert_eq!(code, 4401);
    assert_eq!(reason, "credentials expired");
    assert!(
        deleted_at.elapsed() <= interval + Duration::from_millis(300),
        "closed {:?} after the deletion (interval {interval:?})",
        deleted_at.elapsed()
    );
    assert_eq!(survivor.request("p", "ping", json!({})).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_token_bound_to_a_chosen_pod_shows_that_pod_in_the_session() {
    // `trustgate dev token` signs offline with the issuer key `dev cluster` serves from.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("issuer-key.pem");
    let api = ApiServer::start_with("127.0.0.1:0".parse().unwrap(), Some(&key))
        .await
        .unwrap();
    let kubeconfig = api.kubeconfig(dir.path()).unwrap();
    let gw = gateway(
        &format!(
            "[kubernetes]\nkubeconfig = {:?}\n",
            kubeconfig.display().to_string()
        ),
        &plugin("tokenreview"),
    )
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trustgate-cli"))
        .args([
            "dev",
            "token",
            "--namespace",
            "workers",
            "--service-account",
            "runner",
        ])
        .args([
            "--pod",
            "runner-web-7",
            "--pod-uid",
            "5f0c-web-7",
            "--node",
            "node-7",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let (ok, token) = trustgate_tests::status_and_text(&out);
    assert!(ok, "{token}");
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": token.trim()})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    let info = c.request("i", "session.info", json!({})).await;
    let attrs = &info["payload"]["attributes"];
    assert_eq!(attrs["pod-name"], "runner-web-7", "{info}");
    assert_eq!(attrs["pod-uid"], "5f0c-web-7", "{info}");
    assert_eq!(attrs["node-name"], "node-7", "{info}");
}
