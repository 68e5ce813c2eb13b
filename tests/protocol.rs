//! Protocol v1 handshake rules, each over a real WebSocket against a real gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use serde_json::json;
use trustgate_protocol::now_ms;
use trustgate_protocol::{DeviceKey, MAX_SIGNATURE_SKEW_MS, Role};
use trustgate_tests::client::{Incoming, WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway, scripted};

/// A chain that lets anything with `auth.method = "test"` and token `good` in as a worker that
/// may skip pairing.
async fn open_gateway(sections: &str) -> TestGateway {
    gateway(
        sections,
        &scripted(
            "authn",
            r#"decision = "allow", method = "test", token = "good", subject = "worker-1", roles = ["worker"], skip_pairing = true"#,
        ),
    )
    .await
}

fn good_auth() -> serde_json::Value {
    json!({"method": "test", "token": "good"})
}

fn assert_error(res: &serde_json::Value, code: &str) {
    assert_eq!(res["type"], "res", "{res}");
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], code, "{res}");
    assert!(
        res["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{res}"
    );
    let retryable = matches!(code, "UNAVAILABLE" | "RATE_LIMITED");
    assert_eq!(res["error"]["retryable"], retryable, "{res}");
}

#[tokio::test]
async fn successful_connect_returns_hello_ok() {
    let gw = open_gateway("").await;
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params("worker", Some(good_auth()), None))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    let p = &res["payload"];
    assert_eq!(p["type"], "hello-ok");
    assert_eq!(p["protocol"], 1);
    assert_eq!(p["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        p["server"]["connId"]
            .as_str()
            .is_some_and(|s| s.starts_with("c-"))
    );
    assert_eq!(
        p["auth"],
        json!({"method": "test", "subject": "worker-1", "role": "worker", "scopes": [], "pairing": "skipped"})
    );
    assert_eq!(
        p["policy"],
        json!({"maxPayload": 1048576, "handshakeTimeoutMs": 10000, "tickIntervalMs": 15000})
    );
}

#[tokio::test]
async fn a_first_frame_other_than_connect_closes_with_1008() {
    let gw = open_gateway("").await;
    let mut c = WsClient::open(&gw.url()).await;
    let res = c.request("x", "ping", json!({})).await;
    assert_error(&res, "INVALID_REQUEST");
    assert_eq!(res["error"]["details"]["field"], "method");
    assert_eq!(c.closed().await.0, 1008);

    let mut c = WsClient::open(&gw.url()).await;
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(c.closed().await.0, 1008);

    let mut c = WsClient::open(&gw.url()).await;
    c.send_text("this is not json").await;
    let Incoming::Frame(res) = c.recv().await else {
        panic!("expected an error response")
    };
    assert_error(&res, "INVALID_REQUEST");
    assert_eq!(c.closed().await.0, 1008);
}

#[tokio::test]
async fn no_connect_within_the_handshake_timeout_closes_with_1008() {
    let gw = open_gateway("[limits]\nhandshake_timeout_ms = 300\n").await;
    let mut c = WsClient::open(&gw.url()).await;
    let started = std::time::Instant::now();
    let (code, reason) = c.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("handshake timeout"), "{reason}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
}

#[tokio::test]
async fn protocol_version_mismatch_closes_with_1002() {
    let gw = open_gateway("").await;
    let mut c = WsClient::open(&gw.url()).await;
    let mut p = connect_params("worker", Some(good_auth()), None);
    p["minProtocol"] = json!(2);
    p["maxProtocol"] = json!(3);
    let res = c.connect(p).await;
    assert_error(&res, "PROTOCOL_MISMATCH");
    assert_eq!(res["error"]["details"]["supported"], json!([1]));
    assert_eq!(c.closed().await.0, 1002);
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let gw = open_gateway("[limits]\nmax_payload = 2048\n").await;
    let mut c = WsClient::open(&gw.url()).await;
    c.send_text("x".repeat(4096)).await;
    assert_eq!(c.closed().await.0, 1009);

    // after the handshake too
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params("worker", Some(good_auth()), None))
        .await;
    assert_eq!(res["payload"]["policy"]["maxPayload"], 2048);
    c.send_json(
        &json!({"type":"req","id":"big","method":"ping","params":{"pad":"y".repeat(4096)}}),
    )
    .await;
    assert_eq!(c.closed().await.0, 1009);
}

/// An unknown field is reported at the object that holds it, with the fields accepted there;
/// its own name is the client's text (it could be a token) and is not echoed.
#[tokio::test]
async fn unknown_fields_are_rejected_naming_where_without_echoing_the_name() {
    let gw = open_gateway("").await;
    for (mutate, field, accepted) in [
        (
            json!({"client": {"id": "a", "version": "1", "nmae": "x"}}),
            "params.client",
            "`id`, `version`, `platform`, `instanceId`",
        ),
        (json!({"colour": "blue"}), "params", "`minProtocol`"),
        (
            json!({"auth": {"method": "test", "tokn": "good"}}),
            "params.auth",
            "`method`, `token`, `deviceToken`",
        ),
    ] {
        let mut c = WsClient::open(&gw.url()).await;
        let mut p = connect_params("worker", Some(good_auth()), None);
        for (k, v) in mutate.as_object().unwrap() {
            p[k] = v.clone();
        }
        let res = c.connect(p).await;
        assert_error(&res, "INVALID_REQUEST");
        assert_eq!(res["error"]["details"]["field"], field, "{res}");
        let message = res["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("`{field}`: an unknown field; expected one of")),
            "{res}"
        );
        assert!(message.contains(accepted), "{res}");
        for name in ["nmae", "colour", "tokn"] {
            assert!(
                !res.to_string().contains(name),
                "the unknown name was echoed: {res}"
            );
        }
        assert_eq!(c.closed().await.0, 1008);
    }
    // an unknown top-level frame field
    let mut c = WsClient::open(&gw.url()).await;
    c.send_json(&json!({"type":"req","id":"1","method":"connect","params":connect_params("worker", None, None),"extra":true}))
        .await;
    let res = c.response("1").await;
    assert_error(&res, "INVALID_REQUEST");
    assert!(!res.to_string().contains("extra"), "{res}");
    // a bad role names params.role
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params("admin", Some(good_auth()), None))
        .await;
    assert_error(&res, "INVALID_REQUEST");
    assert_eq!(res["error"]["details"]["field"], "params.role");
}

async fn device_failure(
    gw: &TestGateway,
    tamper: impl FnOnce(&mut serde_json::Value, &str),
) -> serde_json::Value {
    let key = DeviceKey::generate();
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let mut p = connect_params("worker", None, Some((&key, &nonce)));
    tamper(&mut p, &nonce);
    let res = c.connect(p).await;
    assert_error(&res, "UNAUTHENTICATED");
    assert_eq!(c.closed().await.0, 1008);
    res
}

#[tokio::test]
async fn device_proofs_that_do_not_hold_are_unauthenticated() {
    let gw = open_gateway("").await;
    // bad signature: signed over another client id
    let res = device_failure(&gw, |p, nonce| {
        let forged = DeviceKey::generate();
        let other = forged.prove("someone-else", Role::Worker, &[], nonce, now_ms());
        p["device"]["signature"] = json!(other.signature);
    })
    .await;
    assert_eq!(
        res["error"]["details"]["reason"],
        "device-signature-invalid"
    );
    // stale signedAt (re-signed honestly, but 11 minutes ago)
    let res = device_failure(&gw, |p, nonce| {
        let key = DeviceKey::generate();
        let stale = key.prove(
            "test-client",
            Role::Worker,
            &[],
            nonce,
            now_ms() - MAX_SIGNATURE_SKEW_MS - 60_000,
        );
        p["device"] = serde_json::to_value(stale).unwrap();
    })
    .await;
    assert_eq!(res["error"]["details"]["reason"], "device-signature-stale");
    // a nonce that is not this connection's challenge (a replayed proof)
    let res = device_failure(&gw, |p, _| {
        let key = DeviceKey::generate();
        let replayed = key.prove(
            "test-client",
            Role::Worker,
            &[],
            "nonce-of-another-connection",
            now_ms(),
        );
        p["device"] = serde_json::to_value(replayed).unwrap();
    })
    .await;
    assert_eq!(res["error"]["details"]["reason"], "device-nonce-mismatch");
    // device.id not derived from the key
    let res = device_failure(&gw, |p, _| {
        p["device"]["id"] = json!("ab".repeat(32));
    })
    .await;
    assert_eq!(res["error"]["details"]["reason"], "device-id-mismatch");
}

#[tokio::test]
async fn a_proof_from_one_connection_cannot_be_replayed_on_another() {
    let gw = open_gateway("").await;
    let key = DeviceKey::generate();
    let first = WsClient::open(&gw.url()).await;
    let captured = connect_params("worker", None, Some((&key, &first.nonce)));
    let mut second = WsClient::open(&gw.url()).await;
    assert_ne!(
        first.nonce, second.nonce,
        "challenges must differ per connection"
    );
    let res = second.connect(captured).await;
    assert_error(&res, "UNAUTHENTICATED");
    assert_eq!(res["error"]["details"]["reason"], "device-nonce-mismatch");
}

#[tokio::test]
async fn plugin_denials_carry_code_reason_and_retryability() {
    let gw = gateway(
        "",
        &format!(
            "{}{}",
            scripted("flaky", r#"decision = "deny", method = "flaky", code = "unavailable", reason = "api-down", retry_after_ms = 250"#),
            scripted("strict", r#"decision = "deny", method = "strict", reason = "not-on-list""#),
        ),
    )
    .await;
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "flaky"})),
            None,
        ))
        .await;
    assert_error(&res, "UNAVAILABLE");
    assert_eq!(res["error"]["retryAfterMs"], 250);
    assert_eq!(res["error"]["details"]["reason"], "api-down");
    assert_eq!(res["error"]["details"]["plugin"], "flaky");
    assert_eq!(c.closed().await.0, 1013);

    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "strict"})),
            None,
        ))
        .await;
    assert_error(&res, "FORBIDDEN");
    assert_eq!(res["error"]["details"]["reason"], "not-on-list");
    assert_eq!(c.closed().await.0, 1008);

    // nothing accepted, nothing to pair with
    let mut c = WsClient::open(&gw.url()).await;
    let res = c.connect(connect_params("worker", None, None)).await;
    assert_error(&res, "UNAUTHENTICATED");
    assert_eq!(res["error"]["details"]["reason"], "no-credentials");
}

#[tokio::test]
async fn a_failing_plugin_is_plugin_failed_and_the_gateway_keeps_serving() {
    let hostile = format!(
        "[[auth.plugins]]\nname = \"hostile\"\npath = {:?}\nconfig = {{ mode = \"loop\" }}\n",
        trustgate_tests::guests::GUEST_HOSTILE
    );
    let gw = gateway("[plugins]\ndeadline_ms = 20\n", &hostile).await;
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params("worker", Some(good_auth()), None))
        .await;
    assert_error(&res, "PLUGIN_FAILED");
    assert_eq!(res["error"]["details"]["reason"], "deadline");
    assert_eq!(c.closed().await.0, 1008);
    // and the next connection is served (and fails the same way, closed, not crashed)
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params("worker", Some(good_auth()), None))
        .await;
    assert_error(&res, "PLUGIN_FAILED");
}

#[tokio::test]
async fn roles_and_scopes_beyond_the_identity_are_forbidden() {
    let gw = open_gateway("").await;
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params("operator", Some(good_auth()), None))
        .await;
    assert_error(&res, "FORBIDDEN");
    assert_eq!(res["error"]["details"]["reason"], "role-not-allowed");
    let mut c = WsClient::open(&gw.url()).await;
    let mut p = connect_params("worker", Some(good_auth()), None);
    p["scopes"] = json!(["admin"]);
    let res = c.connect(p).await;
    assert_error(&res, "FORBIDDEN");
    assert_eq!(res["error"]["details"]["reason"], "scope-not-allowed");
}

#[tokio::test]
async fn the_connection_limit_answers_rate_limited() {
    let gw = open_gateway("[limits]\nmax_connections = 1\n").await;
    // An unauthenticated socket does not count against session capacity ...
    let _idle = WsClient::open(&gw.url()).await;
    let mut first = WsClient::open(&gw.url()).await;
    let res = first
        .connect(connect_params("worker", Some(good_auth()), None))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    // ... a session does.
    let mut second = WsClient::open(&gw.url()).await;
    let res = second
        .connect(connect_params("worker", Some(good_auth()), None))
        .await;
    assert_error(&res, "RATE_LIMITED");
    assert_eq!(res["error"]["details"]["reason"], "gateway-full");
    assert!(res["error"]["retryAfterMs"].as_u64().is_some());
    assert_eq!(second.closed().await.0, 1013);
}
