//! The device lifecycle over real sockets: approved devices listed with who approved them,
//! revocation closing every live session of the device at once, one token per client
//! instance, tokens that expire and rotate on `reauth`, a store that cannot write, and an
//! audit record for each lifecycle event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use trustgate_protocol::{DeviceKey, now_ms};
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway, scripted};

/// How long a revocation may take to close a session (the issue's bound).
const REVOKE_BOUND: Duration = Duration::from_secs(1);

/// A gateway whose chain authenticates no device (so devices pair) and one operator, with
/// an audit log in `dir` and extra `sections`.
async fn lifecycle_gateway(audit: &Path, sections: &str) -> TestGateway {
    gateway(
        &format!(
            "[audit]\noutput = {:?}\n{sections}",
            audit.display().to_string()
        ),
        &scripted(
            "operators",
            r#"decision = "allow", method = "operator-password", token = "s3cret", subject = "ops", roles = ["operator"], skip_pairing = true"#,
        ),
    )
    .await
}

async fn operator(gw: &TestGateway) -> WsClient {
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "operator",
            Some(json!({"method": "operator-password", "token": "s3cret"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    c
}

/// `connect` params of a worker device, signing with `key`, as client instance `instance`,
/// optionally presenting a device token.
fn device_params(
    key: &DeviceKey,
    nonce: &str,
    instance: Option<&str>,
    token: Option<&str>,
) -> Value {
    let mut p = connect_params(
        "worker",
        token.map(|t| json!({"method": "device-token", "deviceToken": t})),
        Some((key, nonce)),
    );
    if let Some(i) = instance {
        p["client"]["instanceId"] = json!(i);
    }
    p
}

/// Connects a device by signature; returns the client and the response.
async fn sign_in(gw: &TestGateway, key: &DeviceKey, instance: Option<&str>) -> (WsClient, Value) {
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let res = c.connect(device_params(key, &nonce, instance, None)).await;
    (c, res)
}

/// Connects with a device token alone (no device proof).
async fn token_in(gw: &TestGateway, token: &str) -> (WsClient, Value) {
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "device-token", "deviceToken": token})),
            None,
        ))
        .await;
    (c, res)
}

fn token_of(res: &Value) -> String {
    assert_eq!(res["ok"], true, "{res}");
    res["payload"]["auth"]["deviceToken"]
        .as_str()
        .unwrap_or_else(|| panic!("a device token in {res}"))
        .to_string()
}

async fn admin(gw: &TestGateway, method: &str, path: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", gw.admin_url());
    let req = if method == "POST" {
        client.post(url)
    } else {
        client.get(url)
    };
    let res = req.bearer_auth(gw.admin_token()).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Pairs `key` as a worker through the admin API; returns the request id.
async fn pair(gw: &TestGateway, key: &DeviceKey) -> String {
    let (_c, res) = sign_in(gw, key, None).await;
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
    assert_eq!(
        res["error"]["details"]["reason"], "pairing-required",
        "{res}"
    );
    let rid = res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = admin(gw, "POST", &format!("/api/pairing/{rid}/approve")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device"]["id"], key.id());
    assert!(
        body["device"]["tokens"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "the approval answers with the operator's view, no hashes: {body}"
    );
    rid
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn lifecycle_events(path: &Path) -> Vec<Value> {
    audit_lines(path)
        .into_iter()
        .filter(|l| {
            l["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("pairing.") || e.starts_with("device."))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_closes_its_token_and_signature_sessions_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = lifecycle_gateway(&audit, "").await;
    let key = DeviceKey::generate();
    let rid = pair(&gw, &key).await;

    // A session signed in with the key, and one that logs in with the token it was issued.
    let (mut signed, res) = sign_in(&gw, &key, None).await;
    let token = token_of(&res);
    let (mut by_token, res) = token_in(&gw, &token).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["auth"]["method"], "device-token");

    // Listed as approved, by whom, with two live sessions and one token; no hash anywhere.
    let (status, list) = admin(&gw, "GET", "/api/devices").await;
    assert_eq!(status, 200);
    let device = &list["devices"][0];
    assert_eq!(device["id"], key.id(), "{list}");
    assert_eq!(device["approvedBy"], "admin-token");
    assert_eq!(device["roles"], json!(["worker"]));
    assert_eq!(device["clientId"], "test-client");
    assert_eq!(device["liveSessions"], 2, "{list}");
    assert!(device["lastSeenMs"].as_u64().is_some(), "{list}");
    assert_eq!(device["tokens"].as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains("sha256"), "{list}");

    // Revoke: both sessions are closed with 4401 at once.
    let (status, body) = admin(&gw, "POST", &format!("/api/devices/{}/revoke", key.id())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessionsClosed"], 2, "{body}");
    for c in [&mut signed, &mut by_token] {
        let (code, reason) = tokio::time::timeout(REVOKE_BOUND, c.closed())
            .await
            .expect("the session was closed within a second of the revocation");
        assert_eq!((code, reason.as_str()), (4401, "device revoked"));
    }

    // The key must pair again; the token is dead; a second revoke finds nothing.
    let (_c, res) = sign_in(&gw, &key, None).await;
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
    assert_ne!(res["error"]["details"]["requestId"], json!(rid));
    let (_c, res) = token_in(&gw, &token).await;
    assert_eq!(res["error"]["code"], "UNAUTHENTICATED", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "device-token-invalid");
    let (status, body) = admin(&gw, "POST", &format!("/api/devices/{}/revoke", key.id())).await;
    assert_eq!(status, 404, "{body}");
    let (_, list) = admin(&gw, "GET", "/api/devices").await;
    assert_eq!(list["devices"], json!([]));

    // The audit log names who approved and who revoked, and holds no token.
    let events = lifecycle_events(&audit);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "pairing.approve");
    assert_eq!(events[0]["actor"], "admin-token");
    assert_eq!(events[0]["device"], key.id());
    assert_eq!(events[0]["requestId"], rid);
    assert_eq!(events[0]["role"], "worker");
    assert_eq!(events[1]["event"], "device.revoke");
    assert_eq!(events[1]["actor"], "admin-token");
    assert_eq!(events[1]["device"], key.id());
    assert_eq!(events[1]["sessionsClosed"], 2);
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains(&token),
        "a device token reached the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_session_lists_revokes_and_rejects_and_is_named_in_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = lifecycle_gateway(&audit, "").await;
    let key = DeviceKey::generate();
    pair(&gw, &key).await;
    let (mut worker, res) = sign_in(&gw, &key, Some("pod-a")).await;
    assert_eq!(res["ok"], true, "{res}");

    // A worker may not manage devices.
    let res = worker
        .request("w", "devices.revoke", json!({"deviceId": key.id()}))
        .await;
    assert_eq!(res["error"]["code"], "FORBIDDEN", "{res}");

    let mut op = operator(&gw).await;
    let list = op.request("l", "devices.list", json!({})).await;
    assert_eq!(list["payload"]["devices"][0]["id"], key.id(), "{list}");
    assert_eq!(list["payload"]["devices"][0]["liveSessions"], 1, "{list}");
    assert_eq!(
        list["payload"]["devices"][0]["tokens"][0]["instance"],
        "pod-a"
    );

    // An unknown device: named by field and reason, the id not echoed.
    let res = op
        .request(
            "u",
            "devices.revoke",
            json!({"deviceId": "f00-no-such-device"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "unknown-device");
    assert_eq!(res["error"]["details"]["field"], "params.deviceId");
    assert!(!res.to_string().contains("f00-no-such-device"), "{res}");

    let res = op
        .request("r", "devices.revoke", json!({"deviceId": key.id()}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["sessionsClosed"], 1, "{res}");
    let (code, _) = tokio::time::timeout(REVOKE_BOUND, worker.closed())
        .await
        .expect("closed within a second");
    assert_eq!(code, 4401);

    // A fresh request from the same key, rejected by the operator.
    let (_c, res) = sign_in(&gw, &key, None).await;
    let rid = res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let res = op
        .request("j", "pairing.reject", json!({"requestId": rid}))
        .await;
    assert_eq!(res["ok"], true, "{res}");

    let events = lifecycle_events(&audit);
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("pairing.approve".to_string(), "admin-token".to_string()),
            ("device.revoke".into(), "operator:ops".into()),
            ("pairing.reject".into(), "operator:ops".into()),
        ],
        "{events:?}"
    );
    assert_eq!(events[2]["requestId"], rid);
    assert_eq!(events[2]["device"], key.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_device_stay_connected_through_each_others_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let gw = lifecycle_gateway(&dir.path().join("audit.jsonl"), "").await;
    let key = DeviceKey::generate();
    pair(&gw, &key).await;

    let (mut a, res) = sign_in(&gw, &key, Some("pod-a")).await;
    let token_a = token_of(&res);
    let (mut b, res) = sign_in(&gw, &key, Some("pod-b")).await;
    let token_b = token_of(&res);

    // Instance b restarts three times, by signature and by token; a is never disturbed and
    // its token keeps working.
    for round in 0..3 {
        drop(b);
        let (c, res) = sign_in(&gw, &key, Some("pod-b")).await;
        assert_eq!(res["ok"], true, "round {round}: {res}");
        drop(c);
        let (c, res) = token_in(&gw, &token_of_instance(&gw, &key, "pod-b").await).await;
        assert_eq!(res["ok"], true, "round {round}: {res}");
        b = c;
        let (_c, res) = token_in(&gw, &token_a).await;
        assert_eq!(
            res["ok"], true,
            "round {round}: a's token was superseded: {res}"
        );
        let info = a
            .request(&format!("i{round}"), "session.info", json!({}))
            .await;
        assert_eq!(
            info["ok"], true,
            "round {round}: a lost its session: {info}"
        );
    }
    // b's first token was replaced by b's own later sign-ins, and only that one.
    let (_c, res) = token_in(&gw, &token_b).await;
    assert_eq!(
        res["error"]["details"]["reason"], "device-token-invalid",
        "{res}"
    );

    let (_, list) = admin(&gw, "GET", "/api/devices").await;
    let mut instances: Vec<&str> = list["devices"][0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["instance"].as_str().unwrap())
        .collect();
    instances.sort_unstable();
    assert_eq!(instances, ["pod-a", "pod-b"], "{list}");
    assert_eq!(list["devices"][0]["liveSessions"], 2, "{list}");
}

/// Signs `instance` of `key` in and returns the token it was issued.
async fn token_of_instance(gw: &TestGateway, key: &DeviceKey, instance: &str) -> String {
    let (_c, res) = sign_in(gw, key, Some(instance)).await;
    token_of(&res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bounded_per_device_and_the_oldest_instance_loses_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let gw = lifecycle_gateway(
        &dir.path().join("audit.jsonl"),
        "[pairing]\nmax_tokens_per_device = 2\n",
    )
    .await;
    let key = DeviceKey::generate();
    pair(&gw, &key).await;
    let first = token_of_instance(&gw, &key, "one").await;
    let second = token_of_instance(&gw, &key, "two").await;
    let third = token_of_instance(&gw, &key, "three").await;
    let (_c, res) = token_in(&gw, &first).await;
    assert_eq!(
        res["error"]["details"]["reason"], "device-token-invalid",
        "{res}"
    );
    for t in [&second, &third] {
        let (_c, res) = token_in(&gw, t).await;
        assert_eq!(res["ok"], true, "{res}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_with_its_reason_and_a_signature_login_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let gw = lifecycle_gateway(
        &dir.path().join("audit.jsonl"),
        "[pairing]\ntoken_ttl_ms = 2000\n",
    )
    .await;
    let key = DeviceKey::generate();
    pair(&gw, &key).await;
    let old = token_of_instance(&gw, &key, "pod-a").await;
    let (_, list) = admin(&gw, "GET", "/api/devices").await;
    let expires = list["devices"][0]["tokens"][0]["expiresAtMs"]
        .as_u64()
        .unwrap();

    // What is tested is the passing of the token's lifetime, so let it pass.
    tokio::time::sleep(Duration::from_millis(expires.saturating_sub(now_ms()) + 5)).await;
    let (_c, res) = token_in(&gw, &old).await;
    assert_eq!(res["error"]["code"], "UNAUTHENTICATED", "{res}");
    assert_eq!(
        res["error"]["details"]["reason"], "device-token-expired",
        "{res}"
    );

    // The device key still proves the device: a new token, which works.
    let fresh = token_of_instance(&gw, &key, "pod-a").await;
    assert_ne!(fresh, old);
    let (_c, res) = token_in(&gw, &fresh).await;
    assert_eq!(res["ok"], true, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_session_lasts_as_long_as_its_token_and_reauth_rotates_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = lifecycle_gateway(
        &dir.path().join("audit.jsonl"),
        "[pairing]\ntoken_ttl_ms = 4000\n",
    )
    .await;
    let key = DeviceKey::generate();
    pair(&gw, &key).await;
    let old = token_of_instance(&gw, &key, "pod-a").await;
    let (mut session, res) = token_in(&gw, &old).await;
    let expires = res["payload"]["auth"]["expiresAtMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("a token session expires with its token: {res}"));

    // Early in the token's life a reauth keeps it.
    let res = session
        .request(
            "r1",
            "reauth",
            json!({"auth": {"method": "device-token", "deviceToken": old}}),
        )
        .await;
    assert_eq!(res["ok"], true, "{res}");
    assert!(
        res["payload"].get("deviceToken").is_none(),
        "rotated too early: {res}"
    );

    // In its second half, a reauth rotates it: a new token, a later expiry, the old one dead.
    let half = expires - 2000;
    tokio::time::sleep(Duration::from_millis(half.saturating_sub(now_ms()) + 5)).await;
    let res = session
        .request(
            "r2",
            "reauth",
            json!({"auth": {"method": "device-token", "deviceToken": old}}),
        )
        .await;
    assert_eq!(res["ok"], true, "{res}");
    let new = res["payload"]["deviceToken"]
        .as_str()
        .unwrap_or_else(|| panic!("rotated in the second half: {res}"))
        .to_string();
    assert!(
        res["payload"]["expiresAtMs"].as_u64().unwrap() > expires,
        "{res}"
    );
    let (_c, res) = token_in(&gw, &old).await;
    assert_eq!(
        res["error"]["details"]["reason"], "device-token-invalid",
        "{res}"
    );
    let (_c, res) = token_in(&gw, &new).await;
    assert_eq!(res["ok"], true, "{res}");
    let info = session.request("i", "session.info", json!({})).await;
    assert_eq!(info["ok"], true, "the rotating session lives on: {info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_refuses_writes_with_a_reason_and_signature_logins_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let gw = lifecycle_gateway(
        &dir.path().join("audit.jsonl"),
        &format!(
            "[pairing]\nstore = {:?}\n",
            store_dir.join("pairing.json").display().to_string()
        ),
    )
    .await;
    let key = DeviceKey::generate();
    pair(&gw, &key).await;
    let other = DeviceKey::generate();
    let (_c, res) = sign_in(&gw, &other, None).await;
    let rid = res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();

    // The store's directory becomes a file: every write fails from now on.
    std::fs::remove_dir_all(&store_dir).unwrap();
    std::fs::write(&store_dir, b"not a directory").unwrap();

    // An approved device still signs in (it just gets no new token this time).
    let (_c, res) = sign_in(&gw, &key, Some("pod-a")).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["auth"]["pairing"], "paired");
    assert!(res["payload"]["auth"].get("deviceToken").is_none(), "{res}");

    // Approving over the protocol: UNAVAILABLE with its reason, retryable; the request stays.
    let mut op = operator(&gw).await;
    let res = op
        .request("a", "pairing.approve", json!({"requestId": rid}))
        .await;
    assert_eq!(res["error"]["code"], "UNAVAILABLE", "{res}");
    assert_eq!(
        res["error"]["details"]["reason"],
        "pairing-store-unavailable"
    );
    assert_eq!(res["error"]["retryable"], true);
    assert!(res["error"]["retryAfterMs"].as_u64().is_some(), "{res}");
    let (status, body) = admin(&gw, "POST", &format!("/api/pairing/{rid}/approve")).await;
    assert_eq!(status, 503, "{body}");
    let (_, list) = admin(&gw, "GET", "/api/pairing").await;
    assert_eq!(list["pending"][0]["requestId"], rid, "{list}");

    // The store comes back; the same approval goes through.
    std::fs::remove_file(&store_dir).unwrap();
    std::fs::create_dir(&store_dir).unwrap();
    let res = op
        .request("b", "pairing.approve", json!({"requestId": rid}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
}
