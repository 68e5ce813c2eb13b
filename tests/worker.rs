//! The worker client (`trustgate worker`) against a real gateway: token re-reading, retry and
//! give-up rules, reauth before expiry, reconnects, device pairing, and TLS with a generated CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::path::Path;

use tokio::sync::{mpsc, watch};
use trustgate::worker::{WorkerError, WorkerEvent, WorkerOptions, run};
use trustgate_protocol::{CloseCode, ErrorCode, Pairing};
use trustgate_tests::{TestGateway, gateway, scripted};

struct Worker {
    stop: watch::Sender<bool>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl Worker {
    fn start(options: WorkerOptions) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(options, stop_rx, Some(tx)));
        Self { stop, events, task }
    }

    async fn next(&mut self) -> WorkerEvent {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.events.recv())
            .await
            .expect("worker event")
            .expect("worker running")
    }

    async fn connected(&mut self) -> trustgate_protocol::HelloOk {
        loop {
            match self.next().await {
                WorkerEvent::Connected(h) => return h,
                WorkerEvent::Retrying { .. } | WorkerEvent::AwaitingApproval { .. } => continue,
                other => panic!("expected a connection, got {other:?}"),
            }
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn fast(mut o: WorkerOptions) -> WorkerOptions {
    o.backoff_base = std::time::Duration::from_millis(20);
    o.backoff_max = std::time::Duration::from_millis(200);
    o
}

fn k8s_worker(gw_url: &str, token_path: &Path) -> WorkerOptions {
    let mut o = fast(WorkerOptions::new(gw_url));
    o.k8s_trust = true;
    o.token_path = token_path.to_path_buf();
    o
}

async fn token_gateway(extra: &str) -> TestGateway {
    gateway(
        "",
        &scripted(
            "k8s",
            &format!(
                r#"decision = "allow", method = "k8s-sa-trust", token = "good", subject = "sa", roles = ["worker"], skip_pairing = true{extra}"#
            ),
        ),
    )
    .await
}

#[tokio::test]
async fn rereads_the_token_on_every_connect_and_honours_retryable() {
    let gw = token_gateway(r#", mismatch_code = "unavailable""#).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "stale").unwrap();
    let mut w = Worker::start(k8s_worker(&gw.url(), &token));
    match w.next().await {
        WorkerEvent::Retrying { error, .. } => assert!(error.starts_with("UNAVAILABLE"), "{error}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    // kubelet rotates the token in place
    std::fs::write(&token, "good").unwrap();
    let hello = w.connected().await;
    assert_eq!(hello.auth.subject, "sa");
    assert_eq!(hello.auth.pairing, Pairing::Skipped);
    w.stop().await;
}

#[tokio::test]
async fn gives_up_on_a_non_retryable_refusal() {
    let gw = token_gateway("").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "forged").unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let err = run(k8s_worker(&gw.url(), &token), stop_rx, None)
        .await
        .unwrap_err();
    match &err {
        WorkerError::Refused { code, reason, .. } => {
            assert_eq!(*code, ErrorCode::Unauthenticated);
            assert_eq!(reason.as_deref(), Some("token-rejected"));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("UNAUTHENTICATED"), "{err}");
}

#[tokio::test]
async fn reauthenticates_before_expiry_and_reconnects_when_dropped() {
    let gw = token_gateway(", expires_in_ms = 1000").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "good").unwrap();
    let mut w = Worker::start(k8s_worker(&gw.url(), &token));
    let hello = w.connected().await;
    let first = hello.auth.expires_at_ms.unwrap();
    match w.next().await {
        WorkerEvent::Reauthenticated { expires_at_ms } => assert!(expires_at_ms.unwrap() > first),
        other => panic!("expected a reauth, got {other:?}"),
    }
    // The gateway drops the session (as on revocation): the worker reconnects.
    let closed = gw.running.state.sessions().close_where(
        CloseCode::CREDENTIALS_EXPIRED,
        "credentials revoked",
        |s| s.subject == "sa",
    );
    assert_eq!(closed, 1);
    loop {
        match w.next().await {
            WorkerEvent::Disconnected { code } => {
                assert_eq!(code, Some(4401));
                break;
            }
            WorkerEvent::Reauthenticated { .. } => continue,
            other => panic!("expected a disconnect, got {other:?}"),
        }
    }
    let again = w.connected().await;
    assert_ne!(again.server.conn_id, hello.server.conn_id);
    w.stop().await;
}

#[tokio::test]
async fn pairs_a_device_and_reuses_its_token() {
    let gw = gateway("", &scripted("nobody", r#"decision = "abstain""#)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    let mut o = fast(WorkerOptions::new(gw.url()));
    o.device_key = Some(key.clone());
    let mut w = Worker::start(o.clone());
    let request_id = match w.next().await {
        WorkerEvent::AwaitingApproval { request_id } => request_id,
        other => panic!("expected a pairing request, got {other:?}"),
    };
    assert!(key.exists(), "the device key is created");
    let status = reqwest::Client::new()
        .post(format!(
            "{}/api/pairing/{request_id}/approve",
            gw.admin_url()
        ))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let hello = w.connected().await;
    assert_eq!(hello.auth.pairing, Pairing::Paired);
    assert!(hello.auth.device_token.is_some());
    w.stop().await;
    let stored = std::fs::read_to_string(dir.path().join("device.key.token")).unwrap();
    assert_eq!(Some(stored.as_str()), hello.auth.device_token.as_deref());

    // A restarted worker presents its stored token.
    let mut w = Worker::start(o);
    let hello = w.connected().await;
    assert_eq!(hello.auth.pairing, Pairing::Paired);
    assert_eq!(
        hello.auth.device_token, None,
        "a token login does not rotate the token"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_the_token_rotated_on_reauth_and_signs_in_again_when_it_expired() {
    let gw = gateway(
        "[pairing]\ntoken_ttl_ms = 3000\n",
        &scripted("nobody", r#"decision = "abstain""#),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    let token_file = dir.path().join("device.key.token");
    let mut o = fast(WorkerOptions::new(gw.url()));
    o.device_key = Some(key.clone());
    o.instance_id = Some("pod-w".into());
    let mut w = Worker::start(o.clone());
    let request_id = match w.next().await {
        WorkerEvent::AwaitingApproval { request_id } => request_id,
        other => panic!("expected a pairing request, got {other:?}"),
    };
    let status = reqwest::Client::new()
        .post(format!(
            "{}/api/pairing/{request_id}/approve",
            gw.admin_url()
        ))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let issued = w.connected().await.auth.device_token.unwrap();
    w.stop().await;

    // Logged in with its token, the session expires with it; the worker reauths before, in
    // the token's second half, and stores the token the gateway rotated.
    let mut w = Worker::start(o.clone());
    let hello = w.connected().await;
    assert_eq!(hello.auth.method, "device-token");
    let first = hello.auth.expires_at_ms.expect("bounded by the token");
    match w.next().await {
        WorkerEvent::Reauthenticated { expires_at_ms } => {
            assert!(expires_at_ms.unwrap() > first);
        }
        other => panic!("expected a reauth, got {other:?}"),
    }
    w.stop().await;
    let rotated = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(rotated, issued, "the rotated token was stored");

    // Let the stored token expire: the worker's next start is refused with
    // `device-token-expired`, discards the token and signs in with its key.
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/devices", gw.admin_url()))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expires = list["devices"][0]["tokens"][0]["expiresAtMs"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(
        expires.saturating_sub(trustgate_protocol::now_ms()) + 5,
    ))
    .await;
    let mut w = Worker::start(o);
    let hello = w.connected().await;
    assert_eq!(hello.auth.pairing, Pairing::Paired);
    let renewed = hello
        .auth
        .device_token
        .expect("a new token after signing in");
    w.stop().await;
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), renewed);
}

#[tokio::test]
async fn connects_over_tls_trusting_only_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = trustgate_tests::tls::TestCa::new();
    let (cert, key) = ca.server_cert(dir.path(), "localhost");
    let gw = gateway(
        &format!(
            "[gateway.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        &scripted(
            "k8s",
            r#"decision = "allow", method = "k8s-sa-trust", subject = "sa", roles = ["worker"], skip_pairing = true"#,
        ),
    )
    .await;
    assert!(gw.running.tls);
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let url = format!("wss://localhost:{}", gw.running.ws_addr.port());

    // Without the CA the certificate is not trusted: the worker keeps retrying.
    let mut w = Worker::start(k8s_worker(&url, &token));
    match w.next().await {
        WorkerEvent::Retrying { error, .. } => assert!(error.contains("certificate"), "{error}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    w.stop().await;

    let mut o = k8s_worker(&url, &token);
    o.ca_file = Some(ca.cert_path(dir.path()));
    let mut w = Worker::start(o);
    let hello = w.connected().await;
    assert_eq!(hello.auth.subject, "sa");
    w.stop().await;
}
