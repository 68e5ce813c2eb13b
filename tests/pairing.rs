//! Device pairing end to end: NOT_PAIRED with a request id, approval by an operator (over the
//! protocol and over the admin API), device-token reconnects, rejection and expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use serde_json::{Value, json};
use trustgate_protocol::DeviceKey;
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway, scripted};

/// A chain with no authenticator for devices (so they must pair) and an operator credential.
async fn pairing_gateway(sections: &str) -> TestGateway {
    gateway(
        sections,
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

/// Connects a device; returns the response.
async fn device_connect(
    gw: &TestGateway,
    key: &DeviceKey,
    auth: Option<Value>,
) -> (WsClient, Value) {
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let res = c
        .connect(connect_params("worker", auth, Some((key, &nonce))))
        .await;
    (c, res)
}

fn request_id(res: &Value) -> String {
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
    assert_eq!(res["error"]["retryable"], false, "{res}");
    res["error"]["details"]["requestId"]
        .as_str()
        .expect("details.requestId")
        .to_string()
}

#[tokio::test]
async fn approve_then_paired_then_device_token() {
    let gw = pairing_gateway("").await;
    let key = DeviceKey::generate();
    let (mut c, res) = device_connect(&gw, &key, None).await;
    let rid = request_id(&res);
    assert_eq!(c.closed().await.0, 1008);

    // The operator sees the request and approves it over the protocol.
    let mut op = operator(&gw).await;
    let list = op.request("l", "pairing.list", json!({})).await;
    let pending = list["payload"]["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["requestId"], rid);
    assert_eq!(pending[0]["deviceId"], key.id());
    assert_eq!(pending[0]["role"], "worker");
    let approved = op
        .request("a", "pairing.approve", json!({"requestId": rid}))
        .await;
    assert_eq!(approved["ok"], true, "{approved}");
    assert_eq!(approved["payload"]["device"]["id"], key.id());

    // Next connect succeeds, paired, with a device token.
    let (_c, res) = device_connect(&gw, &key, None).await;
    assert_eq!(res["ok"], true, "{res}");
    let auth = &res["payload"]["auth"];
    assert_eq!(auth["pairing"], "paired");
    assert_eq!(auth["subject"], format!("device:{}", key.id()));
    assert_eq!(auth["method"], "device-token");
    let token = auth["deviceToken"]
        .as_str()
        .expect("deviceToken")
        .to_string();

    // Later connects may present the token; no new token is issued then.
    let (_c, res) = device_connect(
        &gw,
        &key,
        Some(json!({"method": "device-token", "deviceToken": token})),
    )
    .await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["auth"]["pairing"], "paired");
    assert!(res["payload"]["auth"].get("deviceToken").is_none(), "{res}");

    // The token alone (no device proof) works too.
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "device-token", "deviceToken": token})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");

    // A wrong token is refused, naming the reason.
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "device-token", "deviceToken": "tgd1_forged"})),
            None,
        ))
        .await;
    assert_eq!(res["error"]["code"], "UNAUTHENTICATED", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "device-token-invalid");

    // Approved for worker, not operator.
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let res = c
        .connect(connect_params("operator", None, Some((&key, &nonce))))
        .await;
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
}

#[tokio::test]
async fn approval_through_the_admin_api_needs_the_token() {
    let gw = pairing_gateway("").await;
    let key = DeviceKey::generate();
    let (_c, res) = device_connect(&gw, &key, None).await;
    let rid = request_id(&res);
    let http = reqwest::Client::new();
    let url = format!("{}/api/pairing/{rid}/approve", gw.admin_url());
    assert_eq!(http.post(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        http.post(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = http
        .post(&url)
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let again = http
        .post(&url)
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        404,
        "a decided request cannot be approved twice"
    );
    let (_c, res) = device_connect(&gw, &key, None).await;
    assert_eq!(res["payload"]["auth"]["pairing"], "paired", "{res}");
    // health endpoints are open
    let health = http
        .get(format!("{}/healthz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = http
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
}

#[tokio::test]
async fn rejected_requests_are_gone_and_the_device_stays_unpaired() {
    let gw = pairing_gateway("").await;
    let key = DeviceKey::generate();
    let (_c, res) = device_connect(&gw, &key, None).await;
    let rid = request_id(&res);
    let mut op = operator(&gw).await;
    let rejected = op
        .request("r", "pairing.reject", json!({"requestId": rid}))
        .await;
    assert_eq!(rejected["ok"], true, "{rejected}");
    let late = op
        .request("a", "pairing.approve", json!({"requestId": rid}))
        .await;
    assert_eq!(late["error"]["code"], "INVALID_REQUEST", "{late}");
    assert_eq!(late["error"]["details"]["field"], "params.requestId");
    let (_c, res) = device_connect(&gw, &key, None).await;
    let again = request_id(&res);
    assert_ne!(again, rid, "a rejected request is not revived");
}

#[tokio::test]
async fn pending_requests_expire() {
    let gw = pairing_gateway("[pairing]\npending_ttl_ms = 200\n").await;
    let key = DeviceKey::generate();
    let (_c, res) = device_connect(&gw, &key, None).await;
    let rid = request_id(&res);
    let expires = res["error"]["details"]["expiresAtMs"].as_u64().unwrap();
    // Expiry is the behaviour under test: wait until the server-announced expiry has passed.
    let wait = expires.saturating_sub(trustgate_protocol::now_ms()) + 20;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let mut op = operator(&gw).await;
    let list = op.request("l", "pairing.list", json!({})).await;
    assert_eq!(list["payload"]["pending"], json!([]), "{list}");
    let late = op
        .request("a", "pairing.approve", json!({"requestId": rid}))
        .await;
    assert_eq!(late["error"]["code"], "INVALID_REQUEST", "{late}");
}

#[tokio::test]
async fn an_allowed_identity_that_may_not_skip_pairing_needs_a_paired_device() {
    let gw = gateway(
        "",
        &scripted(
            "authn",
            r#"decision = "allow", method = "test", subject = "contractor", roles = ["worker"], skip_pairing = false"#,
        ),
    )
    .await;
    // no device at all
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "test"})),
            None,
        ))
        .await;
    assert_eq!(res["error"]["code"], "UNAUTHENTICATED", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "device-required");
    // with a device: NOT_PAIRED until approved
    let key = DeviceKey::generate();
    let (_c, res) = device_connect(&gw, &key, Some(json!({"method": "test"}))).await;
    let rid = request_id(&res);
    let http = reqwest::Client::new();
    let ok = http
        .post(format!("{}/api/pairing/{rid}/approve", gw.admin_url()))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let (_c, res) = device_connect(&gw, &key, Some(json!({"method": "test"}))).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["auth"]["subject"], "contractor");
    assert_eq!(res["payload"]["auth"]["pairing"], "paired");
}
